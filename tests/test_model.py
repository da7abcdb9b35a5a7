"""End-to-end PaDiM on synthetic images: detection, localisation, inputs, save/load, errors."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from padim import PaDiM
from padim.modelfile import ModelFileError

SIZE = 96
DEFECT = (0.3, 0.25, 0.07)  # relative (centre y, centre x, radius)
PARAMS = dict(image_size=SIZE, d=100, device="cpu", workers=0, batch_size=8, calibration_folds=0, config="fixed")


def pattern(h=SIZE, w=SIZE, seed=0, defect=None, gray=False):
    """A fixed product: smooth gradient, a dark square, a bright disk and a stripe (all placed in
    relative coordinates, so other sizes show the same product), plus mild sensor noise.
    ``defect`` = (cy, cx, r) in relative units adds a dark blob. Returns uint8 HxWx3."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    yr, xr = (y + 0.5) / h, (x + 0.5) / w
    img = np.empty((h, w, 3))
    img[..., 0] = 0.35 + 0.35 * xr
    img[..., 1] = 0.55 - 0.25 * yr
    img[..., 2] = 0.45 + 0.15 * xr * yr
    img[(np.abs(yr - 0.25) < 0.1) & (np.abs(xr - 0.7) < 0.1)] = (0.15, 0.2, 0.25)
    img[(yr - 0.7) ** 2 + (xr - 0.3) ** 2 < 0.12**2] = (0.85, 0.8, 0.7)
    img[np.abs(xr - 0.5) < 0.03] *= 0.7
    if defect is not None:
        cy, cx, r = defect
        img[(yr - cy) ** 2 + (xr - cx) ** 2 < r**2] = (0.05, 0.04, 0.06)
    if gray:
        img[:] = img.mean(axis=2, keepdims=True)
    img += rng.normal(0, 0.015, size=(h, w, 1 if gray else 3))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def save_png(array, path):
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("padim_data")
    train = root / "train"
    train.mkdir()
    for i in range(12):
        save_png(pattern(seed=i), train / f"good_{i:02d}.png")
    (train / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    test = root / "test"
    test.mkdir()
    for i in range(3):
        save_png(pattern(seed=100 + i), test / f"{i}_good.png")
    save_png(pattern(seed=200, defect=DEFECT), test / "3_defect.png")
    return {"root": root, "train": train, "test": test, "broken": train / "broken.png",
            "test_files": sorted(test.glob("*.png"))}


@pytest.fixture(scope="module")
def fitted(data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PaDiM(**PARAMS).fit(data["train"])
    model.fit_warnings_ = [str(w.message) for w in caught]
    return model


def near(found, expected, tolerance):
    return abs(found[0] - expected[0]) <= tolerance and abs(found[1] - expected[1]) <= tolerance


# ------------------------------------------------------------------------------- fit

def test_fit_learns_the_expected_shapes(fitted):
    assert fitted.n_train_ == 12
    assert fitted.input_size_ == (SIZE, SIZE)
    assert fitted.feature_size_ == (SIZE // 4, SIZE // 4)  # finest default lite0 layer: stride 4
    assert fitted.n_features_ == 100 and fitted.channel_index_.shape == (100,)
    assert fitted.gaussian_.mean.shape == ((SIZE // 4) ** 2, 100)


def test_unreadable_training_image_is_skipped_with_a_warning(fitted, data):
    assert len(fitted.skipped_) == 1
    name, message = fitted.skipped_[0]
    assert name == str(data["broken"]) and str(data["broken"]) in message
    assert any("broken.png" in w for w in fitted.fit_warnings_)


def test_a_fit_with_no_readable_image_gives_the_first_reason(data):
    # it said only "none of the training images can be read"
    sources = [data["broken"], None]
    with pytest.raises(ValueError, match=r"^none of the 2 training images can be read; first: '.*broken\.png': "
                                         r"cannot read image"):
        PaDiM(**PARAMS).fit(sources)


def test_fit_needs_two_readable_images(data):
    with pytest.raises(ValueError, match="2"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PaDiM(**PARAMS).fit([data["train"] / "good_00.png", data["broken"]])


# ------------------------------------------------------------------- detection

def test_defect_scores_highest_and_map_points_at_it(fitted, data):
    scores = fitted.score_samples(data["test_files"])
    assert scores.shape == (4,) and np.isfinite(scores).all()
    assert int(np.argmax(scores)) == 3
    assert scores[3] > 1.5 * scores[:3].max()
    amap = fitted.anomaly_maps([data["test_files"][3]])[0]
    assert amap.shape == (SIZE, SIZE) and amap.dtype == np.float32
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    assert near(peak, (DEFECT[0] * SIZE, DEFECT[1] * SIZE), tolerance=10), peak
    # image score = max of the map at the model's input size (here the original size)
    assert float(amap.max()) == pytest.approx(scores[3], rel=1e-5)


def test_maps_come_back_at_original_sizes(fitted):
    sizes = [(96, 96), (144, 96), (80, 120), (200, 64)]
    images = [pattern(h, w, seed=300 + k, defect=DEFECT if k == 1 else None) for k, (h, w) in enumerate(sizes)]
    results = list(fitted.iter_results(images))
    assert [r.anomaly_map.shape for r in results] == sizes
    assert all(np.isfinite(r.anomaly_map).all() and not r.error for r in results)
    # the defect of the 144×96 image is found at its place in that image's own coordinates
    amap = results[1].anomaly_map
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    assert near(peak, (DEFECT[0] * 144, DEFECT[1] * 96), tolerance=14), peak
    assert int(np.argmax([r.score for r in results])) == 1
    assert results[1].score == pytest.approx(float(amap.max()), rel=0.05)


def test_input_kinds_give_identical_scores(fitted, data):
    files = data["test_files"]
    arrays = [np.asarray(Image.open(p)) for p in files]
    reference = fitted.score_samples(data["test"])  # a folder
    variants = {
        "paths": files,
        "strings": [str(p) for p in files],
        "pil": [Image.open(p) for p in files],
        "arrays": arrays,
        "stack": np.stack(arrays),
        "tensor": torch.from_numpy(np.stack(arrays)),
    }
    for name, images in variants.items():
        np.testing.assert_array_equal(fitted.score_samples(images), reference, err_msg=name)


def test_grayscale_and_16bit_inputs(fitted, tmp_path):
    gray = pattern(seed=400, gray=True)[:, :, 0]
    rgb_path = save_png(np.stack([gray] * 3, axis=2), tmp_path / "rgb.png")
    l_path = save_png(gray, tmp_path / "gray.png")
    deep = gray.astype(np.uint16) * 257  # the same picture at 16 bits
    deep_path = tmp_path / "gray16.png"
    Image.fromarray(deep).save(deep_path)
    assert Image.open(l_path).mode == "L" and Image.open(deep_path).mode.startswith("I")
    scores = fitted.score_samples([rgb_path, l_path, deep_path, deep, gray, gray[:, :, None]])
    assert np.isfinite(scores).all()
    np.testing.assert_array_equal(scores[1], scores[0])  # gray PNG = the same RGB PNG
    np.testing.assert_array_equal(scores[4:], scores[0])  # 2-D and HxWx1 arrays
    np.testing.assert_allclose(scores[2:4], scores[0], rtol=1e-4)  # 16-bit: same up to rounding
    maps = fitted.anomaly_maps([deep_path])
    assert maps[0].shape == gray.shape


# ----------------------------------------------------------------------- save / load

@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    fitted.save(path)
    return path


def test_save_load_round_trip_is_bit_identical(fitted, saved, data):
    loaded = PaDiM.load(saved, device="cpu", workers=0, batch_size=8)
    np.testing.assert_array_equal(loaded.score_samples(data["test"]), fitted.score_samples(data["test"]))
    for a, b in zip(loaded.anomaly_maps(data["test_files"]), fitted.anomaly_maps(data["test_files"])):
        np.testing.assert_array_equal(a, b)
    for attr in ("input_size_", "feature_size_", "n_features_", "n_train_", "layers_", "backbone_fingerprint_"):
        assert getattr(loaded, attr) == getattr(fitted, attr), attr
    for param in ("backbone", "layers", "d", "image_size", "keep_aspect", "eps", "blur_sigma", "seed",
                  "calibration_folds", "max_false_reject"):
        assert getattr(loaded, param) == getattr(fitted, param), param
    assert torch.equal(loaded.channel_index_, fitted.channel_index_)
    assert torch.equal(loaded.gaussian_.whitener, fitted.gaussian_.whitener)
    assert loaded.gaussian_.reg == fitted.gaussian_.reg
    assert loaded.calibrator_ is None
    assert loaded.describe()["training images"] == 12


def test_saved_file_is_safetensors_with_json_metadata(saved):
    from safetensors import safe_open

    with safe_open(str(saved), framework="pt") as handle:
        meta = json.loads(handle.metadata()["padim"])
        keys = set(handle.keys())
    assert meta["format"] == "padim-model" and meta["format_version"] == 2
    assert meta["n_train"] == 12 and meta["params"]["d"] == 100
    assert {"mean", "whitener_packed", "whitener_scale", "channel_index"} <= keys


def test_format_1_files_with_a_dense_whitener_still_load(fitted, saved, data, tmp_path):
    # Format 1 stored the float32 whitener as a dense [P, d, d] tensor under "whitener".
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(saved), framework="pt") as handle:
        meta = json.loads(handle.metadata()["padim"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    d = meta["n_features"]
    rows, cols = np.tril_indices(d)
    packed = tensors.pop("whitener_packed").double().numpy() * tensors.pop("whitener_scale").double().numpy()[:, None]
    dense = np.zeros((packed.shape[0], d, d), dtype=np.float32)
    dense[:, rows, cols] = packed
    tensors["whitener"] = torch.from_numpy(dense)
    meta["format_version"] = 1
    path = tmp_path / "v1.safetensors"
    save_file(tensors, str(path), metadata={"padim": json.dumps(meta)})
    loaded = PaDiM.load(path, device="cpu", workers=0, batch_size=8)
    np.testing.assert_array_equal(loaded.score_samples(data["test"]), fitted.score_samples(data["test"]))


def _rewrite(src, dst, change_meta=None, change_tensors=None, raw=None):
    """``src`` with its metadata and tensors changed in place by the given callables."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as handle:
        meta = json.loads(handle.metadata()["padim"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    (change_meta or (lambda m: None))(meta)
    (change_tensors or (lambda t: None))(tensors)
    save_file(tensors, str(dst), metadata={"padim": raw if raw is not None else json.dumps(meta)})
    return dst


def _corrupt(kind, saved, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / f"{kind}.safetensors"
    if kind == "truncated":
        blob = saved.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":
        save_file({"weight": torch.zeros(3, 3)}, str(path), metadata={"framework": "other"})
    elif kind == "version":
        _rewrite(saved, path, lambda m: m.update(format_version=99))
    elif kind == "format":
        _rewrite(saved, path, lambda m: m.update(format="something-else"))
    elif kind == "incomplete":
        _rewrite(saved, path, lambda m: m.pop("params"))
    elif kind == "badjson":
        _rewrite(saved, path, raw="{not json")
    elif kind == "shapes":
        _rewrite(saved, path, change_tensors=lambda t: t.update(mean=t["mean"][:-1].contiguous()))
    elif kind == "missing":
        pass
    return path


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "foreign", "version", "format",
                                  "incomplete", "badjson", "shapes", "missing"])
def test_bad_model_files_raise_model_file_error(kind, saved, tmp_path):
    path = _corrupt(kind, saved, tmp_path)
    with pytest.raises(ModelFileError) as info:
        PaDiM.load(path, device="cpu")
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    if kind == "version":
        assert "99" in message
    if kind == "foreign":
        assert "padim" in message



# A calibrator as a fit writes it (good-only): every value in range.
CALIBRATOR = {"format": 2, "method": "good-only", "threshold": 3.0, "max_false_reject": 0.01, "alpha": 0.01,
              "loc": 1.0, "scale": 0.5, "n_good": 12}


def _set(path, value):
    """A change that sets ``meta[path[0]][path[1]]…`` to ``value``."""
    def change(meta):
        for key in path[:-1]:
            meta = meta[key]
        meta[path[-1]] = value
    return change


def _nan_first(key):
    def change(tensors):
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = float("nan")
    return change


# (name, change of the metadata, change of the tensors, what the message must name)
CORRUPTIONS = [
    ("backbone not a name", _set(("params", "backbone"), [1]), None, "params.backbone"),
    ("blur missing a value", _set(("params", "blur_sigma"), None), None, "params.blur_sigma"),
    ("blur overflowing the kernel", _set(("params", "blur_sigma"), 1e308), None, "params.blur_sigma"),
    ("unknown hook point", _set(("layers",), ["_blocks.99"]), None, "_blocks.99"),
    ("layers not a list", _set(("layers",), "x"), None, "layers"),
    ("input size of one side", _set(("geometry", "input_size"), [96]), None, "geometry.input_size"),
    ("batch as text", _set(("geometry", "batch"), "x"), None, "geometry.batch"),
    ("memory plan as text", _set(("memory_plan",), "x"), None, "memory_plan"),
    ("memory plan field null", _set(("memory_plan", "statistics"), None), None, "memory_plan.statistics"),
    ("cell zero", _set(("cell",), 0), None, "cell"),
    ("calibrator as text", _set(("calibrator",), "x"), None, "calibrator"),
    ("calibrator with no good images", _set(("calibrator",), {**CALIBRATOR, "n_good": -1}), None, "n_good"),
    ("calibrator threshold NaN", _set(("calibrator",), {**CALIBRATOR, "threshold": float("nan")}), None, "threshold"),
    ("calibrator scale zero", _set(("calibrator",), {**CALIBRATOR, "scale": 0}), None, "scale"),
    ("value kind a list", _set(("value_kind",), ["uint8"]), None, "value_kind"),
    ("value kind unknown", _set(("value_kind",), "x"), None, "value_kind"),
    ("value range reversed", _set(("value_range",), [255, 0]), None, "value_range"),
    ("map floor as text", _set(("map_floor",), "x"), None, "map_floor"),
    ("whole-image rule as text", _set(("whole_image",), "x"), None, "whole_image"),
    ("whole-image slope zero", _set(("whole_image",), {"gate": 1.0, "base": 2.0, "slope": 0}), None,
     "whole_image.slope"),
    ("whole-image base missing", _set(("whole_image",), {"gate": 1.0, "slope": 1.0}), None, "whole_image.base"),
    ("whole-image switch as text", _set(("params", "whole_image"), "yes"), None, "params.whole_image"),
    ("auto as text", _set(("auto",), "x"), None, "auto"),
    ("auto table of numbers", _set(("auto",), {"table": [1, 2], "choice": "default"}), None, "auto.table"),
    ("mean NaN", None, _nan_first("mean"), "mean"),
    ("whitener NaN", None, _nan_first("whitener_packed"), "whitener_packed"),
    ("float16 whitener without its scale", None, lambda t: t.pop("whitener_scale"), "whitener_scale"),
    ("channels out of range", None, lambda t: t.update(channel_index=t["channel_index"] + 10_000), "channel_index"),
    ("channels as floats", None, lambda t: t.update(channel_index=t["channel_index"].float()), "channel_index"),
    ("channels missing", None, lambda t: t.pop("channel_index"), "channel_index"),
    ("calibration means without scores", None, lambda t: t.update(calibration_means=torch.ones(3)),
     "calibration_means"),
]


@pytest.mark.parametrize("name,change_meta,change_tensors,field", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupted_metadata_or_tensors_fail_at_load_naming_the_field(saved, tmp_path, name, change_meta,
                                                                    change_tensors, field):
    path = _rewrite(saved, tmp_path / "bad.safetensors", change_meta, change_tensors)
    with pytest.raises(ModelFileError) as info:
        PaDiM.load(path, device="cpu")
    message = str(info.value)
    assert message.startswith(f"'{path}': model file is incomplete or invalid (") and "\n" not in message
    assert field in message


def test_the_corruptions_start_from_a_file_that_loads(saved, data, tmp_path):
    # The control: the unchanged file, and the one given a valid calibrator, load and score.
    for change in (None, _set(("calibrator",), CALIBRATOR)):
        model = PaDiM.load(_rewrite(saved, tmp_path / "ok.safetensors", change), device="cpu", workers=0)
        assert np.isfinite(model.score_samples(data["test"])).all()
    assert model.calibrator_.threshold_ == 3.0 and model.predict_proba(data["test"]).shape == (4,)


def test_metadata_that_is_not_an_object_is_a_model_file_error(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "list.safetensors", raw="[1, 2]")
    with pytest.raises(ModelFileError, match="not a JSON object"):
        PaDiM.load(path, device="cpu")

# ------------------------------------------------------------- errors while scoring

def test_iter_results_reports_unreadable_images_and_scores_the_rest(fitted, data):
    files = data["test_files"]
    sources = [files[0], data["broken"], files[3]]
    results = list(fitted.iter_results(sources))
    assert [r.index for r in results] == [0, 1, 2]
    assert str(data["broken"]) in results[1].error
    assert results[1].score is None and results[1].anomaly_map is None
    assert not results[0].error and not results[2].error
    expected = fitted.score_samples([files[0], files[3]])
    np.testing.assert_allclose([results[0].score, results[2].score], expected, rtol=1e-5)
    assert results[2].anomaly_map.shape == (SIZE, SIZE)
    with pytest.raises(ValueError, match="broken.png"):
        fitted.score_samples(sources)


def test_using_an_unfitted_model_raises_a_clear_error(tmp_path):
    model = PaDiM(**PARAMS)
    image = pattern(seed=1)
    for call in (lambda: model.score_samples([image]), lambda: model.anomaly_maps([image]),
                 lambda: list(model.iter_results([image])), lambda: model.save(tmp_path / "m.safetensors"),
                 lambda: model.predict_proba([image])):
        with pytest.raises(RuntimeError, match="fit"):
            call()


def test_predict_without_calibration_raises(fitted):
    with pytest.raises(RuntimeError, match="calibrat"):
        fitted.predict_proba([pattern(seed=1)])


# ------------------------------------------------------------------------ calibration

def _calibrator_or_skip():
    try:
        from padim.calibration import Calibrator
    except ImportError as exc:
        pytest.skip(f"padim.calibration is not available yet ({exc})")
    try:
        cal = Calibrator().fit(np.array([1.0, 1.2, 1.1, 1.3, 0.9, 1.05]), max_false_reject=0.05)
        probs = cal.probability(np.array([1.0, 5.0]))
        cal.predict(np.array([1.0, 5.0]))
        Calibrator.from_dict(cal.to_dict())
    except (TypeError, AttributeError) as exc:
        pytest.skip(f"padim.calibration API differs from Calibrator().fit/probability/predict/"
                    f"to_dict/from_dict ({exc})")
    assert probs.shape == (2,)
    return Calibrator


@pytest.fixture(scope="module")
def calibrated(data):
    _calibrator_or_skip()
    files = sorted(data["train"].glob("good_*.png"))[:6]
    params = dict(PARAMS, calibration_folds=3)
    return PaDiM(**params).fit(files), files


def test_calibration_gives_probabilities(calibrated, data, tmp_path):
    model, files = calibrated
    assert model.calibrator_ is not None
    held_out = np.asarray(model.calibration_scores_)
    assert held_out.shape == (6,) and np.isfinite(held_out).all()
    # held-out scores exceed in-sample ones: each image was scored by a model that never saw it
    in_sample = model.score_samples(files)
    assert (held_out > in_sample).all()
    probs = model.predict_proba(data["test_files"])
    assert probs.shape == (4,) and ((probs >= 0) & (probs <= 1)).all()
    assert int(np.argmax(probs)) == 3 and probs[3] > 0.5
    decisions = model.predict(data["test_files"])
    assert bool(decisions[3]) and decisions.dtype == bool
    # the calibration survives save / load
    path = model.save(tmp_path / "calibrated.safetensors")
    loaded = PaDiM.load(path, device="cpu", workers=0, batch_size=8)
    np.testing.assert_array_equal(loaded.predict_proba(data["test_files"]), probs)
    np.testing.assert_array_equal(np.asarray(loaded.calibration_scores_), held_out)


def test_held_out_scores_equal_refitting_without_the_fold(calibrated):
    # The k-fold scores come from downdating the full model (padim.folds); an independent refit on
    # the other images must give the same scores. Fold membership: seeded permutation, every k-th.
    # The fold model is (S_F + (n − 1)λI)/(n − 1) = α⁻¹ (np.cov of the rest + λ_F I) with
    # α = (n − 1)/(n_F − 1), λ_F = αλ: a refit given λ_F (eps=1 reads the rest's mean variance v,
    # then eps = λ_F / v makes the relative regulariser exactly λ_F), distances scaled by √α.
    model, files = calibrated
    order = np.random.default_rng(model.seed).permutation(len(files))
    members = np.sort(order[0::3])
    rest = [f for i, f in enumerate(files) if i not in set(members.tolist())]
    n, n_fold = len(files), len(rest)
    alpha = (n - 1) / (n_fold - 1)
    lam_fold = model.gaussian_.reg * alpha
    variance = PaDiM(**dict(PARAMS, eps=1.0)).fit(rest).gaussian_.reg
    refit = PaDiM(**dict(PARAMS, eps=lam_fold / variance)).fit(rest)
    assert refit.gaussian_.reg == pytest.approx(lam_fold, rel=1e-9)
    expected = refit.score_samples([files[i] for i in members]) * np.sqrt(alpha)
    # (fold embeddings are cached in float16 and the refit's whitener is stored in float16)
    np.testing.assert_allclose(np.asarray(model.calibration_scores_)[members], expected, rtol=3e-3)


def test_the_sums_are_freed_before_the_held_out_folds(data, monkeypatch):
    # With the downdate, the fit's float64 sums are not needed once the exact model is made: they
    # must be gone (no reference left anywhere) while the held-out folds run, the phase that set a
    # fit's peak (a 12 MP model's sums are 1 GiB). Until 2026-12 the grouped updater kept them.
    import gc
    import weakref

    import padim.model as model_module

    _calibrator_or_skip()
    made, alive_during_folds = [], []

    class TrackedStats(model_module.GaussianStats):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(weakref.ref(self))

    original = PaDiM._calibrate

    def calibrate(self, *args, **kwargs):
        gc.collect()
        alive_during_folds.append(sum(ref() is not None for ref in made))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(model_module, "GaussianStats", TrackedStats)
    monkeypatch.setattr(PaDiM, "_calibrate", calibrate)
    files = sorted(data["train"].glob("good_*.png"))[:6]
    model = PaDiM(**dict(PARAMS, calibration_folds=3)).fit(files)
    assert len(made) == 1 and alive_during_folds == [0]
    assert model.calibrator_ is not None


def test_calibration_needs_enough_images(data):
    _calibrator_or_skip()
    files = sorted(data["train"].glob("good_*.png"))[:4]
    with pytest.raises(ValueError, match="calibration"):
        PaDiM(**dict(PARAMS, calibration_folds=3)).fit(files, calibrate=True)
    with pytest.warns(UserWarning, match="calibration needs at least 5 good images, got 4.*fitted without calibration"):
        model = PaDiM(**dict(PARAMS, calibration_folds=3)).fit(files)  # not asked for: skipped, with a warning
    assert model.calibrator_ is None
    with pytest.raises(RuntimeError, match=r"fewer good images than max\(calibration_folds, 5\)"):
        model.predict_proba(files[:1])
    more = sorted(data["train"].glob("good_*.png"))[:8]
    with pytest.warns(UserWarning, match="at least 9 good images, got 8.*lower calibration_folds"):
        assert PaDiM(**dict(PARAMS, calibration_folds=9)).fit(more).calibrator_ is None


@pytest.mark.parametrize("params, match", [
    ({"calibration_folds": 1}, "calibration_folds must be 0 .* or at least 2, got 1"),
    ({"calibration_folds": -2}, "calibration_folds must be"),
    ({"calibration_folds": 2.5}, "calibration_folds must be"),
    ({"eps": float("nan")}, "eps must be a finite number ≥ 0, got nan"),
    ({"eps": -0.1}, "eps must be"),
    ({"eps": "0.1"}, "eps must be"),
    ({"eps": float("inf"), "config": "auto"}, "eps must be"),  # before the selection too
    ({"overlap": -5, "tile": 64}, "overlap must be None .* or an integer ≥ 0 .*, got -5"),  # was taken as 0
    ({"overlap": 8.5}, "overlap must be"),
])
def test_unusable_fit_parameters_are_refused_before_any_work(data, params, match, monkeypatch):
    monkeypatch.setattr(PaDiM, "_prepare_fit", lambda *a, **k: pytest.fail("the fit started"))
    with pytest.raises(ValueError, match=match):
        PaDiM(**dict(PARAMS, **params)).fit(data["train"])


def test_a_d_above_the_channels_and_an_odd_tile_are_used_adjusted_with_one_warning_each(data):
    """d=100000 keeps all 24+40+112 = 176 channels of Lite0's default layers, tile=7 px becomes 16
    (the stride of block 10): each said once per fit, not silently; usable values warn of nothing."""
    files = sorted(data["train"].glob("good_*.png"))[:6]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model = PaDiM(**dict(PARAMS, d=100000, tile=7, overlap=0, scale=1.0)).fit(files)
    lines = [str(w.message) for w in seen]
    assert model.n_features_ == 176 and model.channel_index_ is None and model.geometry_.tile == 16
    assert sum("d=100000 is more than the 176 channels" in line and "all 176 are kept" in line for line in lines) == 1
    assert sum("tile=7 px is not a multiple of 16 px" in line and "tiles of 16 px" in line for line in lines) == 1
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        PaDiM(**dict(PARAMS, d=176, tile=64, overlap=0, scale=1.0)).fit(files)
    assert not [w for w in seen if "is more than the" in str(w.message) or "not a multiple" in str(w.message)]


def test_copies_of_one_image_are_refused_with_the_reason(data):
    """Identical good images give held-out scores without spread: one line saying so and what to
    do, not the calibrator's 'all scores are equal'."""
    _calibrator_or_skip()
    one = sorted(data["train"].glob("good_*.png"))[0]
    with pytest.raises(ValueError, match=r"look identical \(copies of one image\?\).*calibration_folds=0"):
        PaDiM(**dict(PARAMS, calibration_folds=3)).fit([one] * 6)


def test_many_images_hold_out_a_bounded_subset_scored_without_its_fold(data, monkeypatch):
    # Beyond what the embedding cache holds (here 9 of 12 images), calibration holds out a seeded
    # subset: folds dealt from it, each removed from the model of all 12; no image extracted twice.
    # Each held-out score must equal an independent refit on the 11 − … other images (as above).
    _calibrator_or_skip()
    import padim.memory
    import padim.model

    files = sorted(data["train"].glob("good_*.png"))
    params = dict(PARAMS, calibration_folds=3)
    probe = PaDiM(**params)
    probe.plan(files)
    image_bytes = 2 * probe.n_features_ * probe.feature_size_[0] * probe.feature_size_[1]
    monkeypatch.setattr(padim.memory, "FIT_CACHE_MAX_BYTES", 9 * image_bytes + 1)
    monkeypatch.setattr(padim.memory, "HELD_OUT_MIN_IMAGES", 3)
    embedded = []
    original_embed = PaDiM._embed
    monkeypatch.setattr(PaDiM, "_embed", lambda self, images: embedded.append(len(images)) or original_embed(self, images))
    model = PaDiM(**params).fit(files)
    assert sum(embedded) == 12  # one backbone pass per image: the held-out ones come from the cache
    chosen = np.sort(np.random.default_rng(model.seed).choice(12, 9, replace=False))
    assert model.held_out_ == chosen.tolist() and len(model.calibration_scores_) == 9
    local = np.sort(np.random.default_rng(model.seed).permutation(9)[0::3])  # fold 0, positions in the subset
    fold = chosen[local]
    rest = [f for i, f in enumerate(files) if i not in set(fold.tolist())]
    monkeypatch.setattr(PaDiM, "_embed", original_embed)
    n, kept = len(files), len(rest)
    alpha = (n - 1) / (kept - 1)
    lam_fold = model.gaussian_.reg * alpha
    variance = PaDiM(**dict(PARAMS, eps=1.0)).fit(rest).gaussian_.reg
    refit = PaDiM(**dict(PARAMS, eps=lam_fold / variance)).fit(rest)
    expected = refit.score_samples([files[i] for i in fold]) * np.sqrt(alpha)
    np.testing.assert_allclose(np.asarray(model.calibration_scores_)[local], expected, rtol=3e-3)


def test_when_fewer_than_the_minimum_fit_the_cache_only_that_minimum_is_held_out(data, monkeypatch):
    # Larger models (e.g. a 1.5× input on many images): the 160 MiB cache holds fewer than
    # HELD_OUT_MIN_IMAGES. A subset of that minimum is held out (not every image, which once cost
    # a second backbone pass over all of them), and the cache grows to hold it: one pass per image.
    _calibrator_or_skip()
    import padim.memory
    import padim.model

    files = sorted(data["train"].glob("good_*.png"))
    monkeypatch.setattr(padim.memory, "FIT_CACHE_MAX_BYTES", 1)  # not even one image fits
    monkeypatch.setattr(padim.memory, "HELD_OUT_MIN_IMAGES", 6)
    embedded = []
    original_embed = PaDiM._embed
    monkeypatch.setattr(PaDiM, "_embed", lambda self, images: embedded.append(len(images)) or original_embed(self, images))
    model = PaDiM(**dict(PARAMS, calibration_folds=2)).fit(files)
    assert len(model.held_out_) == 6 and len(model.calibration_scores_) == 6
    assert model.held_out_ == np.sort(np.random.default_rng(model.seed).choice(12, 6, replace=False)).tolist()
    assert np.isfinite(model.calibration_scores_).all()
    assert sum(embedded) == 12  # the 6 held-out embeddings came from the cache
    # no room for them at all (the memory budget): the same subset, extracted again
    monkeypatch.setattr(padim.model, "held_out_cache_bytes", lambda n, image_bytes: 1)
    embedded.clear()
    again = PaDiM(**dict(PARAMS, calibration_folds=2)).fit(files)
    assert again.held_out_ == model.held_out_ and sum(embedded) == 12 + 6
    np.testing.assert_allclose(again.calibration_scores_, model.calibration_scores_, rtol=1e-4)


def test_originals_are_the_decoded_images_and_heatmaps_decode_once(calibrated, data, tmp_path, monkeypatch):
    from padim import workflows
    from padim.io import load_image

    model, _ = calibrated
    files = data["test_files"]
    results = list(model.iter_results(files, maps=False, originals=True))
    for result, path in zip(results, files):
        np.testing.assert_array_equal(result.image, load_image(path, keep_uint8=True))
        # drawn from it, the heatmap background is exactly the image as read for drawing before
        np.testing.assert_array_equal(workflows.model_image(model, path, result.image),
                                      workflows.model_image(model, path))
    assert all(r.image is None for r in model.iter_results(files[:1], maps=False))

    def no_second_decode(*args, **kwargs):
        raise AssertionError("an image was decoded a second time for its heatmap")

    monkeypatch.setattr(workflows, "load_image", no_second_decode)
    summary = workflows.score_folder(model, data["test"], tmp_path / "scores.tsv", heatmaps=tmp_path / "maps")
    assert summary.scored == 4 and len(list((tmp_path / "maps").glob("*.png"))) == 4


def test_scikit_learn_clone_and_set_params():
    """sklearn.base.clone calls get_params(deep=False) and rebuilds from it; it failed with
    'get_params() got an unexpected keyword argument deep'."""
    from sklearn.base import clone

    model = PaDiM(d=50, layers=["_blocks.2"], eps=0.2, cell=2, config="fixed")
    copy = clone(model)
    assert copy is not model and copy.get_params() == model.get_params()
    assert copy.get_params(deep=False) == copy.get_params(deep=True)
    assert not hasattr(copy, "gaussians_") or copy.gaussians_ is None
    assert model.set_params(d=10, eps=0.5) is model and (model.d, model.eps) == (10, 0.5)
    with pytest.raises(ValueError, match=r"PaDiM has no parameter 'channels'; valid: backbone, layers, d"):
        model.set_params(channels=10)
