"""Why one image's score may be off, as a line of text per cause: an aspect ratio other than the
training images' (the image is stretched to the model's input) and a pixel type the model's value
range is not for. The torch model and an export check the same way; the command line and the log
show these as warnings, and ``padim serve`` returns them with the upload's result (its JSON
``warnings``), where a caller on the production line sees them."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .value_range import ValueRange, kind_mismatch

ASPECT_TOLERANCE = 1.15  # an aspect ratio more than 15 % off the input's is stretched visibly


def aspect_differs(size: Sequence[int], input_size: Sequence[int]) -> bool:
    """True when an image of ``size`` (h, w) is more than 15 % off the input's aspect ratio."""
    (h, w), (ih, iw) = size, input_size
    return abs(math.log((h / w) / (ih / iw))) > math.log(ASPECT_TOLERANCE)


def aspect_warning(size: Sequence[int], input_size: Sequence[int]) -> str | None:
    if not aspect_differs(size, input_size):
        return None
    (h, w), (ih, iw) = size, input_size
    return (f"aspect ratio {w / h:.2f} (w/h) differs from the training images' {iw / ih:.2f} by more than "
            f"{round((ASPECT_TOLERANCE - 1) * 100)} %: resized to {ih}×{iw}, it may score high")


def some_aspect_warning(input_size: Sequence[int]) -> str:
    """The once-per-call warning of a scoring run with images of another aspect ratio."""
    return (f"some images differ in aspect ratio from the training images; they are resized to "
            f"{input_size[0]}×{input_size[1]} and may score high")


def image_warnings(image: np.ndarray, input_size: Sequence[int], check_aspect: bool,
                   value_range: ValueRange | None, value_kind: str | None) -> list[str]:
    """Every cause for ``image`` (decoded, H×W or H×W×C) that :mod:`padim.image_checks` knows."""
    found = [aspect_warning(image.shape[:2], input_size) if check_aspect else None,
             kind_mismatch(image.dtype, value_range, value_kind)]
    return [message for message in found if message]
