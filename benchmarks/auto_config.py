"""Auto-configuration against the defaults and the oracle, and how far the synthetic ranking agrees with the real one.

For each MVTec-layout dataset: every candidate of padim.autoconfig is fitted on the whole
training set and evaluated on the real test set (image AUROC, pixel AUROC, PRO at full
resolution, as ``padim eval``); the oracle is the candidate best on the real defects (mean of the
three). Then ``PaDiM(config="auto")`` is fitted and timed against a default fit: its choice, the
regret (oracle − auto, per metric), and the Spearman rank correlation between the candidates'
selection scores (synthetic defects on held-out good images) and their real mean metric.

    python benchmarks/auto_config.py ../shared/data/cookies ../shared/data/bsdata --synthetic /tmp/padim_synth

``--synthetic DIR`` first writes a synthetic dataset there (an aligned pattern with noise; test
defects are dark or bright spots and short strokes drawn with OpenCV, not padim.synthetic's
generator) and includes it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.stats import spearmanr

from padim import PaDiM
from padim.autoconfig import candidates
from padim.workflows import evaluate_folder

METRICS = ("image_auroc", "pixel_auroc", "pro")


def write_synthetic(root: Path, n_train: int = 60, n_test: int = 30, size: int = 256, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pattern = cv2.resize(rng.uniform(40, 215, size=(16, 16, 3)).astype(np.float32), (size, size),
                         interpolation=cv2.INTER_CUBIC)
    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    def good():
        return np.clip(pattern + rng.normal(0, 6, size=pattern.shape), 0, 255).astype(np.uint8)

    for i in range(n_train):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), good())
    for i in range(n_test):
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), good())
        image, mask = good(), np.zeros((size, size), np.uint8)
        colour = [int(c) for c in rng.choice([10, 245]) + rng.integers(-10, 10, size=3)]
        centre = tuple(int(v) for v in rng.integers(30, size - 30, size=2))
        if rng.random() < 0.5:
            radius = int(rng.integers(4, 14))
            cv2.circle(image, centre, radius, colour, -1)
            cv2.circle(mask, centre, radius, 255, -1)
        else:
            end = tuple(int(v) for v in np.clip(np.array(centre) + rng.integers(-40, 40, size=2), 0, size - 1))
            cv2.line(image, centre, end, colour, 2)
            cv2.line(mask, centre, end, 255, 2)
        cv2.imwrite(str(root / "test/spot" / f"{i:03d}.png"), image)
        cv2.imwrite(str(root / "ground_truth/spot" / f"{i:03d}_mask.png"), mask)
    return root


def evaluate(model: PaDiM, root: Path) -> dict:
    metrics = evaluate_folder(model, root)
    return {k: float(metrics[k]) for k in METRICS}


def run(root: Path, log, reuse: dict | None = None) -> dict:
    train = root / "train" / "good"
    real = dict(reuse or {})
    for candidate in candidates("efficientnet_lite0", 256):
        if candidate.name in real:
            continue
        started = time.perf_counter()
        model = PaDiM(**candidate.params).fit(train)
        seconds = time.perf_counter() - started
        real[candidate.name] = {**evaluate(model, root), "fit_s": seconds}
        log(f"  {root.name} {candidate.name}: {real[candidate.name]}")
    started = time.perf_counter()
    auto = PaDiM(config="auto").fit(train)
    auto_s = time.perf_counter() - started
    auto_metrics = evaluate(auto, root)
    mean = {name: np.mean([row[k] for k in METRICS]) for name, row in real.items()}
    oracle = max(mean, key=mean.get)
    selection = {row["name"]: row["selection"] for row in auto.auto_table_ if row["selection"] is not None}
    names = [n for n in real if n in selection]
    rho = spearmanr([selection[n] for n in names], [mean[n] for n in names]).statistic if len(names) > 2 else None
    return {"dataset": root.name, "real": real, "oracle": oracle, "auto_choice": auto.auto_choice_,
            "auto": auto_metrics, "auto_fit_s": auto_s, "default_fit_s": real["default"]["fit_s"],
            "selection": selection, "spearman": rho}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", type=Path)
    parser.add_argument("--synthetic", type=Path, default=None, help="write a synthetic dataset here and include it")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the full results")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="an earlier --out file: reuse its per-candidate real metrics, rerun only auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    roots = list(args.datasets) + ([write_synthetic(args.synthetic)] if args.synthetic else [])
    earlier = {r["dataset"]: r["real"] for r in json.loads(args.reuse.read_text())} if args.reuse else {}
    results = [run(root, lambda line: print(line, flush=True), earlier.get(root.name)) for root in roots]
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=float))
    print("\n| dataset | config | image AUROC | pixel AUROC | PRO | fit s |\n|---|---|---|---|---|---|")
    for r in results:
        d, o = r["real"]["default"], r["real"][r["oracle"]]
        print(f"| {r['dataset']} | defaults | {d['image_auroc']:.4f} | {d['pixel_auroc']:.4f} | {d['pro']:.4f} | "
              f"{r['default_fit_s']:.1f} |")
        print(f"| {r['dataset']} | auto → {r['auto_choice']} | " + " | ".join(f"{r['auto'][k]:.4f}" for k in METRICS)
              + f" | {r['auto_fit_s']:.1f} |")
        print(f"| {r['dataset']} | oracle ({r['oracle']}) | " + " | ".join(f"{o[k]:.4f}" for k in METRICS)
              + f" | {o['fit_s']:.1f} |")
    print("\n| dataset | regret (oracle − auto) image / pixel / PRO | auto − defaults | Spearman (synthetic vs real) |"
          "\n|---|---|---|---|")
    for r in results:
        o = r["real"][r["oracle"]]
        regret = " / ".join(f"{o[k] - r['auto'][k]:+.4f}" for k in METRICS)
        gain = " / ".join(f"{r['auto'][k] - r['real']['default'][k]:+.4f}" for k in METRICS)
        rho = "n/a" if r["spearman"] is None else f"{r['spearman']:.2f}"
        print(f"| {r['dataset']} | {regret} | {gain} | {rho} |")


if __name__ == "__main__":
    main()
