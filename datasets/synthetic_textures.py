#!/usr/bin/env python
"""Two synthetic surface-inspection datasets that padim's defaults were not chosen on, for
measuring auto-configuration against the oracle on more than the two shared datasets.

- ``tread``: a rubber tyre's tread, 256×512 px: diagonal grooves every 40 px with bright groove
  edges, rubber grain and uneven light, the tread shifted by a random phase in each image (so the
  product is aligned only up to the pattern's period). Defects are large or long: ``bulge`` (a
  soft blister, 12–25 % of the short side, lighter or darker), ``cut`` (a thin dark random walk
  across 30–60 % of the width) and ``inclusion`` (a patch of coarse bright grain, 6–12 %).
- ``tile``: a ground ceramic or magnetic tile, 384×384 px: a flat grey surface whose fine
  directional grain has a random orientation in each image, under soft light (unaligned: no
  feature is at a fixed position). Defects: ``crack`` (a thin branching walk that darkens the
  surface by a factor, keeping its grain), ``blowhole`` (1–4 small dark pits, 2–5 % of the side)
  and ``uneven`` (a broad irregular region, a third to a half of the tile, lighter or darker).

Each defect image's mask (PNG, 0/255) marks exactly the pixels that differ from the same image
without the defect. Every image has its own seed derived from (seed, product, split, defect,
index), so the output is deterministic and adding images never changes the existing ones.

Layout (MVTec AD)::

    root/<product>/train/good/000.png ...
    root/<product>/test/good/000.png ...
    root/<product>/test/<defect>/000.png ...
    root/<product>/ground_truth/<defect>/000_mask.png ...

Usage::

    python datasets/synthetic_textures.py /tmp/textures --products tread tile --n-train 60 \\
        --n-test-good 20 --n-test-defect 10 --seed 0

This folder is not a Python package; import this file by path (as dataset_script in tests/conftest.py does).
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

PRODUCTS = ("tread", "tile")
SIZES = {"tread": (256, 512), "tile": (384, 384)}  # (height, width)


def image_rng(seed: int, *parts) -> np.random.Generator:
    """A generator of its own for one image, from the dataset seed and the image's identity."""
    key = zlib.crc32("/".join(map(str, parts)).encode())
    return np.random.default_rng([int(seed), key])


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """A smooth random field in [-1, 1]: ``cells`` × ``cells`` uniform values, cubic-resized."""
    coarse = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(-1, 1)


def _grain(rng: np.random.Generator, shape: tuple[int, int], sigma: float, blur: float) -> np.ndarray:
    noise = rng.normal(0, 1, size=shape).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), blur)
    return noise * (sigma / max(float(noise.std()), 1e-6))


def tread_good(rng: np.random.Generator, shape=SIZES["tread"]) -> np.ndarray:
    """A tread surface, float32 gray [H, W] in 0..255."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = np.deg2rad(30.0)
    phase = (xx * np.cos(theta) + yy * np.sin(theta)) / 40.0 + rng.uniform(0, 1)
    frac = phase - np.floor(phase)
    groove = (1.0 / (1.0 + np.exp(-(0.25 - np.abs(frac - 0.5)) * 40.0))).astype(np.float32)  # 1 in a groove, soft walls
    edge = np.abs(cv2.Sobel(groove, cv2.CV_32F, 1, 0, ksize=3)) + np.abs(cv2.Sobel(groove, cv2.CV_32F, 0, 1, ksize=3))
    surface = 72.0 - 38.0 * groove + 60.0 * np.clip(edge, 0, 1)
    light = 1.0 + 0.08 * _smooth_field(rng, shape, 3) + rng.uniform(-0.06, 0.06)
    return np.clip(surface * light + _grain(rng, shape, 5.0, 0.8), 0, 255).astype(np.float32)


def tile_good(rng: np.random.Generator, shape=SIZES["tile"]) -> np.ndarray:
    """A ground tile surface, float32 gray [H, W] in 0..255."""
    h, w = shape
    noise = rng.normal(0, 1, size=(h + 64, w + 64)).astype(np.float32)
    kernel = np.zeros((15, 15), np.float32)
    kernel[7, :] = 1.0 / 15  # a grinding stroke...
    rotation = cv2.getRotationMatrix2D((7, 7), float(rng.uniform(0, 180)), 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (15, 15))  # ...at this image's angle
    grain = cv2.filter2D(noise, -1, kernel / max(float(kernel.sum()), 1e-6))[32:32 + h, 32:32 + w]
    grain *= 7.0 / max(float(grain.std()), 1e-6)
    light = 10.0 * _smooth_field(rng, shape, 4) + rng.uniform(-8, 8)
    return np.clip(150.0 + light + grain + _grain(rng, shape, 2.0, 0.6), 0, 255).astype(np.float32)


def _ellipse_alpha(rng, shape, radius_range, centre_margin=0.1) -> np.ndarray:
    """A soft elliptic weight in [0, 1] (0 outside), at a random place, angle and size."""
    h, w = shape
    short = min(h, w)
    cy, cx = rng.uniform(centre_margin, 1 - centre_margin) * h, rng.uniform(centre_margin, 1 - centre_margin) * w
    ry, rx = (rng.uniform(*radius_range, size=2) * short).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    r2 = (u / rx) ** 2 + (v / ry) ** 2
    return np.clip(1.0 - r2, 0, 1) ** 2


def _walk(rng, shape, length: float, step: float = 3.0, turn: float = 0.35) -> list[np.ndarray]:
    """Polylines (int32 point arrays) of a random walk of about ``length`` px that may fork once."""
    h, w = shape
    start = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h])
    heading = rng.uniform(0, 2 * np.pi)
    lines = []
    for part in range(2):
        points, position, direction = [start.copy()], start.copy(), heading + (0 if part == 0 else rng.uniform(0.6, 1.2))
        steps = int(length / step) if part == 0 else int(length / step / 3)
        for _ in range(steps):
            direction += rng.normal(0, turn)
            position = position + step * np.array([np.cos(direction), np.sin(direction)])
            position = np.clip(position, [2, 2], [w - 3, h - 3])
            points.append(position.copy())
        lines.append(np.round(np.array(points)).astype(np.int32))
        start = lines[0][len(lines[0]) // 2].astype(np.float64)  # the fork leaves from the middle
    return lines


def _line_weight(shape, lines, thickness: int) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    cv2.polylines(canvas, lines, False, 255, thickness=thickness, lineType=cv2.LINE_AA)
    return canvas.astype(np.float32) / 255.0


def bulge(rng, image):
    alpha = _ellipse_alpha(rng, image.shape, (0.12, 0.25))
    return image + rng.choice([40.0, -28.0]) * alpha


def cut(rng, image):
    weight = _line_weight(image.shape, _walk(rng, image.shape, rng.uniform(0.3, 0.6) * image.shape[1], turn=0.12),
                          int(rng.integers(2, 4)))
    return image * (1 - weight) + 12.0 * weight


def inclusion(rng, image):
    alpha = _ellipse_alpha(rng, image.shape, (0.06, 0.12))
    grit = 120.0 + _grain(rng, image.shape, 30.0, 1.5)
    return image * (1 - alpha) + grit * alpha


def crack(rng, image):
    weight = _line_weight(image.shape, _walk(rng, image.shape, rng.uniform(0.25, 0.5) * image.shape[1]),
                          int(rng.integers(1, 3)))
    return image * (1 - weight * rng.uniform(0.45, 0.65))


def blowhole(rng, image):
    out = image
    for _ in range(int(rng.integers(1, 5))):
        alpha = _ellipse_alpha(rng, image.shape, (0.02, 0.05))
        out = out * (1 - alpha) + 45.0 * alpha
    return out


def uneven(rng, image):
    field = _smooth_field(rng, image.shape, 3)
    cut_level = np.quantile(field, rng.uniform(0.5, 0.67))  # a third to a half of the tile
    alpha = np.clip((field - cut_level) / 0.15, 0, 1)
    return image + rng.choice([18.0, -18.0]) * alpha


GOOD: dict[str, Callable] = {"tread": tread_good, "tile": tile_good}
DEFECTS: dict[str, dict[str, Callable]] = {
    "tread": {"bulge": bulge, "cut": cut, "inclusion": inclusion},
    "tile": {"crack": crack, "blowhole": blowhole, "uneven": uneven},
}


def to_rgb8(gray: np.ndarray, tint: tuple[float, float, float]) -> np.ndarray:
    """Float gray → uint8 RGB with a slight colour tint (every channel scaled)."""
    return np.clip(np.round(gray[:, :, None] * np.asarray(tint, np.float32)), 0, 255).astype(np.uint8)


TINTS = {"tread": (1.0, 0.98, 0.95), "tile": (1.0, 0.97, 0.92)}


def make_image(product: str, seed: int, split: str, defect: str | None, index: int):
    """One image (uint8 RGB) and, for a defect, its mask (uint8 0/255: the pixels that differ)."""
    rng = image_rng(seed, product, split, defect or "good", index)
    good = GOOD[product](rng)
    clean = to_rgb8(good, TINTS[product])
    if defect is None:
        return clean, None
    damaged = to_rgb8(np.clip(DEFECTS[product][defect](rng, good), 0, 255), TINTS[product])
    mask = np.any(damaged != clean, axis=2).astype(np.uint8) * 255
    return damaged, mask


def write_dataset(root: Path, products=PRODUCTS, n_train: int = 60, n_test_good: int = 20,
                  n_test_defect: int = 10, seed: int = 0) -> list[Path]:
    """Write each product's MVTec-layout folder under ``root``; their paths."""
    written = []
    for product in products:
        base = Path(root) / product
        jobs = [("train", None, n_train), ("test", None, n_test_good)]
        jobs += [("test", defect, n_test_defect) for defect in DEFECTS[product]]
        for split, defect, count in jobs:
            folder = base / split / (defect or "good")
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image, mask = make_image(product, seed, split, defect, i)
                cv2.imwrite(str(folder / f"{i:03d}.png"), image[:, :, ::-1])
                if mask is not None:
                    masks = base / "ground_truth" / defect
                    masks.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(masks / f"{i:03d}_mask.png"), mask)
        written.append(base)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--products", nargs="+", choices=PRODUCTS, default=list(PRODUCTS))
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--n-test-good", type=int, default=20)
    parser.add_argument("--n-test-defect", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write_dataset(args.root, args.products, args.n_train, args.n_test_good, args.n_test_defect, args.seed):
        print(path)


if __name__ == "__main__":
    main()
