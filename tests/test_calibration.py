"""Calibrator behaviour checked against known distributions and metrics' thresholds."""
import json
import warnings

import numpy as np
import pytest
from scipy import stats

from padim.calibration import Calibrator
from padim.metrics import best_f1_threshold, youden_threshold


@pytest.fixture
def goods():
    return stats.gumbel_r.rvs(10.0, 2.0, size=50, random_state=np.random.default_rng(0))


GRID = np.r_[-1e6, np.linspace(-20, 80, 1500), 1e3, 1e9, 1e300]


# ----------------------------------------------------------------------------- good-only

def test_probability_range_monotone_and_half_at_threshold(goods):
    cal = Calibrator().fit(goods, max_false_reject=0.01)
    p = cal.probability(GRID)
    assert cal.method_ == "good-only"
    assert np.all((p >= 0) & (p <= 1)) and np.all(np.diff(p) >= 0)
    assert p[-1] == 1.0
    assert cal.probability(cal.threshold_) == pytest.approx(0.5, abs=1e-9)
    assert cal.alpha_ == pytest.approx(0.01, rel=1e-6)
    # a typical good image gets about 2 alpha
    assert 0.01 < cal.probability(np.median(goods)) < 0.04
    assert cal.predict(cal.threshold_) and not cal.predict(np.nextafter(cal.threshold_, 0))
    assert cal.probability(goods.reshape(5, 10)).shape == (5, 10)


def test_threshold_close_to_true_quantile_from_50_samples():
    alpha, true_q = 0.01, stats.gumbel_r.isf(0.01, 10.0, 2.0)
    rel = []
    for seed in range(20):
        g = stats.gumbel_r.rvs(10.0, 2.0, size=50, random_state=np.random.default_rng(seed))
        rel.append(Calibrator().fit(g, max_false_reject=alpha).threshold_ / true_q - 1)
    assert abs(np.median(rel)) < 0.05 and np.max(np.abs(rel)) < 0.2


def test_log_normal_goods_threshold_close_to_true_quantile():
    true_q = stats.lognorm.isf(0.05, 0.2, scale=10.0)
    g = stats.lognorm.rvs(0.2, scale=10.0, size=50, random_state=np.random.default_rng(1))
    assert Calibrator().fit(g, max_false_reject=0.05).threshold_ == pytest.approx(true_q, rel=0.1)


@pytest.mark.parametrize("n", [5, 20])
def test_expected_false_reject_rate_is_alpha_even_for_few_samples(n):
    # The predictive p-value accounts for fitting from n samples: averaged over training
    # sets, the true share of goods above the threshold equals max_false_reject.
    rng = np.random.default_rng(n)
    frr = [stats.gumbel_r.sf(Calibrator().fit(rng.gumbel(3.0, 0.5, n)).threshold_, 3.0, 0.5)
           for _ in range(300)]
    assert 0.007 < np.mean(frr) < 0.014


def test_threshold_never_collapses_to_minimum():
    rng = np.random.default_rng(2)
    for g in (rng.gumbel(5, 1, 5), rng.gumbel(5, 1, 200), np.r_[rng.normal(5, 1, 30), 50.0],
              np.array([1.0, 1.0, 1.0, 1.1])):
        cal = Calibrator().fit(g)
        assert cal.threshold_ > np.median(g) and cal.threshold_ > g.min()
        assert cal.predict(g).mean() < 0.2


def test_zero_and_negative_scores():
    for g in ([0.0, 0.0, 0.1, 0.3, 0.0], [-3.0, -2.5, -2.9, -2.0, -2.2]):
        cal = Calibrator().fit(g)
        p = cal.probability(np.linspace(-10, 10, 500))
        assert np.all(np.diff(p) >= 0) and cal.threshold_ > max(g)


@pytest.mark.parametrize("good, match", [
    ([1.0], "at least 2 good scores to calibrate, got 1"),
    ([], "at least 2 good scores to calibrate, got 0"),
    ([3.0, 3.0, 3.0], "all 3 good scores are equal"),
    ([1.0, np.nan, 2.0], "NaN"),
])
def test_degenerate_input(good, match):
    with pytest.raises(ValueError, match=match):
        Calibrator().fit(good)


def test_bad_arguments_and_unfitted():
    with pytest.raises(ValueError, match="max_false_reject"):
        Calibrator().fit([1.0, 2.0], max_false_reject=0)
    with pytest.raises(ValueError, match="threshold_method"):
        Calibrator().fit([1.0, 2.0], [3.0], threshold_method="roc")
    with pytest.raises(RuntimeError, match="not fitted"):
        Calibrator().probability([1.0])


# ----------------------------------------------------------------------------- thresholds

def test_fixed_threshold_and_with_threshold(goods):
    cal = Calibrator().fit(goods)
    moved = cal.with_threshold(20.0)
    assert moved.threshold_ == 20.0 and cal.threshold_ != 20.0
    assert moved.probability(20.0) == pytest.approx(0.5, abs=1e-9)
    assert 0 < moved.alpha_ < 0.5 and (moved.alpha_ > cal.alpha_) == (20.0 < cal.threshold_)
    assert Calibrator().fit(goods).with_threshold(40.0).alpha_ < 1e-4     # far out: tiny alpha
    fixed = Calibrator().fit(goods, threshold=20.0)
    assert np.array_equal(fixed.probability(GRID), moved.probability(GRID))
    assert np.all(np.diff(moved.probability(GRID)) >= 0)
    with pytest.raises(ValueError, match="finite"):
        cal.with_threshold(np.inf)


# ----------------------------------------------------------------------------- logistic

def test_logistic_separable():
    rng = np.random.default_rng(3)
    good, defect = rng.normal(10, 1, 100), rng.normal(30, 2, 10)
    cal = Calibrator().fit(good, defect)
    assert cal.method_ == "logistic" and cal.slope_ > 0 and cal.feature_ == "log"
    # any threshold in (good.max(), defect.min()] is Youden-optimal here; the one chosen is the
    # balanced logistic's own 0.5 point, which lies in that gap
    youden = youden_threshold(np.r_[0 * good, 0 * defect + 1], np.r_[good, defect])
    assert good.max() < cal.threshold_ <= youden == defect.min()
    assert cal.threshold_ < defect.min()
    assert not cal.predict(good).any() and cal.predict(defect).all()
    assert cal.probability(np.median(good)) < 0.1 and cal.probability(np.median(defect)) > 0.9
    p = cal.probability(GRID)
    assert np.all((p >= 0) & (p <= 1)) and np.all(np.diff(p) >= 0)


def test_logistic_overlapping_is_balanced():
    rng = np.random.default_rng(4)
    good, defect = rng.lognormal(np.log(10), 0.1, 400), rng.lognormal(np.log(13), 0.1, 20)
    cal = Calibrator().fit(good, defect, threshold_method="f1")
    y, s = np.r_[np.zeros(400), np.ones(20)], np.r_[good, defect]
    f1_threshold = best_f1_threshold(y, s)[1]
    assert cal.threshold_ <= f1_threshold
    assert np.array_equal(s >= cal.threshold_, s >= f1_threshold)  # the same labels, so the same F1
    # the slope is that of a class-balanced logistic fit on log-score (sklearn as the reference)
    from sklearn.linear_model import LogisticRegression
    x = np.log(s)
    ref = LogisticRegression(class_weight="balanced").fit(((x - x.mean()) / x.std())[:, None], y)
    assert cal.slope_ == pytest.approx(ref.coef_[0, 0] / x.std(), rel=1e-6)
    # ... centred on the chosen threshold
    assert cal.probability(cal.threshold_) == pytest.approx(0.5, abs=1e-12)
    assert np.all(np.diff(cal.probability(GRID)) >= 0)


def test_logistic_with_nonpositive_scores_uses_raw_score():
    cal = Calibrator().fit([-1.0, 0.0, 0.5, -0.5], [2.0, 3.0])
    assert cal.method_ == "logistic" and cal.feature_ == "raw"
    assert np.all(np.diff(cal.probability(GRID)) >= 0)


def test_logistic_wrong_direction_falls_back_with_warning():
    rng = np.random.default_rng(5)
    with pytest.warns(RuntimeWarning, match="falling back to good-only"):
        cal = Calibrator().fit(rng.normal(10, 1, 30), rng.normal(5, 1, 10))
    assert cal.method_ == "good-only" and not hasattr(cal, "slope_")
    assert cal.probability(cal.threshold_) == pytest.approx(0.5, abs=1e-9)


# ----------------------------------------------------------------------------- persistence

@pytest.mark.parametrize("with_defects", [False, True])
def test_dict_round_trip(goods, with_defects):
    defects = np.array([25.0, 30.0, 18.0]) if with_defects else None
    cal = Calibrator().fit(goods, defects)
    d = cal.to_dict()
    assert all(type(v) in (float, int, str) for v in d.values())
    back = Calibrator.from_dict(json.loads(json.dumps(d)))
    assert back.method_ == cal.method_ and back.threshold_ == cal.threshold_
    assert np.array_equal(back.probability(GRID), cal.probability(GRID))
    assert np.array_equal(back.predict(GRID), cal.predict(GRID))


def test_from_dict_rejects_bad_input(goods):
    d = Calibrator().fit(goods).to_dict()
    with pytest.raises(ValueError, match="format"):
        Calibrator.from_dict({**d, "format": 99})
    with pytest.raises(ValueError, match="lacks loc"):
        Calibrator.from_dict({k: v for k, v in d.items() if k != "loc"})


def test_no_warnings_on_normal_use(goods):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Calibrator().fit(goods).probability(GRID)


# ----------------------------------------------------------------------------- labels agree with probabilities

def _agreement_grid(cal):
    t = cal.threshold_
    near = [np.nextafter(t, -np.inf), t, np.nextafter(t, np.inf)]
    return np.r_[GRID, near, t * (1 + np.linspace(-1e-6, 1e-6, 41))]


def _calibrators(goods):
    rng = np.random.default_rng(8)
    defects = rng.lognormal(np.log(2 * np.median(goods)), 0.3, 12)
    yield "good-only", Calibrator().fit(goods)
    yield "good-only fixed", Calibrator().fit(goods, threshold=float(np.median(goods)))
    yield "youden", Calibrator().fit(goods, defects)
    yield "f1", Calibrator().fit(goods, defects, threshold_method="f1")
    yield "logistic fixed", Calibrator().fit(goods, defects, threshold=float(np.max(goods)))
    yield "logistic moved", Calibrator().fit(goods, defects).with_threshold(float(np.min(defects)))
    yield "good-only moved", Calibrator().fit(goods).with_threshold(3.0)


def test_ng_iff_probability_at_least_half_in_every_mode(goods):
    for name, cal in _calibrators(goods):
        grid = _agreement_grid(cal)
        ng = grid >= cal.threshold_  # the definition of the label, computed here independently
        assert np.array_equal(cal.predict(grid), ng), name
        assert np.array_equal(cal.probability(grid) >= 0.5, ng), name
        back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
        assert np.array_equal(back.probability(grid) >= 0.5, ng), name


def test_moving_the_threshold_moves_the_logistic_probabilities(goods):
    rng = np.random.default_rng(9)
    cal = Calibrator().fit(goods, rng.lognormal(np.log(2 * np.median(goods)), 0.3, 12))
    higher = cal.with_threshold(cal.threshold_ * 1.5)
    assert higher.probability(higher.threshold_) == pytest.approx(0.5, abs=1e-12)
    assert higher.probability(cal.threshold_) < 0.5 <= cal.probability(cal.threshold_)
    assert higher.slope_ == cal.slope_  # same evidence per unit log-score, new centre
    with pytest.raises(ValueError, match="above 0"):
        cal.with_threshold(0.0)


def test_format_1_logistic_dicts_are_recentred(goods):
    rng = np.random.default_rng(10)
    cal = Calibrator().fit(goods, rng.lognormal(np.log(2 * np.median(goods)), 0.3, 12))
    old = {**cal.to_dict(), "format": 1, "intercept": cal.intercept_ + 3.0}  # an uncentred posterior
    back = Calibrator.from_dict(old)
    assert back.probability(back.threshold_) == pytest.approx(0.5, abs=1e-12)
