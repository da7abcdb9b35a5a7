"""Fit and score with 1 process vs 2 torchrun processes (gloo, CPU), and a model of 8–64 nodes.

    python benchmarks/distributed.py [--data /work/shared/data/bsdata] [--images 209] [--nproc 2]

Times the CLI (model defaults: Lite0, 256 px) on the first ``--images`` sorted good training
images, linked into a temporary folder: ``padim fit`` and ``padim score`` of the same images,
once as one process, once under ``torchrun --nproc-per-node N`` with the cores split between the
ranks. Then models a cluster of N nodes on a 10 Gbit/s network:

    fit(N)   = fit(1)/N + ring all-reduce of the sums, 2(N − 1)/N × bytes / bandwidth
             + the gather of the held-out embeddings (≤ 160 MiB in all, received by every rank)
    score(N) = score(1)/N

(per-node compute = the one-node time / N, which ignores start-up and the serial finalize and
calibration each rank repeats: an optimistic model of the compute, a fair one of the traffic).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BANDWIDTH = 10e9 / 8  # bytes/s of 10 Gbit/s
HELD_OUT_BYTES = 160 * 2**20  # padim.memory.FIT_CACHE_MAX_BYTES


def run(command: list[str], threads: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def padim(nproc: int, args: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "padim", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "-m", "padim", *args]


def sums_bytes(model_path: Path) -> tuple[int, int, int]:
    """(P, d, bytes of one all-reduce): count, Σx and packed Σxxᵀ in float64."""
    from padim import PaDiM

    model = PaDiM.load(model_path, device="cpu")
    p, d = model.n_gaussians_, model.n_features_
    return p, d, 8 * (p * d * (d + 1) // 2 + p * d + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/bsdata")
    parser.add_argument("--images", type=int, default=209)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    good = sorted(p for p in (Path(args.data) / "train" / "good").iterdir() if p.is_file())[:args.images]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = tmp / "train"
        train.mkdir()
        for path in good:
            (train / path.name).symlink_to(path)
        times = {}
        for nproc in (1, args.nproc):
            threads = max(1, cores // nproc)
            common = ["--workers", "0", "--threads", str(threads), "--quiet"]
            model = tmp / f"model{nproc}.padim"
            times[("fit", nproc)] = run(padim(nproc, ["fit", str(train), "-o", str(model), *common]), threads)
            times[("score", nproc)] = run(padim(nproc, ["score", str(tmp / "model1.padim"), str(train), "-o",
                                                         str(tmp / f"scores{nproc}.tsv"), *common]), threads)
        p, d, volume = sums_bytes(tmp / "model1.padim")
    print(f"{len(good)} images of {args.data}, {cores} cores (a busy shared machine)")
    print(f"model: P = {p} Gaussians, d = {d}: one all-reduce = {volume / 2**20:.0f} MiB "
          f"(P·(d(d+1)/2 + d) + 1 float64)")
    print()
    print("| processes | fit (s) | score (s) |")
    print("|---|---|---|")
    for nproc in (1, args.nproc):
        print(f"| {nproc} | {times[('fit', nproc)]:.1f} | {times[('score', nproc)]:.1f} |")
    print()
    fit1, score1 = times[("fit", 1)], times[("score", 1)]
    print(f"model of N nodes on 10 Gbit/s (ring all-reduce of {volume / 2**20:.0f} MiB, "
          f"+ ≤ {HELD_OUT_BYTES / 2**20:.0f} MiB held-out embeddings gathered; compute = 1 node / N):")
    print()
    print("| nodes | all-reduce (s) | fit (s) | score (s) |")
    print("|---|---|---|---|")
    for n in (1, 8, 16, 32, 64):
        reduce = 2 * (n - 1) / n * volume / BANDWIDTH if n > 1 else 0.0
        gather = HELD_OUT_BYTES / BANDWIDTH if n > 1 else 0.0
        print(f"| {n} | {reduce:.2f} | {fit1 / n + reduce + gather:.2f} | {score1 / n:.2f} |")


if __name__ == "__main__":
    main()
