"""What the whole-image check adds to scoring: ``padim.net.image_scores`` with and without a rule
on a batch of maps (the rule costs one mean and a select per map).

    python benchmarks/whole_image_cost.py --batch 16 --size 576 768 --repeat 50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from padim.net import image_scores  # noqa: E402
from padim.whole_image import WholeImageRule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(576, 768), metavar=("H", "W"))
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    maps = torch.rand(args.batch, *args.size)
    rule = WholeImageRule(gate=0.5, base=1.0, slope=2.0)
    for _ in range(2):  # alternating rounds: the second shows the spread
        for name, r in (("maximum only", None), ("with the rule", rule)):
            started = time.perf_counter()
            for _ in range(args.repeat):
                image_scores(maps, r)
            per_map = (time.perf_counter() - started) / args.repeat / args.batch
            print(f"{name}: {per_map * 1e3:.3f} ms per {args.size[0]}×{args.size[1]} map")


if __name__ == "__main__":
    main()
