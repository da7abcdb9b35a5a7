"""Pixel AUROC per defect type, for a few of auto-configuration's candidates: which kind of defect a
configuration gains or loses on.

    python benchmarks/per_defect_type.py /tmp/textures/tile default,larger,cells

Each candidate (padim.autoconfig.candidates, by name) is fitted with ``config="fixed"`` on
``train/good``; every test image's anomaly map is made at its original size. For each defect type,
the pixel AUROC of that type's masked pixels against every pixel of the good test images (both
subsampled by ``--step`` in each direction, 4 by default, to keep it quick; the masks and maps are
full resolution), with scikit-learn's ``roc_auc_score``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from family_auroc import candidate_options
from padim import PaDiM
from padim.mvtec import load_mask, read_labelled_set


def per_type_auroc(maps: list[np.ndarray], data, step: int) -> dict[str, float]:
    good = np.concatenate([m[::step, ::step].ravel() for m, y in zip(maps, data.labels) if y == 0])
    out = {}
    for kind in sorted(set(data.defect_types) - {"good"}):
        values, labels = [good], [np.zeros(good.size)]
        for m, t, mask_path in zip(maps, data.defect_types, data.mask_paths):
            if t == kind and mask_path is not None:
                values.append(m[::step, ::step].ravel())
                labels.append((load_mask(mask_path, m.shape)[::step, ::step] > 0).ravel().astype(float))
        out[kind] = float(roc_auc_score(np.concatenate(labels), np.concatenate(values)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a dataset in MVTec AD layout")
    parser.add_argument("names", help="comma-separated candidate names, e.g. default,larger,cells")
    parser.add_argument("--step", type=int, default=4, help="pixel subsampling in each direction")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = candidate_options()
    data = read_labelled_set(args.root)
    kinds = sorted(set(data.defect_types) - {"good"})
    print(f"| candidate | {' | '.join(kinds)} |\n|---|{'---|' * len(kinds)}")
    for name in args.names.split(","):
        model = PaDiM(config="fixed", **options[name]).fit(str(args.root / "train" / "good"))
        scores = per_type_auroc(model.anomaly_maps([str(p) for p in data.paths]), data, args.step)
        print(f"| {name} | {' | '.join(f'{scores[k]:.3f}' for k in kinds)} |", flush=True)


if __name__ == "__main__":
    main()
