"""The whole-image check (padim.whole_image): the rule by hand, its gate's false-reject rate on
Gumbel data, its torch and numpy sides, and a fitted model that flags frames raised everywhere."""

import copy
import math

import numpy as np
import pytest
import torch

from padim import PaDiM
from padim.calibration import Calibrator
from padim.cli import main
from padim.net import image_scores
from padim.whole_image import WholeImageRule, gate_false_reject

from test_model import DEFECT, SIZE, pattern, save_png

RULE = WholeImageRule(gate=10.0, base=50.0, slope=3.0)


def test_the_rule_by_hand():
    maxima = np.array([40.0, 40.0, 40.0, 70.0, 40.0])
    means = np.array([9.0, 10.0, 12.0, 12.0, 30.0])
    # below the gate: the maximum; at or past it: max(M, 50 + 3·(m − 10))
    np.testing.assert_array_equal(RULE.apply(maxima, means), [40.0, 50.0, 56.0, 70.0, 110.0])


def test_torch_and_numpy_sides_agree_with_a_naive_loop():
    rng = np.random.default_rng(0)
    maps = rng.gamma(2.0, 3.0, size=(6, 9, 7)).astype(np.float32)
    maps[1] += 8.0  # raised everywhere: past the gate
    maps[4] += 20.0
    rule = WholeImageRule(gate=float(maps[1].mean()) - 0.5, base=40.0, slope=2.5)
    expected = []
    for m in maps.astype(np.float64):
        high, level = m.max(), m.mean()
        expected.append(max(high, rule.base + rule.slope * (level - rule.gate)) if level >= rule.gate else high)
    got_torch = image_scores(torch.from_numpy(maps), rule).numpy()
    got_numpy = rule.apply(maps.reshape(6, -1).max(axis=1), maps.reshape(6, -1).mean(axis=1))
    np.testing.assert_allclose(got_torch, expected, rtol=1e-5)
    np.testing.assert_allclose(got_numpy, expected, rtol=1e-6)
    assert got_torch[1] > maps[1].max() and got_torch[0] == maps[0].max()
    np.testing.assert_array_equal(image_scores(torch.from_numpy(maps)).numpy(), maps.reshape(6, -1).max(axis=1))


def test_gate_rejects_half_the_target_of_good_means_on_gumbel_data():
    # Held-out means from a Gumbel law: the gate's false-reject rate for new good images, from the
    # law's own survival function, averages its target min(α/2, 0.5 %) over many held-out sets
    # (the predictive p-value).
    rng = np.random.default_rng(1)
    alpha, n, trials = 0.02, 30, 300
    rates = []
    for _ in range(trials):
        means = rng.gumbel(20.0, 2.0, size=n)
        maxima = rng.gumbel(60.0, 5.0, size=n)
        rule = WholeImageRule.fit(Calibrator().fit(maxima, max_false_reject=alpha), means)
        rates.append(-math.expm1(-math.exp(-(rule.gate - 20.0) / 2.0)))
    assert gate_false_reject(alpha) == 0.005 and gate_false_reject(0.004) == 0.002  # min(α/2, 0.5 %)
    assert np.mean(rates) == pytest.approx(gate_false_reject(alpha), rel=0.15)
    # the slope is the ratio of the two laws' scales (5 / 2), estimated
    local = Calibrator().fit(rng.gumbel(60, 5, 4000), max_false_reject=alpha)
    assert WholeImageRule.fit(local, rng.gumbel(20, 2, 4000)).slope == pytest.approx(2.5, rel=0.1)


def test_constant_means_give_no_rule():
    assert WholeImageRule.fit(Calibrator().fit([3.0, 4.0, 5.0], max_false_reject=0.01), [2.0, 2.0, 2.0]) is None


@pytest.mark.parametrize("bad,field", [
    ({"gate": 1.0, "base": 2.0}, "whole_image.slope"),
    ({"gate": True, "base": 2.0, "slope": 1.0}, "whole_image.gate"),
    ({"gate": 1.0, "base": float("inf"), "slope": 1.0}, "whole_image.base"),
    ({"gate": 1.0, "base": 2.0, "slope": -1.0}, "whole_image.slope"),
    ([1, 2, 3], "whole_image"),
])
def test_a_bad_stored_rule_names_its_field(bad, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        WholeImageRule.from_dict(bad)


def test_stored_rule_round_trips():
    assert WholeImageRule.from_dict(RULE.to_dict()) == RULE


@pytest.fixture(scope="module")
def checked():
    params = dict(image_size=SIZE, d=40, device="cpu", workers=0, batch_size=8, calibration_folds=4, config="fixed")
    train = [pattern(seed=i) for i in range(16)]
    return PaDiM(**params).fit(train), PaDiM(**params, whole_image=False).fit(train)


def _maps(model, images):
    maps = np.stack(model.anomaly_maps(images)).astype(np.float64)
    assert maps.shape[1:] == model.input_size_  # the rule's maps: the model's input size
    return maps.reshape(len(images), -1)


def test_frames_raised_everywhere_are_flagged_and_good_images_keep_their_maximum(checked):
    model, plain = checked
    rule = model.whole_image_
    assert rule is not None and plain.whole_image_ is None
    # the calibrator is fitted on the held-out maxima alone, with or without the check
    assert rule.base == model.calibrator_.threshold_ == plain.calibrator_.threshold_
    good = [pattern(seed=100 + i) for i in range(4)]
    local = [pattern(seed=200, defect=DEFECT)]
    frames = [np.zeros((SIZE, SIZE, 3), np.uint8), np.full((SIZE, SIZE, 3), 255, np.uint8),
              np.full((SIZE, SIZE, 3), 128, np.uint8)]
    flat = _maps(model, good + local + frames)
    means, maxima = flat.mean(axis=1), flat.max(axis=1)
    scores = model.score_samples(good + local + frames)
    assert (means[:4] < rule.gate).all() and (means[5:] >= rule.gate).all()  # (the local defect: either)
    np.testing.assert_allclose(scores, rule.apply(maxima, means), rtol=1e-5)  # the rule by hand, on the maps
    np.testing.assert_allclose(scores[:4], maxima[:4], rtol=1e-6)  # below the gate: the map maximum
    np.testing.assert_allclose(plain.score_samples(good + local + frames), maxima, rtol=1e-6)
    assert model.predict(frames).all() and (model.predict_proba(frames) >= 0.5).all()
    assert not model.predict(good).any() and model.predict(local).all()


def test_the_rule_is_saved_shown_and_switched_off_from_the_cli(checked, tmp_path, capsys):
    model, _ = checked
    loaded = PaDiM.load(model.save(tmp_path / "m.padim"), device="cpu", workers=0)
    assert loaded.whole_image_ == model.whole_image_
    np.testing.assert_array_equal(loaded.calibration_means_, model.calibration_means_)
    frame = [np.zeros((SIZE, SIZE, 3), np.uint8)]
    np.testing.assert_array_equal(loaded.score_samples(frame), model.score_samples(frame))
    assert "whole-image check" in model.describe() and str(round(model.whole_image_.gate, 1))[:3] in \
        model.describe()["whole-image check"]

    train = tmp_path / "train"
    train.mkdir()
    for i in range(6):
        save_png(pattern(seed=i), train / f"{i}.png")
    common = ["--image-size", str(SIZE), "--d", "20", "--folds", "3", "--config", "fixed", "--device", "cpu",
              "--workers", "0", "--quiet"]
    capsys.readouterr()
    assert main(["fit", str(train), "-o", str(tmp_path / "on.padim"), *common]) == 0
    assert "good-only calibration; whole-image check at map mean " in capsys.readouterr().out
    assert main(["fit", str(train), "-o", str(tmp_path / "off.padim"), "--no-whole-image", *common]) == 0
    assert PaDiM.load(tmp_path / "on.padim").whole_image_ is not None
    assert PaDiM.load(tmp_path / "off.padim").whole_image_ is None
    capsys.readouterr()
    assert main(["info", str(tmp_path / "on.padim")]) == 0
    assert "whole-image check: an anomaly map whose mean reaches" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "off.padim")]) == 0
    assert "whole-image check: off: the score is the anomaly map's maximum" in capsys.readouterr().out


def test_on_the_packaged_cookies_black_and_white_frames_are_ng_only_with_the_check():
    # The case that motivated the check (benchmarks/RESULTS.md §34–35): on 31 varied cookies a
    # black or white frame's map maximum is that of a good cookie, its map mean is not.
    from padim.io import list_images, load_image
    from padim.workflows import default_demo_data

    data = default_demo_data()
    model = PaDiM(config="fixed", device="cpu", workers=0).fit(data / "train" / "good")
    without = copy.copy(model)
    without.whole_image_ = None  # the same maps and calibrator, scored by their maximum alone
    shape = (load_image(list_images(data / "test" / "good")[0]) * 255).astype(np.uint8).shape
    frames = [np.zeros(shape, np.uint8), np.full(shape, 255, np.uint8)]
    assert not without.predict(frames).any()
    assert model.predict(frames).all()
    good = list_images(data / "test" / "good")
    np.testing.assert_array_equal(model.score_samples(good), without.score_samples(good))


def test_recalibrating_on_defects_scores_the_held_out_goods_under_the_rule(checked, monkeypatch):
    # Defects are scored under the rule, so the held-out good scores they are compared with are too.
    import padim.model

    model = copy.deepcopy(checked[0])
    rule = model.whole_image_
    model.calibration_means_ = model.calibration_means_.copy()
    model.calibration_means_[0] = rule.gate + 1.0  # one held-out good image past the gate
    seen = []

    class Spy(padim.model.Calibrator):
        def fit(self, good_scores, defect_scores=None, **kw):
            seen.append((np.array(good_scores), defect_scores))
            return super().fit(good_scores, defect_scores, **kw)

    monkeypatch.setattr(padim.model, "Calibrator", Spy)
    model.recalibrate([pattern(seed=300 + i, defect=DEFECT) for i in range(3)])
    expected = model.calibration_scores_.copy()
    expected[0] = max(expected[0], rule.base + rule.slope * 1.0)
    np.testing.assert_allclose(seen[-1][0], expected)
    model.recalibrate(threshold=40.0)  # no defects: the maxima, as the fit's calibrator
    np.testing.assert_array_equal(seen[-1][0], model.calibration_scores_)


def test_an_export_applies_and_shows_the_rule(checked, tmp_path):
    pytest.importorskip("onnxruntime")
    from padim.export import export_model
    from padim.runtime import ExportedModel

    model = checked[0]
    exported = ExportedModel(export_model(model, tmp_path / "m.onnx"), batch_size=4, workers=0)
    assert exported.describe()["whole-image check"] == model.describe()["whole-image check"]
    images = [np.zeros((SIZE, SIZE, 3), np.uint8), pattern(seed=100)]
    results = exported.predict(images, maps=False)
    np.testing.assert_allclose([r.score for r in results], model.score_samples(images), rtol=1e-3)
    assert [r.label for r in results] == ["NG", "OK"]
    unchecked = ExportedModel(export_model(checked[1], tmp_path / "off.onnx"), batch_size=4, workers=0)
    assert unchecked.describe()["whole-image check"].startswith("off: ")
