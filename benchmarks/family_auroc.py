"""Synthetic image AUROC per defect family and scale, beside the real test defects' image AUROC.

    python benchmarks/family_auroc.py ../shared/data/cookies default,shared,cells,deep

Each candidate (auto-configuration's, by name) is fitted on all training images without
calibration; the test set's good images are scored, and synthetic defects made from those same
good images (padim.synthetic, every family at scales 1.0 and 0.3, three seeds) are scored against
them. Shows which defect families decide the synthetic ranking of candidates and whether they
agree with the real defects (RESULTS.md §24).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from padim import PaDiM
from padim.autoconfig import DEFECT_SCALES, _as_uint8, _validation_arrays, candidates
from padim.metrics import image_auroc
from padim.synthetic import make_defects


def auroc(good: np.ndarray, defects: np.ndarray) -> float:
    return image_auroc(np.r_[np.zeros(len(good)), np.ones(len(defects))], np.r_[good, defects])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a dataset in MVTec AD layout")
    parser.add_argument("names", help="comma-separated candidate names (padim.autoconfig.candidates)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    options = {c.name: c.params for c in candidates("efficientnet_lite0", 256)}
    train = sorted((args.root / "train" / "good").iterdir())
    good = _validation_arrays(sorted((args.root / "test" / "good").iterdir()))
    real = _validation_arrays([p for kind in sorted((args.root / "test").iterdir()) if kind.name != "good"
                               for p in sorted(kind.iterdir())])
    floats = [g.astype(np.float32) / 255 for g in good]
    synthetic: dict[tuple, list] = {}
    for scale in DEFECT_SCALES:
        for seed in range(args.seeds):
            for defect in make_defects(floats, seed=seed, scales=(scale,)):
                synthetic.setdefault((defect.family, scale), []).append(_as_uint8(defect.image))
    keys = sorted(synthetic)
    print("| candidate | real | " + " | ".join(f"{f} {s}" for f, s in keys) + " |")
    print("|---" * (len(keys) + 2) + "|")
    for name in args.names.split(","):
        model = PaDiM(progress=False, **options[name]).fit(train, calibrate=False)

        def scores(images):
            return np.array([r.score for r in model.iter_results(images, maps=False)])

        good_scores = scores(good)
        cells = [auroc(good_scores, scores(real))] + [auroc(good_scores, scores(synthetic[k])) for k in keys]
        print(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
