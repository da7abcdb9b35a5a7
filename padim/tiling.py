"""Tiled feature extraction for large images, and the granularity at which Gaussians are fitted.

Why: a 3872×3200 photo resized to 256 px erases a 20–80 px defect, and a whole-image forward
pass at native resolution does not fit in memory. So the image is cut into overlapping tiles,
the backbone runs on batches of tiles, each tile's feature map is cropped by a ``margin`` (the
features near a tile's border see the tile's zero padding, not the neighbouring pixels) and
the cropped cores are stitched into ONE feature grid ``[B, d, ceil(H/stride), ceil(W/stride)]``
for the whole image.

Geometry (all in input pixels): ``core = tile − 2·margin``. The image is padded by ``margin``
on the top/left and by enough on the bottom/right, with a constant colour ``fill``; tile ``t``
starts at ``t·core`` in padded coordinates, so its core covers image pixels
``[t·core, (t+1)·core)``. ``tile`` and ``margin`` are multiples of the backbone's largest
stride (``multiple``), so every tile's convolution grid coincides with the grid of a forward
pass over the whole image, at every layer. If, in addition, ``margin`` is at least the
receptive-field radius of the embedding (:func:`padim.geometry.default_margin`), the stitched grid equals the
features of one whole-image pass over the image padded at the bottom/right with ``fill`` to a
multiple of ``multiple`` (as a whole-image pipeline must pad or resize anyway), cropped to
``ceil(size/stride)``. Exactly so in the interior; within a receptive field of the image
border only for networks that map zero input to zero features, since a whole-image pass pads
every layer with zeros while tiles see ``fill`` pixels run through the network. With ``fill``
= the normalisation mean the first layer sees the same zeros; deeper layers see the network's
response to a flat mean colour — consistently in fit and score, which is what matters.

Granularity: :func:`to_cells` rearranges a feature grid so that the unchanged
:class:`padim.gaussian.GaussianStats` fits one Gaussian per position (``cell=1``, PaDiM), one
per cell of k×k positions (``cell=k``: the k² positions of a cell are pooled as extra samples —
k² more samples per Gaussian, k² less memory), or one shared by the whole image
(``cell="image"``: textures, unaligned products). :func:`from_cells` puts per-sample distances
back on the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import torch
import torch.nn.functional as F

Cell = Union[int, str]


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of an ``height × width`` image lie, and the feature grid they produce.

    tile: tile side in input pixels (a multiple of ``multiple``). margin: input pixels cropped
    from each side of every tile's features (a multiple of ``multiple``; 0 allowed). stride: the
    finest hooked stride, i.e. input pixels per position of the stitched grid. multiple: the
    backbone's largest stride (a multiple of ``stride``). Build with :func:`plan_tiles` or
    :meth:`plan`; invalid combinations raise ``ValueError`` saying what to change.
    """

    height: int
    width: int
    tile: int
    margin: int
    stride: int
    multiple: int

    def __post_init__(self):
        _check_int("height", self.height, 1)
        _check_int("width", self.width, 1)
        _check_int("tile", self.tile, 1)
        _check_int("margin", self.margin, 0)
        _check_int("stride", self.stride, 1)
        _check_int("multiple", self.multiple, 1)
        if self.multiple % self.stride:
            raise ValueError(f"multiple ({self.multiple}) must be a multiple of stride ({self.stride})")
        if self.tile % self.multiple or self.margin % self.multiple:
            raise ValueError(
                f"tile ({self.tile}) and margin ({self.margin}) must be multiples of {self.multiple} "
                f"(the backbone's largest stride) so every tile is aligned with the whole-image grid"
            )
        if self.core <= 0:
            raise ValueError(
                f"tile {self.tile} leaves no core after cropping a margin of {self.margin} px on each side; "
                f"use a tile larger than {2 * self.margin} or a smaller margin"
            )

    @classmethod
    def plan(cls, height: int, width: int, tile: int, margin: int, stride: int, multiple: int) -> "TileLayout":
        return cls(height, width, tile, margin, stride, multiple)

    @property
    def core(self) -> int:
        """Side of the part of a tile whose features are kept, in input pixels."""
        return self.tile - 2 * self.margin

    @property
    def tiles_y(self) -> int:
        return math.ceil(self.height / self.core)

    @property
    def tiles_x(self) -> int:
        return math.ceil(self.width / self.core)

    @property
    def n_tiles(self) -> int:
        return self.tiles_y * self.tiles_x

    @property
    def origins(self) -> tuple[tuple[int, int], ...]:
        """Top-left corner ``(y, x)`` of every tile in padded-image coordinates, row by row."""
        return tuple((i * self.core, j * self.core) for i in range(self.tiles_y) for j in range(self.tiles_x))

    @property
    def padded_size(self) -> tuple[int, int]:
        return (self.tiles_y * self.core + 2 * self.margin, self.tiles_x * self.core + 2 * self.margin)

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` pixels added around the image."""
        ph, pw = self.padded_size
        return (self.margin, ph - self.margin - self.height, self.margin, pw - self.margin - self.width)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Stitched feature grid ``(ceil(H/stride), ceil(W/stride))``."""
        return (math.ceil(self.height / self.stride), math.ceil(self.width / self.stride))

    @property
    def tile_cells(self) -> int:
        """Feature cells per tile side (``tile / stride``)."""
        return self.tile // self.stride

    @property
    def margin_cells(self) -> int:
        return self.margin // self.stride

    @property
    def core_cells(self) -> int:
        return self.core // self.stride


def plan_tiles(height: int, width: int, tile: int, margin: int, stride: int, multiple: int) -> TileLayout:
    """Layout of ``tile``-pixel tiles over an ``height × width`` image (see :class:`TileLayout`)."""
    return TileLayout(height, width, tile, margin, stride, multiple)


def margin_for(radius: float, multiple: int) -> int:
    """Smallest valid margin covering a receptive-field ``radius`` (pixels): rounded up to ``multiple``.

    :func:`padim.geometry.default_margin` gives the radius of an embedding from its hook points'
    receptive fields. EfficientNet-Lite0, measured on a 1024² photo: blocks 2/4/10 (radius 169 +
    15 px) are exact from margin 192; blocks 4/10/14 (radius 393 + 31 px) would need 448 — at
    margin 256 the interior still differs by 0.6 % of a feature's standard deviation on average
    (0.2 σ at most), at 128 by 14 % (2 σ at most).
    """
    return int(math.ceil(radius / multiple)) * multiple


def _fill_tensor(fill, like: torch.Tensor) -> torch.Tensor:
    fill = torch.as_tensor(fill, dtype=like.dtype, device=like.device).flatten()
    if fill.numel() == 1:
        fill = fill.expand(like.shape[1])
    if fill.numel() != like.shape[1]:
        raise ValueError(f"fill must have one value per channel ({like.shape[1]}), got {fill.numel()}")
    return fill


def pad_image(images: torch.Tensor, layout: TileLayout, fill) -> torch.Tensor:
    """Pad ``[B, C, H, W]`` images to ``layout.padded_size`` with a constant colour per channel.

    Pass the backbone's normalisation mean as ``fill``: after normalisation it is exactly 0, the
    value a whole-image pass pads its first convolution with.
    """
    if images.ndim != 4 or tuple(images.shape[-2:]) != (layout.height, layout.width):
        raise ValueError(
            f"images must have shape [B, C, {layout.height}, {layout.width}] for this layout, "
            f"got {tuple(images.shape)}"
        )
    top, _bottom, left, _right = layout.padding
    ph, pw = layout.padded_size
    fill = _fill_tensor(fill, images)
    out = fill.view(1, -1, 1, 1).expand(images.shape[0], images.shape[1], ph, pw).clone()
    out[:, :, top:top + layout.height, left:left + layout.width] = images
    return out


@torch.no_grad()
def extract_tiled(
    images: torch.Tensor,
    embed_fn: Callable[[torch.Tensor], torch.Tensor],
    layout: TileLayout,
    fill,
    tile_batch: int = 16,
    out_device: str | torch.device | None = None,
) -> torch.Tensor:
    """Feature grid ``[B, d, ceil(H/stride), ceil(W/stride)]`` of ``[B, 3, H, W]`` images, by tiles.

    ``embed_fn`` maps tiles ``[n, 3, tile, tile]`` to features ``[n, d, tile/stride, tile/stride]``
    (it may move them to its device). Tiles of all images in the batch are pooled into batches of
    ``tile_batch``; besides the output grid (on ``out_device``, default: the features' device)
    only one batch of tiles and of their features is alive at a time.
    """
    _check_int("tile_batch", tile_batch, 1)
    padded = pad_image(images, layout, fill)
    batch = images.shape[0]
    t, c = layout.tile, layout.core
    # [B, C, ty, tx, t, t]: a view, nothing is copied until a batch of tiles is gathered.
    windows = padded.unfold(2, t, c).unfold(3, t, c).permute(0, 2, 3, 1, 4, 5)
    ny, nx = layout.tiles_y, layout.tiles_x
    total = batch * ny * nx
    index = torch.arange(total)
    b_idx, rest = index // (ny * nx), index % (ny * nx)
    y_idx, x_idx = rest // nx, rest % nx
    fc, mc, cc = layout.tile_cells, layout.margin_cells, layout.core_cells
    gh, gw = layout.grid_size
    out = None
    for start in range(0, total, tile_batch):
        sl = slice(start, start + tile_batch)
        tiles = windows[b_idx[sl].to(padded.device), y_idx[sl].to(padded.device), x_idx[sl].to(padded.device)]
        feats = embed_fn(tiles)
        if feats.ndim != 4 or feats.shape[0] != tiles.shape[0] or tuple(feats.shape[-2:]) != (fc, fc):
            raise ValueError(
                f"embed_fn must map {tuple(tiles.shape)} tiles to [{tiles.shape[0]}, d, {fc}, {fc}] "
                f"(tile / stride = {t} / {layout.stride}), got {tuple(feats.shape)}"
            )
        cores = feats[:, :, mc:mc + cc, mc:mc + cc]
        if out is None:
            device = feats.device if out_device is None else torch.device(out_device)
            out = torch.empty(batch, feats.shape[1], gh, gw, dtype=feats.dtype, device=device)
        cores = cores.to(out.device)
        # One slice copy per tile (≤ tile_batch per batch); cores on the last row/column overhang
        # the grid and are clipped.
        for k in range(tiles.shape[0]):
            b, y0, x0 = int(b_idx[start + k]), int(y_idx[start + k]) * cc, int(x_idx[start + k]) * cc
            h, w = min(cc, gh - y0), min(cc, gw - x0)
            out[b, :, y0:y0 + h, x0:x0 + w] = cores[k, :, :h, :w]
        del tiles, feats, cores
    return out


# ------------------------------------------------------------------------------ granularity
def _check_cell(cell: Cell) -> Cell:
    if cell == "image":
        return cell
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 1:
        raise ValueError(f"cell must be an integer ≥ 1 (k×k positions per Gaussian) or 'image', got {cell!r}")
    return cell


def cell_grid(h: int, w: int, cell: Cell) -> tuple[int, int]:
    """Number of cells ``(gh, gw)`` of an ``h × w`` grid: ``(ceil(h/k), ceil(w/k))``, or (1, 1)."""
    cell = _check_cell(cell)
    if cell == "image":
        return (1, 1)
    return (math.ceil(h / cell), math.ceil(w / cell))


def samples_per_image(h: int, w: int, cell: Cell) -> int:
    """Samples one image contributes to each Gaussian: 1, k², or h·w for ``"image"``."""
    cell = _check_cell(cell)
    return h * w if cell == "image" else cell * cell


def to_cells(features: torch.Tensor, cell: Cell) -> torch.Tensor:
    """Rearrange ``[B, d, h, w]`` features into samples ``[S, d, n_cells]`` for ``GaussianStats``.

    ``cell=1``: ``[B, d, h·w]`` (a view; one Gaussian per position). ``cell=k``:
    ``[B·k·k, d, gh·gw]`` — sample ``(b, dy, dx)`` holds the vector at offset ``(dy, dx)`` inside
    every cell of image ``b``, so a cell's Gaussian pools its k² positions over all images. When
    ``h`` or ``w`` is not a multiple of k, the last row/column is replicated to fill the last
    cells (those cells count their edge vectors more than once; every cell has exactly k²
    members). ``cell="image"``: ``[B·h·w, d, 1]``, one Gaussian shared by every position.
    """
    cell = _check_cell(cell)
    if features.ndim != 4:
        raise ValueError(f"features must have shape [B, d, h, w], got {tuple(features.shape)}")
    b, d, h, w = features.shape
    if cell == "image":
        return features.permute(0, 2, 3, 1).reshape(b * h * w, d, 1)
    if cell == 1:
        return features.flatten(2)
    gh, gw = cell_grid(h, w, cell)
    pad_h, pad_w = gh * cell - h, gw * cell - w
    if pad_h or pad_w:
        features = F.pad(features, (0, pad_w, 0, pad_h), mode="replicate")
    x = features.reshape(b, d, gh, cell, gw, cell).permute(0, 3, 5, 1, 2, 4)  # [B, k, k, d, gh, gw]
    return x.reshape(b * cell * cell, d, gh * gw)


def from_cells(values: torch.Tensor, cell: Cell, batch: int, h: int, w: int) -> torch.Tensor:
    """Per-sample values ``[S, n_cells]`` (e.g. Mahalanobis distances of :func:`to_cells`'s
    samples) back on the grid: ``[batch, h, w]``, the replicated padding cropped."""
    cell = _check_cell(cell)
    gh, gw = cell_grid(h, w, cell)
    k = 1 if cell == "image" else cell
    expected = (batch * h * w, 1) if cell == "image" else (batch * k * k, gh * gw)
    if tuple(values.shape) != expected:
        raise ValueError(
            f"values must have shape {list(expected)} for cell={cell!r}, batch={batch}, grid {h}×{w}; "
            f"got {tuple(values.shape)}"
        )
    if cell == "image" or cell == 1:
        return values.reshape(batch, h, w)
    x = values.reshape(batch, k, k, gh, gw).permute(0, 3, 1, 4, 2).reshape(batch, gh * k, gw * k)
    return x[:, :h, :w]
