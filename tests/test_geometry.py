"""How images are laid onto the feature grid: resize mode vs tiled mode, checked against hand
arithmetic (no backbone needed)."""

import json
import math

import pytest

from padim.geometry import DEFAULT_MARGIN, DEFAULT_TILE, Geometry, decide_geometry, large_image_mode

# EfficientNet-Lite0 hook points: resize mode (blocks 4/10/14: strides 8, 16, 32) and tiled mode
# (blocks 2/4/10: strides 4, 8, 16).
RESIZE = dict(stride=8, multiple=32)
TILED = dict(stride=4, multiple=16)


def geometry(h, w, *, image_size=256, keep_aspect=True, tile="auto", margin=None, scale=None, strides=TILED):
    return decide_geometry(h, w, image_size=image_size, keep_aspect=keep_aspect, tile=tile, margin=margin,
                           scale=scale, **strides)


# --------------------------------------------------------------------------- large_image_mode

@pytest.mark.parametrize("h, w, tile, expected", [
    (768, 576, "auto", False),
    (2000, 1500, "auto", False),  # "long side above 2000 px": exactly 2000 is resized
    (2001, 1500, "auto", True),
    (1500, 2001, "auto", True),  # either side
    (3872, 3200, "auto", True),
    (3872, 3200, None, False),  # never
    (3872, 3200, False, False),
    (300, 300, 128, True),  # an explicit tile side always tiles, however small the image
])
def test_wants_tiles(h, w, tile, expected):
    assert large_image_mode(h, w, tile) is expected


# ------------------------------------------------------------------------- resize mode

def test_auto_leaves_a_mid_size_photo_in_resize_mode():
    g = geometry(768, 576, strides=RESIZE)
    assert not g.tiled and g.tile is None and g.margin == 0 and g.scale is None
    # Square of equal area 256²: factor 256/√(768·576) = 0.3849 → 295.6 × 221.7 px, to multiples
    # of 32 → 9·32 × 7·32.
    assert g.input_size == (288, 224)
    assert (g.stride, g.multiple) == (8, 32)
    assert g.feature_size == (36, 28)


def test_resize_mode_explicit_size_and_squash():
    assert geometry(768, 576, image_size=(250, 190), strides=RESIZE).input_size == (256, 192)
    assert geometry(768, 576, keep_aspect=False, strides=RESIZE).input_size == (256, 256)


# -------------------------------------------------------------------------- tiled mode

def test_auto_rescales_a_large_photo_and_runs_it_whole():
    g = geometry(3872, 3200)
    assert g.scale == pytest.approx(1600 / 3872)
    # 3872 · 1600/3872 = 1600, 3200 · 1600/3872 = 1322.3: 2.1 MP, small enough for one forward
    # pass, so no tiles; the size is rounded to the coarsest stride (16): 1600 × 1328.
    assert not g.tiled
    assert g.input_size == (1600, 1328)
    assert g.feature_size == (400, 332)


def test_auto_tiles_when_the_rescaled_photo_is_still_huge():
    g = geometry(3872, 3200, scale=1.0)  # 12.4 MP at native resolution
    assert g.tiled and g.input_size == (3872, 3200)
    assert (g.tile, g.margin) == (DEFAULT_TILE, DEFAULT_MARGIN) == (1024, 128)
    assert g.feature_size == (968, 800)
    layout = g.layout()
    assert layout.core == 1024 - 2 * 128
    assert (layout.tiles_y, layout.tiles_x) == (6, 5)  # ceil(3872/768), ceil(3200/768)
    assert layout.grid_size == g.feature_size


def test_auto_scale_never_enlarges():
    # 2100 px long side: factor 1600/2100 < 1.
    assert geometry(2100, 1000).scale == pytest.approx(1600 / 2100)
    # A small image with an explicit tile is tiled at its native size (default scale 1).
    g = geometry(500, 700, tile=256, margin=32)
    assert g.scale == 1.0 and g.input_size == (500, 700) and g.tiled


def test_explicit_tile_with_scale_one_keeps_native_size():
    g = geometry(3872, 3200, tile=1024, margin=128, scale=1.0)
    assert g.input_size == (3872, 3200) and g.scale == 1.0
    assert g.feature_size == (968, 800)
    g = geometry(321, 287, tile=128, margin=32, scale=1)
    assert g.input_size == (321, 287) and (g.tile, g.margin) == (128, 32)
    assert g.feature_size == (81, 72)  # ceil(321/4) = 81, ceil(287/4) = 72 (71.75)


def test_explicit_scale_is_applied():
    g = geometry(1000, 600, tile=256, margin=32, scale=0.5)
    assert g.input_size == (500, 300) and g.scale == 0.5
    g = geometry(100, 60, tile=256, margin=32, scale=4)  # 4 is the largest scale allowed
    assert g.input_size == (400, 240)


@pytest.mark.parametrize("tile, margin, expected", [
    (128, 32, (128, 32)),  # already multiples of 16
    (250, 30, (256, 32)),  # 15.6 → 16 strides; 1.9 → 2
    (200, 20, (192, 32)),  # tile 12.5 → 12 strides (round half to even); margin rounded up, 1.25 → 2
    (300, 5, (304, 16)),  # a positive margin is at least one coarsest stride
    (100, 0, (96, 0)),  # margin 0 allowed (tiles without overlap)
    (10, 0, (16, 0)),  # a tile is at least one coarsest stride
])
def test_tile_and_margin_rounded_to_coarsest_stride(tile, margin, expected):
    g = geometry(600, 600, tile=tile, margin=margin, scale=1.0)
    assert (g.tile, g.margin) == expected
    assert g.tile % g.multiple == 0 and g.margin % g.multiple == 0
    g.layout()  # a valid TileLayout


def test_explicit_tile_gets_the_default_margin():
    assert geometry(600, 600, tile=512, scale=1.0).margin == DEFAULT_MARGIN


def test_default_margin_is_at_most_a_quarter_of_the_tile():
    assert geometry(600, 600, tile=256, scale=1.0).margin == 64
    assert geometry(600, 600, tile=128, scale=1.0).margin == 32


@pytest.mark.parametrize("tile, margin", [(128, 64), (128, 100), (64, 40)])
def test_tile_without_core_is_refused(tile, margin):
    with pytest.raises(ValueError, match=r"leaves no core after .* margin") as info:
        geometry(600, 600, tile=tile, margin=margin, scale=1.0)
    message = str(info.value)
    assert "larger tile" in message and "smaller overlap" in message


@pytest.mark.parametrize("scale", [0, -0.5, 4.5, 100, float("nan")])
def test_scale_out_of_range_is_refused(scale):
    with pytest.raises(ValueError, match=r"scale must be in \(0, 4\]"):
        geometry(600, 600, tile=128, margin=32, scale=scale)


@pytest.mark.parametrize("tile", [0, -128, "big"])
def test_nonsense_tile_is_refused(tile):
    with pytest.raises(ValueError, match="tile must be"):
        geometry(600, 600, tile=tile, margin=0, scale=1.0)


def test_tiled_geometry_ignores_image_size():
    a = geometry(600, 400, image_size=64, tile=128, margin=32, scale=1.0)
    b = geometry(600, 400, image_size=(512, 512), tile=128, margin=32, scale=1.0)
    assert a == b and a.input_size == (600, 400)


# --------------------------------------------------------------------------- Geometry

@pytest.mark.parametrize("g", [
    Geometry((288, 224), 8, 32),
    Geometry((2048, 1693), 4, 16, 1024, 128, 2048 / 3872),
    Geometry((321, 287), 4, 16, 128, 32, 1.0),
])
def test_as_dict_from_dict_round_trip(g):
    data = g.as_dict()
    assert Geometry.from_dict(data) == g
    # Through JSON, as in a model file: tuples become lists and come back as tuples.
    again = Geometry.from_dict(json.loads(json.dumps(data)))
    assert again == g and isinstance(again.input_size, tuple)
    assert again.tiled == g.tiled and again.feature_size == g.feature_size


@pytest.mark.parametrize("size, stride", [((288, 224), 8), ((2048, 1693), 4), ((321, 287), 4), ((1, 1), 4),
                                          ((7, 9), 8)])
def test_feature_size_is_ceil_of_size_over_stride(size, stride):
    g = Geometry(size, stride, 4 * stride)
    assert g.feature_size == (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    assert g.feature_size == (-(-size[0] // stride), -(-size[1] // stride))


def test_tile_one_is_a_tile_side_not_true():
    # 1 == True in Python: a 1 px tile must not be taken for tile=True (the 1024 px default).
    assert geometry(600, 600, tile=1, margin=0, scale=1.0).tile == 16
    assert geometry(600, 600, tile=True, margin=0, scale=1.0).tile == DEFAULT_TILE
