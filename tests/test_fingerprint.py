"""model_fingerprint: equal for models that score alike, different when anything that shapes the
scores, probabilities or labels differs; independent of device placement and memory layout."""

import copy
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from padim.calibration import Calibrator
from padim.fingerprint import model_fingerprint
from padim.gaussian import GaussianModel
from padim.geometry import Geometry


def make_model(seed=0):
    """A stand-in with the attributes a fitted PaDiM holds (no backbone needed)."""
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(6, 3, generator=gen)
    whitener = torch.tril(torch.randn(6, 3, 3, generator=gen))
    good = np.random.default_rng(seed).gamma(5.0, 2.0, size=40)
    return SimpleNamespace(
        gaussian_=GaussianModel(mean, whitener, 0.01),
        channel_index_=torch.tensor([4, 0, 7]),
        layers_=["blocks.2", "blocks.4"],
        geometry_=Geometry(input_size=(16, 24), stride=4, multiple=16),
        cell_=1,
        blur_sigma=4.0,
        eps=0.01,
        backbone="efficientnet_lite0",
        backbone_fingerprint_="abc123",
        calibrator_=Calibrator().fit(good, max_false_reject=0.05),
    )


def test_fingerprint_is_a_stable_hex_digest():
    fp = model_fingerprint(make_model())
    assert re.fullmatch(r"[0-9a-f]{32}", fp)
    assert model_fingerprint(make_model()) == fp  # same state built again
    assert model_fingerprint(make_model(seed=1)) != fp


def test_fingerprint_ignores_memory_layout_and_copies():
    model = make_model()
    expected = model_fingerprint(model)
    twin = copy.deepcopy(model)
    # the same values, stored transposed (non-contiguous view of another buffer)
    stored = twin.gaussian_.whitener.transpose(1, 2).contiguous().transpose(1, 2)
    assert not stored.is_contiguous()
    twin.gaussian_ = GaussianModel(twin.gaussian_.mean.clone(), stored, twin.gaussian_.reg)
    assert model_fingerprint(twin) == expected


def _changes():
    """One change per input of the fingerprint."""

    def whitener_element(m):
        w = m.gaussian_.whitener.clone()
        w[3, 2, 1] = torch.nextafter(w[3, 2, 1], torch.tensor(np.inf))  # one ulp
        m.gaussian_ = GaussianModel(m.gaussian_.mean, w, m.gaussian_.reg)

    def mean_element(m):
        mean = m.gaussian_.mean.clone()
        mean[0, 0] += 1e-3
        m.gaussian_ = GaussianModel(mean, m.gaussian_.whitener, m.gaussian_.reg)

    def mean_dtype(m):
        m.gaussian_ = GaussianModel(m.gaussian_.mean.double(), m.gaussian_.whitener, m.gaussian_.reg)

    def mean_shape(m):  # same bytes, other shape
        m.gaussian_ = GaussianModel(m.gaussian_.mean.reshape(3, 6), m.gaussian_.whitener, m.gaussian_.reg)

    def set_attr(name, value):
        return lambda m: setattr(m, name, value)

    def threshold(m):
        m.calibrator_ = m.calibrator_.with_threshold(m.calibrator_.threshold_ * 1.01)

    return {
        "whitener element": whitener_element,
        "mean element": mean_element,
        "mean dtype": mean_dtype,
        "mean shape": mean_shape,
        "channel index": set_attr("channel_index_", torch.tensor([4, 0, 6])),
        "all channels": set_attr("channel_index_", None),
        "layers": set_attr("layers_", ["blocks.2", "blocks.10"]),
        "geometry": set_attr("geometry_", Geometry(input_size=(16, 24), stride=4, multiple=16, scale=0.5)),
        "cell": set_attr("cell_", "image"),
        "blur sigma": set_attr("blur_sigma", 2.0),
        "eps": set_attr("eps", 0.02),
        "backbone": set_attr("backbone", "resnet18"),
        "backbone weights": set_attr("backbone_fingerprint_", "def456"),
        "no backbone weights record": set_attr("backbone_fingerprint_", None),
        "calibrator threshold": threshold,
        "no calibrator": set_attr("calibrator_", None),
        "value range": set_attr("value_range_", (0.0, 0.5)),
        "value range tensor": set_attr("value_range_", torch.tensor([0.0, 0.25])),
        "value kind": set_attr("value_kind_", "int"),
    }


@pytest.mark.parametrize("change", sorted(_changes()))
def test_any_change_that_shapes_the_outputs_changes_the_fingerprint(change):
    model = make_model()
    before = model_fingerprint(model)
    _changes()[change](model)
    assert model_fingerprint(model) != before


def test_value_range_absent_or_none_is_the_same_model():
    model = make_model()
    before = model_fingerprint(model)
    model.value_range_ = None
    assert model_fingerprint(model) == before


def test_runtime_options_do_not_count():
    model = make_model()
    before = model_fingerprint(model)
    model.batch_size, model.device, model.workers = 64, "cuda", 8
    model.map_floor_ = 1.5  # heatmap colours only
    assert model_fingerprint(model) == before


def test_a_saved_and_loaded_model_keeps_its_fingerprint(tmp_path, lite0_backbone):
    """The in-memory fitted model and the one read back from its file are the same model."""
    from padim import PaDiM

    rng = np.random.default_rng(0)
    images = [(rng.random((32, 32, 3)) * 0.2 + 0.4).astype(np.float32) for _ in range(6)]
    model = PaDiM(image_size=32, d=20, device="cpu", workers=0, progress=False, calibration_folds=3,
                  max_false_reject=0.2, config="fixed")
    model.fit(images)
    loaded = PaDiM.load(model.save(tmp_path / "m.padim"), device="cpu")
    assert model_fingerprint(loaded) == model_fingerprint(model)
    before = model_fingerprint(loaded)
    loaded.score_samples(images[:2])  # unpacks the dense whitener on first use: the same model
    assert model_fingerprint(loaded) == before == model_fingerprint(model)
    loaded.calibrator_ = loaded.calibrator_.with_threshold(loaded.calibrator_.threshold_ + 1)
    assert model_fingerprint(loaded) != model_fingerprint(model)
