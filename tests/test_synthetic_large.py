"""Tests for datasets/synthetic_large.py (loaded by path: datasets/ is not a package)."""


import cv2
import numpy as np
import pytest

H, W = 320, 400


@pytest.fixture(scope="module")
def sl(dataset_script):
    return dataset_script("synthetic_large")


def test_good_image(sl):
    img, mask = sl.make_image(np.random.default_rng(0), H, W)
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    assert mask.shape == (H, W) and mask.dtype == np.uint8 and not mask.any()
    # textured, not flat and not saturated
    gray = img.mean(axis=2)
    assert 60 < gray.mean() < 200 and gray.std() > 5
    assert (img == 255).mean() < 0.01


def test_deterministic(sl):
    for defect in (None,) + sl.DEFECT_TYPES:
        a, ma = sl.make_image(np.random.default_rng(7), H, W, defect)
        b, mb = sl.make_image(np.random.default_rng(7), H, W, defect)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ma, mb)
    c, _ = sl.make_image(np.random.default_rng(8), H, W)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("defect", ["scratch", "spot", "square"])
def test_defect_mask_marks_exactly_the_changed_pixels(sl, defect):
    for seed in range(6):
        good, m0 = sl.make_image(np.random.default_rng(seed), H, W, None)
        bad, mask = sl.make_image(np.random.default_rng(seed), H, W, defect)
        assert not m0.any()
        assert set(np.unique(mask)) == {0, 255}
        inside = mask > 0
        changed = np.any(good != bad, axis=2)
        # nothing changes outside the mask, and most of the mask changes
        assert not changed[~inside].any()
        assert changed[inside].mean() > 0.7
        # size: 20-80 px defects
        ys, xs = np.nonzero(inside)
        extent = max(np.ptp(ys), np.ptp(xs)) + 1
        if defect == "square":
            assert inside.sum() == sl.SQUARE_SIDE ** 2 and extent == sl.SQUARE_SIDE
        else:
            assert 10 <= extent <= 95, extent
        # subtle but visible: mean change of 8-60 grey levels over the defect
        diff = np.abs(good.astype(int) - bad.astype(int)).mean(axis=2)[inside]
        assert 8 <= diff.mean() <= 60, diff.mean()
        assert diff.max() <= 80


def test_defect_fully_inside(sl):
    # tiny image: the defect must still fit (and not wrap around the edges)
    for seed in range(20):
        for defect in sl.DEFECT_TYPES:
            _, mask = sl.make_image(np.random.default_rng(seed), 96, 112, defect)
            assert mask.shape == (96, 112) and mask.any()
    with pytest.raises(ValueError):
        sl.make_image(np.random.default_rng(0), H, W, "dent")


def test_fixed_features_align_across_images(sl):
    # Per-position statistics make sense: different good images correlate strongly after
    # blurring away the fine texture (same holes/groove, only a few px of shift).
    a, _ = sl.make_image(np.random.default_rng(1), H, W)
    b, _ = sl.make_image(np.random.default_rng(2), H, W)
    ga = cv2.GaussianBlur(a[..., 1].astype(np.float32), (0, 0), 6).ravel()
    gb = cv2.GaussianBlur(b[..., 1].astype(np.float32), (0, 0), 6).ravel()
    assert np.corrcoef(ga, gb)[0, 1] > 0.8


def test_write_dataset_layout(sl, tmp_path):
    root = tmp_path / "synth"
    counts = sl.write_dataset(root, n_train=3, n_test_good=2, n_test_defect=2, height=96,
                              width=128, seed=3)
    assert counts["train/good"] == 3 and counts["test/good"] == 2
    assert sorted(p.name for p in (root / "train" / "good").iterdir()) == \
        ["0000.jpg", "0001.jpg", "0002.jpg"]
    assert len(list((root / "test" / "good").glob("*.jpg"))) == 2
    for d in sl.DEFECT_TYPES:
        imgs = sorted((root / "test" / d).glob("*.jpg"))
        masks = sorted((root / "ground_truth" / d).glob("*_mask.png"))
        assert len(imgs) == 2 and len(masks) == 2
        assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in imgs]
        im = cv2.imread(str(imgs[0]))
        m = cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE)
        assert im.shape == (96, 128, 3) and m.shape == (96, 128)
        assert set(np.unique(m)) == {0, 255}
    assert not (root / "ground_truth" / "good").exists()
    assert not list(root.rglob("*.tmp*"))
    # deterministic: same seed, same bytes (masks) and same pixels (images)
    root2 = tmp_path / "synth2"
    sl.write_dataset(root2, n_train=3, n_test_good=2, n_test_defect=2, height=96, width=128,
                     seed=3, fmt="png")
    a = cv2.imread(str(root / "ground_truth" / "spot" / "0001_mask.png"))
    b = cv2.imread(str(root2 / "ground_truth" / "spot" / "0001_mask.png"))
    np.testing.assert_array_equal(a, b)
    img, _ = sl.make_image(sl._rng_for(3, "train", 1), 96, 128)
    png = cv2.cvtColor(cv2.imread(str(root2 / "train" / "good" / "0001.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(png, img)


def test_cli(sl, tmp_path):
    rc = sl.main([str(tmp_path / "c"), "--n-train", "1", "--n-test-good", "1",
                  "--n-test-defect", "1", "--defect-types", "spot", "--height", "80",
                  "--width", "100", "--quiet"])
    assert rc == 0
    assert len(list((tmp_path / "c").rglob("*.jpg"))) == 3
    assert (tmp_path / "c" / "ground_truth" / "spot" / "0000_mask.png").exists()
    assert not (tmp_path / "c" / "test" / "scratch").exists()
