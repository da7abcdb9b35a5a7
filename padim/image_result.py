"""The outcome of scoring one image, and the estimator methods built on it, shared by the torch
model (:class:`padim.PaDiM`) and the torch-free runtime (:class:`padim.runtime.ExportedModel`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# what ``describe()`` (``padim info``, the server's /model) says of a model without calibration,
# model file or export (ScoringMethods._require_calibration refuses its probabilities)
NO_CALIBRATION = "none: scores and maps only, no probabilities or threshold"


@dataclass
class ImageResult:
    """Outcome for one input image: its score and map, or why it could not be read.

    ``probability`` and ``label`` are filled by the exported-model runtime (the estimator leaves
    them to its calibrator); ``image`` is the decoded image (uint8 for 8-bit files) when
    ``originals`` was asked for.
    """

    index: int
    score: float | None = None
    anomaly_map: np.ndarray | None = None
    error: str = ""
    image: np.ndarray | None = None
    probability: float | None = None
    label: str | None = None


class ScoringMethods:
    """``anomaly_maps``, ``score_samples`` and ``predict_proba`` for a scorer with
    ``iter_results(images, maps)`` and ``calibrator_``: the same calls for a model file and its
    export, so code written for one runs on the other."""

    def _check_fitted(self) -> None:  # a scorer that can be unfitted says so (PaDiM)
        pass

    def _checks_aspect(self) -> bool:  # whether images of another aspect ratio are warned of
        return False

    def _aspect_mismatch(self, sizes) -> bool:
        """True when an image of ``sizes`` (h, w) is more than 15 % off the input's aspect ratio
        and the model warns of that: the once-per-call warning of both scorers."""
        from .image_checks import aspect_differs

        return self._checks_aspect() and any(aspect_differs(size, self.input_size_) for size in sizes)

    def image_warnings(self, image: np.ndarray) -> list[str]:
        """Why this decoded image's score may be off (another aspect ratio, a pixel type the value
        range is not for), one line each; empty when none (:mod:`padim.image_checks`)."""
        from .image_checks import image_warnings

        self._check_fitted()
        return image_warnings(image, self.input_size_, self._checks_aspect(), getattr(self, "value_range_", None),
                              getattr(self, "value_kind_", None))

    def _collect(self, images: Any, maps: bool) -> list[ImageResult]:
        """Every image's result; a ValueError naming the first unreadable one."""
        self._check_fitted()
        results = list(self.iter_results(images, maps=maps))
        failed = [r.error for r in results if r.error]
        if failed:
            raise ValueError(f"{len(failed)} image(s) could not be read; first: {failed[0]}")
        return results

    def anomaly_maps(self, images: Any) -> list[np.ndarray]:
        """Anomaly map of every image at its original size (float32; higher = more anomalous)."""
        return [r.anomaly_map for r in self._collect(images, maps=True)]

    def score_samples(self, images: Any) -> np.ndarray:
        """Anomaly score of every image (max of its map, raised by ``whole_image_`` where the whole
        map is); higher = more anomalous."""
        return np.array([r.score for r in self._collect(images, maps=False)], dtype=np.float64)

    def _require_calibration(self):
        self._check_fitted()
        if self.calibrator_ is None:
            raise RuntimeError("this model has no calibration: it was fitted with calibration_folds=0 or on fewer good "
                               "images than max(calibration_folds, 5); refit with enough good images")
        return self.calibrator_

    def predict_proba(self, images: Any) -> np.ndarray:
        """Defect probability of every image, from the calibration on held-out good images."""
        calibrator = self._require_calibration()
        return calibrator.probability(self.score_samples(images))
