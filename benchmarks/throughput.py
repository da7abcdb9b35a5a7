"""Fit and scoring throughput (images/s) per backbone and input size, on CPU or GPU.

Speed does not depend on the weights' values, so torchvision backbones whose weights cannot be
downloaded here run with random initialisation (``--random-weights``); EfficientNet-Lite uses
its genuine weights. Images are in-memory random-textured arrays so that disk and JPEG decoding
do not enter the figures (they are measured by ``padim eval`` in RESULTS.md).

    python benchmarks/throughput.py --sizes 224 448 --backbones efficientnet_lite0 resnet18 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from padim import PaDiM
from padim import backbones


def random_weights_builder(arch: str):
    def build(_weights_file):
        import torchvision.models as tvm

        return getattr(tvm, arch)(weights=None).eval()

    return build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet18", "wide_resnet50_2"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--n-fit", type=int, default=64)
    parser.add_argument("--n-score", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--random-weights", action="store_true", help="random init for torchvision backbones")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    for name in args.backbones:
        if args.random_weights and name in ("resnet18", "wide_resnet50_2"):
            spec = backbones.BACKBONES[name]
            backbones.BACKBONES[name] = type(spec)(**{**spec.__dict__, "build": random_weights_builder(name)})
        for size in args.sizes:
            images = [(rng.random((size, size, 3)) * 255).astype(np.uint8) for _ in range(args.n_fit)]
            model = PaDiM(backbone=name, image_size=size, keep_aspect=False, batch_size=args.batch_size,
                          device=args.device, calibration_folds=0, workers=0, config="fixed")
            model.fit(images[:args.batch_size])  # warm-up: backbone build, first-call kernels
            started = time.perf_counter()
            model.fit(images)
            if model._device().type == "cuda":
                torch.cuda.synchronize()
            fit_s = time.perf_counter() - started
            test = images[: args.n_score]
            model.score_samples(test[: args.batch_size])
            started = time.perf_counter()
            model.score_samples(test)
            if model._device().type == "cuda":
                torch.cuda.synchronize()
            score_s = time.perf_counter() - started
            print(json.dumps({
                "backbone": name, "size": size, "device": str(model._device()), "threads": args.threads,
                "d": model.n_features_, "grid": list(model.feature_size_),
                "fit_images_per_s": round(args.n_fit / fit_s, 1), "score_images_per_s": round(len(test) / score_s, 1),
                "fit_s": round(fit_s, 2), "score_s": round(score_s, 2),
            }), flush=True)


if __name__ == "__main__":
    main()
