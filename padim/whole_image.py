"""The whole-image check: an image whose anomaly map is raised everywhere scores high, even when
the map's maximum does not.

The image score is the anomaly map's maximum, which a local defect raises. A camera fault or a
wrong part (a black, white or blurred frame, another product) raises every position instead,
and often none of them above a good image's most unusual spot: fitted on 31 varied cookies, such
frames scored like good cookies (benchmarks/RESULTS.md §34). The map's mean sees them, and real,
local defects barely move it. So, with the map's maximum ``M`` and mean ``m``:

    score = max(M, base + slope · (m − gate))   where m ≥ gate,
            M                                   elsewhere.

Fitted like the calibration, from the held-out (k-fold) maps of the good training images
(padim.folds) and the false-reject target α:

- ``gate``: the predictive Gumbel threshold (padim.calibration) of the held-out means at
  ``min(α/2, 0.5 %)`` (``GATE_SHARE``, ``GATE_MAX_FALSE_REJECT``): the check flags about that
  share of good images besides the maximum's α. Not α itself: at the demo's α = 10 % so loose a
  gate let good cookies through and cost image AUROC (benchmarks/RESULTS.md §35);
- ``base``: the held-out maxima's own threshold at α, which is the model's threshold (its
  calibrator is fitted on the maxima alone): an image at the gate scores exactly the threshold;
- ``slope``: the maxima's Gumbel scale over the means', so a mean one of its scales past the
  gate scores one of the maxima's scales past ``base``.

So there are two tests, each calibrated on its own statistic, and NG ⇔ ``M`` ≥ threshold or
``m`` ≥ gate (probability ≥ 0.5 on the same side). An image whose mean stays below the gate keeps
its map maximum as score, so among those images the ranking (an image AUROC among them) is what
it was without the check; past the gate an image scores at least the threshold, and more the
further past it is. A threshold set later (``padim score --threshold``, ``recalibrate`` on
labelled defects) moves the threshold, not ``base``: past the gate an image then scores from the
fit's threshold on. (A calibrator fitted on the held-out scores under the rule instead would let
a held-out good image past the gate raise the threshold for every image: on 568 BSData images one
did, 42.4 → 43.3, and a real defect went OK.) The map is the one at the model's input size; the
torch side is :func:`padim.net.image_scores`. numpy and padim.calibration only: the exports'
runtime uses this module without torch (and reads rules without scipy).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# what ``describe()`` (``padim info``, the server's /model) says of a model without the check
NO_WHOLE_IMAGE_CHECK = "off: the score is the anomaly map's maximum"

GATE_SHARE = 0.5  # the gate's false-reject target as a share of the model's (α/2) ...
GATE_MAX_FALSE_REJECT = 0.005  # ... and at most this: a check for gross failures, even at α = 10 %
_FIELDS = ("gate", "base", "slope")


def gate_false_reject(max_false_reject: float) -> float:
    """The gate's false-reject target for a model's target α: ``min(α/2, 0.5 %)``."""
    return min(max_false_reject * GATE_SHARE, GATE_MAX_FALSE_REJECT)


@dataclass(frozen=True)
class WholeImageRule:
    """``score = max(M, base + slope·(m − gate))`` where the map mean ``m`` ≥ ``gate``, else the
    map maximum ``M`` (module docstring)."""

    gate: float
    base: float
    slope: float

    @classmethod
    def fit(cls, calibrator, means) -> "WholeImageRule | None":
        """The rule from the model's good-only calibrator (a :class:`padim.calibration.Calibrator`
        fitted on the held-out map maxima: ``base`` is its threshold) and the same images' map
        means; None when the means do not vary (all equal: no spread to set a gate by)."""
        from .calibration import Calibrator  # here: padim.metadata reads rules without scipy

        means = np.asarray(means, dtype=np.float64)
        if means.size < 2 or np.ptp(means) == 0:
            return None
        level = Calibrator().fit(means, max_false_reject=gate_false_reject(calibrator.max_false_reject_))
        return cls(gate=level.threshold_, base=calibrator.threshold_, slope=calibrator.scale_ / level.scale_)

    def apply(self, maxima, means) -> np.ndarray:
        """Image scores (float64) from map maxima and means (numpy; for torch see padim.net.image_scores)."""
        maxima = np.asarray(maxima, dtype=np.float64)
        means = np.asarray(means, dtype=np.float64)
        raised = np.maximum(maxima, self.base + self.slope * (means - self.gate))
        return np.where(means >= self.gate, raised, maxima)

    def to_dict(self) -> dict:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d) -> "WholeImageRule":
        """A rule saved with :meth:`to_dict`; ValueError naming the field that is missing or wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"whole_image: expected a JSON object, got {d!r}"[:200])
        for key in _FIELDS:
            value = d.get(key)
            ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
                  and (key != "slope" or value > 0))
            if not ok:
                raise ValueError(f"whole_image.{key}: expected a finite number{' > 0' if key == 'slope' else ''}, "
                                 f"got {value!r}"[:200])
        return cls(*(float(d[key]) for key in _FIELDS))

    def describe(self) -> str:
        """One line for ``padim info``."""
        return (f"an anomaly map whose mean reaches {self.gate:.4g} scores at least {self.base:.4g} "
                f"(+{self.slope:.3g} per unit beyond)")
