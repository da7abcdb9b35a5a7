"""The whole-image check (padim.whole_image): what it changes on real test sets, on synthetic local
defects and on whole-image anomalies.

Fits one model on ``--data``'s train/good with the check (``whole_image=True``, the default) and
one without, of the same configuration (with ``--config auto``, the one auto chose), so that they
differ only in their rule (the Gaussians and calibrator are the same), then
scores from the same anomaly maps (the model's input size): the real test images, synthetic
local defects made on each good test image (padim.synthetic, every family), and whole-image
alterations of each good test image (benchmarks/global_anomalies.py). Reports, without and with
the check, image AUROC against the good test images and how many are labelled NG at each model's
threshold.

    python benchmarks/whole_image.py --data ../shared/data/cookies --foreign ../shared/data/bsdata
    python benchmarks/whole_image.py --data ../shared/data/bsdata --foreign ../shared/data/cookies --n-train 209
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from global_anomalies import alterations  # noqa: E402
from padim import PaDiM  # noqa: E402
from padim.data import as_sources  # noqa: E402
from padim.io import list_images, load_image  # noqa: E402
from padim.metrics import image_auroc  # noqa: E402
from padim.net import image_scores  # noqa: E402
from padim.synthetic import FAMILIES, make_defect  # noqa: E402


def both_scores(model, images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: the map maximum (no check), the score under ``model.whole_image_``, the map mean."""
    plain, checked, means = [], [], []
    for batch in model._loader(as_sources(images), model.input_size_):
        maps = model._maps_from_embedding(model._embed(batch.images))
        plain.extend(image_scores(maps).tolist())
        checked.extend(image_scores(maps, model.whole_image_).tolist())
        means.extend(maps.flatten(1).mean(dim=1).tolist())
    return np.array(plain), np.array(checked), np.array(means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="MVTec layout")
    parser.add_argument("--foreign", type=Path, help="another MVTec-layout dataset: its test/good images")
    parser.add_argument("--n-train", type=int, default=None, help="fit on the first N training images")
    parser.add_argument("--config", default="fixed", help="fixed (default here) or auto (then both use auto's choice)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic defects' seed")
    args = parser.parse_args()

    train = list_images(args.data / "train" / "good")[: args.n_train]
    started = time.perf_counter()
    checked_model = PaDiM(config=args.config, progress=False).fit(train)
    fit_s = time.perf_counter() - started
    # The same configuration without the check (auto's choice depends on measured time: pin it).
    plain_model = PaDiM(**{**checked_model.get_params(), "config": "fixed", "whole_image": False}).fit(train)
    rule = checked_model.whole_image_
    t_checked, t_plain = checked_model.calibrator_.threshold_, plain_model.calibrator_.threshold_
    choice = f"auto chose {checked_model.auto_choice_!r}, " if checked_model.auto_table_ else ""
    print(f"{args.data.name}: {len(train)} train images, {choice}input {checked_model.input_size_}, fit {fit_s:.1f} s; "
          f"rule {rule}; threshold {t_plain:.4g} without the check, {t_checked:.4g} with it\n")

    good = list_images(args.data / "test" / "good")
    defects = [p for p in list_images(args.data / "test") if p.parent.name != "good"]
    foreign = list_images(args.foreign / "test" / "good") if args.foreign else []
    groups: dict[str, list] = {"real defects": defects}
    rng = np.random.default_rng(args.seed)
    decoded = [(load_image(p) * 255).round().astype(np.uint8) for p in good]
    for family in FAMILIES:
        groups[f"synthetic {family}"] = [
            (np.clip(make_defect(im.astype(np.float32) / 255, family, rng)[0], 0, 1) * 255)
            .round().astype(np.uint8) for im in decoded]
    for k, image in enumerate(decoded):
        other = (load_image(foreign[k % len(foreign)]) * 255).round().astype(np.uint8) if foreign else None
        for name, altered in alterations(image, other).items():
            groups.setdefault(name, []).append(altered)

    good_plain, good_checked, good_means = both_scores(checked_model, good)
    print(f"good test images: {int((good_means >= rule.gate).sum())} of {len(good)} reach the gate "
          f"(means {good_means.min():.4g}–{good_means.max():.4g}, gate {rule.gate:.4g})\n")
    print("| images | n | image AUROC without → with | NG without → with | median map mean |")
    print("|---|---|---|---|---|")
    print(f"| good (unaltered) | {len(good)} | | {int((good_plain >= t_plain).sum())} → "
          f"{int((good_checked >= t_checked).sum())} | {np.median(good_means):.4g} |", flush=True)
    for name, images in groups.items():
        plain, checked, means = both_scores(checked_model, images)
        labels = np.r_[np.zeros(len(good)), np.ones(len(images))]
        auroc = (image_auroc(labels, np.r_[good_plain, plain]), image_auroc(labels, np.r_[good_checked, checked]))
        print(f"| {name} | {len(images)} | {auroc[0]:.4f} → {auroc[1]:.4f} | {int((plain >= t_plain).sum())} → "
              f"{int((checked >= t_checked).sum())} | {np.median(means):.4g} |", flush=True)


if __name__ == "__main__":
    main()
