#!/usr/bin/env python
"""Split a folder of good images into train and validation parts, reproducibly.

The images (found recursively, sorted by relative path) are shuffled with a seeded NumPy
generator, so a seed always gives the same split of the same files, whatever order the file
system lists them in. round(n × --val-fraction) go to the validation folder, the rest to
train; sub-folders are flattened (two files with the same stem are refused). Files are copied,
symlinked or hard-linked; the input is never modified. ``split.tsv`` records where each went.

    python tools/split_good.py images/good -o data/split --val-fraction 0.2 --seed 0
    padim fit data/split/train/good -o model.padim

``--val-subdir test/good`` puts the validation images where ``padim eval`` reads good test
images, e.g. beside the defects written by ``tools/convert_to_mvtec.py``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from _common import PLACE_MODES, ToolError, check_unique_stems, list_images, place, prepare_output, run_tool

PROG = "split_good.py"


def split_indices(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the validation images among ``n`` (the rest are train)."""
    n_val = int(round(n * val_fraction))
    if n_val >= n:
        raise ToolError(f"--val-fraction {val_fraction} of {n} images leaves none for training")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:n_val])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog="example:\n  python tools/split_good.py images/good -o data/split "
                                       "--val-fraction 0.2 --seed 0",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=Path, help="folder of good images (searched recursively)")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder to write (must be empty)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of images for validation (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    p.add_argument("--mode", choices=PLACE_MODES, default="copy", help="how files are placed (default copy)")
    p.add_argument("--train-subdir", default="train/good", help="train folder inside OUTPUT (default train/good)")
    p.add_argument("--val-subdir", default="val/good", help="validation folder inside OUTPUT (default val/good)")
    p.add_argument("--force", action="store_true", help="write into a non-empty OUTPUT (same names are replaced)")
    return p


def _subdir(text: str, option: str) -> Path:
    sub = Path(text)
    if sub.is_absolute() or ".." in sub.parts or not sub.parts:
        raise ToolError(f"{option} '{text}': expected a relative folder inside OUTPUT")
    return sub


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        raise ToolError(f"--val-fraction {args.val_fraction}: expected a value in [0, 1)")
    train_sub, val_sub = _subdir(args.train_subdir, "--train-subdir"), _subdir(args.val_subdir, "--val-subdir")
    if train_sub == val_sub:
        raise ToolError("--train-subdir and --val-subdir must differ")
    images = list_images(args.input)
    if not images:
        raise ToolError(f"'{args.input}': no images found")
    val = set(split_indices(len(images), args.val_fraction, args.seed).tolist())
    out = args.output
    plan = [(src, out / (val_sub if i in val else train_sub) / src.name, "val" if i in val else "train")
            for i, src in enumerate(images)]
    check_unique_stems([(src, dest) for src, dest, _ in plan])
    out = prepare_output(out, [args.input], args.force)
    for src, dest, _ in plan:
        place(src, dest, args.mode)
    with open(out / "split.tsv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["source", "subset", "output"])
        for src, dest, subset in plan:
            writer.writerow([src.relative_to(args.input).as_posix(), subset, dest.relative_to(args.output).as_posix()])
    n_val = len(val)
    print(f"{len(images) - n_val} train → {out / train_sub}, {n_val} validation → {out / val_sub} "
          f"(seed {args.seed}); list in {out / 'split.tsv'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(PROG, main))
