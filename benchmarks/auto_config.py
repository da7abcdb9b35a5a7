"""Auto-configuration against the defaults and the oracle, and how far the synthetic ranking agrees with the real one.

For each MVTec-layout dataset: every candidate of padim.autoconfig is fitted on the whole
training set and evaluated on the real test set (image AUROC, pixel AUROC, PRO at full
resolution, as ``padim eval``); the oracle is the candidate best on the real defects (mean of the
three). Then ``PaDiM(config="auto")`` is fitted and timed against a default fit: its choice, the
regret (oracle − auto, per metric), and the Spearman rank correlation between the candidates'
selection scores (synthetic defects on held-out good images) and their real mean metric.

    python benchmarks/auto_config.py ../shared/data/cookies ../shared/data/bsdata --synthetic /tmp/padim_synth \
        --seeds 0 1 --ensembles --out auto.json [--budget 16x] [--reuse auto.json]

``--ensembles`` also fits auto's best two and three candidates (by its selection score) and
evaluates the mean of their scores and maps, each normalised by its held-out good image scores
(z-scores of ``calibration_scores_``): issue 9's ensemble, measured before it is built.

``--val-defects DIR`` gives auto, for each dataset, the labelled defect images in DIR/<dataset
name> (masks beside them as NAME_mask.png) to validate on beside the synthetic ones; they must not
be the test set's images.

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
from family_auroc import candidate_options
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


def normalised_outputs(model: PaDiM, data, max_side: int = 2048) -> tuple[np.ndarray, list[np.ndarray]]:
    """Image scores and maps of ``model`` on a labelled set, as z-scores of its held-out good
    image scores (``calibration_scores_``: the k-fold scores of the training images)."""
    good = np.asarray(model.calibration_scores_, dtype=np.float64)
    mu, sigma = float(good.mean()), float(good.std()) or 1.0
    scores, maps = [], []
    for result in model.iter_results(data.paths, maps=True):
        amap = result.anomaly_map
        h, w = amap.shape
        factor = min(1.0, max_side / max(h, w))
        if factor < 1:
            amap = cv2.resize(amap, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
        scores.append((result.score - mu) / sigma)
        maps.append(((amap - mu) / sigma).astype(np.float32))
    return np.array(scores), maps


def ensemble_metrics(models: list[PaDiM], root: Path) -> dict:
    """Test metrics of the mean of the members' normalised scores and maps (issue 9, item 4)."""
    from padim.metrics import evaluate as evaluate_metrics
    from padim.mvtec import load_mask, read_labelled_set

    data = read_labelled_set(root)
    outputs = [normalised_outputs(m, data) for m in models]
    scores = np.mean([o[0] for o in outputs], axis=0)
    maps = [np.mean([o[1][i] for o in outputs], axis=0) for i in range(len(data.paths))]
    masks = [None if (y == 1 and p is None) else load_mask(p, a.shape)
             for y, p, a in zip(data.labels, data.mask_paths, maps)]
    metrics = evaluate_metrics(data.labels, scores, masks, maps)
    return {k: float(metrics[k]) for k in METRICS}


def run_ensembles(root: Path, ranking: list[str], log, sizes=(2, 3)) -> dict:
    """The best 2 and 3 candidates by auto's selection score, fitted on all training images and
    combined by :func:`ensemble_metrics`."""
    params = candidate_options()
    models = []
    out = {}
    for name in ranking[:max(sizes)]:
        models.append(PaDiM(config="fixed", **params[name]).fit(root / "train" / "good"))
        if len(models) in sizes:
            key = "+".join(ranking[:len(models)])
            out[key] = ensemble_metrics(models, root)
            log(f"  {root.name} ensemble {key}: {out[key]}")
    return out


def run(root: Path, log, reuse: dict | None = None, ensembles: bool = False, seeds=(0,), budget: str = "4x",
        val_defects: Path | None = None) -> dict:
    train = root / "train" / "good"
    real = dict(reuse or {})
    for candidate in candidates("efficientnet_lite0", 256):
        if candidate.name in real:
            continue
        started = time.perf_counter()
        model = PaDiM(config="fixed", **candidate.params).fit(train)
        seconds = time.perf_counter() - started
        real[candidate.name] = {**evaluate(model, root), "fit_s": seconds}
        log(f"  {root.name} {candidate.name}: {real[candidate.name]}")
    mean = {name: np.mean([row[k] for k in METRICS]) for name, row in real.items()}
    oracle = max(mean, key=mean.get)
    runs = []
    for seed in seeds:
        started = time.perf_counter()
        auto = PaDiM(config="auto", seed=seed, budget=budget, val_defects=val_defects).fit(train)
        auto_s = time.perf_counter() - started
        selection = {row["name"]: row["selection"] for row in auto.auto_table_ if row["selection"] is not None}
        names = [n for n in real if n in selection]
        rho = spearmanr([selection[n] for n in names], [mean[n] for n in names]).statistic if len(names) > 2 else None
        runs.append({"seed": seed, "budget": budget + (" + val-defects" if val_defects else ""),
                     "choice": auto.auto_choice_, "metrics": evaluate(auto, root), "fit_s": auto_s,
                     "selection": selection, "spearman": rho, "table": auto.auto_table_})
        log(f"  {root.name} auto seed {seed}: {runs[-1]}")
    ranking = sorted(runs[0]["selection"], key=runs[0]["selection"].get, reverse=True)
    return {"dataset": root.name, "real": real, "oracle": oracle, "default_fit_s": real["default"]["fit_s"],
            "auto_runs": runs,
            "ensembles": run_ensembles(root, ranking, log) if ensembles and len(ranking) > 1 else {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", type=Path)
    parser.add_argument("--synthetic", type=Path, default=None, help="write a synthetic dataset here and include it")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the full results")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="an earlier --out file: reuse its per-candidate real metrics, rerun only auto")
    parser.add_argument("--budget", default="4x", help="auto's budget (default: PaDiM's default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="auto's seed (its split and synthetic defects)")
    parser.add_argument("--val-defects", type=Path, default=None,
                        help="a folder with one sub-folder per dataset (by its name) of labelled defect images that "
                             "auto's selection also validates on (PaDiM(val_defects=...)); keep them out of the test set")
    parser.add_argument("--ensembles", action="store_true",
                        help="also evaluate ensembles of auto's best 2 and 3 candidates (maps normalised by held-out good scores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    roots = list(args.datasets) + ([write_synthetic(args.synthetic)] if args.synthetic else [])
    earlier = {r["dataset"]: r["real"] for r in json.loads(args.reuse.read_text())} if args.reuse else {}
    results = []
    for root in roots:
        val_defects = args.val_defects / root.name if args.val_defects else None
        results.append(run(root, lambda line: print(line, flush=True), earlier.get(root.name), args.ensembles, args.seeds,
                           args.budget, val_defects))
        if args.out:  # after each dataset, so that a later failure loses nothing
            args.out.write_text(json.dumps(results, indent=1, default=float))
    print("\n| dataset | config | image AUROC | pixel AUROC | PRO | fit s |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['dataset']} | defaults | " + " | ".join(f"{r['real']['default'][k]:.4f}" for k in METRICS)
              + f" | {r['default_fit_s']:.1f} |")
        for a in r["auto_runs"]:
            print(f"| {r['dataset']} | auto (seed {a['seed']}, {a['budget']}) → {a['choice']} | "
                  + " | ".join(f"{a['metrics'][k]:.4f}" for k in METRICS) + f" | {a['fit_s']:.1f} |")
        o = r["real"][r["oracle"]]
        print(f"| {r['dataset']} | oracle ({r['oracle']}) | " + " | ".join(f"{o[k]:.4f}" for k in METRICS)
              + f" | {o['fit_s']:.1f} |")
    print("\n| dataset | seed | regret (oracle − auto) image / pixel / PRO | auto − defaults | Spearman (synthetic vs real) |"
          "\n|---|---|---|---|---|")
    for r in results:
        o = r["real"][r["oracle"]]
        for a in r["auto_runs"]:
            regret = " / ".join(f"{o[k] - a['metrics'][k]:+.4f}" for k in METRICS)
            gain = " / ".join(f"{a['metrics'][k] - r['real']['default'][k]:+.4f}" for k in METRICS)
            rho = "n/a" if a["spearman"] is None else f"{a['spearman']:.2f}"
            print(f"| {r['dataset']} | {a['seed']} | {regret} | {gain} | {rho} |")
    if any(r["ensembles"] for r in results):
        print("\n| dataset | ensemble | image AUROC | pixel AUROC | PRO | − best member alone |\n|---|---|---|---|---|---|")
        for r in results:
            for key, m in r["ensembles"].items():
                members = key.split("+")
                best = max(members, key=lambda n: np.mean([r["real"][n][k] for k in METRICS]))
                gain = " / ".join(f"{m[k] - r['real'][best][k]:+.4f}" for k in METRICS)
                print(f"| {r['dataset']} | {key} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + f" | {gain} ({best}) |")


if __name__ == "__main__":
    main()
