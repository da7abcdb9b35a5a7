"""Decoding processes against inline decoding: fit and scoring time at the defaults.

Each (dataset, workers) run is a fresh interpreter (worker start-up included, as a user's run
has it), in the order 2, 0, 2, 0 so that drift shows; fit is the default fit, calibration
included; scoring is ``iter_results`` over the test folder with maps at the original size:

    python benchmarks/decoding_workers.py ../shared/data/cookies ../shared/data/bsdata --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RUN = r"""
import json, sys, time, torch
from pathlib import Path
from padim import PaDiM
from padim.io import list_images
root, workers, threads = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
workers = workers if workers == "auto" else int(workers)
torch.set_num_threads(threads)
model = PaDiM(workers=workers, config="fixed")
started = time.perf_counter()
model.fit(root / "train" / "good")
fit = time.perf_counter() - started
tests = [p for folder in sorted((root / "test").iterdir()) for p in list_images(folder)]
started = time.perf_counter()
for result in model.iter_results(tests, maps=True):
    pass
score = time.perf_counter() - started
print(json.dumps({"fit_s": fit, "images_per_s": len(tests) / score}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", nargs="+", default=["2", "0", "2", "0"])
    args = parser.parse_args()
    print("| dataset | workers | fit s | scoring img/s |\n|---|---|---|---|")
    for root in args.datasets:
        for workers in args.workers:
            out = subprocess.run([sys.executable, "-c", RUN, str(root), workers, str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            print(f"| {root.name} | {workers} | {row['fit_s']:.1f} | {row['images_per_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
