"""The good images' position spread (padim.alignment) at the default configuration: how aligned
the shared datasets are, against randomly shifted textures (RESULTS.md §25).

    python benchmarks/position_spread.py ../shared/data/cookies ../shared/data/bsdata /tmp/padim_synth --textures

For each dataset, its training good images (a seeded random subset of at most 60, the selection's
limit, though not the selection's own subset;
``--test`` for the test set's good images instead) are passed through the default model's
backbone and the spread of one shared Gaussian ("image") and of 4×4 cells is printed. With
``--textures``, the same for randomly shifted textures (tests/test_autoconfig.py's) at several
sizes, periods and image counts: unaligned by construction.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from padim import PaDiM
from padim.alignment import position_spread
from padim.autoconfig import MAX_SELECTION_IMAGES
from padim.validation import validation_arrays
from padim.feature_bank import FeatureBank

TEXTURES = ((128, 4, 16, 0), (64, 12, 16, 0), (128, 4, 32, 0), (64, 12, 8, 1), (128, 8, 16, 2), (256, 6, 16, 3),
            (64, 4, 32, 4))  # input size, texture cells per period, images, seed


def spreads(files: list, **params) -> tuple[int, tuple, float, float]:
    model = PaDiM(progress=False, config="fixed", **params)
    model._prepare_fit(files)
    arrays = validation_arrays(files)
    model.value_range_, model.value_kind_ = model._decide_value_range(arrays)
    bank = FeatureBank(model, model.layers_, arrays)

    def embeddings():
        return (e for _, e in bank.embeddings(model, list(range(len(arrays))), 8))

    return len(arrays), tuple(model.feature_size_), position_spread(embeddings(), "image"), position_spread(embeddings(), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", type=Path, help="datasets in MVTec AD layout")
    parser.add_argument("--test", action="store_true", help="the test set's good images instead of the training ones")
    parser.add_argument("--textures", action="store_true", help="also randomly shifted textures")
    args = parser.parse_args()
    print("| images | n | feature grid | spread, one Gaussian | spread, 4×4 cells |")
    print("|---|---|---|---|---|")
    for root in args.datasets:
        files = sorted((root / ("test" if args.test else "train") / "good").iterdir())
        if len(files) > MAX_SELECTION_IMAGES:
            keep = np.random.default_rng(0).choice(len(files), MAX_SELECTION_IMAGES, replace=False)
            files = [files[i] for i in sorted(keep)]
        n, grid, image, cells = spreads(files)
        print(f"| {root.name} {'test' if args.test else 'train'} | {n} | {grid[0]}×{grid[1]} | {image:.2f} | {cells:.2f} |",
              flush=True)
    if args.textures:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from test_autoconfig import shifted_texture_folder

        for size, cells_per_period, n, seed in TEXTURES:
            root = shifted_texture_folder(Path(tempfile.mkdtemp()) / "good", n=n, seed=seed, size=size,
                                          cells=cells_per_period)
            n, grid, image, cells = spreads(sorted(root.iterdir()), image_size=size, d=0)
            print(f"| texture {size} px, {cells_per_period} cells, seed {seed} | {n} | {grid[0]}×{grid[1]} | "
                  f"{image:.2f} | {cells:.2f} |", flush=True)


if __name__ == "__main__":
    main()
