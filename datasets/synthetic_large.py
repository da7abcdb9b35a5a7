#!/usr/bin/env python
"""Synthetic large-image inspection dataset (default 3872×3200 px) for tiled-processing benchmarks.

Each image shows the same machined "product" — a plate with fine machining stripes, a weaker
cross texture, smooth lighting variation, sensor noise and features at FIXED positions
(four mounting holes with bright chamfers, a circular groove, a slot, fiducial dots), so that
per-position Gaussians are meaningful — with a small random global shift (±4 px), stripe
phase/orientation jitter and brightness jitter per image.

Defects are small (20–80 px) and subtle (15–40 grey levels against a texture of about ±12):

- ``scratch``: a thin line segment, 20–80 px long, 2–4 px wide, darker or brighter, any angle;
- ``spot``:    an irregular elliptic blob of diameter 20–80 px, darker or brighter;
- ``square``:  a 40×40 px patch whose machining stripes run in another direction, slightly
               brighter or darker.

The ground-truth mask (uint8, 0/255) marks exactly the pixels the defect changed (for
``square`` the whole 40×40 patch).

Layout written by :func:`write_dataset` (MVTec AD)::

    root/train/good/0000.jpg ...
    root/test/good/0000.jpg ...
    root/test/<defect>/0000.jpg ...
    root/ground_truth/<defect>/0000_mask.png ...

Images are JPEG quality 95 by default (a 3872×3200 PNG of this texture is ~12 MB, the JPEG
~4 MB), ``--format png`` for lossless; masks are always PNG. Every image has its own seed
derived from (seed, split, defect type, index), so the output is deterministic and adding
images never changes the existing ones.

Usage::

    python datasets/synthetic_large.py /tmp/synth_large --n-train 100 --n-test-good 10 \\
        --n-test-defect 10 --seed 0 [--height 3200 --width 3872] [--workers 2]

This folder is not a Python package; import this file by path (see tests/test_synthetic_large.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

DEFECT_TYPES: Tuple[str, ...] = ("scratch", "spot", "square")

# Texture (in pixels / grey levels; independent of the image size).
BASE_LEVEL = 128.0
STRIPE_PERIOD = 7.0        # px, main machining stripes
STRIPE_ANGLE_DEG = 82.0    # direction of the stripe wave vector (stripes nearly horizontal)
STRIPE_AMPLITUDE = 8.0
CROSS_PERIOD = 19.0        # px, weaker cross texture
CROSS_ANGLE_DEG = -35.0
CROSS_AMPLITUDE = 3.0
NOISE_SIGMA = 3.0
MAX_SHIFT = 4              # px, global per-image shift of the product
TINT = (0.97, 1.0, 1.04)   # RGB gains: a faintly bluish steel

# Defects.
DEFECT_SIZE = (20, 80)     # px, scratch length / spot diameter
DEFECT_CONTRAST = (15.0, 40.0)
SQUARE_SIDE = 40
SPLIT_CODES = {"train": 0, "test_good": 1}


# --------------------------------------------------------------------------------------------
# Image synthesis
# --------------------------------------------------------------------------------------------

def _stripes(out: np.ndarray, tmp: np.ndarray, period: float, angle_deg: float,
             amplitude: float, phase: float, wobble: Tuple[float, float, float],
             dy: int, dx: int, accumulate: bool) -> None:
    """(out +)= amplitude * sin(kx*(x-dx) + ky*(y-dy) + phase + wobble(y)), computed as two
    outer products (sin(a+b) = sin a cos b + cos a sin b) instead of a full-size sin()."""
    h, w = out.shape
    k = 2.0 * np.pi / period
    th = np.deg2rad(angle_deg)
    w_amp, w_period, w_phase = wobble  # slow phase wobble along y: machining chatter
    y = np.arange(h, dtype=np.float64) - dy
    x = np.arange(w, dtype=np.float64) - dx
    a = k * np.sin(th) * y + phase + w_amp * np.sin(2 * np.pi * y / w_period + w_phase)
    b = k * np.cos(th) * x
    sa = (amplitude * np.sin(a)).astype(np.float32)[:, None]
    ca = (amplitude * np.cos(a)).astype(np.float32)[:, None]
    cb = np.cos(b).astype(np.float32)[None, :]
    sb = np.sin(b).astype(np.float32)[None, :]
    if accumulate:
        np.multiply(sa, cb, out=tmp)
        out += tmp
    else:
        np.multiply(sa, cb, out=out)
    np.multiply(ca, sb, out=tmp)
    out += tmp


def _draw_features(gray: np.ndarray, dy: int, dx: int) -> None:
    """Product features at fixed relative positions (shifted by the per-image offset)."""
    h, w = gray.shape
    m = min(h, w)
    S = 4  # cv2 fractional bits: sub-pixel precision for positions and radii
    f = float(1 << S)

    def pt(fy: float, fx: float) -> Tuple[int, int]:
        return int(round((fx * w + dx) * f)), int(round((fy * h + dy) * f))

    def rad(v: float) -> int:
        return max(1, int(round(v * f)))

    # Circular groove around the centre (a dark ring).
    cv2.circle(gray, pt(0.5, 0.5), rad(0.22 * m), 92.0, max(2, int(round(0.012 * m))),
               cv2.LINE_8, S)
    # Four mounting holes: bright chamfer ring, dark bore.
    r = 0.045 * m
    for fy, fx in ((0.13, 0.11), (0.13, 0.89), (0.87, 0.11), (0.87, 0.89)):
        cv2.circle(gray, pt(fy, fx), rad(r * 1.18), 188.0, -1, cv2.LINE_8, S)
        cv2.circle(gray, pt(fy, fx), rad(r), 42.0, -1, cv2.LINE_8, S)
    # A slot on the right and a smaller one on the left.
    for fy, fx, hw, hh in ((0.5, 0.80, 0.055, 0.018), (0.5, 0.20, 0.03, 0.018)):
        x0, y0 = pt(fy - hh, fx - hw)
        x1, y1 = pt(fy + hh, fx + hw)
        rim = max(2, int(round(0.004 * m)))
        cv2.rectangle(gray, (x0, y0), (x1, y1), 178.0, -1, cv2.LINE_8, S)
        inner = rim * (1 << S)
        cv2.rectangle(gray, (x0 + inner, y0 + inner), (x1 - inner, y1 - inner), 58.0, -1,
                      cv2.LINE_8, S)
    # Fiducial dots along the top edge.
    for fx in (0.35, 0.45, 0.55, 0.65):
        cv2.circle(gray, pt(0.06, fx), rad(0.006 * m), 70.0, -1, cv2.LINE_8, S)


def _place(rng: np.random.Generator, h: int, w: int, ph: int, pw: int) -> Tuple[int, int]:
    """Top-left corner of a ph×pw patch placed uniformly fully inside an h×w image."""
    if ph > h or pw > w:
        raise ValueError(f"image {h}x{w} too small for a {ph}x{pw} defect")
    return int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))


def _defect_delta(rng: np.random.Generator, kind: str, dy: int, dx: int, stripe_phase: float,
                  stripe_wobble: Tuple[float, float, float], stripe_angle: float,
                  h: int, w: int) -> Tuple[np.ndarray, int, int]:
    """(delta patch float32, top, left): the grey-level change a defect makes, zero where the
    defect does not reach (|delta| < 0.5 is set to exactly 0)."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    contrast = float(rng.uniform(*DEFECT_CONTRAST))
    if kind == "scratch":
        length = float(rng.uniform(*DEFECT_SIZE))
        width = int(rng.integers(2, 5))  # 2..4 px
        ang = float(rng.uniform(0, np.pi))
        half = int(np.ceil(length / 2 + width + 2))
        size = 2 * half + 1
        S = 4
        c = half + 0.5
        ex, ey = np.cos(ang) * length / 2, np.sin(ang) * length / 2
        p0 = (int(round((c - ex) * (1 << S))), int(round((c - ey) * (1 << S))))
        p1 = (int(round((c + ex) * (1 << S))), int(round((c + ey) * (1 << S))))
        prof = np.zeros((size, size), np.float32)
        cv2.line(prof, p0, p1, 1.0, width, cv2.LINE_8, S)
        prof = cv2.GaussianBlur(prof, (0, 0), 0.6)  # soften the edges a little
        # Intensity varies along the scratch (it is deeper in places).
        t = np.linspace(0, 1, size, dtype=np.float32)
        var = 0.75 + 0.25 * np.sin(2 * np.pi * (t * rng.uniform(0.5, 1.5) + rng.random()))
        prof *= var[None, :] if abs(np.cos(ang)) > 0.7 else var[:, None]
        delta = sign * contrast * prof
    elif kind == "spot":
        diam = float(rng.uniform(*DEFECT_SIZE))
        a = diam / 2
        b = a * float(rng.uniform(0.6, 1.0))
        rot = float(rng.uniform(0, np.pi))
        lobes, lobe_phase = int(rng.integers(2, 5)), float(rng.uniform(0, 2 * np.pi))
        half = int(np.ceil(a * 1.12)) + 2
        yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
        u = xx * np.cos(rot) + yy * np.sin(rot)
        v = -xx * np.sin(rot) + yy * np.cos(rot)
        phi = np.arctan2(v, u)
        rr = np.sqrt((u / a) ** 2 + (v / b) ** 2) / (1 + 0.1 * np.sin(lobes * phi + lobe_phase))
        # Flat core, smooth (smoothstep) edge over the outer 40% of the radius.
        s = np.clip((1.0 - rr) / 0.4, 0.0, 1.0)
        delta = sign * contrast * (s * s * (3 - 2 * s))
    elif kind == "square":
        side = SQUARE_SIDE
        top, left = _place(rng, h, w, side, side)
        new_angle = stripe_angle + float(rng.uniform(30, 90)) * (1 if rng.random() < .5 else -1)
        new_period = STRIPE_PERIOD * float(rng.uniform(0.8, 1.3))
        shift = sign * float(rng.uniform(4.0, 10.0))
        # Old and new stripes over the 40×40 window only (image coordinates top.., left..).
        y0, x0 = top - dy, left - dx
        old = np.empty((side, side), np.float32)
        new = np.empty((side, side), np.float32)
        tmp = np.empty((side, side), np.float32)
        _stripes(old, tmp, STRIPE_PERIOD, stripe_angle, STRIPE_AMPLITUDE, stripe_phase,
                 stripe_wobble, -y0, -x0, accumulate=False)
        _stripes(new, tmp, new_period, new_angle, STRIPE_AMPLITUDE * 1.3, 0.0,
                 (0.0, 1.0, 0.0), -y0, -x0, accumulate=False)
        delta = new - old + shift
        delta[np.abs(delta) < 0.5] = 0.0
        return delta.astype(np.float32), top, left
    else:
        raise ValueError(f"unknown defect type {kind!r}; expected one of {DEFECT_TYPES}")
    delta = delta.astype(np.float32)
    delta[np.abs(delta) < 0.5] = 0.0
    ph, pw = delta.shape
    top, left = _place(rng, h, w, ph, pw)
    return delta, top, left


def make_image(rng: np.random.Generator, height: int = 3200, width: int = 3872,
               defect: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic product image.

    Returns ``(image, mask)``: image HxWx3 uint8 RGB, mask HxW uint8 (255 = pixel changed by
    the defect, all zero when ``defect`` is None). ``defect`` is None or one of DEFECT_TYPES.

    All of the good image's randomness is drawn from ``rng`` before the defect's, so the same
    rng state with and without a defect gives images that differ only inside the mask.
    """
    if defect is not None and defect not in DEFECT_TYPES:
        raise ValueError(f"unknown defect type {defect!r}; expected None or one of {DEFECT_TYPES}")
    h, w = int(height), int(width)
    if h < 64 or w < 64:
        raise ValueError(f"image too small: {h}x{w} (minimum 64x64)")

    # ---- per-image randomness of the good image (fixed order; never depends on `defect`)
    dy, dx = (int(v) for v in rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=2))
    gain = 1.0 + float(rng.uniform(-0.04, 0.04))
    offset = float(rng.uniform(-4.0, 4.0))
    stripe_angle = STRIPE_ANGLE_DEG + float(rng.normal(0.0, 0.3))
    stripe_phase = float(rng.uniform(0, 2 * np.pi))
    stripe_wobble = (float(rng.uniform(0.2, 0.6)), float(rng.uniform(300, 700)),
                     float(rng.uniform(0, 2 * np.pi)))
    cross_angle = CROSS_ANGLE_DEG + float(rng.normal(0.0, 0.3))
    cross_phase = float(rng.uniform(0, 2 * np.pi))
    low_y = rng.standard_normal((2, 4)).astype(np.float32)  # smooth lighting field knots
    low_x = rng.standard_normal((2, 5)).astype(np.float32)

    gray = np.empty((h, w), np.float32)
    tmp = np.empty((h, w), np.float32)
    _stripes(gray, tmp, STRIPE_PERIOD, stripe_angle, STRIPE_AMPLITUDE, stripe_phase,
             stripe_wobble, dy, dx, accumulate=False)
    _stripes(gray, tmp, CROSS_PERIOD, cross_angle, CROSS_AMPLITUDE, cross_phase,
             (0.0, 1.0, 0.0), dy, dx, accumulate=True)
    # Lighting: fixed vignette (darker towards the corners) plus a smooth random field made of
    # 1-D cubic profiles (u1(y) + v1(x) + u2(y)·v2(x): cheap, no full-size resize).
    def smooth(knots: np.ndarray, n: int) -> np.ndarray:
        return cv2.resize(knots.reshape(-1, 1), (1, n), interpolation=cv2.INTER_CUBIC)[:, 0]

    yv = (np.arange(h, dtype=np.float32) - dy) / h - 0.5
    xv = (np.arange(w, dtype=np.float32) - dx) / w - 0.5
    gray += (BASE_LEVEL - 40.0 * yv * yv + 2.5 * smooth(low_y[0], h))[:, None]
    gray += (-40.0 * xv * xv + 2.5 * smooth(low_x[0], w))[None, :]
    np.multiply((2.5 * smooth(low_y[1], h))[:, None], smooth(low_x[1], w)[None, :], out=tmp)
    gray += tmp
    _draw_features(gray, dy, dx)
    rng.standard_normal(out=tmp, dtype=np.float32)
    tmp *= NOISE_SIGMA
    gray += tmp
    del tmp

    # ---- the defect: drawn from rng only now
    mask = np.zeros((h, w), np.uint8)
    if defect is not None:
        delta, top, left = _defect_delta(rng, defect, dy, dx, stripe_phase, stripe_wobble,
                                         stripe_angle, h, w)
        ph, pw = delta.shape
        gray[top:top + ph, left:left + pw] += delta
        if defect == "square":
            mask[top:top + ph, left:left + pw] = 255
        else:
            mask[top:top + ph, left:left + pw][delta != 0] = 255

    # ---- brightness jitter, quantise, tint
    gray *= gain
    gray += offset + 0.5  # +0.5: round on the uint8 cast
    np.clip(gray, 0.0, 255.0, out=gray)
    g8 = gray.astype(np.uint8)
    del gray
    levels = np.arange(256, dtype=np.float32)
    chans = [cv2.LUT(g8, np.clip(levels * t + 0.5, 0, 255).astype(np.uint8)) for t in TINT]
    return cv2.merge(chans), mask


# --------------------------------------------------------------------------------------------
# Dataset writing
# --------------------------------------------------------------------------------------------

def _rng_for(seed: int, split: str, index: int) -> np.random.Generator:
    code = SPLIT_CODES.get(split)
    if code is None:
        code = 2 + DEFECT_TYPES.index(split)
    return np.random.default_rng([int(seed), code, int(index)])


def _write_image(path: Path, image_rgb: np.ndarray, fmt: str, jpeg_quality: int) -> None:
    bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == "jpg" else \
        [cv2.IMWRITE_PNG_COMPRESSION, 3]
    _imwrite(path, bgr, params)


def _imwrite(path: Path, array: np.ndarray, params: Sequence[int] = ()) -> None:
    """cv2.imwrite through a temp file + os.replace, raising on failure."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    ok, buf = cv2.imencode(path.suffix, array, list(params))
    if not ok:
        raise OSError(f"could not encode {path}")
    with open(tmp, "wb") as f:
        f.write(buf.tobytes())
    os.replace(tmp, path)


def write_dataset(root, n_train: int = 100, n_test_good: int = 10, n_test_defect: int = 10,
                  height: int = 3200, width: int = 3872, seed: int = 0, *,
                  defect_types: Sequence[str] = DEFECT_TYPES, fmt: str = "jpg",
                  jpeg_quality: int = 95, workers: int = 1, verbose: bool = False
                  ) -> Dict[str, int]:
    """Write an MVTec-layout dataset under ``root``; returns {folder: number of images}.

    ``n_test_defect`` is per defect type (default 10 each of scratch, spot, square).
    Images: JPEG (quality ``jpeg_quality``) or PNG (``fmt="png"``); masks: PNG 0/255.
    """
    if fmt not in ("jpg", "png"):
        raise ValueError(f"fmt must be 'jpg' or 'png', got {fmt!r}")
    for d in defect_types:
        if d not in DEFECT_TYPES:
            raise ValueError(f"unknown defect type {d!r}; expected some of {DEFECT_TYPES}")
    root = Path(root)
    jobs = []  # (split, index, image path, mask path or None, defect)
    plan = [("train", root / "train" / "good", n_train, None),
            ("test_good", root / "test" / "good", n_test_good, None)]
    plan += [(d, root / "test" / d, n_test_defect, d) for d in defect_types]
    counts: Dict[str, int] = {}
    for split, folder, n, defect in plan:
        folder.mkdir(parents=True, exist_ok=True)
        counts[str(folder.relative_to(root))] = int(n)
        if defect is not None:
            (root / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        for i in range(int(n)):
            name = f"{i:04d}"
            mpath = root / "ground_truth" / defect / f"{name}_mask.png" if defect else None
            jobs.append((split, i, folder / f"{name}.{fmt}", mpath, defect))

    def run(job):
        split, i, ipath, mpath, defect = job
        image, mask = make_image(_rng_for(seed, split, i), height, width, defect)
        _write_image(ipath, image, fmt, jpeg_quality)
        if mpath is not None:
            _imwrite(mpath, mask, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if verbose:
            print(ipath.relative_to(root), flush=True)

    if workers > 1:
        with ThreadPoolExecutor(max_workers=int(workers)) as ex:
            list(ex.map(run, jobs))
    else:
        for job in jobs:
            run(job)
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("root", type=Path, help="output folder (created)")
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--n-test-good", type=int, default=10)
    p.add_argument("--n-test-defect", type=int, default=10, help="per defect type")
    p.add_argument("--defect-types", nargs="+", default=list(DEFECT_TYPES),
                   choices=list(DEFECT_TYPES))
    p.add_argument("--height", type=int, default=3200)
    p.add_argument("--width", type=int, default=3872)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("jpg", "png"), default="jpg", dest="fmt",
                   help="image format (masks are always PNG)")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--workers", type=int, default=1, help="threads writing images")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    counts = write_dataset(a.root, a.n_train, a.n_test_good, a.n_test_defect, a.height,
                           a.width, a.seed, defect_types=a.defect_types, fmt=a.fmt,
                           jpeg_quality=a.jpeg_quality, workers=a.workers,
                           verbose=not a.quiet)
    print(json.dumps({"root": str(a.root), "images": counts, "seconds":
                      round(time.perf_counter() - t0, 1)}), file=sys.stderr if a.quiet else
          sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
