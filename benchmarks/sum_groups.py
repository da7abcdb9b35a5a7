"""Cost of the sums (Σx, Σxxᵀ) per sample against the grouped-update size and the number of Gaussians.

An update pays a part per position whatever its number of samples S (each position's d×d
product is packed, widened and added once) and a part that grows with S (the d×d×S product).
This asks whether gathering more samples per update, ``min(d, SUM_GROUP_BYTES / (2·d·P))``,
would make the sums cheaper per sample: it times feeding ``--samples`` float16 samples through
``GroupedUpdates`` for each group size and number of Gaussians P (RESULTS.md §20: it does not
at P = 4000; the product dominates there):

    python benchmarks/sum_groups.py --positions 4000 9120 --group-mib 128 256 512 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from padim.gaussian import GaussianStats, GroupedUpdates, group_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, nargs="+", default=[4000, 9120])
    parser.add_argument("--dim", type=int, default=176)
    parser.add_argument("--samples", type=int, default=352, help="samples fed (a multiple of 16: batches of 16)")
    parser.add_argument("--group-mib", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("| P | group MiB | samples per update | updates | seconds | ms per sample |\n|---|---|---|---|---|---|")
    for positions in args.positions:
        batches = [torch.randn(16, args.dim, positions).half() for _ in range(args.samples // 16)]
        for mib in args.group_mib:
            group_bytes = mib * 2**20
            per_update = group_rows(args.dim, 2 * args.dim * positions, group_bytes)
            stats = GaussianStats(positions, args.dim)
            grouped = GroupedUpdates(stats, group_bytes)
            started = time.perf_counter()
            for batch in batches:
                grouped.add(batch)
            grouped.close()
            seconds = time.perf_counter() - started
            updates = -(-len(batches) * 16 // per_update)
            print(f"| {positions} | {mib} | {per_update} | {updates} | {seconds:.2f} | {1000 * seconds / args.samples:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
