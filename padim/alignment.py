"""Whether the good images are aligned: does pooling positions into one Gaussian lose information?

PaDiM fits one Gaussian per feature position because, on an aligned product, each position sees
the same part of it. Coarser granularities (k×k cells, one Gaussian for the whole image) pool
positions and suit unaligned products and textures, where every position sees the same mixture.
The good images tell which case holds: a one-way analysis of variance of their features, with the
positions a Gaussian would pool as the groups. :func:`position_spread` estimates how far apart the
pooled positions' true means lie, as a variance relative to the variance within one position
(across the good images): about 0 where the pooled positions are exchangeable (nothing is lost by
pooling them), large where they see different parts of an aligned product. It is an effect size,
so it does not grow with the number of images as a significance test would.
"""

from __future__ import annotations

from typing import Iterable

import torch

BORDER_FRACTION = 1 / 8  # of the feature grid's side, left out on each side (see _interior)


def _grouped_means(means: torch.Tensor, cell) -> torch.Tensor:
    """Each position's group mean under granularity ``cell`` (``"image"``: one group; k: k×k cells,
    the last partial row/column of cells its own smaller group), broadcast back to ``[d, h, w]``."""
    if cell == "image":
        return means.mean(dim=(1, 2), keepdim=True).expand_as(means)
    k = int(cell)
    pooled = torch.nn.functional.avg_pool2d(means[None], k, stride=k, ceil_mode=True)[0]
    return pooled.repeat_interleave(k, dim=1).repeat_interleave(k, dim=2)[:, :means.shape[1], :means.shape[2]]


def _interior(grid: torch.Tensor) -> torch.Tensor:
    """``[d, h, w]`` without its outer BORDER_FRACTION of rows and columns on each side, where the
    backbone's zero padding makes even an unaligned texture's features depend on position."""
    h, w = grid.shape[1:]
    dy, dx = int(h * BORDER_FRACTION), int(w * BORDER_FRACTION)
    return grid[:, dy:h - dy, dx:w - dx]


def position_spread(embeddings: Iterable[torch.Tensor], cell) -> float:
    """The variance of the true position means inside each group of ``cell`` (k or ``"image"``),
    relative to the variance within a position, summed over the feature channels; from good
    images' embeddings (batches ``[b, d, h, w]``), the grid's border left out (:func:`_interior`).

    A one-way analysis of variance: with N images, position means ``m_p`` and group means ``m_g``,
    between = ``N·Σ‖m_p − m_g‖² / (P − G)`` and within = ``Σ‖x − m_p‖² / (P·(N − 1))`` over P
    positions in G groups; between/within is about 1 when the pooled positions' true means are
    equal, and (between/within − 1) / N estimates their variance over the within variance.
    Needs at least 2 images and more positions than groups."""
    total = squares = None
    n = 0
    for batch in embeddings:
        batch = batch.double()
        total = batch.sum(0) if total is None else total + batch.sum(0)
        squares = (batch ** 2).sum(0) if squares is None else squares + (batch ** 2).sum(0)
        n += len(batch)
    if n < 2:
        raise ValueError(f"position_spread needs at least 2 images, got {n}")
    means, squares = _interior(total / n), _interior(squares)
    d, h, w = means.shape
    within = (squares - n * means ** 2).clamp(min=0).sum() / (h * w * (n - 1))
    groups = 1 if cell == "image" else -(-h // int(cell)) * -(-w // int(cell))
    if groups >= h * w:
        raise ValueError(f"cell {cell} pools nothing on a {h}×{w} feature grid")
    between = n * ((means - _grouped_means(means, cell)) ** 2).sum() / (h * w - groups)
    return float((between / within.clamp(min=1e-30) - 1) / n)
