"""Choose default hook points, ε, d and input geometry by measuring on MVTec-layout datasets.

Backbone features are extracted once per (dataset, input geometry) for every candidate hook
point and cached in memory at their native stride; each configuration then only refits the
Gaussians. Pixel metrics are computed at the model's input resolution (masks resized with
nearest neighbour) to keep the sweep fast; ``padim eval`` reports full-resolution figures.

    python benchmarks/sweep_defaults.py ../shared/data/cookies ../shared/data/bsdata --threads 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from padim.backbones import build_backbone, get_spec
from padim.data import Resize, make_loader
from padim.features import FeatureExtractor, embedding_concat, random_channel_index
from padim.gaussian import GaussianStats
from padim.io import image_size, list_images
from padim.maps import distance_grid_to_maps, input_size_for
from padim.metrics import image_auroc, pixel_auroc, pro_score


def mvtec_test_set(root: Path):
    paths, labels, masks = [], [], []
    for folder in sorted((root / "test").iterdir()):
        for path in list_images(folder):
            paths.append(path)
            labels.append(0 if folder.name == "good" else 1)
            masks.append(None if folder.name == "good" else root / "ground_truth" / folder.name / f"{path.stem}_mask.png")
    return paths, np.array(labels), masks


def extract(extractor, paths, size, batch_size=16):
    """Per-layer raw feature maps for all paths: list over layers of [N, C, h, w] float32."""
    out = None
    for batch in make_loader(paths, Resize(size), batch_size, workers=2, pin_memory=False):
        feats = [f.float() for f in extractor(batch.images)]
        out = [[f] for f in feats] if out is None else [o + [f] for o, f in zip(out, feats)]
    return [torch.cat(o) for o in out]


def run_config(cache_train, cache_test, layer_ids, all_layers, channels, d, eps, relative, size, sigma, seed=0):
    keep = [all_layers.index(layer) for layer in layer_ids]
    total = sum(channels[k] for k in keep)
    index = random_channel_index(total, d, seed)
    def emb(cache, sl):
        return embedding_concat([cache[k][sl] for k in keep], index)
    n_train = cache_train[0].shape[0]
    first = emb(cache_train, slice(0, 1))
    dim, h, w = first.shape[1:]
    stats = GaussianStats(h * w, dim)
    for start in range(0, n_train, 32):
        stats.update(emb(cache_train, slice(start, start + 32)).flatten(2))
    model = stats.finalize(eps, relative_eps=relative)
    maps = []
    for start in range(0, cache_test[0].shape[0], 32):
        e = emb(cache_test, slice(start, start + 32))
        dist = model.mahalanobis(e.flatten(2)).view(e.shape[0], h, w)
        maps.append(distance_grid_to_maps(dist, size, sigma))
    return torch.cat(maps).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--hooks", default="_blocks.2,_blocks.4,_blocks.10,_blocks.14")
    parser.add_argument("--layer-sets", default="_blocks.2+_blocks.4+_blocks.10;_blocks.4+_blocks.10+_blocks.14")
    parser.add_argument("--eps", default="0.01a,0.001,0.01,0.1,1")
    parser.add_argument("--d", default="0,100")
    parser.add_argument("--geometry", default="256k,256s")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/sweep_results.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = get_spec(args.backbone)
    all_layers = args.hooks.split(",")
    channels = [spec.hook_point(n).channels for n in all_layers]
    extractor = FeatureExtractor(build_backbone(args.backbone), spec, all_layers)
    multiple = max(spec.hook_point(n).stride for n in all_layers)
    layer_sets = [s.split("+") for s in args.layer_sets.split(";")]
    for root in args.datasets:
        train = list_images(root / "train" / "good")
        test, labels, mask_paths = mvtec_test_set(root)
        h0, w0 = image_size(train[0])
        for geometry in args.geometry.split(","):
            side, mode = int(geometry[:-1]), geometry[-1]
            size = input_size_for(h0, w0, side, mode == "k", multiple)
            t0 = time.time()
            cache_train = extract(extractor, train, size)
            cache_test = extract(extractor, test, size)
            t_extract = time.time() - t0
            masks = [np.zeros(size, bool) if p is None else
                     cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), size[::-1], interpolation=cv2.INTER_NEAREST) > 127
                     for p in mask_paths]
            for layer_ids, eps_s, d_s in itertools.product(layer_sets, args.eps.split(","), args.d.split(",")):
                relative = not eps_s.endswith("a")
                eps = float(eps_s.rstrip("a"))
                d = int(d_s) or None
                t0 = time.time()
                maps = run_config(cache_train, cache_test, layer_ids, all_layers, channels, d, eps, relative, size, 4.0)
                scores = maps.reshape(len(maps), -1).max(1)
                row = {
                    "dataset": root.name, "geometry": geometry, "input_size": list(size),
                    "layers": layer_ids, "eps": eps, "relative_eps": relative, "d": d or "all",
                    "image_auroc": round(image_auroc(labels, scores), 4),
                    "pixel_auroc": round(pixel_auroc(masks, list(maps)), 4),
                    "pro": round(pro_score(masks, list(maps)), 4),
                    "fit_score_s": round(time.time() - t0, 1), "extract_s": round(t_extract, 1),
                }
                print(json.dumps(row), flush=True)
                with args.out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
