"""Peak memory of a fit as the number of training images grows (it should stay flat).

Each size runs in a fresh subprocess and reports its peak RSS (``ru_maxrss``). Training images
are the BSData good images, repeated when more are asked for than exist (the fit streams them,
so repetition does not change its memory).

    python benchmarks/fit_memory.py --data ../shared/data/bsdata/train/good --sizes 50 200 800
    python benchmarks/fit_memory.py --sizes 50 400 --folds 5 --config fixed   # without the selection

``--config auto`` (the library's default) selects on at most 60 of the images (padim.autoconfig),
so its memory should stay flat too.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(data: str, n: int, threads: int, folds: int, config: str) -> None:
    import torch

    from padim import PaDiM
    from padim.io import list_images

    torch.set_num_threads(threads)
    files = list_images(data)
    paths = [files[i % len(files)] for i in range(n)]
    started = time.time()
    model = PaDiM(calibration_folds=folds, workers=2, config=config).fit(paths)
    seconds = time.time() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"images": n, "peak_rss_mb": round(peak / 2**20), "fit_s": round(seconds, 1),
                      "images_per_s": round(n / seconds, 1), "calibration_folds": folds, "config": config,
                      "choice": model.auto_choice_,
                      "feature_grid": list(model.feature_size_), "d": model.n_features_}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/bsdata/train/good")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folds", type=int, default=0, help="calibration folds (0: Gaussian fit only)")
    parser.add_argument("--config", choices=("auto", "fixed"), default="auto", help="as PaDiM(config=...)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.data, args.child, args.threads, args.folds, args.config)
        return
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--data", args.data, "--threads", str(args.threads),
                              "--folds", str(args.folds), "--config", args.config, "--child", str(n)],
                             capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
