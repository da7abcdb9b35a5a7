"""Synthetic defects made from good images, with exact masks: a selection signal without real defects.

Eight families, each a different kind of anomaly a product can show:

- ``paste``: a patch cut from another image (or another position of the same one), pasted with
  feathered edges — a foreign part or misplaced structure;
- ``perlin``: a Perlin-noise region filled with a noise texture — stains, corrosion, texture flaws;
- ``scratch``: thin polylines of a flat dark or bright colour — scratches;
- ``crack``: a thin, wandering, branching line that darkens the surface and keeps its texture —
  cracks. Only in :data:`ALL_FAMILIES`: the selection's default set (:data:`FAMILIES`) ranked
  candidates no closer to the real defects with it (benchmarks/RESULTS.md §37).
- ``blob``: a soft elliptical region with shifted colour or brightness — discolouration;
- ``blur``: a region blurred — out-of-focus or smeared print;
- ``hole``: an irregular region filled with a flat colour — a missing part;
- ``shading``: a broad region, up to half the image, 15–35 % lighter or darker with the
  texture kept and very soft edges — uneven coating or firing, a shallow dent or blister, which
  only features that see far enough find. Only in :data:`ALL_FAMILIES`: with it the selection
  avoided a finer input on textures but gave up BSData's gain from one (benchmarks/RESULTS.md §46).

Images are float RGB ``[H, W, 3]`` in [0, 1] (the model's input, so this stays cheap). Every
family alters only pixels inside its region, and the returned mask is the region restricted to the
pixels whose value actually changed: ``mask == (defect != image).any(-1)`` holds exactly. A
seeded ``numpy.random.Generator`` makes everything reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np

FAMILIES = ("paste", "perlin", "scratch", "blob", "blur", "hole")  # what make_defects makes by default
ALL_FAMILIES = FAMILIES + ("crack", "shading")
MAX_TRIES = 8  # new random parameters when an alteration changed no pixel (e.g. blur of a flat area)


@dataclass
class SyntheticDefect:
    """One defect image, its mask (True where a pixel was altered) and the family that made it."""

    image: np.ndarray  # float32 [H, W, 3] in [0, 1]
    mask: np.ndarray  # bool [H, W]
    family: str
    source: int  # index of the good image it was made from
    scale: float = 1.0  # the extent multiplier it was made with


def _soft_ellipse(h: int, w: int, rng: np.random.Generator, min_frac: float, max_frac: float) -> np.ndarray:
    """Alpha [H, W] in [0, 1]: a rotated ellipse with feathered edges, zero far from it."""
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    ry = max(1.5, rng.uniform(min_frac, max_frac) * h / 2)
    rx = max(1.5, rng.uniform(min_frac, max_frac) * w / 2)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
    r = np.sqrt(u * u + v * v)
    return np.clip((1.2 - r) / 0.4, 0.0, 1.0).astype(np.float32)  # 1 inside r ≤ 0.8, 0 beyond 1.2


def perlin_noise(h: int, w: int, rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """Classic 2-D Perlin (gradient) noise [H, W], about in [-1, 1], ``cells`` lattice cells across
    the shorter side: random unit gradients at the lattice points, quintic fade between them."""
    gy = max(1, round(cells * h / min(h, w)))
    gx = max(1, round(cells * w / min(h, w)))
    angles = rng.uniform(0, 2 * np.pi, size=(gy + 1, gx + 1))
    grad_x, grad_y = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    y = np.linspace(0, gy, h, endpoint=False, dtype=np.float32)
    x = np.linspace(0, gx, w, endpoint=False, dtype=np.float32)
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - np.floor(y))[:, None], (x - np.floor(x))[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        # the lattice gradients, gathered rows first (a small array) then columns
        rows_x, rows_y = grad_x[yi + dy], grad_y[yi + dy]
        return rows_x[:, xi + dx] * (fx - dx) + rows_y[:, xi + dx] * (fy - dy)

    def fade(t):
        return t * t * t * (t * (t * 6 - 15) + 10)

    sy, sx = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - sx) + corner(0, 1) * sx
    bottom = corner(1, 0) * (1 - sx) + corner(1, 1) * sx
    return (top * (1 - sy) + bottom * sy) * np.float32(np.sqrt(2))


def _paste(image, rng, donor, scale):
    h, w = image.shape[:2]
    alpha = _soft_ellipse(h, w, rng, 0.12 * scale, 0.35 * scale)
    # the same-sized donor content, shifted by a random offset (another image, or elsewhere in this one)
    shift = (int(rng.integers(h // 4, max(h // 4 + 1, 3 * h // 4))), int(rng.integers(w // 4, max(w // 4 + 1, 3 * w // 4))))
    patch = np.roll(donor, shift, axis=(0, 1))
    return alpha, patch


def _perlin(image, rng, donor, scale):
    h, w = image.shape[:2]
    shape = perlin_noise(h, w, rng, cells=max(2, round(int(rng.integers(2, 7)) / scale)))
    region = (shape > rng.uniform(0.2, 0.45)).astype(np.float32) * _soft_ellipse(h, w, rng, 0.3 * scale, 0.7 * scale)
    texture = np.stack([perlin_noise(h, w, rng, cells=int(rng.integers(6, 16))) for _ in range(3)], axis=-1)
    texture = np.clip(0.5 + 0.5 * texture * rng.uniform(0.6, 1.0) + rng.uniform(-0.3, 0.3, size=3), 0, 1)
    alpha = cv2.GaussianBlur(region, (0, 0), 1.0) * rng.uniform(0.6, 0.95)
    return alpha, texture.astype(np.float32)


def _scratch(image, rng, donor, scale):
    h, w = image.shape[:2]
    canvas = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        points = [np.array([rng.uniform(0, w), rng.uniform(0, h)])]
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(2, 6))):
            heading += rng.normal(0, 0.5)
            step = rng.uniform(0.08, 0.25) * scale * min(h, w)
            points.append(points[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
        cv2.polylines(canvas, [np.round(np.array(points)).astype(np.int32)], False, 255,
                      thickness=int(rng.integers(1, 3)) if scale >= 0.5 else 1, lineType=cv2.LINE_8)
    alpha = (canvas > 0).astype(np.float32)
    level = rng.choice([rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0)])
    colour = np.clip(level + rng.uniform(-0.05, 0.05, size=3), 0, 1).astype(np.float32)
    return alpha, np.broadcast_to(colour, image.shape)


def _wander(canvas: np.ndarray, rng: np.random.Generator, start, heading: float, steps: int, step: float,
            thickness: int, branch_p: float) -> None:
    """Draw a random walk of ``steps`` short segments on ``canvas``; at each step it forks with
    probability ``branch_p`` into a shorter walk that leaves at a sharp angle."""
    points = [np.asarray(start, dtype=np.float64)]
    for _ in range(steps):
        heading += rng.normal(0, 0.35)
        points.append(points[-1] + step * rng.uniform(0.6, 1.4) * np.array([np.cos(heading), np.sin(heading)]))
        if steps > 3 and rng.random() < branch_p:
            side = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.1)
            _wander(canvas, rng, points[-1], heading + side, steps // 3, step, 1, branch_p / 2)
    cv2.polylines(canvas, [np.round(np.array(points)).astype(np.int32)], False, 255, thickness=thickness,
                  lineType=cv2.LINE_8)


def _crack(image, rng, donor, scale):
    h, w = image.shape[:2]
    canvas = np.zeros((h, w), np.uint8)
    side = min(h, w)
    step = max(2.0, 0.015 * side)
    length = rng.uniform(0.25, 0.7) * scale * side
    start = (rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h)
    thickness = int(rng.integers(1, 3)) if scale >= 0.5 else 1
    _wander(canvas, rng, start, rng.uniform(0, 2 * np.pi), max(3, round(length / step)), step, thickness, 0.12)
    alpha = cv2.GaussianBlur((canvas > 0).astype(np.float32), (0, 0), 0.6)
    alpha[alpha < 0.1] = 0.0  # a soft rim of one pixel beside the line,
    alpha[canvas > 0] = 1.0  # the line itself fully altered
    return alpha, (image * rng.uniform(0.3, 0.7)).astype(np.float32)  # a shadow: darker, the texture kept


def _blob(image, rng, donor, scale):
    alpha = _soft_ellipse(*image.shape[:2], rng, 0.08 * scale, 0.3 * scale)
    if rng.random() < 0.5:  # brightness
        altered = np.clip(image * rng.choice([rng.uniform(0.3, 0.7), rng.uniform(1.4, 2.0)]), 0, 1)
    else:  # colour
        altered = np.clip(image + rng.uniform(-0.35, 0.35, size=3).astype(np.float32), 0, 1)
    return alpha, altered.astype(np.float32)


def _blur(image, rng, donor, scale):
    alpha = _soft_ellipse(*image.shape[:2], rng, 0.15 * scale, 0.4 * scale)
    sigma = rng.uniform(2.0, 6.0) * min(1.0, 2 * scale)
    return alpha, cv2.GaussianBlur(image, (0, 0), sigma).astype(np.float32)


def _hole(image, rng, donor, scale):
    h, w = image.shape[:2]
    ellipse = _soft_ellipse(h, w, rng, 0.08 * scale, 0.25 * scale)
    ragged = perlin_noise(h, w, rng, cells=max(8, round(8 / scale))) * 0.35
    alpha = ((ellipse + ragged) > 0.6).astype(np.float32)
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    fill = np.median(border, axis=0) if rng.random() < 0.5 else np.full(3, rng.uniform(0.0, 0.1))
    return alpha, np.broadcast_to(fill.astype(np.float32), image.shape)


def _shading(image, rng, donor, scale):
    h, w = image.shape[:2]
    alpha = _soft_ellipse(h, w, rng, 0.3 * scale, 0.7 * scale)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(1.0, 0.05 * scale * min(h, w)))  # edges softer than a blob's
    alpha[alpha < 0.05] = 0.0  # no faint tail across the whole image
    factor = rng.uniform(0.65, 0.85) if rng.random() < 0.5 else rng.uniform(1.15, 1.35)
    return alpha, np.clip(image * factor, 0, 1).astype(np.float32)


_MAKERS: dict[str, Callable] = {"paste": _paste, "perlin": _perlin, "scratch": _scratch, "blob": _blob,
                                "blur": _blur, "hole": _hole, "crack": _crack, "shading": _shading}


def make_defect(image: np.ndarray, family: str, rng: np.random.Generator,
                donor: np.ndarray | None = None, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with one defect of ``family`` → (defect image, mask of exactly the altered pixels).

    ``scale`` multiplies the defect's extent (region radii, scratch lengths): 1 makes defects of
    about 5–35 % of the image side, 0.25 pits and short scratches of a few per cent.

    ``donor`` (same shape) is where ``paste`` cuts its patch from (default: ``image`` itself, at
    another position). Retries with new parameters (at most MAX_TRIES) while nothing changed;
    the mask may then be empty (a flat image blurred)."""
    if not 0 < scale <= 2:
        raise ValueError(f"synthetic defect scale must be in (0, 2], got {scale}")
    if family not in _MAKERS:
        raise ValueError(f"unknown synthetic defect family {family!r}; expected one of {', '.join(ALL_FAMILIES)}")
    original = np.ascontiguousarray(image, dtype=np.float32)
    if original.ndim != 3 or original.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {original.shape}")
    donor = original if donor is None else np.asarray(donor, dtype=np.float32)
    if donor.shape != original.shape:
        raise ValueError(f"donor image has shape {donor.shape}, expected {original.shape}")
    for _ in range(MAX_TRIES):
        alpha, altered = _MAKERS[family](original, rng, donor, scale)
        a = alpha[..., None]
        blended = np.where(a > 0, np.clip(a * altered + (1 - a) * original, 0, 1), original).astype(np.float32)
        mask = (blended != original).any(axis=-1)
        if mask.any():
            return blended, mask
    return blended, mask


def _resized_like(donor: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``donor`` at ``image``'s height and width: a folder may mix image sizes (another camera, a
    crop), and a pasted patch is cut from the same position of a same-sized donor."""
    if donor.shape[:2] == image.shape[:2]:
        return donor
    return cv2.resize(np.asarray(donor), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)


def make_defects(images: Sequence[np.ndarray], seed: int = 0, families: Sequence[str] = FAMILIES,
                 per_image: int = 1, scales: Sequence[float] = (1.0,)) -> list[SyntheticDefect]:
    """``per_image`` defects for each good image. Defect number k = i·per_image + j (image i, defect
    j) gets family ``families[k mod F]`` and scale ``scales[(k // F) mod S]``, so every family is
    made at every scale in turn; ``paste`` donors are drawn from the other images (resized to the
    image's size where it differs).
    Deterministic for a given ``seed``."""
    if not images:
        raise ValueError("no good images to make synthetic defects from")
    families, scales = list(families), list(scales)
    rng = np.random.default_rng(seed)
    out = []
    for i, image in enumerate(images):
        for j in range(per_image):
            k = i * per_image + j
            family, scale = families[k % len(families)], scales[(k // len(families)) % len(scales)]
            donor = None
            if family == "paste" and len(images) > 1:
                other = int(rng.integers(0, len(images) - 1))
                donor = _resized_like(images[other + (other >= i)], image)
            defect, mask = make_defect(image, family, rng, donor, scale)
            out.append(SyntheticDefect(defect, mask, family, i, scale))
    return out
