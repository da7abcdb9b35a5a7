"""How steady is the budget's unit of ``PaDiM().fit`` (auto-configuration), and what do its warm-ups cost?

Fits the default ``PaDiM()`` once on ``--data`` at a 1x budget (only the default candidate's
trial runs) in this interpreter, and prints: the first backbone forwards and the first
``GaussianStats.finalize`` calls with their seconds (the first of each is the warm-up made
before the unit is timed), and ``--repeats`` timings of the unit's sampled factorisations
(``SharedPasses._plain_fit_seconds``) on the same features, one after the other: each repeat
gives the quickest of ``TIMING_REPEATS`` timings (as the fit does) and a single timing (as before
the repeats), back to back. ``--bursts`` runs a load beside them that now and then takes every core
for 0.3 s (after 0.5–1.5 s idle, seeded), as another process's slow moment would. ``--evict``
first drops this interpreter's environment (torch, the weights), the checkout and the images from
the page cache (``posix_fadvise(DONTNEED)``), as on a first fit after a reboot.

    python benchmarks/auto_unit_timing.py --data /tmp/bs209 --repeats 6
    python benchmarks/auto_unit_timing.py --data /tmp/bs209 --repeats 12 --bursts
    python benchmarks/auto_unit_timing.py --data /tmp/bs209 --evict
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from auto_repeatability import burst_load, evict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of good images")
    parser.add_argument("--repeats", type=int, default=1, help="timings of the unit's sampled factorisations")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--evict", action="store_true", help="start from an evicted page cache")
    parser.add_argument("--bursts", action="store_true", help="a bursty load on every core beside the timings")
    args = parser.parse_args()
    if args.evict:
        for folder in (Path(sys.prefix), Path(__file__).resolve().parents[1], args.data):
            evict(folder)

    import torch

    import padim.gaussian as gaussian
    import padim.net as net
    import padim.shared_passes as passes
    from padim import PaDiM

    torch.set_num_threads(args.threads)
    calls: dict = {"forward": [], "finalize": []}
    forward, finalize = net.Embedder.feature_maps, gaussian.GaussianStats.finalize
    plain_fit_seconds = passes.SharedPasses._plain_fit_seconds
    repeats = passes.TIMING_REPEATS
    unit_timings: dict = {f"quickest_of_{repeats}": [], "single": []}

    def timed_forward(self, images, clock=None):
        t0 = time.perf_counter()
        out = forward(self, images, clock)
        calls["forward"].append((len(images), round(time.perf_counter() - t0, 3)))
        return out

    def timed_finalize(self, *a, **k):
        t0 = time.perf_counter()
        out = finalize(self, *a, **k)
        calls["finalize"].append((self.num_positions, round(time.perf_counter() - t0, 3)))
        return out

    def repeated_unit(model, embeddings):
        load = burst_load(args.threads) if args.bursts else []
        try:
            for _ in range(args.repeats):
                for n, name in ((repeats, f"quickest_of_{repeats}"), (1, "single")):
                    passes.TIMING_REPEATS = n
                    unit_timings[name].append(round(plain_fit_seconds(model, embeddings), 2))
        finally:
            passes.TIMING_REPEATS = repeats
            for process in load:
                process.kill()
        return unit_timings[f"quickest_of_{repeats}"][0]

    net.Embedder.feature_maps, gaussian.GaussianStats.finalize = timed_forward, timed_finalize
    passes.SharedPasses._plain_fit_seconds = staticmethod(repeated_unit)
    started = time.perf_counter()
    PaDiM(device="cpu", threads=args.threads, budget="1x", progress=False).fit(args.data)
    print(json.dumps({"fit_s": round(time.perf_counter() - started, 1),
                      "first_forwards (images, s)": calls["forward"][:3],
                      "first_finalizes (Gaussians, s)": calls["finalize"][:3],
                      "unit_factorisations_s": unit_timings}))


if __name__ == "__main__":
    main()
