"""What the auto-configuration validates candidates on, and how it scores them.

The good images as the selection reads them (8-bit RGB, at most ``VALIDATION_MAX_SIDE`` large, but
never smaller than the default candidate's input, values mapped by its range: :func:`selection_reading`),
synthetic defects made from them (:mod:`padim.synthetic`, one per image at each of
``DEFECT_SCALES``, exact masks) and real labelled defects (``--val-defects``, masks found beside
them or in MVTec AD layout), as :class:`DefectSet` s. Maps meet masks at about the default
candidate's input resolution (:func:`comparison_size`). :func:`validation_metrics` turns one
candidate's scores and maps of a fold into image AUROC, pixel AUROC, PRO, the good scores' spread
and the selection score (:mod:`padim.autoconfig`'s docstring), and each synthetic family's image AUROC.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io import ImageReadError, load_image
from .value_range import ValueRange
from .metrics import image_auroc, pixel_auroc_and_pro
from .mvtec import find_image, load_mask
from .mvtec import find_mask as find_mvtec_mask
from .sources import defect_image_sources
from .synthetic import FAMILIES, make_defects

VALIDATION_MAX_SIDE = 512  # synthetic defects are made at most this large (the model resizes anyway)
# ... unless the default candidate's input is larger on a side (long strips: 48×1616 px from 100×4000
# photos); inputs of more pixels than this (tiled, huge) keep the 512 px arrays
VALIDATION_FLOOR_MAX_PIXELS = 1024 * 1024
# ... and their maps meet their masks at the default candidate's input resolution (comparison_size)
STABILITY_WEIGHT = 0.05  # the selection score's penalty per unit of the good scores' CV (at most 1)
# Synthetic defect extents (padim.synthetic's scale), one defect per validation image at each:
# about 5–35 % of the image side, and pits and short scratches of 2–10 % (RESULTS.md §20).
DEFECT_SCALES = (1.0, 0.3)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    return image if image.dtype == np.uint8 else np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def validation_floor(model, files: list, sizes: list | None = None) -> tuple[int, int] | None:
    """The (height, width) that the selection's validation arrays are not shrunk below: ``model``'s
    (the default candidate's) input size as its fit on ``files`` decides it from their headers.
    Shrunk to 512 px on the long side, a long strip's validation images were 13×512 px where the
    model sees 48×1616: upsampled, with blurred synthetic scratches, so the candidates were compared
    on less detail than they score. None (the 512 px rule alone) for a stand-in model, a geometry
    that cannot be decided here (its fit reports why), or an input over VALIDATION_FLOOR_MAX_PIXELS.
    ``sizes``: the files' header sizes, if already read."""
    if not hasattr(model, "_prepare_fit"):
        return None
    try:
        model._prepare_fit(files, sizes)
    except (ValueError, MemoryError):
        return None
    if model.geometry_.tiled or math.prod(model.input_size_) > VALIDATION_FLOOR_MAX_PIXELS:
        return None
    return int(model.input_size_[0]), int(model.input_size_[1])


@dataclass(frozen=True)
class Reading:
    """How the selection reads its images, so that they look as the default candidate's input
    will: not shrunk below ``floor`` (height, width), stored values mapped to [0, 1] by
    ``value_range`` for images of ``value_kind`` (None: each image's own type's full scale)."""

    floor: tuple[int, int] | None = None
    value_range: ValueRange | None = None
    value_kind: str | None = None


def selection_reading(model, files: list, sizes: list | None = None) -> Reading:
    """The :class:`Reading` for ``model`` (the default candidate) fitted on ``files``: its input size
    as the floor (:func:`validation_floor`) and the value range its fit would decide from them. At
    their type's full scale, 12-bit data in 16-bit files became 8-bit arrays of 16 gray levels
    (0..16), so the candidates were compared on dark, posterised images the final model never sees.
    ``sizes``: the files' header sizes, if already read."""
    floor = validation_floor(model, files, sizes)
    if not hasattr(model, "_decide_value_range"):
        return Reading(floor)
    value_range, value_kind = model._decide_value_range(files)
    return Reading(floor, value_range, value_kind)


def validation_arrays(sources: list, max_side: int = VALIDATION_MAX_SIDE,
                      reading: Reading = Reading()) -> list[np.ndarray]:
    """The readable ``sources`` as 8-bit RGB arrays, as :func:`readable_arrays` reads them."""
    return [image for _, image in readable_arrays(sources, max_side, reading)]


def readable_arrays(sources: list, max_side: int = VALIDATION_MAX_SIDE,
                    reading: Reading = Reading()) -> list[tuple[int, np.ndarray]]:
    """``(index, 8-bit RGB array)`` of each readable source, in order, its values mapped by
    ``reading``'s range: shrunk to at most ``max_side`` on the longer side, but not below
    ``reading.floor`` (height, width) nor 8 px on either side; never enlarged. A warning of an
    image's pixel kind is left to the fit, which reads it too."""
    import cv2

    out = []
    for index, source in enumerate(sources):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = _as_uint8(load_image(source, keep_uint8=True, value_range=reading.value_range,
                                             value_kind=reading.value_kind))
        except ImageReadError:
            continue
        h, w = image.shape[:2]
        factor = max_side / max(h, w)
        if reading.floor is not None:
            factor = max(factor, reading.floor[0] / h, reading.floor[1] / w)
        factor = min(1.0, factor)
        if factor < 1:
            # at least 8 px a side (where padim.io refuses an image as too small), unless smaller already
            image = cv2.resize(image, (max(min(w, 8), round(w * factor)), max(min(h, 8), round(h * factor))),
                               interpolation=cv2.INTER_AREA)
        out.append((index, image))
    return out


def comparison_size(shape: tuple, pixels: float) -> tuple[int, int]:
    """Where a validation image's anomaly map meets its mask: the image's size scaled down to
    about ``pixels`` (the default candidate's input), never up. A map holds no finer detail than
    the model's input (it is upsampled from there), and the pixel metrics' cost grows with the
    pixels compared: at the cookies' 512×384 validation size a third of them, and a fifth of the
    metrics' seconds (RESULTS.md §26)."""
    h, w = shape[:2]
    factor = min(1.0, math.sqrt(pixels / (h * w)))
    return max(1, round(h * factor)), max(1, round(w * factor))


def shrink_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``mask`` at ``size``: every pixel the defect touches (area interpolation above 0). A
    stricter rule (half covered, or nearest) breaks a thin scratch into many one-pixel regions,
    each of which PRO would weigh as much as a whole defect."""
    import cv2

    if mask.shape[:2] == tuple(size):
        return mask
    return cv2.resize(mask.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA) > 0


def synthetic_validation(goods: list[np.ndarray], seed: int, scales=DEFECT_SCALES,
                         families=FAMILIES) -> list["DefectSet"]:
    """Synthetic defects on the validation images, one set per scale (padim.synthetic: one defect
    per image, ``families`` in turn): 8-bit images and exact masks. A defect that rounding to 8 bits
    erased is left out."""
    floats = [g.astype(np.float32) / 255 for g in goods]
    sets = []
    for scale in scales:
        images, masks, made = [], [], []
        for defect in make_defects(floats, seed=seed, scales=(scale,), families=families):
            image = _as_uint8(defect.image)
            mask = (image != goods[defect.source]).any(axis=-1)  # exact after rounding to 8 bits
            if mask.any():
                images.append(image)
                masks.append(mask)
                made.append(defect.family)
        sets.append(DefectSet(images, masks, made))
    return sets


@dataclass
class DefectSet:
    """Validation defect images (8-bit RGB) and their masks (None where a real defect has none)."""

    images: list[np.ndarray]
    masks: list[np.ndarray | None]
    families: list[str] | None = None  # each synthetic defect's family (None for real defects)


def find_defect_mask(path: Path) -> Path | None:
    """The mask of a labelled defect image: ``<stem>_mask.*`` beside it, or in MVTec AD layout
    (``ROOT/test/<type>/<stem>.*`` → ``ROOT/ground_truth/<type>/<stem>_mask.*``)."""
    beside = find_image(path.parent, (f"{path.stem}_mask",))
    if beside is None and len(path.parents) >= 3 and path.parents[1].name == "test":
        return find_mvtec_mask(path.parents[2], path.parent.name, path.stem)
    return beside


def real_validation(val_defects: Any, max_side: int = VALIDATION_MAX_SIDE, reading: Reading = Reading()) -> DefectSet:
    """``--val-defects`` images as 8-bit arrays sized as :func:`readable_arrays` sizes them, with the
    masks found for them (:func:`find_defect_mask`; files named ``*_mask.*`` are masks, not defect images)."""
    sources = defect_image_sources(val_defects)
    images, masks = [], []
    for source in sources:
        arrays = validation_arrays([source], max_side, reading)
        if not arrays:
            continue
        image = arrays[0]
        mask_path = find_defect_mask(source) if isinstance(source, Path) else None
        images.append(image)
        masks.append(None if mask_path is None else load_mask(mask_path, image.shape[:2]))
    if not images:
        raise ValueError(f"--val-defects: no readable defect images in {val_defects}")
    return DefectSet(images, masks)


def defect_auroc(good_scores, defect_scores) -> float:
    """Image AUROC of defect images' scores against good images' scores."""
    return image_auroc(np.r_[np.zeros(len(good_scores)), np.ones(len(defect_scores))], np.r_[good_scores, defect_scores])


def defect_metrics(good_scores, good_maps, scores, maps, masks) -> tuple[float, float | None, float | None]:
    """Image AUROC of the defects against the good images; pixel AUROC and PRO where masks exist."""
    image = defect_auroc(good_scores, scores)
    with_mask = [(m, a) for m, a in zip(masks, maps) if m is not None]
    if not with_mask:
        return image, None, None
    all_masks = [np.zeros(a.shape[:2], bool) for a in good_maps] + [m for m, _ in with_mask]
    all_maps = list(good_maps) + [a for _, a in with_mask]
    return (image, *pixel_auroc_and_pro(all_masks, all_maps))


def validate(model, goods: list[np.ndarray], synthetic: list[DefectSet] | None, real: DefectSet | None = None) -> dict:
    """Validation metrics of a fitted candidate, scoring the images itself (``iter_results``)."""
    sets = defect_sets(synthetic, real)
    results = list(model.iter_results(goods + [image for s in sets for image in s.images], maps=True))
    return validation_metrics([r.score for r in results], [r.anomaly_map for r in results], len(goods), synthetic,
                              real)


def defect_sets(synthetic: list[DefectSet] | None, real: DefectSet | None) -> list[DefectSet]:
    """The validation defect sets in scoring order: the synthetic scales, then the real set."""
    return [s for s in (synthetic or []) + ([real] if real is not None else []) if s.images]


def validation_metrics(scores, maps, n_goods: int, synthetic: list[DefectSet] | None,
                       real: DefectSet | None = None) -> dict:
    """Metrics and selection score (module docstring) from the scores and maps of the validation
    images in order: ``n_goods`` good ones, then each defect set's (:func:`defect_sets`).

    Each synthetic scale counts equally (its metrics are averaged over the scales, so that large
    defects' many pixels do not outweigh small ones); with real defects each metric is the mean of
    the synthetic and the real one, where the real set gives it."""
    sets = defect_sets(synthetic, real)
    scores = np.asarray(scores, dtype=np.float64)
    n = n_goods
    per_set, start = [], n
    for defect_set in sets:
        stop = start + len(defect_set.images)
        per_set.append(defect_metrics(scores[:n], maps[:n], scores[start:stop], maps[start:stop], defect_set.masks))
        start = stop
    n_synthetic = len(sets) - (real is not None and bool(real.images))
    groups = [per_set[:n_synthetic], per_set[n_synthetic:]]

    def mean_metric(i: int) -> float:
        means = [np.mean([m[i] for m in g if m[i] is not None]) for g in groups
                 if any(m[i] is not None for m in g)]
        return float(np.mean(means))

    image, pixel, pro = (mean_metric(i) for i in range(3))
    good = scores[:n]
    cv = float(good.std() / good.mean()) if good.mean() > 0 else 1.0
    selection = (image + pixel + pro) / 3 - STABILITY_WEIGHT * min(1.0, cv)
    return {"image_auroc": image, "pixel_auroc": pixel, "pro": pro, "good_cv": cv, "selection": float(selection),
            "families": family_aurocs(good, scores[n:], sets[:n_synthetic])}


def family_aurocs(good_scores: np.ndarray, defect_scores: np.ndarray, synthetic: list[DefectSet]) -> dict:
    """Image AUROC of each synthetic family's defects (every scale together) against the good
    images. ``defect_scores``: the synthetic sets' images in order."""
    families = [f for s in synthetic for f in (s.families or [None] * len(s.images))]
    defect_scores = np.asarray(defect_scores[:len(families)])
    out = {}
    for family in sorted({f for f in families if f is not None}):
        out[family] = float(defect_auroc(good_scores, defect_scores[[f == family for f in families]]))
    return out
