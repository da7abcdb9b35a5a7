"""Tests for padim.viz: heatmap figures, downsampling for display, evaluation plots."""

import os
import struct

import numpy as np
import pytest

from padim import viz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from a PNG header; asserts the file is a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def assert_no_temp_files(folder):
    leftovers = [n for n in os.listdir(folder) if n.endswith(".tmp")]
    assert not leftovers, leftovers


@pytest.fixture
def small_case():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    amap = rng.random((120, 160)).astype(np.float32)
    amap[40:60, 70:100] += 3.0
    gt = np.zeros((120, 160), np.uint8)
    gt[42:58, 72:98] = 255
    return img, amap, gt


# ----------------------------------------------------------------------------- helpers

def test_display_size():
    assert viz.display_size(3200, 3872, 1024) == (846, 1024)
    assert viz.display_size(3872, 3200, 1024) == (1024, 846)
    assert viz.display_size(300, 200, 1024) == (300, 200)  # never upscaled
    with pytest.raises(ValueError):
        viz.display_size(10, 10, 0)


def test_downsample_max_keeps_tiny_hot_spot():
    amap = np.zeros((3200, 3872), np.float32)
    amap[1601:1604, 2501:2504] = 7.5  # a 3x3 hot spot
    small = viz.downsample_max(amap, 1024)
    assert small.shape == (846, 1024)
    assert small.max() == pytest.approx(7.5)
    # Where it should be: about (1602, 2502) * 1024 / 3872.
    y, x = np.unravel_index(np.argmax(small), small.shape)
    assert abs(y - 1602 * 846 / 3200) <= 1.5 and abs(x - 2502 * 1024 / 3872) <= 1.5
    # Area averaging, by contrast, would dilute it to well below the peak.
    assert viz.downsample_image(amap, 1024).max() < 7.5 * 0.7
    # Each output cell is a max over its block: no value is invented.
    assert small.min() == 0.0 and np.count_nonzero(small) <= 4


def test_downsample_max_is_exact_block_max():
    rng = np.random.default_rng(1)
    a = rng.random((40, 60))
    s = viz.downsample_max(a, 30)  # 2x exactly
    assert s.shape == (20, 30)
    np.testing.assert_array_equal(s, a.reshape(20, 2, 30, 2).max(axis=(1, 3)))
    # bool masks keep their dtype; a single True pixel survives
    m = np.zeros((1000, 1000), bool)
    m[517, 3] = True
    ms = viz.downsample_max(m, 100)
    assert ms.dtype == bool and ms.sum() == 1 and ms[51, 0]
    # already small enough: returned unchanged
    assert viz.downsample_max(a, 100) is a


def test_fixed_colour_scale():
    # The same score gets the same colour whatever the rest of the map looks like.
    c1 = viz.value_to_rgba(np.array([0.0, 2.0, 4.0]), vmin=0.0, vmax=4.0)
    c2 = viz.value_to_rgba(np.array([2.0]), vmin=0.0, vmax=4.0)
    np.testing.assert_allclose(c1[1], c2[0])
    # values beyond the scale are clipped to the end colours
    np.testing.assert_allclose(viz.value_to_rgba(9.0, 0.0, 4.0), viz.value_to_rgba(4.0, 0.0, 4.0))
    with pytest.raises(ValueError):
        viz.value_to_rgba(1.0, 2.0, 2.0)


def _overlay_image(fig):
    ax = fig.axes[1]
    return ax.images[-1]


def test_heatmap_uses_given_scale_not_map_range(small_case):
    img, amap, _ = small_case
    f1 = viz.heatmap_figure(img, amap, vmin=0.0, vmax=5.0)
    f2 = viz.heatmap_figure(img, amap * 0.1, vmin=0.0, vmax=5.0)  # very different map range
    for f in (f1, f2):
        norm = _overlay_image(f).norm
        assert (norm.vmin, norm.vmax) == (0.0, 5.0)
    # so a given value maps to the same colour in both figures
    i1, i2 = _overlay_image(f1), _overlay_image(f2)
    np.testing.assert_allclose(i1.to_rgba(np.array([2.5])), i2.to_rgba(np.array([2.5])))
    np.testing.assert_allclose(i1.to_rgba(np.array([2.5]))[0],
                               viz.value_to_rgba(2.5, 0.0, 5.0), atol=1e-6)


# ----------------------------------------------------------------------------- heatmaps

def test_save_heatmap_png(tmp_path, small_case):
    img, amap, gt = small_case
    out = tmp_path / "sub" / "dir" / "heat.png"  # parents created
    p = viz.save_heatmap(out, img, amap, vmin=0.0, vmax=4.0, threshold=2.0, mask=gt,
                         title="test")
    assert p == out and out.exists()
    w, h = png_size(out)
    assert 400 <= w <= 3000 and 200 <= h <= 1500
    assert w > h  # two panels side by side
    assert_no_temp_files(out.parent)
    # overwriting works (atomic replace)
    viz.save_heatmap(out, img, amap, vmin=0.0, vmax=4.0)
    png_size(out)
    assert_no_temp_files(out.parent)


def test_heatmap_outlines_drawn(small_case):
    img, amap, gt = small_case
    fig = viz.heatmap_figure(img, amap, vmin=0.0, vmax=4.0, threshold=2.0, mask=gt)
    colours = [tuple(line.get_color()) if not isinstance(line.get_color(), str)
               else line.get_color() for line in fig.axes[1].lines]
    assert viz.GT_COLOUR in colours and viz.PRED_COLOUR in colours
    assert viz.GT_COLOUR in [line.get_color() for line in fig.axes[0].lines]


def test_grayscale_and_float_inputs(tmp_path, small_case):
    _, amap, gt = small_case
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (120, 160), dtype=np.uint8)
    viz.save_heatmap(tmp_path / "gray.png", gray, amap, vmin=0, vmax=4, threshold=2, mask=gt)
    png_size(tmp_path / "gray.png")
    flt = rng.random((120, 160, 3)).astype(np.float32)
    viz.save_heatmap(tmp_path / "float.png", flt, amap, vmin=0, vmax=4)
    png_size(tmp_path / "float.png")
    g1 = rng.integers(0, 256, (120, 160, 1), dtype=np.uint8)
    viz.save_heatmap(tmp_path / "g1.png", g1, amap, vmin=0, vmax=4)
    png_size(tmp_path / "g1.png")


def test_bad_inputs(small_case):
    img, amap, gt = small_case
    with pytest.raises(ValueError, match="does not match"):
        viz.heatmap_figure(img, amap[:100], vmin=0, vmax=1)
    with pytest.raises(ValueError):
        viz.heatmap_figure(img, amap, vmin=1, vmax=1)
    with pytest.raises(ValueError, match="mask"):
        viz.heatmap_figure(img, amap, vmin=0, vmax=1, mask=gt[:50])


def test_huge_image_is_downsampled(tmp_path):
    h, w = 3200, 3872
    img = np.full((h, w, 3), 120, np.uint8)
    amap = np.zeros((h, w), np.float32)
    amap[2000:2003, 1000:1003] = 10.0
    fig = viz.heatmap_figure(img, amap, vmin=0, vmax=10, threshold=5, max_side=1024)
    ov = _overlay_image(fig).get_array()
    assert max(ov.shape) <= 1024 and ov.max() == pytest.approx(10.0)  # hot spot survives
    # the tiny predicted region is marked (a ring, since it is a few display pixels)
    assert any(line.get_marker() == "o" for line in fig.axes[1].lines)
    out = viz.save_figure(fig, tmp_path / "big.png")
    fw, fh = png_size(out)
    assert fw <= 2 * 1024 + 400 and fh <= 1024 + 200  # the figure is drawn at display size


# ----------------------------------------------------------------------------- plots

def test_curve_plots(tmp_path):
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(40, int), np.ones(15, int)]
    scores = np.r_[rng.normal(0, 1, 40), rng.normal(2, 1, 15)]
    for fn, name in ((viz.plot_roc, "roc.png"), (viz.plot_pr, "pr.png")):
        p = fn(labels, scores, tmp_path / "plots" / name)
        w, h = png_size(p)
        assert 300 <= w <= 1500 and 300 <= h <= 1500
    p = viz.plot_score_histogram(scores[:40], scores[40:], tmp_path / "hist.png", threshold=1.0)
    w, h = png_size(p)
    assert 300 <= w <= 1500 and 200 <= h <= 1500
    # no labelled defects yet: the histogram still works
    viz.plot_score_histogram(scores[:40], [], tmp_path / "hist_good_only.png")
    png_size(tmp_path / "hist_good_only.png")
    assert_no_temp_files(tmp_path)
    assert_no_temp_files(tmp_path / "plots")


def test_curve_legend_has_auc(tmp_path, monkeypatch):
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = [0, 0, 1, 1, 0, 1]
    scores = [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]
    seen = []
    orig = viz.save_figure

    def spy(fig, path, **kw):
        seen.append([t.get_text() for ax in fig.axes if ax.get_legend()
                     for t in ax.get_legend().get_texts()])
        return orig(fig, path, **kw)

    monkeypatch.setattr(viz, "save_figure", spy)
    viz.plot_roc(labels, scores, tmp_path / "roc.png")
    viz.plot_pr(labels, scores, tmp_path / "pr.png")
    assert f"AUROC = {roc_auc_score(labels, scores):.4f}" in seen[0][0]
    assert f"AP = {average_precision_score(labels, scores):.4f}" in seen[1][0]


def test_curves_need_both_classes(tmp_path):
    with pytest.raises(ValueError, match="both"):
        viz.plot_roc([0, 0, 0], [0.1, 0.2, 0.3], tmp_path / "roc.png")
    assert not (tmp_path / "roc.png").exists()


def test_heatmap_titles_are_drawn_as_text_not_math(tmp_path):
    """A file name such as "$\\frac$ x.png" would be a mathtext error if parsed."""
    image = np.zeros((32, 32, 3), np.float32)
    out = viz.save_heatmap(tmp_path / "h.png", image, np.zeros((32, 32), np.float32), vmin=0, vmax=1,
                       threshold=0.5, title="$\\frac$ x.png  score 1")
    assert out.is_file()
