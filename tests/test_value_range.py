"""Pixel value ranges: decided once at fit, stored in the model file, applied to every image.

Cost (2 shared cores, one thread): four fits of 10 images at 96 px, d = 40, no calibration,
and one CLI fit of 5 images at 64 px.
"""

import json
import pickle

import numpy as np
import pytest
from PIL import Image

import padim.model
from padim import PaDiM
from padim.data import ImageDataset, Resize
from padim.value_range import EIGHT_BIT, ValueRange, bit_depth_ceiling, decide_value_range

from test_cli import cli

SIZE = 96
PARAMS = dict(image_size=SIZE, d=40, device="cpu", workers=0, batch_size=10, calibration_folds=0, blur_sigma=2.0, config="fixed")


def product(seed, h=SIZE, w=SIZE):
    """The same smooth product in every image (gradients, a dark square, a bright disk) with mild
    noise; float64 gray-free RGB in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    yr, xr = (y + 0.5) / h, (x + 0.5) / w
    img = np.stack([0.3 + 0.4 * xr, 0.6 - 0.3 * yr, 0.4 + 0.2 * xr * yr], axis=2)
    img[(np.abs(yr - 0.6) < 0.12) & (np.abs(xr - 0.65) < 0.12)] = (0.15, 0.2, 0.25)
    img[(yr - 0.3) ** 2 + (xr - 0.3) ** 2 < 0.1**2] = (0.85, 0.8, 0.7)
    return np.clip(img + rng.normal(0, 0.015, size=img.shape), 0, 1)


def radiance(seed):
    """A float image in physical units (0..1000), like a mode F TIFF."""
    return (product(seed) * 1000).astype(np.float32)


def stored_metadata(path):
    """The model file's JSON metadata, read with safetensors directly."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return json.loads(handle.metadata()["padim"])


# ------------------------------------------------------------------ the rule, by hand

def test_bit_depth_ceiling():
    cases = {0: 1, 1: 1, 2: 3, 200: 255, 255: 255, 256: 511, 1000: 1023, 3000.5: 4095, 4095: 4095,
             4096: 8191, 40000: 65535, 65535: 65535}
    assert {v: bit_depth_ceiling(v) for v in cases} == {v: float(c) for v, c in cases.items()}


def test_integer_rule_ignores_hot_pixels_and_finds_12_bits():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 3900, (200, 200)).astype(np.uint16) for _ in range(3)]
    images[1][:2, :2] = 65535  # 4 hot pixels in 40 000: above the 99.99th percentile
    found = decide_value_range(["int"] * 3, lambda i: images[i])
    assert found == (0.0, 4095.0)
    dark = [np.full((50, 50), 700, np.uint16), np.full((50, 50), 1100, np.uint16)]
    assert decide_value_range(["int", "int"], lambda i: dark[i]) == (0.0, 2047.0)


def test_float_rule_pools_percentiles():
    rng = np.random.default_rng(1)
    images = [rng.normal(500, 100 * (i + 1), (64, 64)).astype(np.float32) for i in range(3)]
    found = decide_value_range(["float"] * 3, lambda i: images[i])
    pooled = np.concatenate([im.ravel().astype(np.float64) for im in images])
    assert found == pytest.approx((np.percentile(pooled, 0.1), np.percentile(pooled, 99.9)), rel=1e-6)
    unit = [rng.random((16, 16)) for _ in range(2)]
    assert decide_value_range(["float", "float"], lambda i: unit[i]) == (0.0, 1.0)


def test_eight_bit_rule_reads_no_pixels():
    def forbidden(i):
        raise AssertionError("8-bit images must not be read to decide the range")

    assert decide_value_range(["uint8"] * 5, forbidden) == (0.0, 255.0)
    assert decide_value_range(["bool"] * 2, forbidden) == (0.0, 1.0)


def test_images_of_another_pixel_kind_use_their_own_full_scale():
    from padim.io import load_image

    deep = np.full((8, 8), 30000, np.uint16)
    with pytest.warns(UserWarning, match="full scale"):
        out = load_image(deep, value_range=EIGHT_BIT, value_kind="uint8")  # not clipped to white
    np.testing.assert_allclose(out, 30000 / 65535, rtol=1e-6)
    np.testing.assert_allclose(load_image(deep, value_range=(0, 4095), value_kind="int"), 1.0)  # same kind: clipped
    eight = np.full((8, 8, 3), 51, np.uint8)
    with pytest.warns(UserWarning, match="full scale"):
        np.testing.assert_allclose(load_image(eight, value_range=(0, 4095), value_kind="int"), 0.2, rtol=1e-6)


# ------------------------------------------------------------------ decided at fit

@pytest.fixture(scope="module")
def radiance_model():
    return PaDiM(**PARAMS).fit([radiance(i) for i in range(10)])


def test_float_range_is_learned_from_training_images(radiance_model):
    pooled = np.concatenate([radiance(i).ravel().astype(np.float64) for i in range(10)])
    lo, hi = radiance_model.value_range_
    assert lo == pytest.approx(np.percentile(pooled, 0.1), rel=1e-5)
    assert hi == pytest.approx(np.percentile(pooled, 99.9), rel=1e-5)
    assert radiance_model.value_kind_ == "float"


def test_hot_spot_does_not_change_the_map_far_away(radiance_model):
    clean = radiance(100)
    hot = clean.copy()
    hot[8:12, 8:12] = 1e6  # a 4×4 px hot spot near the top-left corner
    far = (slice(64, None), slice(64, None))  # the bottom-right third, ≥ 52 px from the spot
    clean_map, hot_map = radiance_model.anomaly_maps([clean, hot])
    change = np.abs(hot_map[far] - clean_map[far]) / clean_map[far]
    assert change.max() < 0.01
    assert hot_map[8:12, 8:12].mean() > clean_map[8:12, 8:12].mean()  # the spot itself is seen


def test_per_image_scaling_would_fail_the_hot_spot_test():
    # The reference above must be able to fail: mapping each image by its own extremes (the
    # behaviour of value_range=None, and of mode F before) darkens the whole hot image.
    model = PaDiM(**PARAMS, value_range=None).fit([radiance(i) for i in range(10)])
    assert model.value_range_ is None
    clean = radiance(100)
    hot = clean.copy()
    hot[8:12, 8:12] = 1e6
    clean_map, hot_map = model.anomaly_maps([clean, hot])
    far = (slice(64, None), slice(64, None))
    assert np.median(np.abs(hot_map[far] - clean_map[far]) / clean_map[far]) > 1.0  # measured: ~4


@pytest.fixture(scope="module")
def twelve_bit(tmp_path_factory):
    """10 training images of 12-bit data in 16-bit PNGs, and the 8-bit equivalent of one."""
    root = tmp_path_factory.mktemp("twelve")
    for i in range(10):
        data = (product(i).mean(axis=2) * 4095).round().astype(np.uint16)
        Image.fromarray(data).save(root / f"good_{i}.png")
    return root


def test_12_bit_files_get_4095_and_keep_their_contrast(twelve_bit, tmp_path):
    model = PaDiM(**PARAMS).fit(twelve_bit)
    assert model.value_range_ == (0.0, 4095.0) and model.value_kind_ == "int"
    data = np.asarray(Image.open(twelve_bit / "good_3.png")).astype(np.float64)
    dataset = ImageDataset([twelve_bit / "good_3.png"], Resize((SIZE, SIZE)), model.value_range_, model.value_kind_)
    _, tensor, _, error = pickle.loads(pickle.dumps(dataset))[0]  # as a DataLoader worker gets it
    assert not error
    np.testing.assert_allclose(tensor.numpy(), np.broadcast_to(data / 4095, (3, SIZE, SIZE)), rtol=1e-6, atol=1e-7)
    path = model.save(tmp_path / "m.padim")
    assert stored_metadata(path)["value_range"] == [0.0, 4095.0]
    loaded = PaDiM.load(path, device="cpu", workers=0)
    assert loaded.value_range_ == (0.0, 4095.0) and isinstance(loaded.value_range_, ValueRange)
    assert "0..4095" in loaded.describe()["value range"]
    np.testing.assert_allclose(loaded.score_samples(twelve_bit), model.score_samples(twelve_bit), rtol=1e-5)


def test_8_bit_files_are_not_decoded_to_decide(tmp_path, monkeypatch):
    for i in range(6):
        Image.fromarray((product(i) * 255).round().astype(np.uint8)).save(tmp_path / f"g{i}.png")

    def forbidden(source):
        raise AssertionError(f"{source} was decoded to decide the value range")

    monkeypatch.setattr(padim.model, "colour_values", forbidden)
    model = PaDiM(**PARAMS).fit(tmp_path)
    assert model.value_range_ == EIGHT_BIT and model.value_kind_ == "uint8"


def test_model_file_without_a_range_loads_as_before(tmp_path):
    # Files written before value ranges: None, i.e. each image by its pixel type's full scale.
    from safetensors.torch import load_file, save_file

    images = [(product(i) * 255).round().astype(np.uint8) for i in range(6)]
    model = PaDiM(**PARAMS).fit(images)
    path = model.save(tmp_path / "new.padim")
    meta = stored_metadata(path)
    del meta["value_range"], meta["value_kind"], meta["params"]["value_range"]
    save_file(load_file(str(path)), str(tmp_path / "old.padim"), metadata={"padim": json.dumps(meta)})
    old = PaDiM.load(tmp_path / "old.padim", device="cpu", workers=0)
    assert old.value_range_ is None
    assert "full scale" in old.describe()["value range"]
    deep = images[0].astype(np.uint16) * 257  # 16-bit: scaled by 65535, as before
    np.testing.assert_allclose(old.score_samples([images[0], deep]), model.score_samples([images[0]])[[0, 0]],
                               rtol=1e-4)


def test_explicit_range_and_bad_ranges():
    images = [radiance(i) for i in range(3)]
    model = PaDiM(**PARAMS, value_range=(0, 2000)).fit(images)
    assert model.value_range_ == (0.0, 2000.0)
    halved = PaDiM(**PARAMS, value_range=(0, 1)).fit([im / 2000 for im in images])
    np.testing.assert_allclose(model.score_samples(images[:1]), halved.score_samples([images[0] / 2000]), rtol=1e-4)
    for bad in [(5, 1), (0, float("inf")), "0,x", (1,)]:
        with pytest.raises(ValueError, match="value_range"):
            PaDiM(**PARAMS, value_range=bad).fit(images)


# ------------------------------------------------------------------ command line

def test_cli_value_range_reaches_the_model_file(twelve_bit, tmp_path):
    model_path = tmp_path / "cli.padim"
    rc, out, err = cli("fit", twelve_bit, "-o", model_path, "--value-range", "0,4095", "--image-size", 64,
                       "--d", 20, "--folds", 0, "--config", "fixed", "--device", "cpu", "--workers", 0, "--quiet", "--threads", 1)
    assert rc == 0, err
    assert stored_metadata(model_path)["value_range"] == [0.0, 4095.0]
    rc, out, _ = cli("info", model_path)
    assert rc == 0 and "value range: 0..4095" in out
    rc, _, err = cli("fit", twelve_bit, "-o", tmp_path / "bad.padim", "--value-range", "4095,0")
    assert rc == 2 and "--value-range" in err and "lo < hi" in err
