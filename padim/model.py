"""The PaDiM estimator: fit on good images, then anomaly maps, scores and probabilities."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .backbones import DEFAULT_BACKBONE, WeightsUnavailableError, build_backbone, get_spec
from .calibration import Calibrator
from .data import Batch, Resize, make_loader, source_name
from .sources import as_sources, defect_image_sources
from .errors import first_line
from .features import random_channel_index
from .net import Embedder, ScoreHead, ScoringNet, TiledEmbedder, distances_to_maps, image_scores
from .gaussian import GaussianModel, GaussianStats, GroupedUpdates
from .image_checks import some_aspect_warning
from .image_result import NO_CALIBRATION, ImageResult, ScoringMethods
from .io import ImageReadError, colour_values, pixel_kind
from .io import image_size as read_image_size
from .value_range import ValueRange, as_value_range, decide_value_range, training_kind, KIND_NAMES
from .geometry import (Geometry, activation_floats_per_pixel, decide_geometry, default_margin, default_memory_budget,
                       explicit_tile_side,
                       typical_size)
from .maps import resize_map
from .folds import held_out_scores, uses_downdate
from .memory import (CACHE_RESERVE_BYTES, FOLD_CACHE_BYTES, PROCESS_RESERVE_BYTES, WEIGHT_COPIES, MemoryPlan,
                     cell_coarseness, choose_granularity, fmt_bytes, held_out_cache_bytes, held_out_images,
                     parse_memory, plan_memory)
from .tiling import cell_grid, extract_tiled, samples_per_image, to_cells
from .whole_image import NO_WHOLE_IMAGE_CHECK, WholeImageRule
from .modelfile import ModelFileError

# Above this a model scores from its packed whitener, unpacked chunk by chunk (the memory of
# huge-image models, RESULTS.md §13, at 5× the Mahalanobis time, §29); at or below it a dense
# float32 copy is made once. 800 MiB keeps a 1.25× input (an auto-configuration candidate,
# ~6 450 Gaussians × d 176 = 762 MiB on BSData) dense, and §13's 8 383-Gaussian model packed.
DENSE_WHITENER_MAX_BYTES = 800 * 2**20
DEFAULT_EPS = 0.1  # relative to the mean feature variance; measured in benchmarks/RESULTS.md
DEFAULT_IMAGE_SIZE = 256


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA GPU is available; use device='cpu' or 'auto'")
    return device


def _is_count(value) -> bool:
    """An integer parameter (a Python or numpy int, not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def cell_count(grid_h: int, grid_w: int, cell) -> int:
    gh, gw = cell_grid(grid_h, grid_w, cell)
    return gh * gw


def _fingerprint(module: torch.nn.Module) -> str:
    """Short hash of a backbone's weights, to detect a model loaded with different weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class PaDiM(ScoringMethods):
    """Patch distribution model: one Gaussian per feature position, fitted on good images only.

    Parameters follow scikit-learn: they are stored as given; what is learned ends in ``_``.

    backbone, weights: registry name and optional local weights file (see ``padim.backbones``).
    layers: hook points (default: the backbone's). d: random channels kept (None: the backbone's
    default; 0 or a number ≥ all channels keeps all). image_size: int (the size rule's base: side
    of a square of equal area; with ``keep_aspect`` the training images' aspect ratio is kept) or
    (height, width).
    eps: covariance regulariser relative to the mean feature variance. blur_sigma: anomaly-map
    smoothing in input pixels. calibration_folds: k-fold held-out scoring of the good images
    that calibrates probabilities and the threshold (0 disables it). whole_image: with calibration,
    also fit the whole-image rule (``whole_image_``, padim.whole_image), so that an image whose whole
    anomaly map is raised (a black or blurred frame, another product) scores high even when the
    map's maximum does not; False keeps the score the map's maximum.

    Input size: one continuous rule (padim.geometry) from the training image of median pixel
    count: up to 768² px of area it is resized to ``image_size``² px of equal area; beyond, the
    input's side grows by 0.44 px per image px (3872×3200 → 1616×1328), at most 4 MP per image,
    and less if the fit's memory plan does not fit ``max_memory`` otherwise. An
    ``image_size`` of (height, width) or a ``scale`` (input = image × scale) fix it instead.
    tile ("auto": tiles only when one forward pass of the input would need more than a quarter of
    ``max_memory``; an int: always tile, with tiles of that side; None: never), overlap (pixels
    cropped from each tile side; default: the receptive field of the hooked layers, 128–256 px,
    which makes stitched features equal whole-image ones), cell (Gaussian granularity: 1 per
    position, k for k×k cells, "image" for one shared Gaussian, "auto" for the finest that fits
    max_memory), max_memory (bytes or "6G": the whole fit's estimated peak, that is the Gaussians'
    plan, one backbone pass and the rest of the process; default 4 GiB or half the RAM).

    value_range: how stored pixel values map to [0, 1], fixed at fit and applied to every image
    (``value_range_``): "auto" (8-bit → 0..255 from the pixel type; deeper data → a robust range
    of the training images, see ``padim.value_range``), (lo, hi), or None (each image by its
    pixel type's full scale, as models saved before value ranges).

    config: "auto" (the default) chooses hook points, granularity, resolution, ε, d and backbone
    from the training images (padim.autoconfig: synthetic defects on held-out good images, and
    ``val_defects`` images if given, with their masks where found; ``val_synthetic=False``: those
    alone) within ``budget`` ("4x" one fit, or seconds), varying only the parameters left at their
    defaults; the chosen parameters replace these ones and the candidate table is kept
    (``auto_table_``, ``auto_choice_``). With fewer than 6 images it fits the parameters as given,
    with a warning. "fixed" fits the parameters as given (a quarter to a third of the time; "default" is
    accepted, its name before auto became the default).
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        layers: list[str] | None = None,
        d: int | None = None,
        image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE,
        keep_aspect: bool = True,
        eps: float = DEFAULT_EPS,
        blur_sigma: float = 4.0,
        device: str = "auto",
        batch_size: int = 16,
        workers: int | str = "auto",
        seed: int = 0,
        weights: str | None = None,
        threads: int | None = None,
        calibration_folds: int = 5,
        max_false_reject: float = 0.01,
        tile: int | str | None = "auto",
        overlap: int | None = None,
        scale: float | None = None,
        cell: int | str = "auto",
        max_memory: int | str | None = None,
        progress: bool = False,
        value_range: str | tuple[float, float] | None = "auto",
        config: str = "auto",
        budget: str | float = "4x",
        val_defects: Any = None,
        val_synthetic: bool = True,
        whole_image: bool = True,
    ):
        self.backbone = backbone
        self.layers = layers
        self.d = d
        self.image_size = image_size
        self.keep_aspect = keep_aspect
        self.eps = eps
        self.blur_sigma = blur_sigma
        self.device = device
        self.batch_size = batch_size
        self.workers = workers
        self.seed = seed
        self.weights = weights
        self.threads = threads
        self.calibration_folds = calibration_folds
        self.max_false_reject = max_false_reject
        self.tile = tile
        self.overlap = overlap
        self.scale = scale
        self.cell = cell
        self.max_memory = max_memory
        self.progress = progress
        self.value_range = value_range
        if config not in ("fixed", "auto", "default"):
            raise ValueError(f"config must be 'auto' or 'fixed', got {config!r}")
        self.config = "fixed" if config == "default" else config
        self.budget = budget
        self.val_defects = val_defects
        self.val_synthetic = val_synthetic
        self.whole_image = whole_image
        self._extractor: Embedder | None = None
        self._extractor_source: tuple | None = None  # (backbone, weights) the extractor was built from

    # ------------------------------------------------------------------ set-up
    @property
    def spec(self):
        return get_spec(self.backbone)

    def _check_fit_params(self) -> None:
        """Refuse, before any work, the parameters no fit can use (the others are checked where
        they are decided: d, image_size, layers, backbone, max_false_reject)."""
        folds = self.calibration_folds
        if not isinstance(folds, (int, np.integer)) or isinstance(folds, bool) or folds < 0 or folds == 1:
            raise ValueError(f"calibration_folds must be 0 (no calibration) or at least 2, got {folds!r}")
        if not isinstance(self.eps, (int, float, np.number)) or not math.isfinite(self.eps) or self.eps < 0:
            raise ValueError(f"eps must be a finite number ≥ 0, got {self.eps!r}")
        overlap = self.overlap
        if overlap is not None and (not isinstance(overlap, (int, np.integer)) or isinstance(overlap, bool)
                                    or overlap < 0):
            raise ValueError(f"overlap must be None (the receptive field) or an integer ≥ 0 (pixels), got {overlap!r}")

    def _warn_adjusted_params(self) -> None:
        """Warn, once per fit, of parameters the fit adjusts rather than refuses: a ``d`` above the
        hooked layers' channels (all of them are kept) and a ``tile`` side that is not a multiple of
        their deepest stride (rounded to the nearest one)."""
        try:
            names = list(self.layers) if self.layers else list(self.spec.default_layers)
            points = [self.spec.hook_point(name) for name in names]
        except (ValueError, KeyError, TypeError):
            return  # an unknown backbone or layer: the fit refuses it with its own message
        total = sum(p.channels for p in points)
        if _is_count(self.d) and self.d > total:
            warnings.warn(f"d={self.d} is more than the {total} channels of layers {', '.join(names)}: "
                          f"all {total} are kept", stacklevel=3)
        multiple = max(p.stride for p in points)
        if _is_count(self.tile) and self.tile >= 1 and explicit_tile_side(self.tile, multiple) != self.tile:
            warnings.warn(f"tile={self.tile} px is not a multiple of {multiple} px (the deepest hooked layer's "
                          f"stride): tiles of {explicit_tile_side(self.tile, multiple)} px are used", stacklevel=3)

    def _device(self) -> torch.device:
        return resolve_device(self.device)

    def _apply_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(int(self.threads))

    def _get_extractor(self) -> Embedder:
        if self._extractor is not None and self._extractor.selections != Embedder.selection_of(
                self._extractor.points, self.channel_index_):
            # same hook points, other channels (refit with another d or seed): same backbone
            self._extractor = Embedder(self._extractor.backbone, self.spec, self.layers_,
                                       self.channel_index_).to(self._device())
        if self._extractor is None:
            backbone = self._checked_backbone()
            self._extractor = Embedder(backbone, self.spec, self.layers_, self.channel_index_).to(self._device())
            self._extractor_source = (self.backbone, self.weights)
        return self._extractor

    def _checked_backbone(self) -> torch.nn.Module:
        """The network ``backbone`` and ``weights`` build (checked by ``fitted_backbone``); a fit
        records its fingerprint and the weights file's name."""
        backbone = self.fitted_backbone()
        if getattr(self, "backbone_fingerprint_", None) is None:  # a fit
            self.backbone_weights_file_ = None if self.weights is None else Path(self.weights).name
            self.backbone_fingerprint_ = _fingerprint(backbone)
        return backbone

    def fitted_backbone(self, prepare: bool = True) -> torch.nn.Module:
        """The network ``backbone`` and ``weights`` build; for a fitted model, checked to be the one
        it was fitted with (``ModelFileError`` otherwise), naming the fitted weights file when it is
        not given. ``prepare=False``: a plain network, for export."""
        expected = getattr(self, "backbone_fingerprint_", None)
        named = getattr(self, "backbone_weights_file_", None) if expected is not None else None
        fitted_with = f"this model was fitted with the {self.backbone} weights file '{named}'"
        try:
            backbone = build_backbone(self.backbone, self.weights, prepare=prepare)
        except WeightsUnavailableError as exc:
            if named is None or self.weights is not None:
                raise
            raise WeightsUnavailableError(f"{fitted_with}: pass it with weights=PATH (CLI: --weights PATH); "
                                          f"without it, {first_line(exc)}") from None
        if expected is not None:
            found = _fingerprint(backbone)
            if expected != found:
                raise ModelFileError(
                    f"the {self.backbone} weights in use differ from those the model was fitted with "
                    f"(fingerprint {found} ≠ {expected}); "
                    + (f"{fitted_with}: pass that file" if named else "pass the same weights file"))
        return backbone

    def _loader(self, sources, size: tuple[int, int], keep_original: bool = False):
        # As many images as the activation share of the budget allows; tiled ones one at a time.
        images_per_batch = self.geometry_.images_per_batch(self.batch_size)
        return make_loader(sources, Resize(size), images_per_batch, self.workers,
                           pin_memory=self._device().type == "cuda",
                           value_range=getattr(self, "value_range_", None),
                           value_kind=getattr(self, "value_kind_", None), keep_original=keep_original,
                           device_type=self._device().type)

    def _progress(self, iterable, total: int, desc: str, unit: str = "batch"):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not self.progress or not distributed.is_main(),
                    leave=False)  # under torchrun, rank 0's bars only

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] → embedding ``[B, d, h, w]`` on the model's device."""
        extractor = self._get_extractor()
        images = images.to(self._device(), non_blocking=True)
        if not self.geometry_.tiled:
            return extractor(images)
        return extract_tiled(images, extractor, self.geometry_.layout(), fill=self.spec.mean,
                             tile_batch=self.geometry_.tiles_per_batch(self.batch_size))

    def _to_samples(self, embedding: torch.Tensor) -> torch.Tensor:
        """Embedding ``[B, d, h, w]`` → samples ``[S, d, G]`` for the G Gaussians (per position or cell)."""
        return to_cells(embedding, self.cell_)

    # -------------------------------------------------------------------- fit
    def _training_sizes(self, sources) -> list[tuple[int, int]]:
        """``(height, width)`` of every readable training image, from the file headers; when none
        is readable, a ValueError with the first one's reason (the loader, which reports the
        others, never runs then)."""
        sizes, first = [], None
        for source in sources:
            try:
                sizes.append(read_image_size(source))
            except Exception as exc:  # noqa: BLE001 - unreadable files are reported by the loader
                first = first or first_line(exc)
        if not sizes and first is not None:
            raise ValueError(f"none of the {len(sources)} training images can be read; first: {first}")
        return sizes

    def _outside_gaussians(self, geometry: Geometry) -> dict:
        """What the fit holds besides the Gaussians, for the plan's whole-fit total: one backbone
        pass's activations, and the process (libraries, the backbone's weights, counted
        WEIGHT_COPIES times, the batch's input tensor and, when tiled, the whole resized image)."""
        points = [self.spec.hook_point(name) for name in self.layers_]
        pixels = geometry.pass_pixels(self.batch_size)
        inputs = 4 * 3 * (pixels + (geometry.input_size[0] * geometry.input_size[1] if geometry.tiled else 0))
        per_pixel = activation_floats_per_pixel(self.spec.peak_activation, points, self.n_features_)
        return dict(backbone_pass=int(4 * per_pixel * pixels),
                    process=PROCESS_RESERVE_BYTES + WEIGHT_COPIES * self.spec.weight_bytes + inputs)

    def _plan_for(self, geometry: Geometry, budget: int, n_images: int):
        """Gaussian granularity and memory plan for ``geometry``; MemoryError when none fits."""
        gh, gw = geometry.feature_size
        batch = geometry.images_per_batch(self.batch_size)
        outside = self._outside_gaussians(geometry)
        if self.cell == "auto":
            cell, _, plan = choose_granularity(gh, gw, self.n_features_, batch, budget, self.calibration_folds,
                                               n_images=n_images, **outside)
            return cell, plan
        cell = self.cell if self.cell == "image" else int(self.cell)
        plan = plan_memory(cell_count(gh, gw, cell), self.n_features_, gh * gw, batch, self.calibration_folds,
                           n_images=n_images, **outside)
        if self.max_memory is not None and plan.total > budget:
            raise MemoryError(f"{plan.describe()}; that exceeds max_memory {fmt_bytes(budget)}: "
                              f"use cell='auto', a coarser cell, a smaller d or scale, or a larger budget")
        return cell, plan

    def _fitting_plan(self, geometry: Geometry, budget: int, n_images: int):
        """``(geometry, cell, plan)``: :meth:`_plan_for` at the geometry's batch, or, where that
        leaves only coarser Gaussians (or none), at fewer images or tiles per batch. A smaller
        batch costs speed; coarser cells cost accuracy. MemoryError when nothing fits at one."""
        if self.max_memory is None and self.cell != "auto":
            return (geometry, *self._plan_for(geometry, budget, n_images))  # nothing to bound
        first = geometry.batch or self.batch_size
        batches = sorted({max(1, first >> k) for k in range(first.bit_length())}, reverse=True)
        best, error = None, None
        for batch in batches:
            smaller = dataclasses.replace(geometry, batch=batch) if batch != first else geometry
            try:
                cell, plan = self._plan_for(smaller, budget, n_images)
            except MemoryError as exc:
                error = error or exc  # the message at the geometry's own batch
                continue
            if plan.total > budget:
                continue
            if best is None or cell_coarseness(cell) < cell_coarseness(best[1]):
                best = (smaller, cell, plan)
            if self.cell != "auto" or cell_coarseness(cell) == 1:
                break  # the cell asked for, or one Gaussian per position: nothing finer to gain
        if best is None:
            raise error  # every batch raised (an auto cell's plan and an explicit budget's are checked)
        return best

    def _decide_value_range(self, sources) -> tuple[ValueRange | None, str | None]:
        """The model's mapping of stored values to [0, 1] and the pixel kind it is for (see
        ``padim.value_range``). Files are judged by their header; only deeper-than-8-bit images
        are read (once more) to measure a range."""
        if self.value_range is None:
            return None, None
        explicit = not (isinstance(self.value_range, str) and self.value_range == "auto")
        chosen = as_value_range(self.value_range) if explicit else None

        def kind(source) -> str:
            try:
                return pixel_kind(source)
            except ImageReadError:
                return "unreadable"  # reported by the loader

        def values(i: int) -> np.ndarray:
            try:
                return colour_values(sources[i])
            except ImageReadError:
                return np.zeros(0, np.float32)

        kinds = [kind(s) for s in sources]
        return chosen or decide_value_range(kinds, values), training_kind(kinds)

    def _prepare_fit(self, sources, sizes: list | None = None) -> None:
        """Decide geometry, hook points, channels and Gaussian granularity from the training images'
        headers (the rule is in padim.geometry: the median image's size, the time and memory budget).
        ``sizes``: the headers' :meth:`_training_sizes`, if already read."""
        spec = self.spec
        h, w = typical_size(self._training_sizes(sources) if sizes is None else sizes)
        layers = list(self.layers) if self.layers else list(spec.default_layers)
        if self._extractor is not None and (layers != getattr(self, "layers_", None)
                                            or getattr(self, "_extractor_source", None) != (self.backbone, self.weights)):
            self._extractor = None  # refit with other hook points, or another backbone or weights file
        self.layers_ = layers
        points = [spec.hook_point(name) for name in self.layers_]
        total = sum(p.channels for p in points)
        d = spec.default_d if self.d is None else (self.d or None)
        self.channel_index_ = random_channel_index(total, d, self.seed)
        self.n_features_ = total if self.channel_index_ is None else int(self.channel_index_.numel())
        budget = default_memory_budget() if self.max_memory is None else parse_memory(self.max_memory)
        multiple = max(p.stride for p in points)

        def fits(geometry: Geometry, shared: bool = True) -> bool:
            try:
                _, cell, plan = self._fitting_plan(geometry, budget, len(sources))
            except MemoryError:
                return False
            return plan.total <= budget and (shared or cell != "image")

        def decide(fits) -> Geometry:
            return decide_geometry(
                h, w, image_size=self.image_size, keep_aspect=self.keep_aspect, tile=self.tile, margin=self.overlap,
                scale=self.scale, stride=min(p.stride for p in points), multiple=multiple,
                receptive_margin=default_margin(points, multiple),
                floats_per_pixel=activation_floats_per_pixel(spec.peak_activation, points, self.n_features_),
                memory_budget=budget, batch_size=self.batch_size, fits=fits)

        # Under cell="auto" the budget makes the input smaller before it leaves one shared Gaussian
        # for an aligned product (RESULTS §48: 12 MP photos at 1500M, image AUROC 0.69 shared at the
        # full input, 1.00 with 16×16 cells at 0.28×); shared only where no grid fits at any size.
        geometry = decide(lambda g: fits(g, shared=False)) if self.cell == "auto" else None
        if geometry is None or not fits(geometry, shared=False):
            geometry = decide(fits)
        self.geometry_, self.cell_, self.plan_ = self._fitting_plan(geometry, budget, len(sources))
        self.input_size_ = self.geometry_.input_size
        self.feature_size_ = self.geometry_.feature_size
        self.n_gaussians_ = cell_count(*self.feature_size_, self.cell_)
        # A refitted fold keeps its own embeddings in what the budget leaves after the plan and a
        # reserve for the backbone's activations and image decoding; the downdate keeps every
        # held-out image's, at most held_out_cache_bytes: beyond, a seeded subset is held out
        # (padim.memory.held_out_images), extracted again if even its minimum does not fit.
        self._refit_cache_bytes = max(FOLD_CACHE_BYTES, budget - self.plan_.peak - CACHE_RESERVE_BYTES)
        image_bytes = 2 * self.n_features_ * self.feature_size_[0] * self.feature_size_[1]
        self._fold_cache_bytes = min(held_out_cache_bytes(len(sources), image_bytes), self._refit_cache_bytes)
        held = held_out_images(len(sources), image_bytes, self._fold_cache_bytes)
        self._held_out_sources = (np.arange(len(sources)) if held == len(sources) else
                                  np.sort(np.random.default_rng(self.seed).choice(len(sources), held, replace=False)))

    _SETUP = ("layers_", "geometry_", "input_size_", "feature_size_", "channel_index_", "n_features_",
              "cell_", "plan_", "n_gaussians_")

    def plan(self, images: Any) -> MemoryPlan:
        """Memory needed to fit on ``images`` with the current parameters. Nothing is fitted; an
        unfitted model keeps the decisions (geometry, cell, …), a fitted one its learned state."""
        fitted = hasattr(self, "gaussian_")
        saved = {k: self.__dict__[k] for k in self._SETUP if k in self.__dict__}
        extractor = self._extractor
        try:
            self._prepare_fit(as_sources(images))
            return self.plan_
        finally:
            if fitted:  # put the learned state back
                for key in self._SETUP:
                    self.__dict__.pop(key, None)
                self.__dict__.update(saved)
                self._extractor = extractor

    def __getstate__(self) -> dict:
        # The backbone's hooks point at this object's extractor: copies build their own.
        state = self.__dict__.copy()
        state["_extractor"] = None
        return state

    def fit(self, images: Any, calibrate: bool | None = None) -> "PaDiM":
        """Fit on good images (see :meth:`_fit_plain`); with ``config="auto"`` first choose the
        configuration (padim.autoconfig)."""
        self._check_fit_params()
        self._warn_adjusted_params()
        if self.config == "auto":
            from .autoconfig import auto_fit

            return auto_fit(self, images, calibrate, log=(lambda line: tqdm.write(line)) if self.progress else None)
        self.auto_table_, self.auto_choice_ = None, None
        return self._fit_plain(images, calibrate)

    _RUNTIME_PARAMS = ("device", "batch_size", "workers", "weights", "threads", "progress", "config", "budget",
                       "val_defects", "val_synthetic")

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters as set now (model and runtime ones). ``deep`` is scikit-learn's
        (nested estimators' parameters): there are none, so ``sklearn.base.clone`` works as is."""
        return {key: getattr(self, key) for key in self._PARAMS + self._RUNTIME_PARAMS}

    def set_params(self, **params) -> "PaDiM":
        """Set constructor parameters (scikit-learn's convention); a later fit uses them. Unknown
        names are refused with the valid ones."""
        valid = self._PARAMS + self._RUNTIME_PARAMS
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(f"PaDiM has no parameter {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def _fit_plain(self, images: Any, calibrate: bool | None = None) -> "PaDiM":
        """Fit the Gaussians on good images (folder, paths, PIL images or arrays); returns self.

        Unreadable images are skipped with a warning and listed in ``skipped_``. With
        ``calibration_folds`` ≥ 2 and at least that many images, held-out scores of the good
        images calibrate probabilities and the OK/NG threshold (``calibrator_``): all of them, or
        for many images a seeded subset of at most FIT_CACHE_MAX_BYTES of embeddings (~119 at
        256 px; ``held_out_``: their input positions, in the order of ``calibration_scores_``, their
        held-out map maxima, and ``calibration_means_``, their map means).

        Inside a torch.distributed process group of more than one rank (``torchrun``, or one the
        caller initialised) every rank passes the same ``images``, reads its contiguous block of
        them and all-reduces the sums (padim.distributed); every rank ends with the same model,
        equal to one process's up to summation order. Only rank 0 need save it.
        """
        self._apply_threads()
        sources = as_sources(images)
        self._prepare_fit(sources)
        if self._extractor is None:  # a fit records the weights it is given: a last fit's are no check on them
            self.backbone_fingerprint_ = None
        self.value_range_, self.value_kind_ = self._decide_value_range(sources)
        if distributed.active():
            self._check_ranks_agree(len(sources))
        stats = GaussianStats(self.n_gaussians_, self.n_features_, self._device())
        self.skipped_: list[tuple[str, str]] = []
        folds = self.calibration_folds if calibrate in (None, True) else 0
        cache = _EmbeddingCache(self._fold_cache_bytes if folds and folds >= 2 else 0, self._held_out_sources)
        used = self._sum_training(sources, stats, cache)
        if distributed.active():  # global sums, used images and skipped ones, in one process's order
            distributed.all_reduce_stats_(stats)
            used = [i for part in distributed.all_gather(used) for i in part]
            self.skipped_ = [s for part in distributed.all_gather(self.skipped_) for s in part]
        if len(used) < 2:
            raise ValueError(f"need at least 2 readable training images, got {len(used)}")
        self.n_train_ = len(used)
        self.calibrator_ = None
        self.calibration_scores_ = self.calibration_means_ = None
        self.map_floor_ = None
        self.whole_image_ = None
        calibrating = bool(folds and folds >= 2 and len(used) >= max(folds, 5))
        if folds and folds >= 2 and not calibrating:
            message = (f"calibration needs at least {max(folds, 5)} good images, got {len(used)}: "
                       f"add good images, lower calibration_folds, or fit without calibration "
                       f"(calibration_folds=0, CLI --folds 0: scores and maps, no probabilities)")
            if calibrate:
                raise ValueError(message)
            warnings.warn(f"{message}; fitted without calibration", stacklevel=3)
        finalize_bar = lambda chunks, total: self._progress(chunks, total, "finalize", unit="chunk")  # noqa: E731
        if not calibrating:
            self.gaussian_ = stats.finalize(self.eps, progress=finalize_bar)
            return self
        if distributed.active():
            cache = cache.gathered()
        # The held-out images: the cached ones (all, or a seeded subset of many), else that seeded
        # subset (or all, if too few of it are readable), extracted again.
        enough = max(folds, 5)
        chosen = {int(i) for i in self._held_out_sources}
        subset = [i for i in used if i in chosen]
        held = cache.members if cache.store is not None and len(cache.members) >= enough else (
            subset if len(subset) >= enough else used)
        if held is not cache.members:
            cache = _EmbeddingCache(0, [])
        fold_samples = -(-len(held) // folds) * samples_per_image(*self.feature_size_, self.cell_)
        if uses_downdate(fold_samples, self.n_features_):
            # Held-out scores by downdating the full model: the sums are no longer needed, and the
            # downdate uses the unrounded whitener (it amplifies rounding); the fit keeps the rounded one.
            exact = stats.finalize(self.eps, storage=None, progress=finalize_bar)
            del stats
            self._calibrate([sources[i] for i in held], cache, folds, exact, None)
            del cache
            exact.drop_dense()  # before the rounded copy is made
            self.gaussian_ = exact.rounded()
        else:
            self.gaussian_ = stats.finalize(self.eps, progress=finalize_bar)
            self._calibrate([sources[i] for i in held], cache, folds, self.gaussian_, stats)
        self.held_out_ = [int(i) for i in held]
        return self

    def _sum_training(self, sources, stats: GaussianStats, cache: "_EmbeddingCache") -> list[int]:
        """Add every readable training image to ``stats`` (and to ``cache``); their indices.

        In a process group each rank reads its block of the sorted list (padim.distributed).
        A method of its own so that nothing of the loop (its last batch, the grouped updates'
        block) outlives it: the fit's held-out phase runs after it without the sums."""
        sums = GroupedUpdates(stats)
        used: list[int] = []
        shard = distributed.shard_range(len(sources))
        loader = self._loader([sources[i] for i in shard], self.input_size_)
        for batch in self._progress(loader, len(loader), "fit"):
            batch.indices = [shard.start + i for i in batch.indices]
            batch.errors = [(shard.start + i, message) for i, message in batch.errors]
            self._record_errors(batch, sources)
            if batch.indices:
                self._check_sizes(batch)
                embedding = as_float16(self._embed(batch.images))
                sums.add(self._to_samples(embedding))
                cache.add(batch.indices, embedding)
                used.extend(batch.indices)
        sums.close()
        return used

    def _fit_from_embeddings(self, embeddings) -> "PaDiM":
        """The Gaussians (no calibration) from training embeddings ``[b, d, h, w]`` already
        extracted at ``input_size_`` after :meth:`_prepare_fit`: how padim.autoconfig fits the
        candidates that share one backbone pass (padim.feature_bank). One process only."""
        stats, n_images = self._summed(embeddings)
        if n_images < 2:
            raise ValueError(f"need at least 2 readable training images, got {n_images}")
        self.n_train_, self.skipped_ = n_images, []
        self.calibrator_ = self.calibration_scores_ = self.calibration_means_ = None
        self.map_floor_ = self.whole_image_ = None
        self.gaussian_ = stats.finalize(self.eps)
        return self

    def _summed(self, embeddings, every: int = 1, first: int = 0) -> tuple[GaussianStats, int]:
        """The Gaussians' sums over training embeddings ``[b, d, h, w]`` (of every ``every``-th
        Gaussian from ``first`` only: padim.autoconfig times a fit on a share of them), and the
        number of images."""
        stats = GaussianStats(len(range(first, self.n_gaussians_, every)), self.n_features_, self._device())
        sums = GroupedUpdates(stats)
        n_images = 0
        for embedding in embeddings:
            samples = self._to_samples(as_float16(embedding.to(self._device())))
            sums.add(samples if (every, first) == (1, 0) else samples[..., first::every].contiguous())
            n_images += len(embedding)
        sums.close()
        return stats, n_images

    def _check_ranks_agree(self, n_images: int) -> None:
        """Every rank of a distributed fit must have decided the same model shape from the same
        images (a per-node memory budget could differ); else one clear error, before any all-reduce."""
        decided = (n_images, tuple(self.input_size_), str(self.cell_), self.n_gaussians_, self.n_features_)
        seen = distributed.all_gather(decided)
        if any(other != seen[0] for other in seen):
            raise ValueError(f"the ranks decided different models (images, input size, cell, Gaussians, d): "
                             f"{seen}; pass every rank the same images and an explicit max_memory (--max-memory)")

    def _record_errors(self, batch: Batch, sources) -> None:
        for index, message in batch.errors:
            self.skipped_.append((source_name(sources[index], index), message))
            warnings.warn(f"skipped unreadable training image: {message}", stacklevel=4)

    def _check_sizes(self, batch: Batch) -> None:
        if not isinstance(batch.images, torch.Tensor):
            raise ValueError("images of one batch were resized to different sizes")

    def _fold_embeddings(self, sources, cache: "_EmbeddingCache"):
        """``embeddings(members)`` for :func:`padim.folds.held_out_scores`: cached, else extracted again."""
        def embeddings(members):
            if cache.has_all(members):
                everyone = len(members) == len(sources)  # the last use: hand the cache over
                yield list(range(len(members))), cache.take(members, release=everyone)
                return
            for batch in self._loader([sources[i] for i in members], self.input_size_):
                if batch.indices:  # as the sums saw them
                    yield batch.indices, as_float16(self._embed(batch.images))
        return embeddings

    def _calibrate(self, sources, cache: "_EmbeddingCache", folds: int, model: GaussianModel,
                   stats: GaussianStats | None) -> None:
        """Held-out maps of the good images (padim.folds): the calibrator fitted on their maxima
        (``calibration_scores_``), the whole-image rule on their maxima and means
        (``calibration_means_``). Two tests, so NG ⇔ map max ≥ threshold or map mean ≥ the gate."""
        def progress(iterable, total, desc):
            return self._progress(iterable, total, desc, unit="step")

        maxima, means, self.map_floor_ = held_out_scores(
            len(sources), folds, self.seed, self._fold_embeddings(sources, cache), self._to_samples,
            self._maps_from_distances, model, stats, progress, all_at_once=cache.has_all(range(len(sources))),
            fold_cache_bytes=getattr(self, "_refit_cache_bytes", FOLD_CACHE_BYTES))
        self.calibration_scores_, self.calibration_means_ = maxima, means
        if np.ptp(maxima) == 0:
            raise ValueError(f"every held-out good image scores {maxima[0]:g}: the good images look identical "
                             f"(copies of one image?), so no threshold can be set from their spread; fit on varied "
                             f"good images, or without calibration (calibration_folds=0, CLI --folds 0)")
        self.calibrator_ = Calibrator().fit(maxima, max_false_reject=self.max_false_reject)
        self.whole_image_ = WholeImageRule.fit(self.calibrator_, means) if self.whole_image else None

    def recalibrate(self, defect_images: Any = None, *, threshold: float | None = None,
                    threshold_method: str = "youden") -> "PaDiM":
        """Refit probabilities and threshold: with labelled defect images (a logistic posterior
        and a Youden/F1 threshold), or with a fixed ``threshold``; held-out good scores are reused
        (against defects, their scores under the whole-image rule, as the defects' are scored)."""
        self._check_fitted()
        if getattr(self, "calibration_scores_", None) is None:
            raise RuntimeError("no held-out good scores; fit with calibration_folds ≥ 2 first")
        defect_scores = None if defect_images is None else self.score_samples(defect_image_sources(defect_images))
        good = self.calibration_scores_
        rule, means = getattr(self, "whole_image_", None), getattr(self, "calibration_means_", None)
        if defect_scores is not None and rule is not None and means is not None:
            good = rule.apply(good, means)
        self.calibrator_ = Calibrator().fit(good, defect_scores,
                                            max_false_reject=self.max_false_reject, threshold=threshold,
                                            threshold_method=threshold_method)
        return self

    # ------------------------------------------------------------------ score
    def _check_fitted(self) -> None:
        if not hasattr(self, "gaussian_"):
            raise RuntimeError("this PaDiM model is not fitted yet; call fit() or PaDiM.load() first")

    def _head(self, model: GaussianModel | None = None) -> ScoreHead:
        """The scoring core's head for ``model`` (default: the fitted Gaussians, on the device).

        A model whose dense float32 whitener would exceed ``DENSE_WHITENER_MAX_BYTES`` scores
        from its packed storage, unpacked one chunk of positions at a time: huge-image models
        then need no more memory to score than to store (the unpacking costs some time)."""
        model = model or self._gaussian_on_device()
        dense_bytes = model.num_positions * model.dim * model.dim * 4
        if model.packed is not None and model._whitener is None and dense_bytes > DENSE_WHITENER_MAX_BYTES:
            return ScoreHead(model.mean, None, self.cell_, self.input_size_, self.geometry_.stride,
                             self.blur_sigma, whitener_rows=model.whitener_rows)
        return ScoreHead(model.mean, model.whitener, self.cell_, self.input_size_, self.geometry_.stride,
                         self.blur_sigma)

    def scoring_net(self) -> ScoringNet:
        """The fitted model as one ``torch.nn.Module``: ``[N, 3, H, W]`` in [0, 1] at ``input_size_``
        → ``(anomaly_map [N, H, W], score [N])``. A tiled model's cuts, embeds and stitches its
        tiles inside (:class:`padim.net.TiledEmbedder`)."""
        self._check_fitted()
        return ScoringNet(self.image_embedder(self._get_extractor()), self._head(),
                          getattr(self, "whole_image_", None))

    def image_embedder(self, embedder: Embedder) -> torch.nn.Module:
        """``embedder`` as a module of whole input images: itself, or for a tiled model wrapped in a
        :class:`padim.net.TiledEmbedder` of the model's layout (on the embedder's device)."""
        if not self.geometry_.tiled:
            return embedder
        device = next(embedder.parameters()).device
        return TiledEmbedder(embedder, self.geometry_.layout(), self.spec.mean).to(device)

    def _maps_from_embedding(self, embedding: torch.Tensor, model: GaussianModel | None = None) -> torch.Tensor:
        return self._head(model)(embedding)

    def _maps_from_distances(self, distances: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Per-sample distances ``[S, G]`` of ``embedding [b, d, h, w]`` → anomaly maps ``[b, H, W]``."""
        batch, _, h, w = embedding.shape
        return distances_to_maps(distances, self.cell_, batch, h, w, self.input_size_, self.geometry_.stride,
                                 self.blur_sigma)

    def _gaussian_on_device(self) -> GaussianModel:
        device = self._device()
        if self.gaussian_.mean.device != device:
            self.gaussian_ = self.gaussian_.to(device)
        return self.gaussian_

    def iter_results(self, images: Any, maps: bool = True, originals: bool = False) -> Iterator[ImageResult]:
        """Score images one batch at a time, in input order; unreadable ones carry an error.

        With ``maps`` each result holds its anomaly map at the image's original size. The image
        score is the maximum of the map at the model's input size (raised by ``whole_image_`` where
        the whole map is). With ``originals`` each result
        also holds the image as the loader decoded it (``image``), e.g. to draw its heatmap.
        """
        self._check_fitted()
        self._apply_threads()
        sources = as_sources(images)
        loader = self._loader(sources, self.input_size_, keep_original=originals)
        warned = False
        for batch in self._progress(loader, len(loader), "score"):
            if not warned and self._aspect_mismatch(batch.original_sizes):
                warned = True
                warnings.warn(some_aspect_warning(self.input_size_), stacklevel=2)
            results = {index: ImageResult(index, error=message) for index, message in batch.errors}
            if batch.indices:
                self._check_sizes(batch)
                scores, host_maps = self._score_embedding(self._embed(batch.images), batch.original_sizes, maps)
                for k, index in enumerate(batch.indices):
                    image = batch.originals[k] if batch.originals is not None else None
                    results[index] = ImageResult(index, float(scores[k]), host_maps[k] if maps else None, image=image)
            for index in sorted(results):
                yield results[index]

    def _score_embedding(self, embedding: torch.Tensor, sizes, maps: bool = True) -> tuple[np.ndarray, list | None]:
        """Scores of a batch's embedding (:meth:`_score_maps`) and, with ``maps``,
        each map resized to its image's original ``(h, w)`` in ``sizes``."""
        return self._score_maps(self._maps_from_embedding(embedding), sizes, maps)

    def _score_maps(self, batch_maps: torch.Tensor, sizes, maps: bool = True) -> tuple[np.ndarray, list | None]:
        """:meth:`_score_embedding` from the batch's maps ``[b, H, W]`` at the input size: each
        map's maximum, raised by the whole-image rule (padim.net.image_scores)."""
        scores = image_scores(batch_maps, getattr(self, "whole_image_", None)).cpu().numpy()
        if not maps:
            return scores, None
        return scores, [resize_map(m, size) for m, size in zip(batch_maps.cpu().numpy(), sizes)]

    def _checks_aspect(self) -> bool:
        """Whether images of another aspect ratio are warned of: not when the user chose the
        geometry explicitly (a fixed size, or ``keep_aspect=False``)."""
        return bool(self.keep_aspect and not isinstance(self.image_size, (tuple, list)))

    def predict(self, images: Any) -> np.ndarray:
        """True where an image is NG (score at or above the model's threshold)."""
        calibrator = self._require_calibration()
        return calibrator.predict(self.score_samples(images))

    # ------------------------------------------------------------- save/load
    _PARAMS = ("backbone", "layers", "d", "image_size", "keep_aspect", "eps", "blur_sigma",
               "seed", "calibration_folds", "max_false_reject", "tile", "overlap", "scale", "cell", "max_memory",
               "value_range", "whole_image")

    def save(self, path: str | Path) -> Path:
        """Write the fitted model to one safetensors file (no pickled code); see padim.persistence."""
        from .persistence import save_model

        return save_model(self, path)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", weights: str | None = None, **overrides) -> "PaDiM":
        """Read a model written by :meth:`save`; runtime options (device, batch_size, …) may be given."""
        from .persistence import load_model

        return load_model(cls, path, device=device, weights=weights, **overrides)

    def describe(self) -> dict:
        """Plain summary of a fitted model (what ``padim info`` prints)."""
        self._check_fitted()
        return {
            "backbone": self.backbone,
            "layers": self.layers_,
            "features (d)": self.n_features_,
            "input size (h, w)": list(self.input_size_),
            "tiles": (f"{self.geometry_.tile} px, overlap {self.geometry_.margin} px, scale {self.geometry_.scale:.3g}"
                      if self.geometry_.tiled else "no (whole image resized)"),
            "feature grid (h, w)": list(self.feature_size_),
            "Gaussians": f"{self.n_gaussians_} (cell {self.cell_})",
            "memory plan": None if self.plan_ is None else self.plan_.describe().removeprefix("memory plan: "),
            "training images": self.n_train_,
            "eps (relative)": self.eps,
            "regularisation λ": self.gaussian_.reg,
            "model tensors (MB)": round(
                sum(t.numel() * t.element_size() for t in self.gaussian_.storage_tensors().values()) / 2**20, 1),
            "calibration": NO_CALIBRATION if self.calibrator_ is None else self.calibrator_.describe(),
            "whole-image check": (NO_WHOLE_IMAGE_CHECK if getattr(self, "whole_image_", None) is None
                                  else self.whole_image_.describe()),
            "auto-configuration": self._describe_auto(),
            "value range": (f"{self.value_range_.describe()} → 0..1 for every "
                            f"{KIND_NAMES.get(self.value_kind_, 'other')} image"
                            if self.value_range_ is not None else
                            "each image by its pixel type's full scale (8-bit 0..255, 16-bit 0..65535)"),
        }

    def _describe_auto(self) -> str:
        """The auto-configuration's choice, and the options that refit it without selecting."""
        if not getattr(self, "auto_table_", None):
            return "none: the options were fitted as given"
        from .autoconfig import chosen_params, fixed_options

        return (f"chose {self.auto_choice_!r} among {len(self.auto_table_)} candidates; the same fit without "
                f"selecting: {fixed_options(chosen_params(self.auto_table_, self.auto_choice_))}")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._PARAMS)
        return f"PaDiM({params})"


def as_float16(embedding: torch.Tensor) -> torch.Tensor:
    """Training embeddings as float16 before they enter the sums (and the cache).

    The held-out downdate removes each fold's samples from the full model's sums exactly, so the
    samples it removes must be those that went in: holding them as float16 from the start lets
    the float16 cache keep exactly those values (a relative 2⁻¹¹ change of a feature, below the
    backbone's own noise). Features beyond float16's range are left as they are (and not cached)."""
    if embedding.dtype == torch.float16:  # already rounded: the check below would return it either way
        return embedding
    compact = embedding.half()
    return compact if bool(torch.isfinite(compact).all()) else embedding


class _EmbeddingCache:
    """Float16 embeddings of the held-out training images (``chosen``: source indices, sorted),
    kept when all of them fit ``capacity`` bytes, so that the held-out folds need no second
    backbone pass; otherwise nothing is kept (the folds extract their images again). One
    preallocated block, filled in input order: handing every image over at once needs no copy.
    ``members``: the source indices cached so far (unreadable ones are skipped), in block order."""

    def __init__(self, capacity: int, chosen):
        self.capacity = int(capacity)
        self.slots = {int(i) for i in chosen}
        self.members: list[int] = []
        self.store: torch.Tensor | None = None
        self.full = capacity <= 0 or not self.slots

    @property
    def filled(self) -> int:
        return len(self.members)

    def add(self, indices, embedding: torch.Tensor) -> None:
        """Keep the rows of ``embedding`` whose source ``indices`` were chosen."""
        if self.full:
            return
        picks = [k for k, i in enumerate(indices) if int(i) in self.slots]
        if not picks:
            return
        if self.store is None:
            if len(self.slots) * embedding[0].numel() * 2 > self.capacity:
                self.full = True
                return
            # channels_last, as the backbone gives them: copying in is a plain copy, and each
            # position's samples read out by the folds are contiguous d-vectors
            self.store = torch.empty((len(self.slots), *embedding.shape[1:]), dtype=torch.float16,
                                     device=embedding.device, memory_format=torch.channels_last)
        block = embedding if len(picks) == len(indices) else embedding[torch.as_tensor(picks)]
        block = block.half()
        if not bool(torch.isfinite(block).all()):
            self.full, self.store, self.members = True, None, []
            return
        self.store[self.filled:self.filled + len(picks)] = block
        self.members.extend(int(indices[k]) for k in picks)

    def gathered(self) -> "_EmbeddingCache":
        """The union of every rank's cache (a distributed fit's shards are contiguous blocks, so
        rank order is source order); full on every rank when any rank's is."""
        parts = distributed.all_gather((self.full, self.members,
                                        None if self.store is None else self.store[:self.filled].cpu()))
        union = _EmbeddingCache(self.capacity, self.slots)
        if any(full for full, _, _ in parts):
            union.full = True
            return union
        device = self.store.device if self.store is not None else "cpu"
        for _, members, store in parts:
            if members:
                union.add(members, store.to(device))
        return union

    def has_all(self, members) -> bool:
        """True when the cache holds block positions ``members`` (0 … filled − 1)."""
        return not self.full and self.store is not None and all(int(i) < self.filled for i in members)

    def take(self, members, release: bool = False) -> torch.Tensor:
        """Float16 embeddings ``[m, d, h, w]`` at block positions ``members``: a view when they are
        all of them in order; ``release`` lets the cache forget them."""
        store = self.store
        if release:
            self.full, self.store = True, None
        members = [int(i) for i in members]
        if members == list(range(self.filled)):
            return store[:self.filled]
        return store[torch.as_tensor(members)]
