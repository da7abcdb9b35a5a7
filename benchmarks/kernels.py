"""The scoring and trial kernels' seconds — this tree against another, each in a fresh interpreter.

Shapes of a default Lite0 model (d 176): the auto-configuration's low-rank trial fit (4096
Gaussians of a 256 px input, 45 fit images; from one contiguous tensor, and from the trial's
channels_last batches as the selection passes them) and its scoring of 48 images; a dense head scoring
16 cookies-sized embeddings (72×56 positions), contiguous and channels_last (the CPU's fused
backbone gives the latter); the blur of 8 maps of 256×256 (σ 4); assembling 16 embeddings from
Lite0's three hooked layers, channels_last and contiguous (a feature bank's
rows; the copy to contiguous is counted); pixel AUROC and PRO of one validation fold (15 good
and 30 defect maps of 256×256; before ``pixel_auroc_and_pro``, the two functions apart). Median of ``--repeat`` runs after one warm-up.

    python benchmarks/kernels.py --before /tmp/before --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

CHILD = """
import json, statistics, sys, time
sys.path.insert(0, {tree!r})
import torch
torch.set_num_threads({threads})
from padim.features import embedding_concat
from padim.low_rank import LowRankGaussians
from padim.maps import gaussian_blur
from padim.net import ScoreHead
from padim.tiling import to_cells
try:
    from padim.metrics import pixel_auroc_and_pro
except ImportError:  # a tree from before it: the two metrics apart
    from padim.metrics import pixel_auroc, pro_score
    pixel_auroc_and_pro = lambda masks, maps: (pixel_auroc(masks, maps), pro_score(masks, maps))
import numpy as np
g = torch.Generator().manual_seed(0)
def timed(fn):
    fn()
    runs = []
    for _ in range({repeat}):
        t = time.perf_counter(); fn(); runs.append(time.perf_counter() - t)
    return round(statistics.median(runs) * 1000, 1)
d = 176
train, test = torch.randn(45, d, 4096, generator=g), torch.randn(48, d, 4096, generator=g)
low_rank = LowRankGaussians(train, 0.01)
# the trial's own input: the fit images' embeddings in batches, channels_last, as the bank gives them
batches = [torch.randn(n, d, 64, 64, generator=g).contiguous(memory_format=torch.channels_last).flatten(2)
           for n in (8, 8, 8, 8, 8, 5)]
def fit_from_batches():
    try:
        return LowRankGaussians(batches, 0.01)
    except AttributeError:  # a tree from before it took batches: they were joined first
        return LowRankGaussians(torch.cat(batches), 0.01)
positions = 72 * 56
whitener = torch.linalg.cholesky(torch.eye(d) + 0.1 * torch.ones(d, d)).expand(positions, d, d).contiguous()
head = ScoreHead(torch.randn(positions, d, generator=g), whitener, 1, (288, 224), 4, 4.0)
embedding = torch.randn(16, d, 72, 56, generator=g)
last = embedding.contiguous(memory_format=torch.channels_last)
maps = torch.rand(8, 256, 256, generator=g)
rng = np.random.default_rng(0)
val_maps = [rng.random((256, 256), dtype=np.float32) for _ in range(45)]
val_masks = [np.zeros((256, 256), bool) for _ in range(15)]
for _ in range(30):
    mask = np.zeros((256, 256), bool)
    y, x = rng.integers(20, 200, size=2)
    mask[y:y + 30, x:x + 20] = True
    val_masks.append(mask)
layers = [torch.randn(16, c, 72 // s, 56 // s, generator=g).contiguous(memory_format=torch.channels_last)
          for c, s in ((24, 1), (40, 2), (112, 4))]
print(json.dumps({{
    "low-rank fit (45 images, 4096 Gaussians) ms": timed(lambda: LowRankGaussians(train, 0.01)),
    "low-rank fit from 6 channels_last batches (45 images) ms": timed(fit_from_batches),
    "low-rank scoring (48 images) ms": timed(lambda: low_rank.distances(test)),
    "dense head, 16 contiguous embeddings ms": timed(lambda: head.distances(to_cells(embedding, 1))),
    "dense head, 16 channels_last embeddings ms": timed(lambda: head.distances(to_cells(last, 1))),
    "blur, 8 maps of 256x256 ms": timed(lambda: gaussian_blur(maps, 4.0)),
    "embedding of 16 images, channels_last ms": timed(lambda: embedding_concat(layers)),
    "pixel AUROC and PRO, 45 maps of 256x256 ms": timed(lambda: pixel_auroc_and_pro(val_masks, val_maps)),
    "embedding of 16 images, contiguous ms": timed(lambda: embedding_concat([x.contiguous() for x in layers])),
}}))
"""


def run(tree: Path, threads: int, repeat: int) -> dict:
    code = CHILD.format(tree=str(tree), threads=threads, repeat=repeat)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=None, help="another source tree to compare")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    trees = ([("before", args.before)] if args.before else []) + [("after", HERE)]
    results = {name: run(tree, args.threads, args.repeat) for name, tree in trees}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
