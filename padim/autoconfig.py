"""Choosing a configuration from the user's good images alone (``PaDiM(config="auto")``, ``padim fit --auto``).

A few plain PaDiM configurations (:func:`candidates`) are each fitted, without calibration, on a
seeded part of the good images and validated on the rest: the held-out good images and synthetic
defects made from them (:mod:`padim.synthetic`, exact masks) at two sizes (``DEFECT_SCALES``:
large regions, and pits and short scratches, since the product's defect size is unknown), plus
real defect images when given.
No candidate is validated on an image it was fitted on. The winner is refitted on every image with
its normal calibration; the table of candidates (metrics, seconds, skipped) is kept in the model.

Selection score (higher is better)::

    (image AUROC + pixel AUROC + PRO) / 3  −  0.05 · min(1, CV of the held-out good scores)

where CV = std/mean of the good images' scores: a configuration whose good scores scatter widely
will need a high threshold. With real defect images (``val_defects``), each metric is the mean of
the synthetic one and the real one (pixel AUROC and PRO only from real images with masks); with
``synthetic=False`` the real ones alone decide.

Budget: ``"Nx"`` (default ``"4x"``) is N times the estimated time of one plain fit (the default
candidate's time on the selection split, scaled to all images, plus calibration), covering the
selection and the final fit; or a number of seconds. A candidate whose estimated cost (trying
it, plus its own final fit on every image should it win) would pass the budget is skipped and
marked so; one whose final fit no longer fits what is left is not chosen (noted in the table);
the default candidate always runs and is always affordable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import distributed
from .data import as_sources
from .io import ImageReadError, load_image
from .metrics import image_auroc, pixel_auroc, pro_score
from .mvtec import find_image, load_mask
from .mvtec import find_mask as find_mvtec_mask
from .synthetic import make_defects

MAX_FIT_IMAGES = 40  # selection fits on at most this many good images ...
MAX_VALIDATION_IMAGES = 20  # ... and validates on at most this many (each also gives one synthetic defect)
VALIDATION_MAX_SIDE = 512  # synthetic defects are made at most this large (the model resizes anyway)
CALIBRATION_SHARE = 0.15  # what calibration adds to a fit (benchmarks/RESULTS.md §11)
STABILITY_WEIGHT = 0.05
# Synthetic defect extents (padim.synthetic's scale), one defect per validation image at each:
# about 5–35 % of the image side, and pits and short scratches of 2–10 % (RESULTS.md §20).
DEFECT_SCALES = (1.0, 0.3)

# Other hook-point sets per backbone: one stage deeper than the defaults, and the two shallow stages.
DEEP_LAYERS = {
    "efficientnet_lite0": ("_blocks.4", "_blocks.10", "_blocks.14"),
    "efficientnet_lite1": ("_blocks.6", "_blocks.14", "_blocks.19"),
    "efficientnet_lite2": ("_blocks.6", "_blocks.14", "_blocks.19"),
    "resnet18": ("layer2", "layer3", "layer4"),
    "wide_resnet50_2": ("layer2", "layer3", "layer4"),
}
SHALLOW_LAYERS = {
    "efficientnet_lite0": ("_blocks.2", "_blocks.4"),
    "efficientnet_lite1": ("_blocks.3", "_blocks.6"),
    "efficientnet_lite2": ("_blocks.3", "_blocks.6"),
    "resnet18": ("layer1", "layer2"),
    "wide_resnet50_2": ("layer1", "layer2"),
}


@dataclass
class Candidate:
    """A configuration to try: PaDiM parameters over the user's, and its relative cost."""

    name: str
    params: dict
    cost: float = 1.0  # estimated fit time relative to the default candidate


@dataclass
class CandidateResult:
    name: str
    params: dict
    seconds: float | None = None
    image_auroc: float | None = None
    pixel_auroc: float | None = None
    pro: float | None = None
    good_cv: float | None = None
    selection: float | None = None
    skipped: str | None = None  # why it did not run
    cost: float = 1.0  # declared fit time relative to the default candidate
    fit_seconds: float | None = None  # its selection fit alone
    note: str | None = None  # why a better-scoring candidate was not chosen

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def candidates(backbone: str, image_size: Any) -> list[Candidate]:
    """The configurations tried for ``backbone``: default first, then hook points, granularity, resolution."""
    out = [Candidate("default", {})]
    if backbone in DEEP_LAYERS:
        out.append(Candidate("deep", {"layers": list(DEEP_LAYERS[backbone])}))
        out.append(Candidate("shallow", {"layers": list(SHALLOW_LAYERS[backbone])}))
    out.append(Candidate("shared", {"cell": "image"}))
    if isinstance(image_size, int):
        out.append(Candidate("larger", {"image_size": int(round(image_size * 1.5 / 32) * 32)}, cost=2.25))
    return out


def parse_budget(budget: str | float | int) -> tuple[str, float]:
    """``"4x"`` → ("factor", 4.0); ``120`` or ``"120"`` → ("seconds", 120.0)."""
    text = str(budget).strip().lower()
    try:
        if text.endswith("x"):
            value, kind = float(text[:-1]), "factor"
        else:
            value, kind = float(text), "seconds"
    except ValueError:
        raise ValueError(f"budget must be like 4x (times one fit) or a number of seconds, got {budget!r}") from None
    if not value > 0:
        raise ValueError(f"budget must be positive, got {budget!r}")
    return kind, value


def estimate_full_fit(fit_s: float, per_image_s: float, n_fit: int, n_all: int) -> float:
    """Seconds of one calibrated fit on ``n_all`` images, from a fit on ``n_fit`` (``fit_s``) and
    the per-image cost of scoring (``per_image_s``, about a fit's per-image backbone and sums):
    the fixed part (finalize, set-up) stays, the per-image part grows, calibration adds its share."""
    per_image = min(per_image_s, fit_s / max(1, n_fit))
    fixed = fit_s - per_image * n_fit
    return (fixed + per_image * n_all) * (1 + CALIBRATION_SHARE)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    return image if image.dtype == np.uint8 else np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _validation_arrays(sources: list, max_side: int = VALIDATION_MAX_SIDE) -> list[np.ndarray]:
    """The validation images as 8-bit RGB arrays, at most ``max_side`` on the longer side."""
    import cv2

    out = []
    for source in sources:
        try:
            image = _as_uint8(load_image(source, keep_uint8=True))
        except ImageReadError:
            continue
        h, w = image.shape[:2]
        factor = min(1.0, max_side / max(h, w))
        if factor < 1:
            image = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))),
                               interpolation=cv2.INTER_AREA)
        out.append(image)
    return out


def synthetic_validation(goods: list[np.ndarray], seed: int, scales=DEFECT_SCALES) -> list["DefectSet"]:
    """Synthetic defects on the validation images, one set per scale (padim.synthetic: one defect
    per image, families in turn): 8-bit images and exact masks. A defect that rounding to 8 bits
    erased is left out."""
    floats = [g.astype(np.float32) / 255 for g in goods]
    sets = []
    for scale in scales:
        images, masks = [], []
        for defect in make_defects(floats, seed=seed, scales=(scale,)):
            image = _as_uint8(defect.image)
            mask = (image != goods[defect.source]).any(axis=-1)  # exact after rounding to 8 bits
            if mask.any():
                images.append(image)
                masks.append(mask)
        sets.append(DefectSet(images, masks))
    return sets


@dataclass
class DefectSet:
    """Validation defect images (8-bit RGB) and their masks (None where a real defect has none)."""

    images: list[np.ndarray]
    masks: list[np.ndarray | None]


def find_defect_mask(path: Path) -> Path | None:
    """The mask of a labelled defect image: ``<stem>_mask.*`` beside it, or in MVTec AD layout
    (``ROOT/test/<type>/<stem>.*`` → ``ROOT/ground_truth/<type>/<stem>_mask.*``)."""
    beside = find_image(path.parent, (f"{path.stem}_mask",))
    if beside is None and len(path.parents) >= 3 and path.parents[1].name == "test":
        return find_mvtec_mask(path.parents[2], path.parent.name, path.stem)
    return beside


def real_validation(val_defects: Any, max_side: int = VALIDATION_MAX_SIDE) -> DefectSet:
    """``--val-defects`` images as 8-bit arrays at most ``max_side`` large, with the masks found for
    them (:func:`find_defect_mask`; files named ``*_mask.*`` are masks, not defect images)."""
    sources = [s for s in as_sources(val_defects) if not (isinstance(s, Path) and s.stem.endswith("_mask"))]
    images, masks = [], []
    for source in sources:
        arrays = _validation_arrays([source], max_side)
        if not arrays:
            continue
        image = arrays[0]
        mask_path = find_defect_mask(source) if isinstance(source, Path) else None
        images.append(image)
        masks.append(None if mask_path is None else load_mask(mask_path, image.shape[:2]))
    if not images:
        raise ValueError(f"--val-defects: no readable defect images in {val_defects}")
    return DefectSet(images, masks)


def _defect_metrics(good_scores, good_maps, scores, maps, masks) -> tuple[float, float | None, float | None]:
    """Image AUROC of the defects against the good images; pixel AUROC and PRO where masks exist."""
    n = len(good_scores)
    image = image_auroc(np.r_[np.zeros(n), np.ones(len(scores))], np.r_[good_scores, scores])
    with_mask = [(m, a) for m, a in zip(masks, maps) if m is not None]
    if not with_mask:
        return image, None, None
    all_masks = [np.zeros(a.shape[:2], bool) for a in good_maps] + [m for m, _ in with_mask]
    all_maps = list(good_maps) + [a for _, a in with_mask]
    return image, pixel_auroc(all_masks, all_maps), pro_score(all_masks, all_maps)


def validate(model, goods: list[np.ndarray], synthetic: list[DefectSet] | None, real: DefectSet | None = None) -> dict:
    """Validation metrics of a fitted candidate (see the module docstring for the selection score).

    Each synthetic scale counts equally (its metrics are averaged over the scales, so that large
    defects' many pixels do not outweigh small ones); with real defects each metric is the mean of
    the synthetic and the real one, where the real set gives it."""
    sets = [s for s in (synthetic or []) + ([real] if real is not None else []) if s.images]
    results = list(model.iter_results(goods + [image for s in sets for image in s.images], maps=True))
    scores = np.array([r.score for r in results], dtype=np.float64)
    maps = [r.anomaly_map for r in results]
    n = len(goods)
    per_set, start = [], n
    for defect_set in sets:
        stop = start + len(defect_set.images)
        per_set.append(_defect_metrics(scores[:n], maps[:n], scores[start:stop], maps[start:stop], defect_set.masks))
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
    return {"image_auroc": image, "pixel_auroc": pixel, "pro": pro, "good_cv": cv, "selection": float(selection)}


@dataclass
class Selection:
    choice: str
    params: dict
    table: list[CandidateResult] = field(default_factory=list)
    budget_seconds: float = 0.0


def selection_split(n_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, disjoint indices (sorted) of the validation images (a quarter, 2 to
    MAX_VALIDATION_IMAGES) and of the images the candidates are fitted on (at most MAX_FIT_IMAGES)."""
    order = np.random.default_rng(seed).permutation(n_images)
    n_val = min(MAX_VALIDATION_IMAGES, max(2, n_images // 4))
    return np.sort(order[:n_val]), np.sort(order[n_val:n_val + MAX_FIT_IMAGES])


def select(model_factory, sources: list, backbone: str, image_size: Any, *, budget="4x", seed: int = 0,
           val_defects: Any = None, synthetic: bool = True, log=None) -> Selection:
    """Fit every candidate on a seeded part of ``sources`` and validate on the rest; the best one.

    ``model_factory(**params)`` builds an unfitted PaDiM with the user's parameters overridden by
    ``params``. Needs at least 6 readable good images (4 to fit, 2 to validate). Validation
    defects: synthetic ones made from the held-out images (``synthetic``) and/or the labelled
    ``val_defects`` (their masks count where :func:`find_defect_mask` finds them).
    """
    if len(sources) < 6:
        raise ValueError(f"auto-configuration needs at least 6 good images, got {len(sources)}")
    val_idx, fit_idx = selection_split(len(sources), seed)
    fit_sources = [sources[i] for i in fit_idx]
    goods = _validation_arrays([sources[i] for i in val_idx])
    if len(goods) < 2:
        raise ValueError("auto-configuration: fewer than 2 readable validation images")
    defects = synthetic_validation(goods, seed) if synthetic else None
    real = None if val_defects is None else real_validation(val_defects)
    if defects is None and real is None:
        raise ValueError("auto-configuration without synthetic defects needs val_defects (labelled defect images)")
    kind, value = parse_budget(budget)
    table: list[CandidateResult] = []
    started = time.perf_counter()
    allowed = reference = one_fit = None
    for candidate in candidates(backbone, image_size):
        row = CandidateResult(candidate.name, candidate.params, cost=candidate.cost)
        table.append(row)
        if reference is not None:
            spent = time.perf_counter() - started
            # trying it, and its own final fit should it win (the default's is already reserved)
            needs = candidate.cost * reference + (candidate.cost - 1) * one_fit
            over = spent + needs > allowed
            if distributed.active():  # rank 0's clock decides, so every rank fits the same candidates
                over, spent = distributed.broadcast_object((over, spent))
            if over:
                row.skipped = f"budget: needs ~{needs:.1f} s, {max(0.0, allowed - spent):.1f} s left"
                continue
        t0 = time.perf_counter()
        try:
            model = model_factory(**candidate.params).fit(fit_sources, calibrate=False)
        except (ValueError, MemoryError) as exc:
            row.skipped = f"cannot fit: {exc}"
            if reference is None:
                raise
            continue
        fitted = time.perf_counter()
        row.__dict__.update(validate(model, goods, defects, real))
        row.seconds = time.perf_counter() - t0
        row.fit_seconds = fitted - t0
        if reference is None:  # the default candidate: it sets the budget's unit (rank 0's, under torchrun)
            timing = (row.seconds, fitted - t0, time.perf_counter() - fitted)
            reference, fit_s, validate_s = distributed.broadcast_object(timing) if distributed.active() else timing
            n_validated = len(goods) + sum(len(s.images) for s in (defects or []) + [real] if s is not None)
            one_fit = estimate_full_fit(fit_s, validate_s / n_validated, len(fit_sources), len(sources))
            total = value * one_fit if kind == "factor" else value
            allowed = total - one_fit  # the final refit on every image comes out of the budget too
        if log:
            log(f"auto: {row.name:8s} image {row.image_auroc:.3f} pixel {row.pixel_auroc:.3f} PRO {row.pro:.3f} "
                f"cv {row.good_cv:.3f} → {row.selection:.4f} ({row.seconds:.1f} s)")
    best = _affordable_best(table, one_fit, total - (time.perf_counter() - started))
    return Selection(best.name, best.params, table, float(total))


def _affordable_best(table: list[CandidateResult], one_fit: float, left: float) -> CandidateResult:
    """The best-scoring candidate whose final fit fits in the ``left`` seconds: a default fit
    (``one_fit``) times the larger of its declared cost and its measured fit time relative to the
    default's; the default is always affordable and wins ties. Rank 0 decides under torchrun."""
    default = table[0]
    ranked = sorted((r for r in table if r.selection is not None), key=lambda r: -r.selection)
    choice = default
    for row in ranked:
        ratio = max(row.cost, row.fit_seconds / max(default.fit_seconds, 1e-9))
        if row is default or ratio * one_fit <= left:
            choice = row
            break
        row.note = f"not chosen: its final fit needs ~{ratio * one_fit:.0f} s, {max(0.0, left):.0f} s left"
    if distributed.active():
        name = distributed.broadcast_object(choice.name)
        choice = next(r for r in table if r.name == name)
    return choice


def format_table(table: list[dict], choice: str) -> str:
    """The candidate table as text (what ``padim fit --auto`` prints and ``padim info`` shows)."""
    lines = ["candidate  image AUROC  pixel AUROC  PRO    good CV  selection  seconds"]
    for row in table:
        mark = "*" if row["name"] == choice else " "
        if row.get("skipped"):
            lines.append(f"{mark}{row['name']:9s}  skipped: {row['skipped']}")
            continue
        lines.append(f"{mark}{row['name']:9s}  {row['image_auroc']:11.4f}  {row['pixel_auroc']:11.4f}  "
                     f"{row['pro']:.4f}  {row['good_cv']:7.4f}  {row['selection']:9.4f}  {row['seconds']:7.1f}"
                     + (f"  ({row['note']})" if row.get("note") else ""))
    return "\n".join(lines)


def auto_fit(model, images: Any, calibrate: bool | None = None, log=None):
    """Choose a configuration for ``model`` (a PaDiM with ``config="auto"``) from ``images``, set its
    parameters to the winner's, fit it on every image; the table goes to ``auto_table_``."""
    from .model import PaDiM

    sources = as_sources(images)
    base = model.get_params()
    base.update(config="default", progress=False)

    def factory(**params):
        return PaDiM(**{**base, **params})

    chosen = select(factory, sources, model.backbone, model.image_size, budget=model.budget, seed=model.seed,
                    val_defects=model.val_defects, synthetic=model.val_synthetic, log=log)
    for key, value in chosen.params.items():
        setattr(model, key, value)
    model._fit_plain(sources, calibrate)
    model.auto_table_ = [row.as_dict() for row in chosen.table]
    model.auto_choice_ = chosen.choice
    return model
