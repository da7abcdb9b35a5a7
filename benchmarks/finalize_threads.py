"""Finalize (per-position Cholesky and inverse) on one thread against chunks in parallel threads.

``GaussianStats.finalize`` holds the batched OpenMP Cholesky to one thread on ≤ 2-core or busy
machines (``gaussian.cholesky_threads``) and instead runs chunks of positions side by side in
``gaussian.finalize_workers`` Python threads. This times both on random statistics shaped like a
256 px default model (P positions, d channels), checks that the whiteners are identical, and
repeats with another process loading one core (``--busy``):

    python benchmarks/finalize_threads.py --positions 4032 --dim 176 --threads 2 [--busy]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import torch

import padim.gaussian as gaussian


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def timed_finalize(stats: gaussian.GaussianStats, workers: int | None) -> tuple[float, torch.Tensor]:
    original = gaussian.finalize_workers
    if workers is not None:
        gaussian.finalize_workers = lambda device: workers
    try:
        started = time.perf_counter()
        model = stats.finalize()
        return time.perf_counter() - started, model.packed
    finally:
        gaussian.finalize_workers = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=4032)
    parser.add_argument("--dim", type=int, default=176)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="also time with a second process spinning on one core")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    stats = gaussian.GaussianStats(args.positions, args.dim)
    for _ in range(4):  # 256 samples, with correlated channels
        x = torch.randn(64, args.dim, args.positions)
        stats.update(x + 0.5 * x.roll(1, dims=1))
    print(f"P={args.positions} d={args.dim} torch threads={args.threads} "
          f"finalize_workers (auto)={gaussian.finalize_workers(torch.device('cpu'))}")
    conditions = [("idle", False)] + ([("one core busy", True)] if args.busy else [])
    for label, busy in conditions:
        spinner = None
        if busy:
            spinner = multiprocessing.Process(target=_spin, args=(3600,), daemon=True)
            spinner.start()
        try:
            for workers, name in ((1, "1 thread (before)"), (None, "auto (after)")):
                times, packed = [], None
                for _ in range(args.repeats):
                    seconds, packed_now = timed_finalize(stats, workers)
                    times.append(seconds)
                    packed = packed_now if packed is None else packed
                if workers == 1:
                    reference = packed
                identical = bool(torch.equal(packed, reference))
                print(f"{label:14s} {name:18s} best {min(times):.2f} s  median {sorted(times)[len(times) // 2]:.2f} s  "
                      f"identical to 1 thread: {identical}")
        finally:
            if spinner is not None:
                spinner.terminate()


if __name__ == "__main__":
    main()
