"""padim.synthetic: every family alters a local region as its name says, masks are exactly the
altered pixels, and a seed reproduces everything."""

import cv2
import numpy as np
import pytest

from padim.synthetic import ALL_FAMILIES, FAMILIES, make_defect, make_defects, perlin_noise

H, W = 96, 128


def textured(seed=0):
    """A smooth colour texture (so that every family, blur included, changes something)."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 1, size=(H // 8, W // 8, 3)).astype(np.float32)
    return np.clip(cv2.resize(noise, (W, H), interpolation=cv2.INTER_CUBIC), 0, 1)


def checkerboard(period=4):
    yy, xx = np.mgrid[0:H, 0:W]
    board = ((yy // period + xx // period) % 2).astype(np.float32) * 0.6 + 0.2
    return np.repeat(board[..., None], 3, axis=-1)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_each_family_alters_a_local_region_and_its_mask_is_exactly_that(family):
    image = textured()
    for seed in range(5):
        defect, mask = make_defect(image, family, np.random.default_rng(seed), donor=textured(9))
        assert defect.shape == image.shape and defect.dtype == np.float32 and mask.dtype == bool
        assert 0.0 <= defect.min() and defect.max() <= 1.0
        np.testing.assert_array_equal(mask, np.abs(defect - image).max(axis=-1) > 0)
        np.testing.assert_array_equal(defect[~mask], image[~mask])  # nothing outside the mask moved
        area = mask.mean()
        assert 0.0005 < area < 0.6, (family, seed, area)  # a local defect, never the whole image


def test_seeded_determinism_and_different_seeds_differ():
    images = [textured(s) for s in range(6)]
    first = make_defects(images, seed=3)
    again = make_defects(images, seed=3)
    other = make_defects(images, seed=4)
    assert [d.family for d in first] == list(FAMILIES)  # one image per family, in turn
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
    assert any(not np.array_equal(a.mask, c.mask) for a, c in zip(first, other))


def test_paste_puts_donor_content_inside_with_feathered_edges():
    image = np.full((H, W, 3), 0.75, np.float32)
    donor = np.full((H, W, 3), 0.25, np.float32)
    defect, mask = make_defect(image, "paste", np.random.default_rng(1), donor=donor)
    values = defect[mask][:, 0]
    assert np.isclose(values, 0.25).sum() > 0.3 * mask.sum()  # an opaque interior of donor pixels
    assert ((values > 0.26) & (values < 0.74)).any()  # and blended edges in between


def test_scratches_are_thin_lines():
    for seed in range(5):
        _, mask = make_defect(textured(), "scratch", np.random.default_rng(seed))
        core = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8))
        assert core.sum() < 0.1 * mask.sum()  # at most 2-3 px wide: a 5×5 erosion removes nearly all


def test_cracks_are_thin_shadows_that_keep_the_texture():
    image = textured()
    for seed in range(5):
        defect, mask = make_defect(image, "crack", np.random.default_rng(seed))
        assert (defect[mask] <= image[mask]).all() and (defect[mask] < image[mask]).any(-1).all()  # only darker
        core = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8))
        assert core.sum() < 0.1 * mask.sum()  # a thin line with a soft rim
        # on the line itself one factor darkens every channel: the texture is kept, not painted over
        bright = image[mask].min(axis=-1) > 0.05
        ratio = defect[mask][bright] / image[mask][bright]
        line = ratio.max(axis=-1) <= ratio.min() + 1e-4
        assert line.sum() > 0.3 * len(ratio)
        np.testing.assert_allclose(ratio[line], ratio.min(), atol=1e-4)


def test_shading_is_a_broad_gentle_change_of_brightness_that_keeps_the_texture():
    image = np.clip(textured() * 0.5 + 0.2, 0, 1)  # at most 0.7: nothing clips at ×1.35
    for seed in range(6):
        defect, mask = make_defect(image, "shading", np.random.default_rng(seed))
        ratio = defect[mask] / image[mask]
        lighter = bool((ratio >= 1 - 1e-6).all())
        assert lighter or (ratio <= 1 + 1e-6).all()  # one direction across the region
        strongest = ratio.max() if lighter else ratio.min()
        assert 0.15 - 1e-4 <= abs(strongest - 1) <= 0.35 + 1e-4  # 15–35 %, no more
        # one factor per pixel on every channel: the texture is scaled, not painted over
        np.testing.assert_allclose(ratio, ratio[:, :1].repeat(3, axis=1), atol=1e-5)
        assert mask.mean() > 0.05  # broad: far beyond a pit
        # very soft edges: a good part of the region is changed by less than half the strongest
        gentle = np.abs(ratio[:, 0] - 1) < 0.5 * abs(strongest - 1)
        assert gentle.mean() > 0.2


def test_make_defects_makes_the_families_asked_for():
    images = [textured(s) for s in range(4)]
    assert [d.family for d in make_defects(images, seed=0, families=("crack", "hole"))] == ["crack", "hole"] * 2


def test_blur_lowers_local_contrast_and_hole_is_one_flat_colour():
    board = checkerboard()
    defect, mask = make_defect(board, "blur", np.random.default_rng(0))
    assert np.abs(defect[mask] - 0.5).mean() < np.abs(board[mask] - 0.5).mean()  # pulled toward the mean
    defect, mask = make_defect(textured(), "hole", np.random.default_rng(2))
    assert len(np.unique(defect[mask], axis=0)) == 1


def test_perlin_noise_is_smooth_and_bounded():
    noise = perlin_noise(H, W, np.random.default_rng(0), cells=4)
    assert noise.shape == (H, W) and np.abs(noise).max() <= 1.01
    assert noise.std() > 0.1
    assert np.abs(np.diff(noise, axis=1)).max() < 0.2  # smooth: neighbours are close


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_a_smaller_scale_makes_smaller_defects_with_exact_masks(family):
    image, donor = textured(), textured(9)
    areas = {}
    for scale in (1.0, 0.25):
        masks = []
        for seed in range(6):
            defect, mask = make_defect(image, family, np.random.default_rng(seed), donor=donor, scale=scale)
            np.testing.assert_array_equal(mask, np.abs(defect - image).max(axis=-1) > 0)
            masks.append(mask)
        assert all(m.any() for m in masks), (family, scale)  # small defects still alter something
        areas[scale] = np.mean([m.mean() for m in masks])
    # radii (or scratch lengths) shrink 4×: areas by well over 2× (scratch: length only)
    assert areas[0.25] < areas[1.0] / 2.5, (family, areas)


def test_make_defects_gives_every_family_every_scale():
    images = [textured(s) for s in range(6)]
    defects = make_defects(images, seed=0, per_image=2, scales=(1.0, 0.3))
    assert len(defects) == 12 and [d.source for d in defects] == [i for i in range(6) for _ in range(2)]
    made = {(d.family, d.scale) for d in defects}
    assert made == {(f, s) for f in FAMILIES for s in (1.0, 0.3)}


def test_bad_input_is_refused_with_one_line():
    with pytest.raises(ValueError, match="unknown synthetic defect family 'dent'"):
        make_defect(textured(), "dent", np.random.default_rng(0))
    with pytest.raises(ValueError, match="expected an RGB image"):
        make_defect(np.zeros((H, W), np.float32), "blob", np.random.default_rng(0))
    with pytest.raises(ValueError, match="no good images"):
        make_defects([])
    with pytest.raises(ValueError, match="scale must be in"):
        make_defect(textured(), "blob", np.random.default_rng(0), scale=0)


def test_images_of_different_sizes_paste_from_resized_donors():
    """A folder may mix sizes; paste took a donor of another shape and failed ('donor image has
    shape (300, 300, 3), expected (423, 512, 3)'), which stopped the auto fit."""
    small = np.full((48, 40, 3), 0.2, np.float32)  # flat, so the pasted content is its colour
    large = np.full((H, W, 3), 0.8, np.float32)
    defects = make_defects([large, small], seed=0, families=["paste"])
    for defect, image, donor_value in zip(defects, (large, small), (0.2, 0.8)):
        assert defect.image.shape == image.shape and defect.mask.any()
        np.testing.assert_array_equal(defect.image[~defect.mask], image[~defect.mask])
        inside = defect.image[defect.mask][:, 0]
        assert np.isclose(inside, donor_value).sum() > 0.3 * defect.mask.sum()  # the other image's content
