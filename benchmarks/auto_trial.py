"""What the auto-configuration's trials cost — this tree against another, interleaved.

Each run fits ``PaDiM(config="auto")`` on a folder of good images in a fresh interpreter (one
tree's padim package on ``sys.path``) and reports the whole fit's seconds, the default
candidate's trial (the budget's unit is measured there, so the other candidates' trials are
what the budget buys), which candidates ran, and the choice. Trees alternate (A B A B …) so that
load from other processes hits them alike.

    python benchmarks/auto_trial.py /tmp/padim_synth/train/good --before /tmp/before --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
sys.path.insert(0, {tree!r})
import torch
torch.set_num_threads({threads})
from pathlib import Path
from padim import PaDiM
files = sorted(p for p in Path({folder!r}).iterdir() if p.is_file())
model = PaDiM(config="auto", seed={seed}, budget={budget!r}, progress=False)
started = time.perf_counter()
model.fit(files)
total = time.perf_counter() - started
table = model.auto_table_
print(json.dumps({{"fit_s": round(total, 2), "default_trial_s": round(table[0]["seconds"], 2),
                  "ran": [r["name"] for r in table if r.get("selection") is not None],
                  "choice": model.auto_choice_}}))
"""


def run(tree: Path, folder: Path, seed: int, budget: str, threads: int) -> dict:
    code = CHILD.format(tree=str(tree), folder=str(folder), seed=seed, budget=budget, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="good images (the auto-configuration's training set)")
    parser.add_argument("--before", type=Path, default=None, help="another source tree, measured alternately")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", default="4x")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    trees = ([("before", args.before)] if args.before else []) + [("after", HERE)]
    runs: dict[str, list] = {name: [] for name, _ in trees}
    for _ in range(args.rounds):
        for name, tree in trees:
            result = run(tree, args.folder, args.seed, args.budget, args.threads)
            runs[name].append(result)
            print(name, json.dumps(result), flush=True)
    summary = {name: {"fit_s_median": statistics.median(r["fit_s"] for r in results),
                      "default_trial_s_median": statistics.median(r["default_trial_s"] for r in results)}
               for name, results in runs.items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
