"""Exploration for a next whole-image statistic: a Gaussian of globally pooled features.

Fits ``PaDiM(config="fixed")`` (no calibration) on ``--data``'s train/good, pools each image's
embedding over positions (channel means and standard deviations, 2·d values), fits a
Ledoit-Wolf-shrunk Gaussian to the training images' pooled vectors, and prints the Mahalanobis
distance's range (min / median / max) for: each training image left out of the fit (the
held-out goods a gate would be set from), the good and defective test images, and whole-image
alterations of the good test images (benchmarks/global_anomalies.py). Compare with the map
means that padim.whole_image gates on (benchmarks/whole_image.py).

    python benchmarks/pooled_features.py --data ../shared/data/cookies --foreign ../shared/data/bsdata
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from global_anomalies import alterations  # noqa: E402
from padim import PaDiM  # noqa: E402
from padim.data import as_sources  # noqa: E402
from padim.io import list_images, load_image  # noqa: E402


def pooled(model, images) -> np.ndarray:
    """``[n, 2d]``: each image's embedding averaged over positions, and its spread there."""
    out = []
    for batch in model._loader(as_sources(images), model.input_size_):
        embedding = model._embed(batch.images).float()
        out.append(torch.cat([embedding.mean(dim=(2, 3)), embedding.std(dim=(2, 3))], 1).numpy())
    return np.concatenate(out).astype(np.float64)


def distances(gaussian, x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(gaussian.mahalanobis(x), 0))


def spread(values: np.ndarray) -> str:
    low, mid, high = np.percentile(values, [0, 50, 100])
    return f"{low:.1f} / {mid:.1f} / {high:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="MVTec layout")
    parser.add_argument("--foreign", type=Path, required=True, help="another MVTec-layout dataset")
    parser.add_argument("--n-train", type=int, default=None, help="fit on the first N training images")
    args = parser.parse_args()

    train = list_images(args.data / "train" / "good")[: args.n_train]
    model = PaDiM(config="fixed", calibration_folds=0).fit(train)
    vectors = pooled(model, train)
    left_out = np.array([distances(LedoitWolf().fit(np.delete(vectors, i, 0)), vectors[i:i + 1])[0]
                         for i in range(len(vectors))])
    gaussian = LedoitWolf().fit(vectors)
    good = list_images(args.data / "test" / "good")
    foreign = list_images(args.foreign / "test" / "good")
    groups = {"good test images": good,
              "defective test images": [p for p in list_images(args.data / "test") if p.parent.name != "good"]}
    for k, path in enumerate(good):
        image = (load_image(path) * 255).round().astype(np.uint8)
        other = (load_image(foreign[k % len(foreign)]) * 255).round().astype(np.uint8)
        for name, altered in alterations(image, other).items():
            groups.setdefault(name, []).append(altered)
    print(f"{args.data.name}: {len(train)} train images, {vectors.shape[1]} pooled values per image\n")
    print("| images | distance min / median / max |\n|---|---|")
    print(f"| training images, each left out | {spread(left_out)} |")
    for name, images in groups.items():
        print(f"| {name} | {spread(distances(gaussian, pooled(model, images)))} |", flush=True)


if __name__ == "__main__":
    main()
