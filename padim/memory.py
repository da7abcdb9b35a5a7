"""Memory arithmetic for a fit, printed before any work starts so nobody learns it from a crash."""

from __future__ import annotations

from dataclasses import asdict, dataclass

GIB = 2**30
MIB = 2**20


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes needed by the parts of a fit that scale with the model, and by its result."""

    gaussians: int  # number of Gaussians (positions, or cells)
    d: int  # feature dimension
    batch_size: int
    feature_positions: int  # positions per image on the feature grid
    statistics: int  # float64 Σx, Σxxᵀ of the running fit
    finalize: int  # covariance, Cholesky and whitener temporaries at the end of the fit
    model: int  # float32 mean + whitener kept for scoring and written to disk
    batch_features: int  # float32 embedding of one batch (plus its float64 copy for the sums)
    calibration: int  # extra statistics held while scoring held-out folds

    @property
    def peak(self) -> int:
        """Largest simultaneous need: statistics + finalize temporaries + model, or the fit loop."""
        fit_loop = self.statistics + self.batch_features
        end = self.statistics + self.finalize + self.model + self.calibration
        return max(fit_loop, end)

    def as_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items()}
        out["peak"] = self.peak
        return out

    def describe(self) -> str:
        return (f"memory plan: {self.gaussians} Gaussians × d={self.d}: statistics {fmt_bytes(self.statistics)}, "
                f"model {fmt_bytes(self.model)}, batch features {fmt_bytes(self.batch_features)}, "
                f"calibration {fmt_bytes(self.calibration)}; estimated peak {fmt_bytes(self.peak)} "
                f"(plus the backbone and image decoding)")


def fmt_bytes(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


def plan_memory(gaussians: int, d: int, feature_positions: int, batch_size: int,
                calibration_folds: int = 0) -> MemoryPlan:
    """Estimate the memory of fitting ``gaussians`` Gaussians of dimension ``d``.

    ``feature_positions`` is the number of feature vectors one image yields (equal to
    ``gaussians`` for one Gaussian per position, larger when cells pool positions).
    """
    square = gaussians * d * d
    statistics = 8 * (square + 2 * gaussians * d)
    finalize = 8 * 2 * square  # covariance and its Cholesky factor in float64
    model = 4 * (square + gaussians * d)
    batch_features = batch_size * feature_positions * d * (4 + 8)
    # Held-out folds: one fold's statistics, their difference from the total, and its model.
    calibration = (2 * statistics + model) if calibration_folds >= 2 else 0
    return MemoryPlan(gaussians, d, batch_size, feature_positions, statistics, finalize, model,
                      batch_features, calibration)
