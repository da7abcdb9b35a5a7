"""Memory arithmetic for a fit, printed before any work starts so nobody learns it from a crash.

:func:`plan_memory` estimates one configuration; :func:`choose_granularity` picks the finest
Gaussian granularity (per position, per k×k cell, one shared) that fits a budget, and refuses
with a clear message when nothing does; :func:`parse_memory` reads budgets such as ``"6G"``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Sequence, Union

from .gaussian import TRANSPOSE_MAX_BYTES, finalize_chunk, group_rows, update_chunk

GIB = 2**30
FOLD_CACHE_BYTES = 256 * 2**20  # held-out embeddings kept (at least) before re-extracting them
FIT_CACHE_MAX_BYTES = 160 * 2**20  # float16 embeddings of the held-out images, at most (bounds calibration)
# Held out at least (or all, if fewer): the calibrator's 1 % tail needs about this many. With 64,
# a 384 px BSData model flagged 5.8 % of the good test images; with 100 or all 568, 0.8 % (RESULTS §21).
HELD_OUT_MIN_IMAGES = 100
CACHE_RESERVE_BYTES = 768 * 2**20  # left for backbone activations and decoding when sizing that cache
MIB = 2**20
# What a fitting process holds besides the Gaussians, one backbone pass, the backbone's weights
# and the batch's input tensor: the Python process with PyTorch, OpenCV, SciPy and scikit-learn
# loaded (507 MiB after `import padim` on Linux, 586 MiB once the plan is made), one decoded
# image, and what the allocator keeps of earlier passes. Sized on measured peaks, with the
# weights counted WEIGHT_COPIES times (the network, the state dict it is loaded from, and what
# WideResNet50-2's wide convolutions needed beyond their outputs): benchmarks/RESULTS.md §48.
PROCESS_RESERVE_BYTES = 768 * MIB
WEIGHT_COPIES = 3


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes needed by the parts of a fit that scale with the model, and by its result."""

    gaussians: int  # number of Gaussians (positions, or cells)
    d: int  # feature dimension
    batch_size: int
    feature_positions: int  # positions per image on the feature grid
    statistics: int  # float64 Σx, packed Σxxᵀ and shift of the running fit
    finalize: int  # covariance, Cholesky and inverse of one chunk, plus the packed float32 result
    model: int  # float32 mean + dense whitener kept for scoring, and its packed float16 (the file)
    batch_features: int  # float32 embedding of one batch (plus its float64 copy for the sums)
    calibration: int  # held-out phase: downdate: unrounded model + embeddings; refit: fold sums + model
    update_temporaries: int = 0  # samples grouped for GaussianStats.update, its centred copy and products
    embedding_cache: int = 0  # float16 training embeddings kept through the fit for the held-out folds
    downdate: bool = True  # held-out folds by downdate (statistics freed first) rather than refit
    backbone_pass: int = 0  # activations of one forward pass over a batch (images or tiles)
    process: int = 0  # the rest of the process: libraries, backbone weights, the batch's input

    @property
    def samples_per_gaussian(self) -> int:
        """Samples one image adds to each Gaussian (1 per position, k² per cell, h·w shared)."""
        return max(1, math.ceil(self.feature_positions / max(1, self.gaussians)))

    @property
    def peak(self) -> int:
        """Largest simultaneous need: the fit loop, the finalisation, or the held-out phase.

        With the downdate the statistics are freed before the held-out phase; a refit keeps them,
        the final model and a fold's sums and model at once."""
        fit_loop = self.statistics + self.batch_features + self.update_temporaries + self.embedding_cache
        if not self.calibration or self.downdate:
            return max(fit_loop, self.statistics + self.finalize + self.embedding_cache, self.calibration)
        return max(fit_loop, self.statistics + self.finalize + self.model + self.calibration + self.embedding_cache)

    @property
    def total(self) -> int:
        """The whole process's estimated peak, which ``max_memory`` bounds: the Gaussians' peak, or
        the statistics and cached embeddings while a backbone pass runs (the batch's features
        and update temporaries come after the pass), plus the rest of the process."""
        return self.process + max(self.peak, self.statistics + self.embedding_cache + self.backbone_pass)

    @property
    def file_bytes(self) -> int:
        """Size of the saved model: per Gaussian the packed float16 whitener (d(d+1)/2 values), the
        float32 mean and one scale; the rest of the file is a few kilobytes."""
        return self.gaussians * (self.d * (self.d + 1) + 4 * self.d + 4)

    def as_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items()}
        out["peak"] = self.peak
        out["total"] = self.total
        return out

    def describe(self) -> str:
        return (f"memory plan: {self.gaussians} Gaussians × d={self.d}: statistics {fmt_bytes(self.statistics)}, "
                f"model {fmt_bytes(self.model)}, batch features {fmt_bytes(self.batch_features)} "
                f"(+ {fmt_bytes(self.update_temporaries)} update temporaries), "
                f"calibration {fmt_bytes(self.calibration)} ({'downdate' if self.downdate else 'refit'}, "
                f"{fmt_bytes(self.embedding_cache)} cached embeddings); estimated peak {fmt_bytes(self.peak)}, "
                f"{fmt_bytes(self.total)} for the whole fit (a backbone pass {fmt_bytes(self.backbone_pass)}, "
                f"the rest of the process {fmt_bytes(self.process)})")


def fmt_bytes(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


def held_out_images(n_images: int, image_bytes: int, cache_bytes: int = FIT_CACHE_MAX_BYTES) -> int:
    """How many training images calibration holds out (scores under Gaussians fitted without them).

    All of them while their float16 embeddings (``image_bytes`` each) fit ``cache_bytes``; beyond,
    as many as fit, but at least :data:`HELD_OUT_MIN_IMAGES` (a seeded subset, or all when there
    are no more): the folds are dealt from that subset and removed from the model of all images,
    so calibration costs a bounded time and memory however many images are fitted. Held-out
    images that do not fit the cache are extracted again fold by fold (huge images). 160 MiB
    holds ~119 images at 256 px (d 176): plenty for the calibrator's Gumbel fit by L-moments (see
    padim.calibration), and their downdate and maps cost ~1.5 s on 2 cores, whatever the n.
    """
    fitting = int(cache_bytes // max(1, image_bytes))
    if fitting >= n_images:
        return int(n_images)
    return int(min(n_images, max(fitting, HELD_OUT_MIN_IMAGES)))


def held_out_cache_bytes(n_images: int, image_bytes: int) -> int:
    """The most the held-out embeddings may take: FIT_CACHE_MAX_BYTES, or enough for the
    HELD_OUT_MIN_IMAGES subset when more images than that are fitted (so that a larger model
    holds out that subset without a second backbone pass, where the memory budget allows)."""
    if n_images > HELD_OUT_MIN_IMAGES:
        return max(FIT_CACHE_MAX_BYTES, HELD_OUT_MIN_IMAGES * int(image_bytes))
    return FIT_CACHE_MAX_BYTES


def plan_memory(gaussians: int, d: int, feature_positions: int, batch_size: int,
                calibration_folds: int = 0, n_images: int = 0, position_chunk: int | None = None,
                backbone_pass: int = 0, process: int = 0) -> MemoryPlan:
    """Estimate the memory of fitting ``gaussians`` Gaussians of dimension ``d``.

    ``gaussians`` is the number of Gaussians (positions, cells, or 1 shared): the statistics,
    finalize temporaries and model scale with it. ``feature_positions`` is the number of feature
    vectors one image yields (equal to ``gaussians`` for one Gaussian per position, larger when
    cells pool positions): the batch features scale with it. ``n_images`` (optional) adds the
    embeddings of one held-out fold, which calibration keeps while it scores that fold.
    ``position_chunk`` is :meth:`GaussianStats.update`'s chunk over Gaussians, whose centred
    float64 copy and ``d×d`` outer products are temporaries of the fit loop. ``backbone_pass``
    and ``process`` (bytes) are carried into the plan's :attr:`MemoryPlan.total`.
    """
    square = gaussians * d * d
    triangle = gaussians * d * (d + 1) // 2
    statistics = 8 * (triangle + 2 * gaussians * d)  # Σxxᵀ packed (symmetric), Σx, shift
    # GaussianStats.finalize works through chunks of positions: a float64 covariance, its
    # Cholesky factor and the solved inverse of one chunk at a time (or of a share of one chunk
    # per worker thread), into a packed result.
    finalize = 8 * 3 * min(gaussians, finalize_chunk(d)) * d * d + 4 * triangle
    model = 4 * (square + gaussians * d) + 2 * triangle + 4 * gaussians
    batch_features = batch_size * feature_positions * d * (4 + 8)
    per_image = max(1, math.ceil(feature_positions / max(1, gaussians)))
    # GroupedUpdates gathers up to d float16 samples (≤ SUM_GROUP_BYTES) per update, or updates a larger batch as it is
    grouped = group_rows(d, 2 * d * gaussians)
    samples = max(batch_size * per_image, grouped)
    chunk = min(gaussians, position_chunk or update_chunk(d, samples))
    group = 2 * grouped * d * gaussians if grouped >= batch_size * per_image else 0
    # ... and makes the update position-major in one transposed copy (gaussian.position_major)
    transposed = 2 * samples * d * gaussians if 2 * samples * d * gaussians <= TRANSPOSE_MAX_BYTES else 0
    update_temporaries = (group + transposed + 8 * chunk * (samples * d + d * d)
                          + 4 * chunk * (d * d + d * (d + 1) // 2))
    calibration, cache, downdate = 0, 0, True
    if calibration_folds >= 2:
        # Training embeddings (float16) are kept through the fit up to held_out_cache_bytes, so the
        # folds need no second backbone pass; beyond that they are extracted again (flat memory).
        image_bytes = feature_positions * d * 2
        limit = held_out_cache_bytes(n_images, image_bytes)
        held = held_out_images(n_images, image_bytes, limit) if n_images else 0
        cache = min(held * image_bytes, limit) if n_images else FOLD_CACHE_BYTES
        fold_samples = math.ceil((held or calibration_folds) / calibration_folds) * per_image
        downdate = fold_samples <= d
        if downdate:  # unrounded packed float32 model + embeddings + a whitened chunk (and its whitener)
            calibration = 4 * triangle + max(cache, FOLD_CACHE_BYTES) + 2 * 2**25
        else:  # one fold's sums and model next to the fit's, plus that fold's embeddings
            calibration = statistics + 4 * (square + gaussians * d) + FOLD_CACHE_BYTES
    return MemoryPlan(gaussians, d, batch_size, feature_positions, statistics, finalize, model,
                      batch_features, calibration, update_temporaries, cache, downdate, backbone_pass, process)


Cell = Union[int, str]


def _cell_count(grid_h: int, grid_w: int, cell: Cell) -> int:
    if cell == "image":
        return 1
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 1:
        raise ValueError(f"cell must be an integer ≥ 1 or 'image', got {cell!r}")
    return math.ceil(grid_h / cell) * math.ceil(grid_w / cell)


def cell_coarseness(cell: Cell) -> float:
    """Positions per Gaussian's side: 1 per position, k for k×k cells, infinite for one shared."""
    return math.inf if cell == "image" else int(cell)


def _describe_cell(cell: Cell) -> str:
    if cell == "image":
        return "one shared Gaussian"
    return "one Gaussian per position" if cell == 1 else f"{cell}×{cell} cells"


def choose_granularity(grid_h: int, grid_w: int, d: int, batch_size: int, max_memory_bytes: int,
                       calibration_folds: int = 0,
                       candidates_cells: Sequence[Cell] = (1, 2, 4, 8, 16, "image"),
                       d_candidates: Sequence[int] | None = None,
                       n_images: int = 0, backbone_pass: int = 0,
                       process: int = 0) -> tuple[Cell, int, MemoryPlan]:
    """The finest Gaussian granularity whose estimated whole-fit peak (:attr:`MemoryPlan.total`)
    fits ``max_memory_bytes``.

    Cells are tried from finest (1 = per position) to coarsest (``"image"``) at dimension ``d``;
    only if none fits are the smaller dimensions of ``d_candidates`` tried, largest first, each
    again from the finest cell. Returns ``(cell, d, plan)``; raises ``MemoryError`` with a
    one-line message (what the smallest option needs, the budget, what to change) otherwise.
    """
    if max_memory_bytes is None or max_memory_bytes <= 0:
        raise ValueError(f"max_memory_bytes must be positive, got {max_memory_bytes!r}")
    if not candidates_cells:
        raise ValueError("candidates_cells is empty")
    counts = {c: _cell_count(grid_h, grid_w, c) for c in set(candidates_cells)}  # checks each cell first
    cells = sorted(counts, key=cell_coarseness)
    dims = [int(d)] + sorted({int(x) for x in (d_candidates or ()) if 1 <= int(x) < d}, reverse=True)
    positions = grid_h * grid_w
    smallest: tuple[int, Cell, int, MemoryPlan] | None = None
    for dim in dims:
        for cell in cells:
            plan = plan_memory(counts[cell], dim, positions, batch_size, calibration_folds, n_images,
                               backbone_pass=backbone_pass, process=process)
            if plan.total <= max_memory_bytes:
                return cell, dim, plan
            if smallest is None or plan.total < smallest[0]:
                smallest = (plan.total, cell, dim, plan)
    _, cell, dim, plan = smallest
    raise MemoryError(
        f"memory budget {fmt_bytes(max_memory_bytes)} is too small for a {grid_h}×{grid_w} feature grid: "
        f"the smallest option ({_describe_cell(cell)}, d={dim}, batch {batch_size}) needs about "
        f"{fmt_bytes(plan.total)} (statistics {fmt_bytes(plan.statistics)}, batch features "
        f"{fmt_bytes(plan.batch_features + plan.update_temporaries)}, a backbone pass "
        f"{fmt_bytes(plan.backbone_pass)}, the rest of the process {fmt_bytes(plan.process)}); use a smaller image scale, "
        f"a smaller batch, fewer dims (d), or a larger budget"
    )


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_MEMORY_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([KMGT]?)(I?B?)\s*$", re.IGNORECASE)


def parse_memory(text: Union[str, int, float]) -> int:
    """Bytes from ``"6G"``, ``"500M"``, ``"1.5GiB"``, ``"2e9"`` or a number.

    K/M/G/T (with or without ``i``/``B``: ``G``, ``Gi``, ``GB``, ``GiB``; any case) are binary, 2^10 … 2^40, as
    memory sizes are reported; a bare number is bytes.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a memory size: {text!r}")
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        match = _MEMORY_RE.match(str(text))
        if not match or (match.group(3)[:1].upper() == "I" and not match.group(2)):
            raise ValueError(f"not a memory size: {text!r} (expected e.g. '6G', '500M', '1.5GiB' or '2e9')")
        value, unit = float(match.group(1)), match.group(2).upper()
    size = value * _UNITS[unit]
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"memory size must be at least 1 byte and finite, got {text!r}")
    return int(size)
