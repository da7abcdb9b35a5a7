"""OpenCV's image decoder, silent: for the files Pillow reads short of their precision or not at all
(16-bit colour, the TIFFs of :mod:`padim.tiff`)."""

from __future__ import annotations

import numpy as np


def quiet_imdecode(encoded: np.ndarray) -> np.ndarray | None:
    """``cv2.imdecode(encoded, IMREAD_UNCHANGED)`` with OpenCV's log silent meanwhile: its decoders'
    warnings and errors would print a multi-line report beside padim's one-line error. None where
    OpenCV cannot decode the bytes."""
    import cv2

    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)
