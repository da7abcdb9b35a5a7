"""Tests for datasets/synthetic_textures.py (loaded by path: datasets/ is not a package)."""


import cv2
import numpy as np
import pytest

from padim.mvtec import check_masks, read_labelled_set


@pytest.fixture(scope="module")
def st(dataset_script):
    return dataset_script("synthetic_textures")


def _clean(st, product, seed, split, defect, index):
    """The same image without its defect: the good surface drawn from the image's own generator."""
    rng = st.image_rng(seed, product, split, defect, index)
    return st.to_rgb8(st.GOOD[product](rng), st.TINTS[product])


@pytest.mark.parametrize("product", ["tread", "tile"])
def test_good_images_are_textured_rgb_of_the_product_size(st, product):
    image, mask = st.make_image(product, 0, "train", None, 0)
    assert image.shape == st.SIZES[product] + (3,) and image.dtype == np.uint8 and mask is None
    gray = image.mean(axis=2)
    assert 40 < gray.mean() < 210 and gray.std() > 3
    assert (image == 255).mean() < 0.01 and (image == 0).mean() < 0.01


@pytest.mark.parametrize("product", ["tread", "tile"])
def test_seeded_determinism(st, product):
    for defect in (None,) + tuple(st.DEFECTS[product]):
        a, ma = st.make_image(product, 3, "test", defect, 1)
        b, mb = st.make_image(product, 3, "test", defect, 1)
        np.testing.assert_array_equal(a, b)
        if defect is not None:
            np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(st.make_image(product, 3, "test", None, 1)[0], st.make_image(product, 4, "test", None, 1)[0])
    assert not np.array_equal(st.make_image(product, 3, "test", None, 1)[0], st.make_image(product, 3, "test", None, 2)[0])


@pytest.mark.parametrize("product,defect", [("tread", "bulge"), ("tread", "cut"), ("tread", "inclusion"),
                                            ("tile", "crack"), ("tile", "blowhole"), ("tile", "uneven")])
def test_masks_mark_exactly_the_altered_pixels(st, product, defect):
    for index in range(4):
        damaged, mask = st.make_image(product, 0, "test", defect, index)
        clean = _clean(st, product, 0, "test", defect, index)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        altered = np.any(damaged != clean, axis=2)
        np.testing.assert_array_equal(mask == 255, altered)
        assert altered.any(), f"{product}/{defect} #{index} altered nothing"


def _area(st, product, defect, n=6):
    return [(st.make_image(product, 0, "test", defect, i)[1] > 0).mean() for i in range(n)]


def test_each_family_has_its_size(st):
    """Hand-set bounds from each family's parameters: cracks and cuts are thin, blowholes small,
    bulges and inclusions local blobs, uneven regions a large part of the tile."""
    assert max(_area(st, "tile", "crack")) < 0.03
    assert max(_area(st, "tread", "cut")) < 0.04
    assert max(_area(st, "tile", "blowhole")) < 0.03
    assert 0.002 < min(_area(st, "tread", "inclusion")) and max(_area(st, "tread", "inclusion")) < 0.08
    assert 0.005 < min(_area(st, "tread", "bulge")) and max(_area(st, "tread", "bulge")) < 0.25
    assert min(_area(st, "tile", "uneven")) > 0.2


def _dominant_orientation(gray: np.ndarray) -> float:
    """The grain's direction in degrees [0, 180) from the structure tensor of the whole image."""
    g = cv2.GaussianBlur(gray.astype(np.float32), (0, 0), 1.0)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
    jxx, jyy, jxy = float((gx * gx).sum()), float((gy * gy).sum()), float((gx * gy).sum())
    gradient = 0.5 * np.degrees(np.arctan2(2 * jxy, jxx - jyy))
    return (gradient + 90.0) % 180.0


def test_tile_grain_is_unaligned_and_tread_is_shifted(st):
    angles = [_dominant_orientation(st.make_image("tile", 0, "train", None, i)[0].mean(axis=2)) for i in range(8)]
    spread = np.ptp(angles)
    assert spread > 60, f"tile grain orientations {np.round(angles)} barely vary"
    # The tread's grooves move by a random phase: two good treads differ far more than their grain.
    a = st.make_image("tread", 0, "train", None, 0)[0].astype(np.float32)
    b = st.make_image("tread", 0, "train", None, 1)[0].astype(np.float32)
    assert np.abs(a - b).mean() > 15


def test_write_dataset_is_mvtec_layout_and_adding_images_keeps_the_others(st, tmp_path):
    small = st.write_dataset(tmp_path / "small", ("tile",), n_train=2, n_test_good=1, n_test_defect=1, seed=5)
    large = st.write_dataset(tmp_path / "large", ("tile",), n_train=3, n_test_good=2, n_test_defect=2, seed=5)
    assert [p.name for p in small] == ["tile"]
    data = read_labelled_set(large[0])
    assert sorted(set(data.defect_types)) == ["blowhole", "crack", "good", "uneven"]
    assert sum(data.labels) == 6 and len(data.labels) == 8 and all(m is not None for m, y in zip(data.mask_paths, data.labels) if y)
    check_masks(data)
    for relative in ("train/good/000.png", "train/good/001.png", "test/crack/000.png", "ground_truth/crack/000_mask.png"):
        a = cv2.imread(str(small[0] / relative), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(large[0] / relative), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(a, b)
    # The PNG holds what make_image made (OpenCV writes BGR).
    image, mask = st.make_image("tile", 5, "test", "crack", 0)
    np.testing.assert_array_equal(cv2.imread(str(large[0] / "test/crack/000.png"))[:, :, ::-1], image)
    np.testing.assert_array_equal(cv2.imread(str(large[0] / "ground_truth/crack/000_mask.png"), 0), mask)
