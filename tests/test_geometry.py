"""How images are laid onto the feature grid: the continuous resolution rule, the tiling decision
and tile/margin arithmetic, checked against hand arithmetic (no backbone needed)."""

import json
import math

import pytest

from padim.backbones import BACKBONES
from padim.geometry import (ACTIVATION_SHARE, DEFAULT_TILE, GROWTH, KNEE_SIDE, TIME_BUDGET_PIXELS, Geometry,
                            activation_floats_per_pixel, auto_side, decide_geometry, default_margin, typical_size)

GIB = 2**30
# EfficientNet-Lite0 default hook points (blocks 2/4/10: strides 4, 8, 16), all 176 channels.
TILED = dict(stride=4, multiple=16)
RESIZE = dict(stride=8, multiple=32)  # blocks 4/10/14
# Margin by hand: block 10's receptive field is 339 px → radius 169, + 16 − 1 for the position of
# its centre = 184 → rounded up to 16: 192.
LITE0_MARGIN = 192
# Activation floats per input pixel by hand: 1.5 × 48 (block 1) + 24/4² + 40/8² + 112/16² (the
# hooked outputs) + 2 × 176/4² (embedding) = 72 + 1.5 + 0.625 + 0.4375 + 22 = 96.5625.
LITE0_FLOATS = 96.5625


def geometry(h, w, *, image_size=256, keep_aspect=True, tile="auto", margin=None, scale=None, strides=TILED,
             budget=4 * GIB, batch_size=16, fits=None, floats=LITE0_FLOATS):
    return decide_geometry(h, w, image_size=image_size, keep_aspect=keep_aspect, tile=tile, margin=margin,
                           scale=scale, receptive_margin=LITE0_MARGIN, floats_per_pixel=floats,
                           memory_budget=budget, batch_size=batch_size, fits=fits, **strides)


# ----------------------------------------------------------------- the parts of the rule

def test_typical_size_is_the_lower_median_by_pixel_count():
    assert typical_size([(10, 10)]) == (10, 10)
    assert typical_size([(30, 30), (10, 10), (20, 20)]) == (20, 20)
    assert typical_size([(30, 30), (10, 10), (20, 20), (40, 40)]) == (20, 20)  # lower median
    # one stray huge image among small ones does not decide the set
    assert typical_size([(3872, 3200)] + [(460, 1130)] * 4) == (460, 1130)
    with pytest.raises(ValueError, match="none of the training images"):
        typical_size([])


def test_auto_side_by_hand():
    assert auto_side(100, 256) == 256  # small images: the base, as today (up-sampled)
    assert auto_side(KNEE_SIDE, 256) == 256
    assert auto_side(1990, 256) == pytest.approx(256 + 0.44 * (1990 - 768))  # 793.7
    assert auto_side(3520, 256) == pytest.approx(256 + 0.44 * 2752)  # 1466.9
    assert auto_side(1000, 512) == pytest.approx(512 + 0.44 * 232)


def test_auto_side_is_continuous_and_monotone():
    sides = [100 + 0.5 * i for i in range(20000)]
    values = [auto_side(s, 256) for s in sides]
    steps = [b - a for a, b in zip(values, values[1:])]
    assert min(steps) >= 0  # monotone
    assert max(steps) <= GROWTH * 0.5 + 1e-9  # no jump anywhere: slope at most GROWTH


@pytest.mark.parametrize("backbone, margin", [
    # (rf − 1)/2 + deepest stride − 1, rounded up to the coarsest stride (16 for all defaults)
    ("resnet18", 128),  # layer3: rf 211 → 105 + 15 = 120 → 128
    ("wide_resnet50_2", 160),  # layer3: rf 267 → 133 + 15 = 148 → 160
    ("efficientnet_lite0", 192),  # block 10: rf 339 → 169 + 15 = 184 → 192
    ("efficientnet_lite1", 256),  # block 14: rf 475 → 237 + 15 = 252 → 256
    ("efficientnet_lite2", 256),
])
def test_default_margin_of_each_backbone(backbone, margin):
    spec = BACKBONES[backbone]
    points = [spec.hook_point(n) for n in spec.default_layers]
    assert default_margin(points, max(p.stride for p in points)) == margin


def test_activation_floats_by_hand():
    spec = BACKBONES["efficientnet_lite0"]
    points = [spec.hook_point(n) for n in spec.default_layers]
    assert activation_floats_per_pixel(spec.peak_activation, points, 176) == pytest.approx(LITE0_FLOATS)


# ------------------------------------------------------------------------ resolution

def test_shared_datasets_keep_the_256_area_recipe():
    g = geometry(768, 576, strides=RESIZE)  # the cookies
    assert not g.tiled and g.tile is None and g.margin == 0
    # Square of equal area 256²: factor 256/√(768·576) = 0.3849 → 295.6 × 221.7 px, to multiples
    # of 32 → 9·32 × 7·32.
    assert g.input_size == (288, 224)
    assert (g.stride, g.multiple) == (8, 32)
    assert g.feature_size == (36, 28)
    # BSData 460 × 1130: factor 256/√519800 = 0.3551 → 163.3 × 401.2 → multiples of 16: 160 × 400
    assert geometry(460, 1130).input_size == (160, 400)


def test_resize_mode_explicit_size_and_squash():
    assert geometry(768, 576, image_size=(250, 190), strides=RESIZE).input_size == (256, 192)
    assert geometry(768, 576, keep_aspect=False, strides=RESIZE).input_size == (256, 256)


def test_a_large_photo_runs_whole_at_about_1600_px():
    g = geometry(3872, 3200)
    # √(3872·3200) = 3520 → side 256 + 0.44·(3520 − 768) = 1466.9, factor 0.41673 → 1613.6 × 1333.5
    # → multiples of 16: 1616 × 1328. 2.15 MP × 96.56 floats × 4 B = 829 MB: under a quarter of
    # 4 GiB, so one forward pass, one image per batch (1 GiB // 829 MB).
    assert g.input_size == (1616, 1328)
    assert not g.tiled and g.batch == 1
    assert g.scale == pytest.approx(math.sqrt(1616 * 1328 / (3872 * 3200)))
    assert g.feature_size == (404, 332)


def test_no_cliff_at_2000_px():
    # 1990²: 256 + 0.44·1222 = 793.7 → 800; 2010²: 256 + 0.44·1242 = 802.5 → 800 (was 256² vs 1600²)
    assert geometry(1990, 1990).input_size == geometry(2010, 2010).input_size == (800, 800)


def test_input_pixels_are_monotone_in_the_image_size():
    pixels = []
    for k in range(50, 2250, 9):  # 200 × 150 up to 8964 × 6723, aspect 4:3 exactly
        g = geometry(4 * k, 3 * k, tile=None)
        pixels.append(g.input_size[0] * g.input_size[1])
    assert all(b >= a for a, b in zip(pixels, pixels[1:]))
    assert pixels[0] == 288 * 224 and max(pixels) <= TIME_BUDGET_PIXELS  # 295.6 × 221.7 → multiples of 16


def test_time_budget_caps_the_input():
    g = geometry(8000, 6000)
    # side 256 + 0.44·(6928 − 768) = 2966 → capped at √4e6 = 2000: 2309.4 × 1732.1
    assert g.input_size == (2309, 1732) and g.input_size[0] * g.input_size[1] <= TIME_BUDGET_PIXELS


def test_a_larger_base_is_not_cut_by_the_time_budget():
    assert geometry(500, 500, image_size=2400, tile=None).input_size == (2400, 2400)


def test_memory_budget_caps_the_input():
    def fits(g):
        return g.input_size[0] * g.input_size[1] <= 1_000_000

    g = geometry(3872, 3200, fits=fits)
    assert fits(g)
    h, w = g.input_size
    assert (h + 32) * (w + 32) > 1_000_000  # the largest that fits, to a stride or two
    # nothing fits: the base size, which the caller then reports
    assert geometry(3872, 3200, fits=lambda g: False).input_size == geometry(500, 413).input_size


def test_explicit_size_and_scale_ignore_the_budgets():
    never = lambda g: False  # noqa: E731
    assert geometry(3872, 3200, image_size=(256, 256), fits=never).input_size == (256, 256)
    assert geometry(3872, 3200, scale=0.25, tile=None, fits=never).input_size == (960, 800)  # 60.5 → 60


# ------------------------------------------------------------------------------ tiles

def test_auto_tiles_when_one_pass_exceeds_the_activation_share():
    # 1616 × 1328 needs 829 MB: whole under 4 GiB (1 GiB share), tiled under 2 GiB (512 MiB share).
    assert not geometry(3872, 3200, budget=4 * GIB).tiled
    g = geometry(3872, 3200, budget=2 * GIB)
    assert g.tiled and (g.tile, g.margin) == (DEFAULT_TILE, LITE0_MARGIN) == (1024, 192)
    assert g.input_size == (1614, 1334)  # tiles keep the unrounded size (the layout pads)
    # tiles per batch: 512 MiB // (1024² × 96.56 × 4 B = 405 MB) = 1
    assert g.batch == 1 and g.tiles_per_batch(16) == 1 and g.images_per_batch(16) == 1
    layout = g.layout()
    assert layout.core == 1024 - 2 * 192
    assert (layout.tiles_y, layout.tiles_x) == (3, 3)  # ceil(1614/640), ceil(1334/640)


def test_auto_tiles_at_native_resolution():
    g = geometry(3872, 3200, scale=1.0)  # 12.4 MP × 386 B = 4.8 GB > 1 GiB
    assert g.tiled and g.input_size == (3872, 3200) and (g.tile, g.margin) == (1024, 192)
    assert g.feature_size == (968, 800)
    assert g.layout().grid_size == g.feature_size
    assert g.batch == 2  # 1 GiB // 405 MB


def test_auto_tile_holds_four_margins():
    g = decide_geometry(3872, 3200, image_size=256, keep_aspect=True, tile="auto", margin=None, scale=1.0,
                        stride=4, multiple=16, receptive_margin=320, floats_per_pixel=LITE0_FLOATS)
    assert (g.tile, g.margin) == (1280, 320)


def test_activation_share_sets_images_per_batch():
    g = geometry(768, 576, batch_size=64)
    # 288 × 224 × 96.5625 × 4 B = 24.9 MB per image; 1 GiB share → 43 images
    assert ACTIVATION_SHARE * 4 * GIB // (288 * 224 * LITE0_FLOATS * 4) == 43
    assert g.batch == 43 and g.images_per_batch(64) == 43 and g.images_per_batch(16) == 16
    assert g.max_images == 43  # an export's max_batch


@pytest.mark.parametrize("geometry, cap, per_batch_of_16", [
    (Geometry((288, 224), 8, 32, batch=5), 5, 5),
    (Geometry((2048, 1693), 4, 16, 1024, 128, 0.53, batch=9), 1, 1),  # tiled: its tiles are batched
    (Geometry((288, 224), 8, 32, scale=0.5), 1, 1),  # saved before `batch` existed, with a scale
    (Geometry((288, 224), 8, 32), None, 16),  # ... without one: no bound
])
def test_the_most_images_per_batch(geometry, cap, per_batch_of_16):
    assert geometry.max_images == cap and geometry.images_per_batch(16) == per_batch_of_16


def test_explicit_tile_on_a_small_photo_keeps_the_rule_resolution():
    # Changed on purpose: an explicit tile no longer implies native resolution (scale 1); the
    # resolution comes from the rule (256² area), the tiles from ``tile``.
    g = geometry(500, 700, tile=256, margin=32)
    assert g.tiled and g.tile == 256 and g.margin == 32
    assert g.input_size == (216, 303)  # 500 · 256/√350000 = 216.4, 700 · 0.4327 = 302.9
    g = geometry(500, 700, tile=256, margin=32, scale=1.0)
    assert g.scale == 1.0 and g.input_size == (500, 700)


def test_tile_none_never_tiles():
    g = geometry(8000, 6000, tile=None, budget=GIB)
    assert not g.tiled and g.batch == 1


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


def test_explicit_tile_gets_the_receptive_field_margin():
    assert geometry(600, 600, tile=1024, scale=1.0).margin == LITE0_MARGIN


def test_default_margin_is_at_most_a_quarter_of_the_tile():
    assert geometry(600, 600, tile=512, scale=1.0).margin == 128
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
    Geometry((1616, 1328), 4, 16, None, 0, 0.4167, 1),
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


def test_model_files_without_batch_keep_their_batching():
    # saved before ``batch`` existed: large-image models (scale set) ran one image per batch
    old_large = Geometry.from_dict({"input_size": [1600, 1328], "stride": 4, "multiple": 16, "tile": None,
                                    "margin": 0, "scale": 0.413})
    old_small = Geometry.from_dict({"input_size": [288, 224], "stride": 8, "multiple": 32, "tile": None,
                                    "margin": 0, "scale": None})
    assert old_large.images_per_batch(16) == 1 and old_small.images_per_batch(16) == 16


@pytest.mark.parametrize("size", [(64, 0), (0, 64), (-8, 64), (64,), (64, 64, 3), 0, -1])
def test_an_image_size_without_two_positive_sides_is_refused(size):
    # (64, 0) used to fit a model on an empty 64×0 input
    with pytest.raises(ValueError, match="image_size must be"):
        geometry(600, 800, image_size=size)
