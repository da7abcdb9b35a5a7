"""Float32 against float64 Cholesky factorisation of the whitener (padim.gaussian.FACTOR_DTYPE).

Fits the defaults with each, on each MVTec-layout dataset given, and reports the fit time, the
largest relative difference of the held-out good scores and of the threshold, and the test
metrics (padim eval's):

    python benchmarks/factor_precision.py ../shared/data/cookies ../shared/data/bsdata --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import padim.gaussian as gaussian
from padim import PaDiM
from padim.workflows import evaluate_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    PaDiM(progress=False, config="fixed").fit(sorted((args.datasets[0] / "train" / "good").iterdir())[:8], calibrate=False)  # warm-up
    print("| dataset | factor | fit s | threshold | image AUROC | pixel AUROC | PRO |\n|---|---|---|---|---|---|---|")
    for root in args.datasets:
        fitted = {}
        for dtype in (torch.float64, torch.float32):
            gaussian.FACTOR_DTYPE = dtype
            model = PaDiM(progress=False, config="fixed")
            started = time.perf_counter()
            model.fit(root / "train" / "good")
            seconds = time.perf_counter() - started
            metrics = evaluate_folder(model, root)
            fitted[dtype] = model
            print(f"| {root.name} | {str(dtype)[6:]} | {seconds:.1f} | {model.calibrator_.threshold_:.6g} | "
                  f"{metrics['image_auroc']:.4f} | {metrics['pixel_auroc']:.4f} | {metrics['pro']:.4f} |", flush=True)
        wide, narrow = (fitted[t] for t in (torch.float64, torch.float32))
        scores = abs(wide.calibration_scores_ - narrow.calibration_scores_) / abs(wide.calibration_scores_)
        threshold = abs(wide.calibrator_.threshold_ - narrow.calibrator_.threshold_) / wide.calibrator_.threshold_
        print(f"{root.name}: held-out scores differ by at most {scores.max():.2e} relative, threshold by {threshold:.2e}")


if __name__ == "__main__":
    main()
