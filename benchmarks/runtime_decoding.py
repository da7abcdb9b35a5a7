"""Throughput of ``padim.runtime.ExportedModel`` with and without its decoding threads.

With ``workers`` > 0 the next batch is read and resized on threads while the engine scores this
one; ``workers=0`` reads each batch in the calling thread first. Maps are resized to each
image's size, as ``padim score`` does. Alternates the settings, ``--rounds`` times.

    python benchmarks/runtime_decoding.py --model ck.onnx --images ../shared/data/cookies/test --repeat 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from padim.io import list_images  # noqa: E402
from padim.runtime import ExportedModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an .onnx or .xml export")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3, help="the image list, this many times over")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="engine threads")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    paths = list_images(args.images) * args.repeat
    print("| round | decoding workers | engine threads | images/s |")
    print("|---|---|---|---|")
    for round_ in range(1, args.rounds + 1):
        for workers in (0, "auto"):
            for threads in args.threads:
                model = ExportedModel(args.model, threads=threads, batch_size=args.batch_size, workers=workers)
                list(model.iter_results(paths[: args.batch_size]))  # warm-up
                started = time.perf_counter()
                count = sum(1 for _ in model.iter_results(paths, maps=True))
                print(f"| {round_} | {workers} | {threads} | {count / (time.perf_counter() - started):.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
