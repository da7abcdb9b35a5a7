"""The mapping from stored pixel values to [0, 1]: one fixed range per model, decided at fit.

Why: dividing each image by its own maximum lets one hot pixel darken a whole image, and dividing
16-bit containers by 65535 leaves 12-bit data nearly black. A model therefore fixes one range
``(lo, hi)`` when it is fitted, stores it, and maps every image with it (values outside are clipped).

How ``"auto"`` decides (see :func:`decide_value_range`):

- 8-bit data (uint8 arrays, and files whose Pillow mode is 8-bit: L, RGB, RGBA, P, CMYK, …) →
  ``(0, 255)``, from the pixel type alone; no pixels are looked at, so 8-bit files are decoded once.
- Integer data deeper than 8 bits (16-bit files, uint16 / int arrays) → ``(0, 2^k − 1)``: the
  smallest ``2^k − 1`` at or above the largest, over the training images (at most 64, evenly
  spaced), of each image's 99.99th percentile. The percentile ignores a few hot pixels; rounding up to ``2^k − 1`` recovers
  the sensor's bit depth, so 12-bit data in 16-bit files gets 4095 and full 16-bit data 65535.
- Float data (mode F TIFFs, float arrays) → ``(0, 1)`` when every training value lies in [0, 1]
  (the usual convention, unchanged); otherwise the 0.1th and 99.9th percentiles of the values
  pooled over the training images (at most 64, evenly spaced; about 10⁶ values of each).

Deeper-than-8-bit and float training images are read once more at fit for this (8-bit ones never).

The range maps every image of the training images' pixel kind (8-bit, deeper integers, float). An
image of another kind — the same picture saved at 16 bits for a model fitted on 8-bit files — is
mapped by its own type's full scale instead (with a warning), as clipping it would be meaningless.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Sequence

import numpy as np

INT_PERCENTILE = 99.99
FLOAT_PERCENTILES = (0.1, 99.9)
SAMPLE_VALUES = 1 << 20  # pixel values per image that the percentiles look at (strided subsample)
MAX_SAMPLED_IMAGES = 64  # evenly spaced deeper-than-8-bit training images read to decide a range


class ValueRange(NamedTuple):
    """Stored values ``lo`` → 0 and ``hi`` → 1, linearly; values outside are clipped.

    A plain tuple (picklable for DataLoader workers, JSON-serialisable as ``[lo, hi]``)."""

    lo: float
    hi: float

    def to_unit(self, array: np.ndarray) -> np.ndarray:
        """Any numeric array → float32 in [0, 1], clipped."""
        out = array.astype(np.float32)
        if self.lo != 0:
            out -= np.float32(self.lo)
        out /= np.float32(self.hi - self.lo)
        return np.clip(out, 0.0, 1.0, out=out)

    def describe(self) -> str:
        return f"{self.lo:g}..{self.hi:g}"


EIGHT_BIT = ValueRange(0.0, 255.0)
KIND_NAMES = {"uint8": "8-bit", "bool": "boolean", "int": "deeper-than-8-bit integer", "float": "float"}


def as_value_range(value, where: str = "value_range") -> ValueRange:
    """``(lo, hi)`` (tuple, list or ``"LO,HI"``) → a checked :class:`ValueRange`; errors start
    with ``where`` (none when empty)."""
    where = f"{where}: " if where else ""
    if isinstance(value, str):
        parts = value.split(",")
        if len(parts) != 2:
            raise ValueError(f"{where}expected LO,HI, got {value!r}")
        value = parts
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}expected two numbers (lo, hi), got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"{where}needs finite lo < hi, got ({lo:g}, {hi:g})")
    return ValueRange(lo, hi)


def natural_range(array: np.ndarray) -> ValueRange:
    """The range of one image when no model range is given: the full scale of its pixel type
    (8-bit 0..255, 16-bit 0..65535, other ints 0..max, bool 0..1, float 0..1). Float images
    outside [0, 1] stretch to their own extremes (fine to look at; a model never does this)."""
    if array.dtype == np.uint8:
        return EIGHT_BIT
    if array.dtype == bool:
        return ValueRange(0.0, 1.0)
    if np.issubdtype(array.dtype, np.integer):
        return ValueRange(0.0, float(np.iinfo(array.dtype).max))
    lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 1.0)
    return ValueRange(min(0.0, lo), max(1.0, hi))


def pixel_kind_of_mode(mode: str, deep_colour: bool = False) -> str:
    """Pillow mode (from the file header) → ``"uint8"``, ``"int"`` or ``"float"``."""
    if mode == "F":
        return "float"
    if mode.startswith("I") or deep_colour:  # I;16 variants and 32-bit I
        return "int"
    return "uint8"


def pixel_kind_of_dtype(dtype: np.dtype) -> str:
    if dtype == np.uint8 or dtype == bool:
        return "uint8" if dtype == np.uint8 else "bool"
    if np.issubdtype(dtype, np.integer):
        return "int"
    return "float"


def training_kind(kinds: Sequence[str]) -> str:
    """The pixel kind a model is fitted for: float if any image is float, else deeper integers if
    any is, else 8-bit (bool only when all are)."""
    for kind in ("float", "int"):
        if kind in kinds:
            return kind
    return "bool" if kinds and all(k == "bool" for k in kinds) else "uint8"


def range_for(colour: np.ndarray, value_range: ValueRange | None, kind: str | None, where: str) -> ValueRange:
    """The range that maps one image: the model's for images of its pixel ``kind`` (or any image
    when ``kind`` is None), else the image's own type's full scale."""
    if value_range is None:
        return natural_range(colour)
    found = pixel_kind_of_dtype(colour.dtype)
    if kind is None or found == kind:
        return value_range
    mismatch = kind_mismatch(colour.dtype, value_range, kind)
    if mismatch:
        warnings.warn(f"{where}: {mismatch}", stacklevel=4)
    return natural_range(colour)


def kind_mismatch(dtype: np.dtype, value_range: ValueRange | None, kind: str | None) -> str | None:
    """Why an image of ``dtype`` is mapped by its own type's full scale instead of the model's
    range (None when the range applies, or when either side is boolean, which maps the same)."""
    found = pixel_kind_of_dtype(dtype)
    if value_range is None or kind is None or found == kind or "bool" in (found, kind):
        return None
    return (f"{KIND_NAMES[found]} pixels, but the model's value range {value_range.describe()} "
            f"is for {KIND_NAMES.get(kind, kind)} images; mapped by its own type's full scale instead")


def bit_depth_ceiling(value: float) -> float:
    """Smallest ``2^k − 1`` (k ≥ 1) at or above ``value``: 4000 → 4095, 65535 → 65535, 200 → 255."""
    k = max(1, math.ceil(math.log2(max(float(value), 0.0) + 1.0)))
    return float(2**k - 1)


def _strided_sample(array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    step = max(1, flat.size // SAMPLE_VALUES)
    return flat[::step]


def _int_range(images) -> ValueRange:
    peak = 0.0
    for image in images:
        if image.size:
            peak = max(peak, float(np.percentile(_strided_sample(image), INT_PERCENTILE)))
    return ValueRange(0.0, bit_depth_ceiling(peak))


def _float_range(images) -> ValueRange:
    samples, lo, hi = [], math.inf, -math.inf
    for image in images:
        if image.size:
            lo, hi = min(lo, float(image.min())), max(hi, float(image.max()))
            samples.append(_strided_sample(image).astype(np.float64))
    if not samples or (lo >= 0.0 and hi <= 1.0):
        return ValueRange(0.0, 1.0)
    low, high = np.percentile(np.concatenate(samples), FLOAT_PERCENTILES)
    if high <= low:  # (nearly) constant training data: any range of width 1 keeps it unclipped
        high = low + 1.0
    return ValueRange(float(low), float(high))


def decide_value_range(kinds: Sequence[str], read_values) -> ValueRange:
    """The ``"auto"`` range for training images whose pixel kinds are ``kinds``.

    ``read_values(i)`` returns the raw colour values of training image ``i``; it is called only
    for images of the :func:`training_kind` when that is deeper than 8 bits.
    """
    kind = training_kind(kinds)
    if kind in ("uint8", "bool"):
        return EIGHT_BIT if kind == "uint8" else ValueRange(0.0, 1.0)
    chosen = [i for i, k in enumerate(kinds) if k == kind]
    if len(chosen) > MAX_SAMPLED_IMAGES:
        chosen = [chosen[int(j)] for j in np.linspace(0, len(chosen) - 1, MAX_SAMPLED_IMAGES).round()]
    others = sum(1 for k in kinds if k != kind and k in ("uint8", "int", "float"))
    if others:
        warnings.warn(f"training images mix {KIND_NAMES[kind]} pixels with {others} image(s) of another bit depth; "
                      f"those are mapped by their own type's full scale", stacklevel=3)
    images = (read_values(i) for i in chosen)
    return _float_range(images) if kind == "float" else _int_range(images)
