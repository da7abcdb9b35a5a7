"""How images are laid onto the feature grid: the input resolution, and whether it is tiled.

One continuous rule, no size thresholds (:func:`decide_geometry`):

1. **Typical image.** The training image of median pixel count (lower median, from the file
   headers) stands for the set: one stray huge photo does not make every image run at its
   resolution, and a set of one size is decided by that size. Every image is resized to the one
   input size, as before.
2. **Resolution.** With ``s = √(h·w)`` the typical image's equal-area side, the input's
   equal-area side is ``image_size + GROWTH · max(0, s − KNEE_SIDE)`` (aspect kept): images up to
   768² px of area get ``image_size``² px (256²: the paper's recipe, and the measured default on
   the cookies and BSData), larger ones grow by 0.44 input px per image px of side (a 1990² and
   a 2010² photo both run at 800², 794² and 803² before rounding; 3872×3200 at 1616×1328, the
   1600 px long side measured in benchmarks/RESULTS.md). The input never exceeds ``TIME_BUDGET_PIXELS`` (4 MP: about 8 s per
   image to fit on two CPU cores, from the 3.95 s measured at 2.1 MP) and shrinks further, never
   below ``image_size``², until the fit's memory plan (the Gaussians, one backbone pass and the
   rest of the process) fits the budget (``fits``).
3. **Tiles.** ``tile="auto"`` tiles exactly when one forward pass over the whole input would need
   more activation memory than ``ACTIVATION_SHARE`` of the memory budget (1 GiB of the default
   4 GiB; see :func:`activation_floats_per_pixel`); tiles are ``DEFAULT_TILE`` px (at least four
   margins) and overlap by the receptive field of the hooked layers (:func:`default_margin`),
   which makes the stitched features equal to the whole-image ones.
4. Images per batch, or tiles per batch, are as many as fit that activation share (at most the
   user's ``batch_size``).

Explicit options win: ``image_size=(h, w)`` fixes the input size, ``scale`` fixes the factor
(input = typical image × scale), ``tile=N`` always tiles with N px tiles, ``tile=None`` never
tiles, ``margin`` sets the overlap.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

from .maps import round_size
from .tiling import TileLayout, margin_for

KNEE_SIDE = 768  # equal-area side up to which images get image_size² px (BSData: 721, cookies: 665)
GROWTH = 0.44  # input px of side per image px of side beyond the knee
TIME_BUDGET_PIXELS = 4_000_000  # input pixels per image at most (time budget)
ACTIVATION_SHARE = 0.25  # share of the memory budget one forward pass (whole image or tile batch) may use
DEFAULT_TILE = 1024


def default_memory_budget() -> int:
    """Budget for the whole fit when none is given: 4 GiB, or half the machine's memory if less."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return int(min(4 * 2**30, total // 2))


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


@dataclass(frozen=True)
class Geometry:
    """Input size, strides, the tiles (if any) and how many images or tiles go in one batch."""

    input_size: tuple[int, int]  # images are resized to this (height, width) before features
    stride: int  # finest hooked stride: one feature position per ``stride`` input pixels
    multiple: int  # coarsest hooked stride
    tile: int | None = None
    margin: int = 0
    scale: float | None = None  # input size / typical training image size (None: not recorded)
    batch: int = 0  # images per batch (whole) or tiles per batch (tiled); 0: not recorded

    @property
    def tiled(self) -> bool:
        return self.tile is not None

    @property
    def feature_size(self) -> tuple[int, int]:
        return math.ceil(self.input_size[0] / self.stride), math.ceil(self.input_size[1] / self.stride)

    def layout(self) -> TileLayout:
        return TileLayout.plan(self.input_size[0], self.input_size[1], self.tile, self.margin,
                               self.stride, self.multiple)

    @property
    def max_images(self) -> int | None:
        """Most images in one batch (None: no bound): one when tiled (its tiles are batched
        instead), else the memory plan's ``batch``. The loader's and an export's bound."""
        if self.tiled:
            return 1
        if self.batch:
            return self.batch
        return 1 if self.scale is not None else None  # models saved before ``batch`` existed

    def images_per_batch(self, batch_size: int) -> int:
        """Images the loader puts in one batch: ``batch_size``, at most :attr:`max_images`."""
        cap = self.max_images
        return batch_size if cap is None else max(1, min(batch_size, cap))

    def tiles_per_batch(self, batch_size: int) -> int:
        return max(1, min(batch_size, self.batch)) if self.batch else batch_size

    def pass_pixels(self, batch_size: int) -> int:
        """Input pixels of one backbone pass: a batch of tiles, or of whole images."""
        if self.tiled:
            return self.tiles_per_batch(batch_size) * self.tile * self.tile
        return self.images_per_batch(batch_size) * self.input_size[0] * self.input_size[1]

    def as_dict(self) -> dict:
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Geometry":
        return cls(**{**data, "input_size": tuple(data["input_size"])})


# --------------------------------------------------------------------------- the parts of the rule

def typical_size(sizes: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """``(height, width)`` of the image of median pixel count (the lower median; ties by order)."""
    sizes = list(sizes)
    if not sizes:
        raise ValueError("none of the training images can be read")
    ordered = sorted(sizes, key=lambda hw: hw[0] * hw[1])
    return ordered[(len(ordered) - 1) // 2]


def auto_side(image_side: float, base: float) -> float:
    """Equal-area side of the automatic input for an image of equal-area side ``image_side``:
    ``base`` up to ``KNEE_SIDE``, then growing by ``GROWTH`` per pixel (continuous, monotone)."""
    return base + GROWTH * max(0.0, image_side - KNEE_SIDE)


def default_margin(points: Sequence, multiple: int) -> int:
    """Tile overlap after which stitched tile features equal whole-image features.

    A position of the deepest hooked layer depends on ``(rf − 1)/2`` pixels on each side of its
    centre (``rf``: that layer's theoretical receptive field, ``HookPoint.receptive_field``); the
    centre lies up to ``stride − 1`` px off the position's top-left pixel ("same" padding of
    stride-2 layers shifts it), and nearest upsampling takes a coarse position up to
    ``stride − finest stride`` px before the fine one. So a margin of ``(rf − 1)/2 + stride − 1``
    rounded up to ``multiple`` keeps every kept feature's receptive field inside its tile: 128 px
    for ResNet18 layers 1–3, 160 for WideResNet50-2, 192 for EfficientNet-Lite0 blocks 2/4/10,
    256 for Lite1/2 blocks 3/6/14: stitched features are then bit-identical to a whole pass on
    the CPU. Less is not free (tests/test_stitching_backbones.py, default layers): at 0.75 of
    this margin they differed by up to 2e-5–7e-3 of a channel's spread, at half of it 0.07–1.5.
    """
    deepest = max(points, key=lambda p: (p.receptive_field, p.stride))
    radius = (deepest.receptive_field - 1) / 2 + max(p.stride for p in points) - 1
    return margin_for(radius, multiple)


def activation_floats_per_pixel(peak: float, points: Sequence, d: int) -> float:
    """Float32 values per input pixel alive in one forward pass and its embedding: 1.5 × the
    backbone's largest layer input + output (``BackboneSpec.peak_activation``; the half for a
    residual branch held meanwhile and allocator slack), plus the hooked outputs, plus the
    embedding (``d`` channels at the finest stride, and the concatenation it is selected from)."""
    finest = min(p.stride for p in points)
    hooked = sum(p.channels / p.stride**2 for p in points)
    return 1.5 * peak + hooked + 2.0 * d / finest**2


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not 0 < float(scale) <= 4:
        raise ValueError(f"scale must be in (0, 4], got {scale}")
    return float(scale)


def _tile_side(tile, margin_px: int, multiple: int) -> int:
    if tile == "auto" or tile is True:  # not `tile in (..., True)`: 1 == True
        return max(_round_to(DEFAULT_TILE, multiple), math.ceil(4 * margin_px / multiple) * multiple)
    if isinstance(tile, str) or not float(tile) >= 1:
        raise ValueError(f"tile must be 'auto', None or a tile side in pixels (at least 1), got {tile!r}")
    return explicit_tile_side(tile, multiple)


def explicit_tile_side(tile: int, multiple: int) -> int:
    """The side that ``tile=N`` tiles have: N rounded to the nearest multiple of the deepest hooked
    stride ``multiple`` (at least one), so that every tile's feature grid is whole."""
    return _round_to(int(tile), multiple)


def decide_geometry(height: int, width: int, *, image_size, keep_aspect: bool, tile, margin, scale,
                    stride: int, multiple: int, receptive_margin: int = 0, floats_per_pixel: float = 0.0,
                    memory_budget: int | None = None, batch_size: int = 1,
                    max_pixels: int = TIME_BUDGET_PIXELS,
                    fits: Callable[[Geometry], bool] | None = None) -> Geometry:
    """The geometry for a typical training image of ``height × width`` (see the module docstring).

    ``receptive_margin``: the overlap the hooked layers need (:func:`default_margin`).
    ``floats_per_pixel``: activation values per input pixel (:func:`activation_floats_per_pixel`).
    ``memory_budget``: bytes (default :func:`default_memory_budget`). ``fits(geometry)``: whether
    the whole fit's plan for that geometry fits the budget (None: always).
    """
    if tile is not None and tile is not False and tile != "auto":
        _tile_side(tile, 0, multiple)  # refuse nonsense before anything else
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    activation_budget = ACTIVATION_SHARE * budget
    per_pixel_bytes = 4.0 * floats_per_pixel

    def build(raw: tuple[float, float], factor: float | None = None) -> Geometry:
        """Geometry for an input of ``raw`` (height, width) px: rounded to ``multiple`` for a whole
        pass (so every hooked stride divides it), kept as is for tiles (the layout pads)."""
        whole_size = round_size(raw[0], raw[1], multiple)
        whole_bytes = per_pixel_bytes * whole_size[0] * whole_size[1]
        tiled = tile not in (None, False) and (tile != "auto" or whole_bytes > activation_budget)
        size = whole_size if not tiled else (max(1, round(raw[0])), max(1, round(raw[1])))
        if factor is None:
            factor = math.sqrt(size[0] * size[1] / (height * width))
        if not tiled:
            batch = int(activation_budget // whole_bytes) if whole_bytes else batch_size
            return Geometry(size, stride, multiple, scale=factor, batch=max(1, min(batch_size, batch)))
        if margin is None:  # the receptive field, but never more than a quarter of an explicit tile
            margin_px = receptive_margin
            if tile != "auto" and tile is not True:
                margin_px = min(margin_px, (_tile_side(tile, 0, multiple) // 4) // multiple * multiple)
        else:  # rounded up, so the overlap is never less than asked for
            margin_px = 0 if int(margin) <= 0 else math.ceil(int(margin) / multiple) * multiple
        tile_px = _tile_side(tile, margin_px, multiple)
        if tile_px - 2 * margin_px <= 0:
            raise ValueError(f"tile {tile_px} px leaves no core after a {margin_px} px margin on each side; "
                             f"use a larger tile or a smaller overlap")
        tile_bytes = per_pixel_bytes * tile_px * tile_px
        batch = int(activation_budget // tile_bytes) if tile_bytes else batch_size
        return Geometry(size, stride, multiple, tile_px, margin_px, factor, max(1, min(batch_size, batch)))

    if scale is not None:
        factor = _check_scale(scale)
        return build((height * factor, width * factor), factor)
    if isinstance(image_size, (tuple, list)):
        if len(image_size) != 2 or not min(float(v) for v in image_size) > 0:
            raise ValueError(f"image_size must be a positive side or (height, width), got {image_size!r}")
        return build((float(image_size[0]), float(image_size[1])))
    base = float(image_size)
    if not base > 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")

    def at(side: float) -> Geometry:
        if not keep_aspect:
            return build((side, side))
        factor = side / math.sqrt(height * width)
        return build((height * factor, width * factor))

    side = min(auto_side(math.sqrt(height * width), base), max(base, math.sqrt(max_pixels)))
    geometry = at(side)
    if fits is None or side <= base or fits(geometry):
        return geometry
    if not fits(at(base)):
        return at(base)  # nothing fits: the caller reports the plan at the base size
    # The memory budget caps the resolution: the largest side in [base, side] whose plan fits.
    low, high = base, side
    while high - low > multiple / 4:
        mid = (low + high) / 2
        low, high = (mid, high) if fits(at(mid)) else (low, mid)
    return at(low)
