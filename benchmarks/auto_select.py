"""Time one auto-configured fit and print its candidate table (trial and fit seconds per candidate).

    python benchmarks/auto_select.py ../shared/data/cookies/train/good [--seed 0] [--budget 4x]

The fit is ``PaDiM(config="auto")`` at the default options otherwise; the table is the one
``padim fit --auto`` prints. Run it under ``py-spy record`` to see where a selection spends its time.
"""

from __future__ import annotations

import argparse
import time

from padim import PaDiM
from padim.autoconfig import format_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", help="a folder of good images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", default="4x")
    args = parser.parse_args()
    model = PaDiM(config="auto", seed=args.seed, budget=args.budget, progress=True)
    t0 = time.perf_counter()
    model.fit(args.images)
    print(f"auto fit {time.perf_counter() - t0:.1f} s, chose {model.auto_choice_}")
    print(format_table(model.auto_table_, model.auto_choice_))


if __name__ == "__main__":
    main()
