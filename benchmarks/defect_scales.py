"""Which synthetic defect sizes rank auto-configuration's candidates as the real defects do.

For each MVTec-layout dataset: every candidate of ``padim.autoconfig`` is fitted once on auto's
selection split (seed 0) and validated on its held-out good images with synthetic defects made
at each extent in ``--scales`` (``padim.synthetic``'s ``scale``; one defect per image, two seeds
per scale). Each combination of scales (metrics averaged per scale, as ``padim.validation.validate``
does) then gives a choice, whose regret against the real oracle and Spearman correlation with
the real ranking are printed. The real per-candidate metrics come from an ``--out`` file of
``benchmarks/auto_config.py``:

    python benchmarks/auto_config.py ../shared/data/cookies ../shared/data/bsdata /tmp/padim_synth --out auto.json
    python benchmarks/defect_scales.py ../shared/data/cookies ../shared/data/bsdata /tmp/padim_synth --real auto.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from padim import PaDiM
from padim import autoconfig as ac
from padim import validation

METRICS = ("image_auroc", "pixel_auroc", "pro")


def per_scale_selection(root: Path, scales, seeds=(0, 1)) -> dict:
    """{candidate: {(scale, seed): validation metrics}} on the first fold of auto's seed-0 folds of ``root``."""
    sources = sorted((root / "train" / "good").iterdir())
    val_idx, fit_idx = ac.selection_folds(len(sources), seed=0)[0]
    fit_sources = [sources[i] for i in fit_idx]
    goods = validation.validation_arrays([sources[i] for i in val_idx])
    sets = {(s, seed): validation.synthetic_validation(goods, seed, (s,)) for s in scales for seed in seeds}
    base = PaDiM().get_params()
    base.update(config="fixed", progress=False)
    out = {}
    for candidate in ac.candidates(base["backbone"], base["image_size"]):
        model = PaDiM(**{**base, **candidate.params}).fit(fit_sources, calibrate=False)
        out[candidate.name] = {key: validation.validate(model, goods, defect_sets) for key, defect_sets in sets.items()}
        print(f"  {root.name} {candidate.name}: " + " ".join(
            f"{s}/{seed}={v['selection']:.3f}" for (s, seed), v in out[candidate.name].items()), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--real", type=Path, required=True, help="an --out file of benchmarks/auto_config.py")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 0.3, 0.2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    real = {r["dataset"]: r["real"] for r in json.loads(args.real.read_text())}
    combos = [c for k in (1, 2, 3) for c in itertools.combinations(args.scales, k)]
    print("| dataset | scales | choice | regret (oracle − choice, mean of 3) | choice − defaults | Spearman |\n"
          "|---|---|---|---|---|---|")
    for root in args.datasets:
        rows = per_scale_selection(root, args.scales)
        mean = {n: float(np.mean([real[root.name][n][k] for k in METRICS])) for n in rows}
        oracle = max(mean, key=mean.get)
        for combo in combos:
            selection = {n: np.mean([rows[n][(s, seed)]["selection"] for s in combo for seed in (0, 1)]) for n in rows}
            choice = max(selection, key=selection.get)
            rho = spearmanr(list(selection.values()), [mean[n] for n in selection]).statistic
            print(f"| {root.name} | {', '.join(map(str, combo))} | {choice} | {mean[oracle] - mean[choice]:.4f} | "
                  f"{mean[choice] - mean['default']:+.4f} | {rho:.2f} |", flush=True)


if __name__ == "__main__":
    main()
