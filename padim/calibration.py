"""Turn image anomaly scores into defect probabilities and an OK/NG threshold.

Good images only (the usual case): a Gumbel (extreme-value) model of the good scores, fitted
by L-moments. Why: an image score is the maximum of an anomaly map, i.e. an extreme value, and
when measured (out-of-fold PaDiM scores of the 688 BSData and 45 cookie goods in
shared/data, EfficientNet-Lite0 features; plus simulated map maxima, Gumbel and lognormal
samples) the Gumbel fit matched or beat a normal fit to log-scores everywhere: BSData
log-likelihood/n -2.33 vs -2.42, and from 5-50 samples the log-normal 1 % threshold let
through 1.5-3x the target false rejects, even on log-normal data, where Gumbel stayed closest.
Gumbel on raw scores also accepts zero and negative scores. L-moments rather than
median/IQR: real good scores have a heavier tail than Gumbel, and the IQR fit, blind to the
tail, rejected 6-14 % of BSData goods at a 1 % target (L-moments: 3-7 %, ~3 % with the
predictive p-value below); an outlier still pulls L-moments only linearly, not
quadratically as it does the standard deviation.

Small samples: the fitted parameters are uncertain too, and a plug-in quantile from 5
samples rejects ~4x too many goods. So p(s) is the *predictive* p-value: for a
location-scale family, (new score - loc_hat) / scale_hat is a pivot whose law depends only
on n, so p(s) = mean_j S(a_j + b_j (s - loc_hat) / scale_hat), with S the standard Gumbel
survival function and (a_j, b_j) L-moment estimates from simulated standard-Gumbel samples
of size n. On Gumbel data the expected false-reject rate is then max_false_reject for every
n >= 2 (measured: 1.0-1.3 % at n = 2...50, vs 12 / 4.4 / 1.2 % plug-in at n = 2 / 5 / 50); for
large n it tends to the plain fitted Gumbel. The price of few samples is a higher threshold.

Probability = alpha / (alpha + p(s)), alpha = max_false_reject: 0.5 at the threshold
(p = alpha), about 2 alpha for a typical good image (p ~ 0.5), -> 1 far out; computed in
log space so far-out scores neither underflow nor give NaN.

With labelled defect scores too: a class-balanced logistic posterior on log-score (Platt
scaling) and a threshold from Youden's J (or best F1) on the given scores. The logistic keeps
its fitted slope (how fast the evidence grows with the score) but is centred on the threshold,
so that it gives 0.5 there: a Youden or user threshold and the balanced posterior's own 0.5
point differ in general, and an NG label with a probability below 0.5 is a contradiction.

In every mode NG <=> probability >= 0.5 <=> score >= threshold; moving the threshold
(``with_threshold``, ``padim score --threshold``) moves the probabilities with it.
"""
from __future__ import annotations

import copy
import functools
import math
import warnings

import numpy as np
from scipy import optimize, special
from scipy.stats import qmc

from .metrics import best_f1_threshold, youden_threshold

__all__ = ["Calibrator"]

_EULER = 0.5772156649015329
_N_PIVOTS = 4096        # simulated estimate pairs defining the predictive p-value
_MAX_PIVOT_N = 500      # beyond this the parameter uncertainty is negligible
_FORMAT = 2             # 2: logistic centred on the threshold (1 is read and re-centred)
_READABLE_FORMATS = (1, 2)
_TEXT_FIELDS = ("method", "feature", "threshold_method")


def _valid_field(key: str, value) -> bool:
    """Whether a saved calibrator's field has its type and range (a hand-edited or corrupted file).
    Not padim.metadata's predicates: this module depends on numpy, scipy and padim.metrics only."""
    if key in _TEXT_FIELDS:
        return isinstance(value, str) and (key != "feature" or value in ("raw", "log"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if key == "n_good":
        return isinstance(value, int) and value >= 1
    return math.isfinite(value) and {"scale": value > 0, "alpha": 0 <= value <= 1,
                                     "max_false_reject": 0 < value < 1}.get(key, True)


def _lmoment_gumbel(x):
    """Gumbel (loc, scale) from the first two sample L-moments, row-wise on the last axis."""
    x = np.sort(x, axis=-1)
    n = x.shape[-1]
    l1 = x.mean(axis=-1)
    l2 = 2.0 * (x @ np.arange(n)) / (n * (n - 1)) - l1
    scale = l2 / math.log(2.0)
    return l1 - _EULER * scale, scale


@functools.lru_cache(maxsize=16)
def _pivots(n):
    """Fixed (a_j, b_j): L-moment estimates from standard-Gumbel samples of size n.

    Samples are a seeded scrambled Sobol sequence mapped by the Gumbel inverse CDF: the same
    n always gives the same pivots, and quasi-random points make the 1 % tail of the
    predictive law ~10x less noisy than plain Monte Carlo with the same count (n = 5:
    threshold s.d. 0.01 vs 0.12 scale units). Saved calibrators keep their threshold
    exactly; their probabilities could shift in the 3rd decimal with another scipy version.
    """
    u = qmc.Sobol(d=n, scramble=True, seed=20240601).random(_N_PIVOTS)
    a, b = _lmoment_gumbel(-np.log(-np.log(np.maximum(u, np.finfo(float).tiny))))
    a.flags.writeable = b.flags.writeable = False
    return a, b


def _gumbel_logsf(z):
    """log(1 - exp(-exp(-z))), accurate far into both tails."""
    with np.errstate(over="ignore", divide="ignore"):
        e = np.exp(-z)
        return np.where(e < 1e-8, -z - e / 2.0, np.log(-np.expm1(-e)))


_BELOW_HALF = np.nextafter(0.5, 0.0)


def _as_scores(scores, what):
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not np.isfinite(s).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return s


class Calibrator:
    """Score -> defect probability and OK/NG threshold (NG iff score >= threshold_).

    Fit on good scores only (method_ "good-only", predictive Gumbel tail model) or on good
    and defect scores (method_ "logistic", balanced Platt scaling on log-score). Feed scores
    of images the anomaly model was not fitted on, or the tail is underestimated.
    """

    # ------------------------------------------------------------------ fitting

    def fit(self, good_scores, defect_scores=None, *, max_false_reject=0.01, threshold=None,
            threshold_method="youden"):
        """Fit on scores of good images (and optionally of defects); returns self.

        max_false_reject: target share of good images flagged NG (alpha) for good-only mode.
        threshold: fixed threshold overriding the chosen one.
        threshold_method: "youden" or "f1", used when defect scores are given.
        """
        if not 0.0 < max_false_reject < 1.0:
            raise ValueError(f"max_false_reject must be in (0, 1), got {max_false_reject}")
        if threshold_method not in ("youden", "f1"):
            raise ValueError(f'threshold_method must be "youden" or "f1", got {threshold_method!r}')
        good = _as_scores(good_scores, "good scores")
        if good.size < 2:
            raise ValueError(f"need at least 2 good scores to calibrate, got {good.size}")
        loc, scale = _lmoment_gumbel(good)
        if np.ptp(good) == 0 or not scale > 0:
            raise ValueError(f"all {good.size} good scores are equal ({good[0]:g}); "
                             "cannot estimate their spread")
        self.max_false_reject_ = float(max_false_reject)
        self.loc_, self.scale_, self.n_good_ = float(loc), float(scale), int(good.size)
        self.method_ = "good-only"
        for name in ("slope_", "intercept_", "feature_", "threshold_method_"):
            self.__dict__.pop(name, None)

        defect = None if defect_scores is None else _as_scores(defect_scores, "defect scores")
        if defect is not None and defect.size and self._fit_logistic(good, defect):
            self.threshold_method_ = threshold_method
            labels = np.r_[np.zeros(good.size), np.ones(defect.size)]
            both = np.r_[good, defect]
            chosen = (youden_threshold(labels, both) if threshold_method == "youden"
                      else best_f1_threshold(labels, both)[1])
            chosen = self._nearest_to_boundary(chosen, both)
        else:
            chosen = self._good_isf(self.max_false_reject_)
        return self._set_threshold(chosen if threshold is None else threshold)

    def _fit_logistic(self, good, defect):
        """Balanced logistic regression on (log-)score; False (with a warning) if slope <= 0."""
        from sklearn.linear_model import LogisticRegression
        both = np.r_[good, defect]
        self.feature_ = "log" if (both > 0).all() else "raw"
        x = self._feature(both)
        centre, spread = x.mean(), x.std()
        if not spread > 0:
            spread = 1.0
        y = np.r_[np.zeros(good.size), np.ones(defect.size)]
        lr = LogisticRegression(class_weight="balanced").fit(((x - centre) / spread)[:, None], y)
        slope = float(lr.coef_[0, 0]) / spread
        if not slope > 0:
            warnings.warn("defect scores are not higher than good scores (logistic slope "
                          f"{slope:.3g} <= 0); falling back to good-only calibration",
                          RuntimeWarning, stacklevel=3)
            del self.feature_
            return False
        self.method_ = "logistic"
        self.slope_ = float(slope)
        self.intercept_ = float(lr.intercept_[0] - slope * centre)
        return True

    def _nearest_to_boundary(self, chosen, scores):
        """Among the thresholds that label ``scores`` exactly as ``chosen`` does (the interval up
        to the next lower score), the one closest to the fitted logistic's own 0.5 point: the
        labels of the calibration set keep their Youden/F1 optimum, and centring the posterior
        on the threshold moves it as little as possible (not at all when the classes separate)."""
        below = scores[scores < chosen]
        lowest = np.nextafter(below.max(), np.inf) if below.size else -np.inf
        boundary = -self.intercept_ / self.slope_
        if self.feature_ == "log":
            boundary = math.exp(boundary) if boundary < 700 else math.inf
        return float(min(max(boundary, lowest), chosen))

    def _feature(self, s):
        if self.feature_ == "raw":
            return s
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(np.maximum(s, 0.0))       # scores <= 0 -> -inf -> probability 0

    # ------------------------------------------------------------------ good-only tail model

    def _good_logsf(self, s, floor=-np.inf):
        """log of the predictive p-value P(good score >= s), vectorised over s.

        Values below `floor` may be returned as `floor`: probability() passes a floor where
        the probability is already 1.0 in float64, skipping the slow log-space path.
        """
        a, b = _pivots(min(self.n_good_, _MAX_PIVOT_N))
        q = (np.asarray(s, dtype=np.float64).ravel() - self.loc_) / self.scale_
        out = np.empty(q.shape)
        step = max(1, (1 << 20) // a.size)
        for i in range(0, q.size, step):             # chunks bound the (scores x pivots) matrix
            z = a + b * q[i:i + step, None]
            with np.errstate(over="ignore", divide="ignore"):
                lp = np.log(-np.expm1(-np.exp(-z)).mean(axis=1))
            far = lp < -600                          # near underflow: redo in log space
            if floor < -600 and far.any():
                lp[far] = special.logsumexp(_gumbel_logsf(z[far]), axis=1) - math.log(a.size)
            out[i:i + step] = np.maximum(lp, floor)
        return out

    def _good_isf(self, alpha):
        """Score whose predictive p-value is alpha (the 1 - alpha quantile)."""
        target = math.log(alpha)
        f = lambda s: float(self._good_logsf(s)[0]) - target  # noqa: E731
        lo, hi = self.loc_ - self.scale_, self.loc_ + self.scale_
        while f(lo) < 0:
            lo -= 2 * (hi - lo)
        while f(hi) > 0:
            hi += 2 * (hi - lo)
        return float(optimize.brentq(f, lo, hi, xtol=1e-12 * max(1.0, abs(hi)), rtol=1e-12))

    # ------------------------------------------------------------------ use

    def _check_fitted(self):
        if not hasattr(self, "threshold_"):
            raise RuntimeError("Calibrator is not fitted; call fit() or from_dict() first")

    def probability(self, scores) -> np.ndarray:
        """Defect probability in [0, 1] per score, non-decreasing in the score."""
        self._check_fitted()
        s = np.asarray(scores, dtype=np.float64)
        if np.isnan(s).any():
            raise ValueError("scores contain NaN")
        if self.method_ == "logistic":
            p = special.expit(self.intercept_ + self.slope_ * self._feature(s))
        else:
            log_alpha = self._good_logsf(self.threshold_)[0]     # alpha = p(threshold)
            log_p = self._good_logsf(s, floor=log_alpha - 50.0)  # expit(50) == 1.0 in float64
            p = special.expit(log_alpha - log_p).reshape(s.shape)
        # Both curves cross 0.5 at the threshold; rounding right next to it must not put a
        # probability on the wrong side of 0.5 from the label.
        ng = s >= self.threshold_
        return np.where(ng, np.maximum(p, 0.5), np.minimum(p, _BELOW_HALF))

    def predict(self, scores) -> np.ndarray:
        """True (NG) where score >= threshold_."""
        self._check_fitted()
        return np.asarray(scores, dtype=np.float64) >= self.threshold_

    def _set_threshold(self, threshold):
        t = float(threshold)
        if not math.isfinite(t):
            raise ValueError(f"threshold must be finite, got {threshold}")
        if self.method_ == "logistic":  # centre the posterior on the threshold: p(t) = 0.5
            centre = float(self._feature(np.float64(t)))
            if not math.isfinite(centre):
                raise ValueError(f"threshold must be above 0 for a log-score calibration, got {threshold}")
            self.intercept_ = -self.slope_ * centre
        self.threshold_ = t
        self.alpha_ = float(np.exp(self._good_logsf(t)[0]))  # good-model p-value of threshold_
        return self

    def with_threshold(self, threshold) -> "Calibrator":
        """Copy with threshold_ overridden; probability 0.5 moves with it in every mode."""
        self._check_fitted()
        return copy.deepcopy(self)._set_threshold(threshold)

    def describe(self) -> str:
        """One line for ``padim info``: the method and the threshold."""
        self._check_fitted()
        if self.method_ == "logistic":
            return f"logistic on labelled defects, threshold {self.threshold_:.6g} ({self.threshold_method_})"
        return (f"good images only ({self.n_good_} held-out scores), threshold {self.threshold_:.6g} "
                f"at a {100 * self.alpha_:.3g} % false-reject rate")

    # ------------------------------------------------------------------ persistence

    _KEYS = ("method", "threshold", "max_false_reject", "alpha", "loc", "scale", "n_good")
    _LOGISTIC_KEYS = ("slope", "intercept", "feature", "threshold_method")

    def to_dict(self) -> dict:
        """Fitted state as a JSON-serialisable dict of plain floats, ints and strings."""
        self._check_fitted()
        keys = self._KEYS + (self._LOGISTIC_KEYS if self.method_ == "logistic" else ())
        d = {k: getattr(self, k + "_") for k in keys}
        d["format"] = _FORMAT
        return d

    @classmethod
    def from_dict(cls, d) -> "Calibrator":
        """Rebuild a calibrator saved with to_dict()."""
        if d.get("format") not in _READABLE_FORMATS:
            raise ValueError(f"unsupported calibrator format {d.get('format')!r}; "
                             f"expected one of {_READABLE_FORMATS}")
        if d.get("method") not in ("good-only", "logistic"):
            raise ValueError(f"unknown calibration method {d.get('method')!r}")
        keys = cls._KEYS + (cls._LOGISTIC_KEYS if d["method"] == "logistic" else ())
        missing = [k for k in keys if k not in d]
        if missing:
            raise ValueError(f"calibrator dict lacks {', '.join(missing)}")
        self = cls()
        for k in keys:
            if not _valid_field(k, d[k]):
                raise ValueError(f"calibrator {k} is invalid: {d[k]!r}"[:200])
            setattr(self, k + "_", d[k] if k in _TEXT_FIELDS or k == "n_good" else float(d[k]))
        if self.method_ == "logistic":
            self._set_threshold(self.threshold_)  # format 1 stored an uncentred intercept
        return self

    def __repr__(self):
        if not hasattr(self, "threshold_"):
            return "Calibrator()"
        return (f"Calibrator(method={self.method_!r}, threshold={self.threshold_:.6g}, "
                f"max_false_reject={self.max_false_reject_:g})")
