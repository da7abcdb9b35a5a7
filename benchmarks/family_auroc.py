"""Synthetic image AUROC per defect family and scale, beside the real test defects' image AUROC.

    python benchmarks/family_auroc.py ../shared/data/cookies default,shared,cells,deep

Each candidate (auto-configuration's, by name) is fitted on all training images without
calibration; the test set's good images are scored, and synthetic defects made from those same
good images as the selection makes them (autoconfig.synthetic_validation: every family at scales
1.0 and 0.3, three seeds) are scored against
them. Shows which defect families decide the synthetic ranking of candidates and whether they
agree with the real defects (RESULTS.md §24).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from padim import PaDiM
from padim.autoconfig import candidates
from padim.validation import DEFECT_SCALES, defect_auroc, synthetic_validation, validation_arrays


def candidate_options(backbone: str = "efficientnet_lite0", image_size: int = 256) -> dict[str, dict]:
    """Auto-configuration's candidates' parameters by name (padim.autoconfig.candidates), for the
    benchmarks that fit named candidates with ``config="fixed"``."""
    return {c.name: c.params for c in candidates(backbone, image_size)}


def dataset_split(root: Path) -> tuple[dict, list[Path], list[np.ndarray], list[np.ndarray]]:
    """Auto-configuration's candidate parameters by name, a dataset's training files, and its test
    set's good and defect images as the selection reads images (8-bit, at most 512 px)."""
    options = candidate_options()
    train = sorted((root / "train" / "good").iterdir())
    good = validation_arrays(sorted((root / "test" / "good").iterdir()))
    real = validation_arrays([p for kind in sorted((root / "test").iterdir()) if kind.name != "good"
                               for p in sorted(kind.iterdir())])
    return options, train, good, real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a dataset in MVTec AD layout")
    parser.add_argument("names", help="comma-separated candidate names (padim.autoconfig.candidates)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    options, train, good, real = dataset_split(args.root)
    synthetic: dict[tuple, list] = {}  # (family, scale) → defect images, as the selection makes them
    for seed in range(args.seeds):
        for scale, defects in zip(DEFECT_SCALES, synthetic_validation(good, seed)):
            for image, family in zip(defects.images, defects.families):
                synthetic.setdefault((family, scale), []).append(image)
    keys = sorted(synthetic)
    print("| candidate | real | " + " | ".join(f"{f} {s}" for f, s in keys) + " |")
    print("|---" * (len(keys) + 2) + "|")
    for name in args.names.split(","):
        model = PaDiM(progress=False, config="fixed", **options[name]).fit(train, calibrate=False)

        def scores(images):
            return np.array([r.score for r in model.iter_results(images, maps=False)])

        good_scores = scores(good)
        cells = [defect_auroc(good_scores, scores(real))] + [defect_auroc(good_scores, scores(synthetic[k]))
                                                              for k in keys]
        print(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
