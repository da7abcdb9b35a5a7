"""Where a default fit's time and memory go, and what its model file weighs — before/after, interleaved.

Each (configuration, image count, repeat) runs in a fresh subprocess, so peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that fit alone. Configurations run
interleaved (A B A B …), so load from other processes on a shared machine hits them alike.

Configurations (``--configs``):
  current    this checkout (the padim package next to benchmarks/)
  refit      this checkout, held-out folds by refactorising each fold (the same fold model as
             the downdate: the exact reference it must match)
  unbiased   this checkout, fold scatter normalised by n_F − 1 (padim.folds.NORMALISE_BY_FOLD)
  SRC        any other directory holding a padim package, e.g. ``/work/main`` (the code before)

Output: one JSON object per run on stdout (and appended to ``--out`` if given), keys:
  config, images, repeat      what ran
  total_s                     wall time of PaDiM.fit
  features_s                  backbone passes of the fit loop (PaDiM._embed; decoding runs in loader workers)
  sums_s                      GaussianStats.update in the fit loop (Σx, Σxxᵀ)
  finalize_s                  GaussianStats.finalize of the final model (Cholesky + inverse per position)
  calibration_s               held-out folds, all included (re-extraction, fold models or downdates)
  other_s                     the rest: model build, waiting for decoded images, imports inside fit
  calibration_share           calibration_s / (total_s − calibration_s): what calibration adds to a fit
  peak_rss_mb                 peak resident memory of the subprocess (fit, then save)
  model_file_mib              size of the saved model file
  threshold                   the calibrated OK/NG threshold
  held_out_images             how many training images calibration held out (all, or a bounded subset)
  held_out                    the held-out scores (to compare configurations; see --compare)
After all runs, with ``--compare`` (default on), one line per configuration: the largest relative
difference of its held-out scores and of its threshold from the first configuration's.

    python benchmarks/fit_cost.py --data padim/sample_data/cookies_small/train/good --configs /work/main current
    python benchmarks/fit_cost.py --data ../shared/data/bsdata/train/good --sizes 50 209 568 --configs SRC current
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def child(data: str, n: int, threads: int, workers: str, config: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    import padim.model as model_module
    from padim import PaDiM
    from padim.gaussian import GaussianStats
    from padim.io import list_images

    if config == "refit":
        model_module.uses_downdate = lambda fold_count, dim: False
    if config == "unbiased":
        import padim.folds

        padim.folds.NORMALISE_BY_FOLD = True
    spent = {"features_s": 0.0, "sums_s": 0.0, "finalize_s": 0.0, "calibration_s": 0.0}
    depth = [0]

    def timed(owner, name, label):
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):
            top = depth[0] == 0  # nested calls (e.g. finalize inside calibration) count for the outer phase
            depth[0] += 1
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                depth[0] -= 1
                if top:
                    spent[label] += time.perf_counter() - started
        setattr(owner, name, wrapper)

    timed(PaDiM, "_embed", "features_s")
    timed(GaussianStats, "update", "sums_s")
    timed(GaussianStats, "finalize", "finalize_s")
    for name in ("_calibrate", "held_out_scores"):  # the name differs between versions
        if hasattr(PaDiM, name):
            timed(PaDiM, name, "calibration_s")
            break
    files = list_images(data)
    paths = [files[i % len(files)] for i in range(n)]
    model = PaDiM(config="fixed", **({} if workers == "default" else {"workers": workers if workers == "auto" else int(workers)}))
    started = time.perf_counter()
    model.fit(paths)
    total = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        size = model.save(Path(tmp) / "model.padim").stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"config": config, "images": n, "total_s": round(total, 2),
              **{k: round(v, 2) for k, v in spent.items()}}
    result["other_s"] = round(total - sum(spent.values()), 2)
    result["calibration_share"] = round(spent["calibration_s"] / max(1e-9, total - spent["calibration_s"]), 3)
    result.update(peak_rss_mb=round(peak / 2**20), model_file_mib=round(size / 2**20, 1),
                  threshold=None if model.calibrator_ is None else float(model.calibrator_.threshold_),
                  held_out_images=len(getattr(model, "held_out_", None) or []) or None,
                  held_out=None if model.calibration_scores_ is None else
                  [round(float(s), 6) for s in model.calibration_scores_])
    return result


def run_child(args, config: str, n: int, repeat: int) -> dict:
    src = HERE if config in ("current", "refit", "unbiased") else Path(config).resolve()
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [sys.executable, __file__, "--data", args.data, "--threads", str(args.threads),
           "--workers", str(args.workers), "--child", str(n), "--child-config", config]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=src)
    if out.returncode != 0:
        raise SystemExit(f"{config}, {n} images failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["repeat"] = repeat
    return result


def compare(results: list[dict]) -> None:
    import numpy as np

    reference = {}
    for r in results:  # the first run of the first configuration, per image count
        if r["config"] == results[0]["config"] and r["held_out"]:
            reference.setdefault(r["images"], r)
    for r in results:
        ref = reference.get(r["images"])
        if ref is None or not r["held_out"] or r["config"] == ref["config"]:
            continue
        a, b = np.asarray(r["held_out"]), np.asarray(ref["held_out"])
        print(json.dumps({"compare": r["config"], "against": ref["config"], "images": r["images"],
                          "held_out_max_rel_diff": round(float(np.max(np.abs(a / b - 1))), 5),
                          "held_out_median_rel_diff": round(float(np.median(a / b - 1)), 5),
                          "threshold": r["threshold"], "threshold_ref": ref["threshold"],
                          "threshold_rel_diff": round(r["threshold"] / ref["threshold"] - 1, 5)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE / "padim" / "sample_data" / "cookies_small" / "train" / "good"),
                        help="folder of good training images (repeated when --sizes asks for more)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[31], help="numbers of training images")
    parser.add_argument("--configs", nargs="+", default=["current"],
                        help="current, refit, unbiased, or a source directory")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", default="default",
                        help="image-decoding processes: N, auto, or default (each checkout's own default)")
    parser.add_argument("--out", default=None, help="JSON-lines file to append the results to")
    parser.add_argument("--no-compare", action="store_true", help="skip the held-out score comparison")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-config", default="current", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.data, args.child, args.threads, args.workers, args.child_config)))
        return
    args.data = str(Path(args.data).resolve())
    results = []
    for repeat in range(args.repeat):
        for n in args.sizes:
            for config in args.configs:
                result = run_child(args, config, n, repeat)
                results.append(result)
                line = json.dumps({k: v for k, v in result.items() if k != "held_out"})
                print(line, flush=True)
                if args.out:
                    with open(args.out, "a") as handle:
                        handle.write(json.dumps(result) + "\n")
    if not args.no_compare:
        compare(results)


if __name__ == "__main__":
    main()
