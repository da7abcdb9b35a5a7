"""padim.alignment: the position spread against a naive NumPy analysis of variance and against
the known spread of constructed features."""

import numpy as np
import pytest
import torch

from padim.alignment import BORDER_FRACTION, position_spread


def naive_spread(x: np.ndarray, cell) -> float:
    """One-way ANOVA by loops: x [N, d, h, w]; groups are k×k blocks (the last ones smaller) or the image."""
    n, _, h, w = x.shape
    dy, dx = int(h * BORDER_FRACTION), int(w * BORDER_FRACTION)
    x = x[:, :, dy:h - dy, dx:w - dx].astype(np.float64)
    _, _, h, w = x.shape
    k_y, k_x = (h, w) if cell == "image" else (cell, cell)
    between = within = 0.0
    groups = 0
    for y0 in range(0, h, k_y):
        for x0 in range(0, w, k_x):
            block = x[:, :, y0:y0 + k_y, x0:x0 + k_x]  # [N, d, by, bx]
            groups += 1
            position_means = block.mean(axis=0)
            group_mean = position_means.mean(axis=(1, 2), keepdims=True)
            between += n * ((position_means - group_mean) ** 2).sum()
            within += ((block - position_means) ** 2).sum()
    positions = h * w
    f = (between / (positions - groups)) / (within / (positions * (n - 1)))
    return (f - 1) / n


@pytest.mark.parametrize("cell", ["image", 2, 3])
def test_spread_matches_a_naive_analysis_of_variance(cell):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3, 19, 13)) + rng.normal(size=(1, 3, 19, 13))  # odd grid: partial cells
    batches = [torch.from_numpy(x[:4]).float(), torch.from_numpy(x[4:]).float()]
    assert position_spread(batches, cell) == pytest.approx(naive_spread(x.astype(np.float32), cell), rel=1e-4)


def test_spread_is_about_zero_for_exchangeable_positions_and_the_true_ratio_for_aligned_ones():
    """Aligned: fixed per-position means of variance 0.5 plus unit noise → spread ≈ 0.5 / 1."""
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(40, 4, 32, 32))
    assert abs(position_spread([torch.from_numpy(noise)], "image")) < 0.02
    means = rng.normal(scale=np.sqrt(0.5), size=(1, 4, 32, 32))
    assert position_spread([torch.from_numpy(noise + means)], "image") == pytest.approx(0.5, abs=0.05)
    # more images tell the same spread (an effect size, not a significance)
    more = rng.normal(size=(160, 4, 32, 32)) + means
    assert position_spread([torch.from_numpy(more)], "image") == pytest.approx(0.5, abs=0.05)


def test_the_border_does_not_count():
    """Features that differ only in the outer eighth of the grid (zero padding's effect) are exchangeable."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 2, 32, 32))
    x[:, :, :4] += 5.0
    x[:, :, :, -4:] -= 5.0
    assert abs(position_spread([torch.from_numpy(x)], "image")) < 0.02


def test_one_image_or_nothing_to_pool_is_refused():
    with pytest.raises(ValueError, match="at least 2 images"):
        position_spread([torch.zeros(1, 2, 8, 8)], "image")
    with pytest.raises(ValueError, match="pools nothing"):
        position_spread([torch.zeros(3, 2, 1, 1)], 2)
