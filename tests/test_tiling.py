"""Tiled extraction equals whole-image processing; cell arrangement matches naive statistics."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from padim.features import embedding_concat
from padim.gaussian import GaussianStats
from padim.net import TiledEmbedder
from padim.tiling import (TileLayout, cell_grid, extract_tiled, from_cells, margin_for, pad_image, plan_tiles,
                          samples_per_image, to_cells)


class TinyNet(nn.Module):
    """Three 3×3 stride-2 convs (strides 2, 4, 8); the stride-4 and stride-8 maps are combined by
    ``embedding_concat`` → a stride-4 embedding, largest stride 8.

    Receptive-field radius of an embedding cell: conv radii 1 + 2 + 4 = 7 px for the stride-8
    map, plus up to 4 px because nearest upsampling takes the coarse cell of the fine cell's
    left/upper neighbour: 11 px → margin 16 (a multiple of 8). Without bias, zero input gives
    zero features, so zero-filled tiles reproduce the zero padding of every layer of a
    whole-image pass and equality holds up to the image border too.
    """

    def __init__(self, bias: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(3, 6, 3, 2, 1, bias=bias)
        self.c2 = nn.Conv2d(6, 6, 3, 2, 1, bias=bias)
        self.c3 = nn.Conv2d(6, 5, 3, 2, 1, bias=bias)
        if bias:
            for conv in (self.c1, self.c2, self.c3):
                nn.init.uniform_(conv.bias, 0.1, 0.5)

    @torch.no_grad()
    def forward(self, x):
        f4 = F.relu(self.c2(F.relu(self.c1(x))))
        f8 = F.relu(self.c3(f4))
        return embedding_concat([f4, f8])


STRIDE, MULTIPLE, RADIUS = 4, 8, 11
MARGIN = margin_for(RADIUS, MULTIPLE)


@pytest.fixture(scope="module")
def net():
    return TinyNet()


def whole_image(images, net):
    """Reference: one forward pass over the whole image, padded at the bottom/right to a multiple
    of the largest stride (as any whole-image pipeline must, for the strides to divide its size),
    cropped to ceil(size / stride)."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (0, -w % MULTIPLE, 0, -h % MULTIPLE))
    return net(padded)[..., :-(-h // STRIDE), :-(-w // STRIDE)]


def tiled(images, net, tile=64, margin=MARGIN, tile_batch=3, fill=0.0):
    layout = plan_tiles(images.shape[-2], images.shape[-1], tile, margin, STRIDE, MULTIPLE)
    return extract_tiled(images, net, layout, torch.full((3,), fill), tile_batch=tile_batch)


# ------------------------------------------------------------------------------ layout
def test_layout_hand_computed():
    layout = plan_tiles(100, 100, tile=64, margin=16, stride=8, multiple=16)
    assert layout.core == 32
    assert (layout.tiles_y, layout.tiles_x, layout.n_tiles) == (4, 4, 16)
    assert layout.grid_size == (13, 13)
    assert layout.padded_size == (160, 160)  # 4 cores + 2 margins
    assert layout.padding == (16, 44, 16, 44)
    assert layout.origins[:5] == ((0, 0), (0, 32), (0, 64), (0, 96), (32, 0))
    assert layout.origins[-1] == (96, 96)
    assert (layout.tile_cells, layout.margin_cells, layout.core_cells) == (8, 2, 4)
    assert TileLayout.plan(100, 100, 64, 16, 8, 16) == layout


@pytest.mark.parametrize("h, w, tiles, grid, pad", [
    (128, 96, (4, 3), (32, 24), (16, 16, 16, 16)),  # exactly covered by cores
    (33, 150, (2, 5), (9, 38), (16, 47, 16, 26)),
    (20, 10, (1, 1), (5, 3), (16, 28, 16, 38)),  # smaller than one tile
    (1, 1, (1, 1), (1, 1), (16, 47, 16, 47)),
])
def test_layout_odd_sizes(h, w, tiles, grid, pad):
    layout = plan_tiles(h, w, 64, 16, 4, 8)
    assert (layout.tiles_y, layout.tiles_x) == tiles
    assert layout.grid_size == grid
    assert layout.padding == pad
    top, bottom, left, right = layout.padding
    assert (top + h + bottom, left + w + right) == layout.padded_size
    # the cores cover the whole grid
    assert layout.tiles_y * layout.core_cells >= grid[0] and layout.tiles_x * layout.core_cells >= grid[1]


@pytest.mark.parametrize("kwargs, match", [
    (dict(tile=64, margin=32), "no core"),
    (dict(tile=60, margin=16), "multiples of 8"),
    (dict(tile=64, margin=12), "multiples of 8"),
    (dict(tile=64, margin=-8), "margin"),
    (dict(tile=64, margin=16, stride=3), "multiple of stride"),
    (dict(tile=64, margin=16, height=0), "height"),
])
def test_layout_rejects_bad_values(kwargs, match):
    args = dict(height=100, width=100, stride=4, multiple=8) | kwargs
    with pytest.raises(ValueError, match=match):
        plan_tiles(**args)


def test_margin_for():
    assert margin_for(11, 8) == 16
    assert margin_for(16, 8) == 16
    assert margin_for(0, 32) == 0
    assert margin_for(169, 32) == 192


def test_pad_image_per_channel_fill():
    layout = plan_tiles(5, 7, 16, 0, 4, 8)
    images = torch.rand(2, 3, 5, 7)
    fill = torch.tensor([0.1, 0.2, 0.3])
    padded = pad_image(images, layout, fill)
    assert padded.shape == (2, 3, 16, 16)
    assert torch.equal(padded[:, :, :5, :7], images)
    for c in range(3):
        assert torch.all(padded[:, c, 5:, :] == fill[c]) and torch.all(padded[:, c, :, 7:] == fill[c])
    with pytest.raises(ValueError, match="one value per channel"):
        pad_image(images, layout, torch.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        pad_image(images[:, :, :4], layout, fill)


# ------------------------------------------------------------------------ stitching
@pytest.mark.parametrize("h, w", [(128, 96), (100, 77), (33, 150), (20, 10)])
def test_stitching_equals_whole_image(net, h, w):
    images = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    whole = whole_image(images, net)
    assert whole.shape[-2:] == (-(-h // STRIDE), -(-w // STRIDE))
    stitched = tiled(images, net)
    assert stitched.shape == whole.shape
    torch.testing.assert_close(stitched, whole, atol=1e-5, rtol=1e-5)


def test_tile_batch_does_not_matter(net):
    images = torch.randn(3, 3, 70, 90, generator=torch.Generator().manual_seed(1))
    reference = tiled(images, net, tile_batch=1)
    for tile_batch in (2, 7, 100):
        torch.testing.assert_close(tiled(images, net, tile_batch=tile_batch), reference, atol=1e-6, rtol=1e-6)


def test_too_small_margin_shows_seams(net):
    """The test is sensitive: without a margin the stitched grid differs from the whole image."""
    images = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    difference = (tiled(images, net, tile=32, margin=0) - whole_image(images, net)).abs().amax()
    assert difference > 1e-2


def test_biased_net_equal_away_from_image_border():
    """A net with biases answers flat padding with non-zero features, unlike a whole-image pass
    that zero-pads every layer: cells within the receptive field of the image border differ,
    the interior is still exact."""
    net = TinyNet(bias=True, seed=3)
    images = torch.randn(1, 3, 100, 90, generator=torch.Generator().manual_seed(3))
    whole, stitched = whole_image(images, net), tiled(images, net)
    r = -(-RADIUS // STRIDE)
    torch.testing.assert_close(stitched[..., r:-r, r:-r], whole[..., r:-r, r:-r], atol=1e-5, rtol=1e-5)
    assert (stitched - whole).abs().amax() > 1e-3


@pytest.mark.parametrize("h, w", [(128, 96), (100, 77), (20, 10)])
def test_graph_tiling_equals_whole_image_and_extract_tiled(net, h, w):
    """The export's TiledEmbedder (pad, one tile after the other, cores concatenated) gives the
    whole-image reference where the net maps zero to zero, and extract_tiled's grid for a net
    with biases and a per-channel fill, whose border cells see the fill."""
    images = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h + w))
    layout = plan_tiles(h, w, 64, MARGIN, STRIDE, MULTIPLE)
    graph = TiledEmbedder(net, layout, torch.zeros(3))
    torch.testing.assert_close(graph(images), whole_image(images, net), atol=1e-5, rtol=1e-5)
    biased, fill = TinyNet(bias=True, seed=5), torch.tensor([0.485, 0.456, 0.406])
    expected = extract_tiled(images, biased, layout, fill, tile_batch=3)
    torch.testing.assert_close(TiledEmbedder(biased, layout, fill)(images), expected, atol=1e-5, rtol=1e-5)


def test_embed_fn_shape_is_checked(net):
    layout = plan_tiles(40, 40, 64, 16, 4, 8)
    with pytest.raises(ValueError, match="embed_fn must map"):
        extract_tiled(torch.zeros(1, 3, 40, 40), lambda t: net(t)[:, :, :-1], layout, torch.zeros(3))


def _blob(h, w, cy, cx, sigma=3.0):
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


def test_defect_on_tile_seam_found_like_one_in_tile_centre(net):
    """A blob on the corner where four tile cores meet is stitched exactly as a whole-image pass
    sees it, and stands out as much as a blob in a tile's centre."""
    h = w = 160
    layout = plan_tiles(h, w, 64, MARGIN, STRIDE, MULTIPLE)
    seam = layout.core * 2  # image pixel 64: boundary between the 2nd and 3rd tile cores
    centre = layout.core * 3 + layout.core // 2  # middle of the 4th core: 112
    background = 0.3 * torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(4))
    clean = tiled(background, net)
    peaks = {}
    for name, (cy, cx) in {"seam": (seam, seam), "centre": (centre, centre)}.items():
        image = background + 2.0 * _blob(h, w, cy, cx)
        stitched = tiled(image, net)
        torch.testing.assert_close(stitched, whole_image(image, net), atol=1e-5, rtol=1e-5)
        change = (stitched - clean).norm(dim=1)[0]  # [gh, gw]
        iy, ix = divmod(int(change.argmax()), change.shape[1])
        assert abs(iy - cy / STRIDE) <= 2 and abs(ix - cx / STRIDE) <= 2, (name, iy, ix)
        peaks[name] = float(change.max())
    assert 0.5 < peaks["seam"] / peaks["centre"] < 2.0, peaks


def test_output_device_and_dtype(net):
    images = torch.randn(1, 3, 40, 50, dtype=torch.float64)
    layout = plan_tiles(40, 50, 64, 16, 4, 8)
    out = extract_tiled(images, lambda t: net(t.float()), layout, torch.zeros(3), out_device="cpu")
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (1, 11, 10, 13)


# --------------------------------------------------------------------------- cells
def test_cell_grid_and_samples():
    assert cell_grid(13, 13, 1) == (13, 13)
    assert cell_grid(13, 13, 4) == (4, 4)
    assert cell_grid(16, 12, 4) == (4, 3)
    assert cell_grid(13, 13, "image") == (1, 1)
    assert samples_per_image(13, 13, 4) == 16 and samples_per_image(13, 13, "image") == 169
    for bad in (0, -1, 2.0, "cell", True):
        with pytest.raises(ValueError, match="cell must be"):
            cell_grid(4, 4, bad)


@pytest.mark.parametrize("cell", [1, 2, 3, 4, "image"])
@pytest.mark.parametrize("h, w", [(8, 12), (7, 5)])
def test_to_cells_round_trip(cell, h, w):
    x = torch.randn(3, 4, h, w)
    samples = to_cells(x, cell)
    gh, gw = cell_grid(h, w, cell)
    k = h * w if cell == "image" else cell * cell
    assert samples.shape == (3 * k, 4, gh * gw)
    for channel in range(4):
        torch.testing.assert_close(from_cells(samples[:, channel], cell, 3, h, w), x[:, channel], rtol=0, atol=0)


def test_to_cells_per_position_is_flatten():
    x = torch.randn(2, 3, 5, 6)
    assert torch.equal(to_cells(x, 1), x.flatten(2))


def test_to_cells_replicates_last_row_and_column():
    x = torch.arange(9.0).view(1, 1, 3, 3)  # a 3×3 grid with k=2 → 2×2 cells
    samples = to_cells(x, 2)  # [4 members, 1, 4 cells]
    members = samples[:, 0].T  # [cell, member] with members ordered (dy, dx)
    assert members.tolist() == [[0, 1, 3, 4], [2, 2, 5, 5], [6, 7, 6, 7], [8, 8, 8, 8]]


def _cell_members(x: np.ndarray, k: int, i: int, j: int) -> np.ndarray:
    """Naive: all vectors of cell (i, j) over all images, edge positions replicated."""
    b, d, h, w = x.shape
    rows = [min(k * i + dy, h - 1) for dy in range(k)]
    cols = [min(k * j + dx, w - 1) for dx in range(k)]
    return np.stack([x[n, :, r, c] for n in range(b) for r in rows for c in cols])


@pytest.mark.parametrize("k", [2, 3])
def test_pooled_cell_statistics_match_numpy(k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(4, 3, 7, 5)) + 5.0
    stats = GaussianStats(int(np.prod(cell_grid(7, 5, k))), 3)
    t = torch.from_numpy(x)
    stats.update(to_cells(t[:2], k)).update(to_cells(t[2:], k))
    gh, gw = cell_grid(7, 5, k)
    cov, mean = stats.covariance().numpy(), stats.mean().numpy()
    for i in range(gh):
        for j in range(gw):
            members = _cell_members(x, k, i, j)
            np.testing.assert_allclose(mean[i * gw + j], members.mean(axis=0), rtol=1e-10)
            # (outer products are taken in float32 and summed in float64: float32-level agreement)
            np.testing.assert_allclose(cov[i * gw + j], np.cov(members, rowvar=False), rtol=1e-5, atol=1e-6)


def test_shared_image_gaussian_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 6, 5))
    stats = GaussianStats(1, 4).update(to_cells(torch.from_numpy(x), "image"))
    everything = x.transpose(0, 2, 3, 1).reshape(-1, 4)
    # (float32 outer products, float64 sums)
    np.testing.assert_allclose(stats.covariance()[0].numpy(), np.cov(everything, rowvar=False), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.mean()[0].numpy(), everything.mean(axis=0), rtol=1e-10)


@pytest.mark.parametrize("cell", [2, "image"])
def test_cell_mahalanobis_back_on_the_grid(cell):
    """Distances of to_cells samples, put back by from_cells, equal a naive per-position loop."""
    rng = np.random.default_rng(1)
    train = torch.from_numpy(rng.normal(size=(6, 3, 5, 4))).float()
    test = torch.from_numpy(rng.normal(size=(2, 3, 5, 4))).float()
    model = GaussianStats(int(np.prod(cell_grid(5, 4, cell))), 3).update(to_cells(train, cell)).finalize(0.1)
    grid = from_cells(model.mahalanobis(to_cells(test, cell)), cell, 2, 5, 4)
    gw = cell_grid(5, 4, cell)[1]
    precision = torch.linalg.inv(torch.linalg.inv(model.whitener.double()) @ torch.linalg.inv(model.whitener.double()).transpose(1, 2))
    for b in range(2):
        for r in range(5):
            for c in range(4):
                g = 0 if cell == "image" else (r // cell) * gw + c // cell
                diff = test[b, :, r, c].double() - model.mean[g].double()
                expected = float(diff @ precision[g] @ diff) ** 0.5
                assert abs(float(grid[b, r, c]) - expected) < 1e-4 * max(1.0, expected)


def test_from_cells_checks_shape():
    with pytest.raises(ValueError, match="values must have shape"):
        from_cells(torch.zeros(4, 5), 2, 1, 5, 5)


def test_efficientnet_lite0_interior_is_exact_with_receptive_field_margin(lite0_backbone):
    """The real default backbone, normalised by FeatureExtractor and padded with its mean colour:
    blocks 2 and 4 (strides 4, 8) have a receptive-field radius of 33 px (+4 px nearest
    upsampling), so margin 40 reproduces a whole-image pass exactly away from the image border."""
    from padim.backbones import get_spec
    from padim.features import FeatureExtractor

    spec = get_spec("efficientnet_lite0")
    extractor = FeatureExtractor(lite0_backbone, spec, ["_blocks.2", "_blocks.4"])
    try:
        embed = lambda t: embedding_concat(extractor(t))  # noqa: E731
        images = torch.rand(1, 3, 192, 160, generator=torch.Generator().manual_seed(5))
        whole = embed(images)
        fill = torch.tensor(spec.mean)
        border = 48 // 4  # compare cells more than 48 px from the image border
        for margin, exact in ((40, True), (16, False)):
            layout = plan_tiles(192, 160, 128, margin, 4, 8)
            stitched = extract_tiled(images, embed, layout, fill, tile_batch=8)
            inner = (stitched - whole)[..., border:-border, border:-border].abs().amax()
            assert (inner < 1e-4) == exact, (margin, float(inner))
    finally:
        extractor.remove_hooks()
