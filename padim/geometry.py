"""How images are laid onto the feature grid: resized whole, or rescaled and cut into tiles.

Small and mid-size photos are resized to a few hundred pixels (the paper's recipe). Large
photos (long side above ``AUTO_TILE_SIDE``) keep most of their resolution, so that a 20 px
defect survives, and go through the backbone as overlapping tiles whose features are stitched
into one grid.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

from .maps import input_size_for
from .tiling import TileLayout

AUTO_TILE_SIDE = 2000  # training images with a longer side than this are "large"
AUTO_LARGE_SIDE = 1600  # large images are rescaled so their longer side is at most this
AUTO_WHOLE_PIXELS = 4_500_000  # up to this many pixels (after rescaling) one forward pass beats tiles
DEFAULT_TILE = 1024
DEFAULT_MARGIN = 128  # seamless to ~0.1 % of a feature's spread for stride-4/8/16 hook points


def default_memory_budget() -> int:
    """Budget for the Gaussians when none is given: 4 GiB, or half the machine's memory if less."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return int(min(4 * 2**30, total // 2))


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


@dataclass(frozen=True)
class Geometry:
    """Input size, strides and, for large images, the scale and (when tiled) tile and margin."""

    input_size: tuple[int, int]  # images are resized to this (height, width) before features
    stride: int  # finest hooked stride: one feature position per ``stride`` input pixels
    multiple: int  # coarsest hooked stride
    tile: int | None = None
    margin: int = 0
    scale: float | None = None  # large-image mode: input size / original size

    @property
    def tiled(self) -> bool:
        return self.tile is not None

    @property
    def feature_size(self) -> tuple[int, int]:
        return math.ceil(self.input_size[0] / self.stride), math.ceil(self.input_size[1] / self.stride)

    def layout(self) -> TileLayout:
        return TileLayout.plan(self.input_size[0], self.input_size[1], self.tile, self.margin,
                               self.stride, self.multiple)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Geometry":
        return cls(**{**data, "input_size": tuple(data["input_size"])})


def large_image_mode(height: int, width: int, tile) -> bool:
    """Large-image mode (rescaled, tiled when needed): asked for with an int tile, or automatic
    when the long side exceeds ``AUTO_TILE_SIDE``."""
    if tile is None or tile is False:
        return False
    if tile == "auto":
        return max(height, width) > AUTO_TILE_SIDE
    return True


def decide_geometry(height: int, width: int, *, image_size, keep_aspect: bool, tile, margin, scale,
                    stride: int, multiple: int) -> Geometry:
    """The geometry for training images of ``height × width`` and the user's options."""
    if not large_image_mode(height, width, tile):
        return Geometry(input_size_for(height, width, image_size, keep_aspect, multiple), stride, multiple)
    if scale is None:
        scale = min(1.0, AUTO_LARGE_SIDE / max(height, width))
    if not 0 < float(scale) <= 4:
        raise ValueError(f"scale must be in (0, 4], got {scale}")
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if tile == "auto" and size[0] * size[1] <= AUTO_WHOLE_PIXELS:
        # Tiles only bound memory; they cost 2–3× the pixels in overlap. A rescaled image this
        # small goes through the backbone whole, at the same resolution the tiles would see.
        return Geometry(input_size_for(height, width, size, False, multiple), stride, multiple, scale=float(scale))
    if tile == "auto" or tile is True:  # not `tile in (..., True)`: 1 == True
        tile = DEFAULT_TILE
    elif isinstance(tile, str) or not float(tile) >= 1:
        raise ValueError(f"tile must be 'auto', None or a tile side in pixels (at least 1), got {tile!r}")
    tile_px = _round_to(int(tile), multiple)
    if margin is None:  # the default, but never more than a quarter of the tile
        margin_px = min(DEFAULT_MARGIN, (tile_px // 4) // multiple * multiple)
    else:  # rounded up, so the overlap is never less than asked for
        margin_px = 0 if int(margin) <= 0 else math.ceil(int(margin) / multiple) * multiple
    if tile_px - 2 * margin_px <= 0:
        raise ValueError(f"tile {tile_px} px leaves no core after a {margin_px} px margin on each side; "
                         f"use a larger tile or a smaller overlap")
    return Geometry(size, stride, multiple, tile_px, margin_px, float(scale))
