"""What the user passes as ``images`` → a list of image sources, the same for the torch model
(:class:`padim.PaDiM`) and the torch-free runtime (:class:`padim.runtime.ExportedModel`), so a
call that works on a model file works on its export. Imports no torch: a tensor is recognised by
its methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .io import list_images


def _tensor_to_array(value: Any) -> np.ndarray | None:
    """A torch tensor's values as a numpy array (detached, on the CPU); None for anything else."""
    if type(value).__name__ == "Tensor" and hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return None


def as_sources(images: Any) -> list:
    """A folder, a file, a PIL image, a list of paths / PIL images / arrays, or an ``[N, H, W(, C)]``
    or ``[N, C, H, W]`` array (or tensor: torch's batch layout) → list. A ``3×H×W`` or ``4×H×W``
    array is refused: one channels-first image and a stack of 3–4 gray images look alike, and
    guessing would score the wrong thing. A 4-D stack is never ambiguous: an image has at least
    8 px a side, so a last axis of 1, 3 or 4 is channels, and otherwise a second one is."""
    if isinstance(images, (str, Path)):
        return list(list_images(images))
    tensor = _tensor_to_array(images)
    if isinstance(images, np.ndarray) or tensor is not None:
        array = images if tensor is None else tensor
        if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
            return [array]  # one image, gray or with channels last
        if array.ndim == 3 and array.shape[0] in (3, 4):
            raise ValueError(f"an array of shape {tuple(array.shape)} is either one channels-first image or "
                             f"{array.shape[0]} gray images: give array.transpose(1, 2, 0) (HxWxC) for the "
                             f"first, list(array) for the second")
        if array.ndim == 4 and array.shape[3] not in (1, 3, 4) and array.shape[1] in (1, 3, 4):
            return list(array.transpose(0, 2, 3, 1))  # [N, C, H, W] → images H×W×C
        if array.ndim in (3, 4):
            return list(array)  # a stack of images
        raise ValueError(f"cannot interpret an array of shape {array.shape} as images")
    if isinstance(images, Image.Image):
        return [images]
    try:
        sources = list(images)
    except TypeError:
        raise TypeError(f"images must be a folder, a file, a list of images or an array, not {type(images).__name__}") from None
    if not sources:
        raise ValueError("no images given")
    return [Path(s) if isinstance(s, str) else s for s in sources]


def defect_image_sources(images: Any) -> list:
    """Labelled defect images (``--val-defects``, ``recalibrate``) as :func:`as_sources` gives
    them, less their masks: files named ``*_mask.*`` beside the images are masks, not defects."""
    sources = [s for s in as_sources(images) if not (isinstance(s, Path) and s.stem.endswith("_mask"))]
    if not sources:
        raise ValueError(f"'{images}': only masks (*_mask.*), no defect images")
    return sources
