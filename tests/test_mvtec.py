"""padim.mvtec.load_mask: masks of every mode, with and without alpha, resized or refused."""

import numpy as np
import pytest
from PIL import Image

from padim.io import ImageReadError
from padim.mvtec import load_mask

H, W = 40, 60


def strokes():
    """The defect by hand: a bar and a dot."""
    truth = np.zeros((H, W), bool)
    truth[10:14, 5:50] = True
    truth[30, 40] = True
    return truth


def test_gray_and_colour_masks_are_their_nonzero_pixels(tmp_path):
    truth = strokes()
    gray = truth.astype(np.uint8) * 255
    cases = {"gray.png": Image.fromarray(gray, "L"), "ones.png": Image.fromarray(truth.astype(np.uint8), "L"),
             "red.png": Image.fromarray(np.dstack([gray, 0 * gray, 0 * gray]), "RGB"),
             "deep.png": Image.fromarray(truth.astype(np.uint16) * 65535)}
    for name, image in cases.items():
        image.save(tmp_path / name)
        np.testing.assert_array_equal(load_mask(tmp_path / name, (H, W)), truth, err_msg=name)


def test_rgba_masks_count_only_opaque_colour(tmp_path):
    # the largest channel counted the opaque alpha of an editor's RGBA export as a defect everywhere
    truth = strokes()
    white = np.where(truth[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)
    opaque_black_around = np.dstack([white, np.full((H, W), 255, np.uint8)])
    transparent_around = np.dstack([np.full((H, W, 3), 255, np.uint8), np.where(truth, 255, 0).astype(np.uint8)])
    for name, array in (("opaque.png", opaque_black_around), ("transparent.png", transparent_around)):
        Image.fromarray(array, "RGBA").save(tmp_path / name)
        np.testing.assert_array_equal(load_mask(tmp_path / name, (H, W)), truth, err_msg=name)


@pytest.mark.parametrize("quality", [75, 95])
def test_a_jpeg_mask_counts_from_half_scale_not_its_compression_noise(tmp_path, quality):
    truth = np.zeros((H, W), bool)
    truth[8:20, 5:50] = True
    truth[26:36, 30:42] = True
    path = tmp_path / "mask.jpg"
    Image.fromarray(truth.astype(np.uint8) * 255, "L").save(path, quality=quality)
    with Image.open(path) as decoded:
        noisy = np.asarray(decoded)
    assert ((noisy > 0) & ~truth).any()  # what "non-zero" had counted: the ringing around the strokes
    np.testing.assert_array_equal(load_mask(path, (H, W)), truth)
    np.testing.assert_array_equal(load_mask(path, (2 * H, 2 * W)), truth.repeat(2, 0).repeat(2, 1))


def test_a_mask_of_another_size_is_resized_and_of_another_aspect_refused(tmp_path):
    half = np.zeros((H // 2, W // 2), np.uint8)
    half[5:7, 3:25] = 255
    Image.fromarray(half).save(tmp_path / "half.png")
    mask = load_mask(tmp_path / "half.png", (H, W))
    expected = np.zeros((H, W), bool)
    expected[10:14, 6:50] = True  # each mask pixel becomes 2×2
    np.testing.assert_array_equal(mask, expected)
    Image.fromarray(np.zeros((W, H), np.uint8)).save(tmp_path / "rotated.png")
    with pytest.raises(ImageReadError, match=r"rotated\.png': mask of 40×60 px for an image of 60×40 px"):
        load_mask(tmp_path / "rotated.png", (H, W))


def test_an_unreadable_mask_names_its_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"bad\.png'"):
        load_mask(tmp_path / "bad.png", (H, W))
    assert not load_mask(None, (H, W)).any()
