"""padim.feature_bank and the auto-configuration's shared passes: a candidate's embedding from the
bank equals what its own extractor makes, and a selection from shared passes scores the candidates
as fitting each on its own does."""

import numpy as np
import pytest
import torch
from PIL import Image

from padim import PaDiM
from padim.feature_bank import FeatureBank, bank_key
from padim.model import as_float16

from test_autoconfig import COMMON, shifted_texture_folder

LAYER_SETS = {"default": None, "deep": ["_blocks.4", "_blocks.10", "_blocks.14"], "shallow": ["_blocks.2", "_blocks.4"]}


def prepared(sources, **params):
    model = PaDiM(**{**COMMON, **params})
    model._prepare_fit(sources)
    model.value_range_, model.value_kind_ = model._decide_value_range(sources)
    return model


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return sorted(shifted_texture_folder(tmp_path_factory.mktemp("bank") / "good", n=7).iterdir())


def test_each_candidate_gets_the_embedding_its_own_extractor_makes(images):
    models = {name: prepared(images, layers=layers, d=d) for name, layers in LAYER_SETS.items() for d in (24,)}
    models["all channels"] = prepared(images, d=0)
    union = sorted({layer for m in models.values() for layer in m.layers_})
    bank = FeatureBank(models["default"], union, images)
    assert bank.layers == ["_blocks.2", "_blocks.4", "_blocks.10", "_blocks.14"]  # in the backbone's order
    assert bank.indices == list(range(7)) and bank.sizes == [(64, 64)] * 7
    for name, model in models.items():
        assert bank_key(model) == bank.key and set(model.layers_) <= set(bank.layers), name
        batch = next(iter(model._loader(images, model.input_size_)))
        own = as_float16(model._embed(batch.images))  # as the fit's sums take them
        served = torch.cat([e for _, e in bank.embeddings(model, range(7), batch_size=3)])
        assert served.shape == own.shape, name
        torch.testing.assert_close(served.float(), own.float(), rtol=0, atol=0.02 * float(own.abs().max()))


def test_a_bank_skips_unreadable_images_and_refuses_tiled_models(images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    model = prepared(images)
    bank = FeatureBank(model, model.layers_, [images[0], broken, images[1]])
    assert bank.indices == [0, 2]
    assert [ids for ids, _ in bank.embeddings(model, [0, 1, 2], batch_size=8)] == [[0, 2]]
    big = np.zeros((300, 300, 3), np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    tiled = prepared([tmp_path / "big.png"], tile=128, overlap=32, scale=1.0, image_size=None)
    assert tiled.geometry_.tiled and bank_key(tiled) is None
    with pytest.raises(ValueError, match="tiled"):
        FeatureBank(tiled, tiled.layers_, [tmp_path / "big.png"])


def test_selection_from_shared_passes_scores_candidates_as_their_own_fits(tmp_path, monkeypatch):
    """The same selection with shared passes (low-rank fits, one backbone pass per input size) and
    without (every candidate fitted and scored by itself): the same metrics, the same choice."""
    import padim.autoconfig as auto

    train = sorted(shifted_texture_folder(tmp_path / "good", n=14, seed=4).iterdir())
    monkeypatch.setattr(auto, "candidates", lambda backbone, size: [
        c for c in real_candidates(backbone, size) if c.name in ("default", "deep", "shallow", "shared", "eps=1")])
    params = {**COMMON, "progress": False}

    def run():
        return auto.select(lambda **p: PaDiM(**{**params, **p}), train, "efficientnet_lite0", 64, budget="1000x")

    shared = run()
    monkeypatch.setattr(auto.SharedPasses, "_prepared_key", lambda self, model: None)
    monkeypatch.setattr(auto, "UNSERVED_FOLDS", 99)  # the same folds as the shared run
    alone = run()
    assert [r.shared_pass for r in shared.table] == [True] * 5 and not any(r.shared_pass for r in alone.table)
    for a, b in zip(shared.table, alone.table):
        for metric in ("image_auroc", "pixel_auroc", "pro", "good_cv", "selection"):
            # image AUROC ranks ~100 score pairs per fold: the bank's float16 features may swap one near-tie
            tolerance = {"image_auroc": 0.01, "selection": 5e-3}.get(metric, 2e-3)
            assert getattr(a, metric) == pytest.approx(getattr(b, metric), abs=tolerance), (a.name, metric)
    assert shared.choice == alone.choice


real_candidates = __import__("padim.autoconfig", fromlist=["candidates"]).candidates


def ticking_clock(monkeypatch, ticks: dict) -> None:
    """padim.feature_bank's clock reads ``ticks["now"]``, which the test advances."""
    import padim.feature_bank as bank_module

    class Clock:
        @staticmethod
        def perf_counter():
            return ticks["now"]

    monkeypatch.setattr(bank_module, "time", Clock)


def test_a_models_share_of_the_pass_stops_at_its_deepest_layer(images, monkeypatch):
    """The union's deeper stages do not count for a model that does not hook them: with a clock that
    advances one second per hooked stage reached (and not otherwise), a model hooking up to the
    k-th of four hooked stages is charged the pass less (4 − k) seconds per batch."""
    import padim.net as net

    model = prepared(images)
    union = ["_blocks.2", "_blocks.4", "_blocks.10", "_blocks.14"]
    ticks = {"now": 0.0}
    original = net.Embedder.feature_maps

    def counting(self, images, clock=None):
        out = original(self, images, clock)
        if clock is not None:  # the k-th hooked stage was ready k seconds into the batch
            for k, name in enumerate(sorted(clock, key=self.stage_names.index), start=1):
                clock[name] = ticks["now"] + k
            ticks["now"] += len(clock)
        return out

    monkeypatch.setattr(net.Embedder, "feature_maps", counting)
    ticking_clock(monkeypatch, ticks)
    bank = FeatureBank(model, union, images)
    batches = len(list(model._loader(images, model.input_size_)))
    assert bank.seconds == pytest.approx(4.0 * batches)
    assert bank.seconds_for(union) == pytest.approx(bank.seconds)
    assert bank.seconds_for(["_blocks.2", "_blocks.10"]) == pytest.approx(3.0 * batches)
    assert bank.seconds_for(["_blocks.2"]) == pytest.approx(1.0 * batches)


def test_a_first_forwards_one_off_cost_is_left_out_of_the_pass(images, monkeypatch):
    """Code paged in and kernels set up on a cold machine are paid once per process, by no image:
    with a clock where the process's first forward costs 100 s and every batch 1 s, the pass
    counts 1 s per batch (else the budget's unit, scaled per image, would grow with them)."""
    import padim.net as net

    model = prepared(images)
    ticks = {"now": 0.0, "calls": 0}
    original = net.Embedder.feature_maps

    def cold_first(self, images, clock=None):
        ticks["now"] += 100.0 if ticks["calls"] == 0 else (1.0 if clock is not None else 0.0)
        ticks["calls"] += 1
        return original(self, images, clock)

    monkeypatch.setattr(net.Embedder, "feature_maps", cold_first)
    ticking_clock(monkeypatch, ticks)
    bank = FeatureBank(model, model.layers_, images)
    batches = len(list(model._loader(images, model.input_size_)))
    assert bank.seconds == pytest.approx(1.0 * batches)
    assert bank.indices == list(range(len(images)))
