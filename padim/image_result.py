"""The outcome of scoring one image, shared by the estimator and the torch-free runtime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
