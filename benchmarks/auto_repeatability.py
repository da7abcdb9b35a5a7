"""Does ``PaDiM().fit`` (auto-configuration at its 4x budget) choose the same configuration when run
again on the same images, with the files in the page cache (warm) or just evicted from it (cold)?

Each run is a fresh interpreter fitting the default ``PaDiM()`` on ``--data``; it prints the
choice, the fit's seconds, the selection's budget and its inputs (the seconds per image that
decoding the selection's files took, the default's trial and the one-fit estimate), and every
candidate's seconds or why it was skipped. A ``cold`` run (``--order``) evicts the folder's files
from the page cache (``posix_fadvise(DONTNEED)``, no root needed) before each run; a ``boot`` run
also the interpreter's environment (torch, the weights) and the checkout, as on a first fit after
a reboot. A ``burst`` run is warm, with a load beside it that now and then takes every core for
0.3 s (after 0.5–1.5 s idle, the same seeded moments in every run), as other processes' slow moments.

    python benchmarks/auto_repeatability.py --data /tmp/bs209 --runs 2 --order warm,cold,warm,cold
    python benchmarks/auto_repeatability.py --data /tmp/bs209 --runs 3 --order warm --before /tmp/before
    python benchmarks/auto_repeatability.py --data /tmp/bs209 --runs 3 --order burst --before /tmp/before

``--before DIR``: each run is made twice, by the padim of the checkout at DIR and then by this one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def evict(folder: Path) -> int:
    """Drop the files under ``folder`` (links followed) from the page cache; how many files."""
    count = 0
    for path in sorted(p for p in folder.rglob("*") if p.resolve().is_file()):
        fd = os.open(path.resolve(), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        count += 1
    return count


BURST = """
import random, time
rng = random.Random(0)
while True:
    time.sleep(rng.uniform(0.5, 1.5))
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        pass
"""


def burst_load(cores: int) -> list:
    """``cores`` processes that take a core each for 0.3 s at the same seeded moments; kill them after."""
    return [subprocess.Popen([sys.executable, "-c", BURST]) for _ in range(cores)]


def warm(folder: Path) -> int:
    """Read ``folder``'s files once so that they sit in the page cache; how many bytes."""
    return sum(path.resolve().read_bytes().__len__() for path in sorted(folder.iterdir()))


def child(data: str, threads: int, budget: str) -> None:
    import torch

    import padim.autoconfig as auto
    from padim import PaDiM

    checkout = Path(os.environ.get("PYTHONPATH", "/")).resolve()
    assert Path(auto.__file__).resolve().is_relative_to(checkout), auto.__file__

    torch.set_num_threads(threads)
    seen: dict = {}
    folds, full_fit, select = auto._folds, auto.estimate_full_fit, auto.select
    trial_estimate = auto.SharedPasses.trial_estimate
    estimates: list = []

    def recording_trial_estimate(self, model, cost, reference):
        out = trial_estimate(self, model, cost, reference)
        estimates.append(round(out, 1))
        return out

    def recording_folds(*args, **kwargs):
        out = folds(*args, **kwargs)
        seen["decode_ms_per_image"] = round(out[3] * 1000, 2)
        return out

    def recording_full_fit(fit_s, per_image_s, n_fit, n_all):
        out = full_fit(fit_s, per_image_s, n_fit, n_all)
        seen.update(default_fold_fit_s=round(fit_s, 2), per_image_ms=round(per_image_s * 1000, 2),
                    one_fit_estimate_s=round(out, 2))
        return out

    def recording_select(*args, **kwargs):
        out = select(*args, **kwargs)
        seen["budget_s"] = round(out.budget_seconds, 1)
        return out

    auto._folds, auto.estimate_full_fit, auto.select = recording_folds, recording_full_fit, recording_select
    auto.SharedPasses.trial_estimate = recording_trial_estimate
    started = time.perf_counter()
    model = PaDiM(device="cpu", threads=threads, budget=budget).fit(data)
    seconds = time.perf_counter() - started
    table = model.auto_table_ or []
    # each candidate after the default: its trial's estimated seconds (before it ran) / its measured ones
    estimated = dict(zip([row["name"] for row in table[1:] if not (row["skipped"] or "").startswith(("you", "aligned"))],
                         estimates))
    rows = {row["name"]: (row["skipped"] or f"{estimated.get(row['name'], '-')} / {row['seconds']:.1f} s")
            for row in table}
    print(json.dumps({"choice": model.auto_choice_, "fit_s": round(seconds, 1), **seen, "candidates": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of good images")
    parser.add_argument("--order", default="warm,cold", help="comma-separated warm/cold/boot/burst, one run each")
    parser.add_argument("--runs", type=int, default=1, help="repeat the order this many times")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", default="4x")
    parser.add_argument("--before", type=Path, default=None, help="another checkout to alternate with")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(str(args.data), args.threads, args.budget)
        return
    trees = {"current": Path(__file__).resolve().parents[1]}
    if args.before is not None:
        trees = {"before": args.before.resolve(), **trees}
    for _ in range(args.runs):
        for state in args.order.split(","):
            for name, tree in trees.items():
                evict(args.data) if state in ("cold", "boot") else warm(args.data)
                if state == "boot":  # the libraries and the weights too, as on a first fit after a reboot
                    evict(Path(sys.prefix))
                    evict(tree)
                env = {**os.environ, "PYTHONPATH": str(tree)}
                load = burst_load(args.threads) if state == "burst" else []
                try:
                    out = subprocess.run([sys.executable, __file__, "--child", "--data", str(args.data), "--threads",
                                          str(args.threads), "--budget", args.budget],
                                         capture_output=True, text=True, check=True, env=env)
                finally:
                    for process in load:
                        process.kill()
                print(json.dumps({"tree": name, "cache": state, **json.loads(out.stdout.strip().splitlines()[-1])}),
                      flush=True)


if __name__ == "__main__":
    main()
