"""Whole-image anomalies: does a model flag a black frame, an overexposed one, a blurred or
recoloured product, or another product altogether?

Real defects are local; a camera fault or a wrong part changes every position at once, which a
score that is the maximum of the anomaly map may not see. This fits a model on ``--data``'s
train/good (or loads ``--model``), alters each test/good image in whole-image ways and reports,
per alteration, how many are labelled NG, the median score and the median defect probability,
against the unaltered good and the real defective test images.

    python benchmarks/global_anomalies.py --data ../shared/data/cookies --foreign ../shared/data/bsdata
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from padim import PaDiM  # noqa: E402
from padim.io import list_images, load_image  # noqa: E402


def alterations(image: np.ndarray, foreign: np.ndarray | None) -> dict[str, np.ndarray]:
    """Whole-image changes of a uint8 RGB image, as uint8 RGB of the same size."""
    h, w = image.shape[:2]
    as_float = image.astype(np.float32)
    out = {
        "black frame": np.zeros_like(image),
        "white frame": np.full_like(image, 255),
        "flat mean colour": np.broadcast_to(image.reshape(-1, 3).mean(0).astype(np.uint8), image.shape).copy(),
        "blurred (sigma 2 % of side)": cv2.GaussianBlur(image, (0, 0), 0.02 * max(h, w)),
        "darker (x0.5)": np.clip(as_float * 0.5, 0, 255).astype(np.uint8),
        "brighter (x1.6)": np.clip(as_float * 1.6, 0, 255).astype(np.uint8),
        "colours inverted": 255 - image,
        "red and blue swapped": image[:, :, ::-1].copy(),
        "sensor noise (sd 25)": np.clip(as_float + np.random.default_rng(0).normal(0, 25, image.shape), 0,
                                        255).astype(np.uint8),
    }
    if foreign is not None:
        out["another product"] = cv2.resize(foreign, (w, h), interpolation=cv2.INTER_AREA)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="MVTec layout")
    parser.add_argument("--model", type=Path, help="a fitted model (default: fit on train/good)")
    parser.add_argument("--foreign", type=Path, help="another MVTec-layout dataset: its test/good images")
    parser.add_argument("--n-train", type=int, default=None, help="fit on the first N training images")
    parser.add_argument("--config", default="auto", help="auto (the default) or fixed")
    args = parser.parse_args()

    if args.model:
        model = PaDiM.load(args.model, workers=0, progress=False)
    else:
        train = list_images(args.data / "train" / "good")[: args.n_train]
        model = PaDiM(config=args.config, progress=False).fit(train)
    good = list_images(args.data / "test" / "good")
    defects = [p for p in list_images(args.data / "test") if p.parent.name != "good"]
    foreign = list_images(args.foreign / "test" / "good") if args.foreign else []
    rows: dict[str, list[np.ndarray]] = {}
    for k, path in enumerate(good):
        image = (load_image(path) * 255).round().astype(np.uint8)
        other = (load_image(foreign[k % len(foreign)]) * 255).round().astype(np.uint8) if foreign else None
        for name, altered in alterations(image, other).items():
            rows.setdefault(name, []).append(altered)

    threshold = model.calibrator_.threshold_
    print(f"model: {model.backbone}, input {model.input_size_}, threshold {threshold:.4g}; "
          f"{len(good)} good test images altered\n")
    print("| images | n | labelled NG | median score | median p(defect) |")
    print("|---|---|---|---|---|")

    def report(name, images):
        scores = np.asarray(model.score_samples(images))
        probability = np.asarray(model.calibrator_.probability(scores))
        print(f"| {name} | {len(scores)} | {int((scores >= threshold).sum())} | {np.median(scores):.4g} | "
              f"{np.median(probability):.3f} |", flush=True)

    report("good (unaltered)", good)
    report("real defects", defects)
    for name, images in rows.items():
        report(name, images)


if __name__ == "__main__":
    main()
