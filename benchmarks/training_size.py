"""Does a candidate's real and synthetic image AUROC depend on how many good images it is fitted on?
(RESULTS.md §25: whether the folds' smaller fits explain the selection's preference.)

    python benchmarks/training_size.py ../shared/data/cookies default,shared 12,23,31

Each candidate (auto-configuration's, by name) is fitted without calibration on seeded random
subsets of the training images (three per size below all of them); the test set's good images are
scored against its real defects and against synthetic defects made from them (two seeds, as the
selection makes them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from padim import PaDiM
from padim.validation import defect_auroc, synthetic_validation

from family_auroc import dataset_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a dataset in MVTec AD layout")
    parser.add_argument("names", help="comma-separated candidate names (padim.autoconfig.candidates)")
    parser.add_argument("sizes", help="comma-separated numbers of training images")
    args = parser.parse_args()
    options, train, good, real = dataset_split(args.root)
    synthetic = [image for seed in range(2) for defects in synthetic_validation(good, seed) for image in defects.images]
    print("| candidate | training images | real image AUROC (per subset) | synthetic image AUROC |")
    print("|---|---|---|---|")
    for name in args.names.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            reals, synths = [], []
            for rep in range(3 if n < len(train) else 1):
                subset = sorted(np.random.default_rng(rep).choice(len(train), n, replace=False))
                model = PaDiM(progress=False, config="fixed", **options[name]).fit([train[i] for i in subset], calibrate=False)

                def scores(images):
                    return np.array([r.score for r in model.iter_results(images, maps=False)])

                good_scores = scores(good)
                reals.append(defect_auroc(good_scores, scores(real)))
                synths.append(defect_auroc(good_scores, scores(synthetic)))
            print(f"| {name} | {n} | {np.mean(reals):.3f} ({' '.join(f'{x:.3f}' for x in reals)}) | "
                  f"{np.mean(synths):.3f} |", flush=True)


if __name__ == "__main__":
    main()
