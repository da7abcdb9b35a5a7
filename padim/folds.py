"""Held-out (k-fold) scores of the good training images, which calibrate probabilities and the threshold.

Every training image is scored by Gaussians fitted without its fold. Refactorising each
position's covariance per fold costs k more fits; instead, a fold's distances follow from the full
model by an exact rank-m downdate (m: the fold's samples per Gaussian), in a fraction of the time.

Per position, with n samples, scatter S about the mean μ and regulariser λ, the full model is
``Σ = (S + (n − 1)λI)/(n − 1)``. Removing the fold changes S by a rank-m term but not the ridge
``(n − 1)λI``, so the fold model is taken as

    Σ_F = (S_F + (n − 1)λI)/(n − 1)   — the final model's λ; the fold's scatter over n − 1,

(``NORMALISE_BY_FOLD = False``, the default) or, with ``NORMALISE_BY_FOLD = True``, as the
unbiased ``(S_F + (n − 1)λI)/(n_F − 1)``, whose regulariser is ``λ(n − 1)/(n_F − 1)``. Both
are exact downdates of the full factor; a refit with ``λ_F = eps·mean variance of the rest``
(padim before format 2) is not, as its ridge does not scale with the scatter. The default keeps the
final model's λ, which the distances of held-out images mostly depend on (they lie in directions
of little training variance, d > n); benchmarks/RESULTS.md compares the three.

With ``R`` the fold's residuals about μ and ``Z = L⁻¹R`` (whitened by the full model),
``G = ZᵀZ``, ``S_F = S − R(I + 11ᵀ/n_F)Rᵀ`` and ``x_j − μ_F = R c_j`` with ``c_j = e_j + 1/n_F``,
Woodbury gives

    d²_F(x_j) = c_jᵀ G c_j + c_jᵀ G K⁻¹ G c_j,  K = (n − 1)(I − 11ᵀ/n) − G   (× (n_F − 1)/(n − 1) unbiased),

an m×m solve per position. The fallback when a fold has more samples per Gaussian than the
feature dimension (e.g. coarse cells) is a refit of the same fold model from subtracted sums.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from .gaussian import GaussianModel, GaussianStats, cholesky_thread_limit

DOWNDATE_CHUNK_BYTES = 2**25  # float32 whitened fold residuals of one chunk of positions
NORMALISE_BY_FOLD = False  # fold scatter over n_F − 1 (λ grows) instead of n − 1 (λ kept); see above


def fold_members(n_images: int, folds: int, seed: int) -> list[np.ndarray]:
    """Sorted image indices of each fold: a seeded permutation dealt out every ``folds``-th."""
    order = np.random.default_rng(seed).permutation(n_images)
    return [np.sort(order[fold::folds]) for fold in range(folds)]


def fold_regulariser(reg: float, count: int, fold_count: int) -> float:
    """``λ_F = λ(n − 1)/(n_F − 1)``: the full model's ridge ``(n − 1)λ I`` on the fold's scatter.

    ``count`` is the full fit's samples per Gaussian, ``fold_count`` those removed.
    """
    kept = count - fold_count
    if kept < 2:
        raise ValueError(f"a fold of {fold_count} samples leaves {kept} of {count}; need at least 2")
    return reg * (count - 1) / (kept - 1)


def fold_distance_scale(count: int, fold_count: int) -> float:
    """Factor from the unbiased fold model's ``d²`` (regulariser :func:`fold_regulariser`) to the
    chosen one's: ``(n − 1)/(n_F − 1)`` when the fold's scatter is normalised by ``n − 1``, else 1."""
    return 1.0 if NORMALISE_BY_FOLD else (count - 1) / (count - fold_count - 1)


def uses_downdate(fold_count: int, dim: int) -> bool:
    """The downdate's m×m solves beat a d×d refactorisation while m ≤ d."""
    return fold_count <= dim


def held_out_distances(model: GaussianModel, samples: torch.Tensor, count: int | None = None,
                       position_chunk: int | None = None) -> torch.Tensor:
    """Distances ``[m, G]`` of one fold's samples ``[m, d, G]`` under the Gaussians without them.

    ``model`` is the full fit (of ``count`` samples per Gaussian, by default ``model.count``)
    and its regulariser; the fold model is the module docstring's ``Σ_F``. Exact up to rounding.
    """
    everything = [np.arange(samples.shape[0])]
    return fold_distances(model, samples, everything, count, position_chunk)


def fold_distances(model: GaussianModel, samples: torch.Tensor, folds: list[np.ndarray],
                   count: int | None = None, position_chunk: int | None = None,
                   progress: Callable | None = None) -> torch.Tensor:
    """Distances ``[S, G]`` of samples ``[S, d, G]``, each under the Gaussians without its fold.

    ``folds`` are disjoint index arrays into the samples. Positions are the outer loop, so each
    chunk of the whitener is read once for all folds, and all samples are whitened in one product.
    """
    count = int(count or model.count)
    n, d, positions = samples.shape
    if (d, positions) != (model.dim, model.num_positions):
        raise ValueError(f"samples must have shape [S, {model.dim}, {model.num_positions}], got {tuple(samples.shape)}")
    device = model.mean.device
    algebra = []
    for members in folds:
        m = len(members)
        kept = count - m
        if kept < 2:
            raise ValueError(f"a fold of {m} samples leaves {kept} of {count}; need at least 2")
        ones = torch.ones(m, m, dtype=torch.float64, device=device)
        eye = torch.eye(m, dtype=torch.float64, device=device)
        index = torch.as_tensor(np.asarray(members), dtype=torch.long, device=device)
        # columns c_j = e_j + 1/n_F; (n − 1)W⁻¹ = (n − 1)(I − 11ᵀ/n); the factor back to Σ_F's scale
        unbiased = (kept - 1) / (count - 1)
        algebra.append((index, eye + ones / kept, (count - 1) * (eye - ones / count),
                        unbiased * fold_distance_scale(count, m)))
    x = samples.to(device)  # any float dtype (e.g. the float16 cache); upcast chunk by chunk
    out = torch.empty(n, positions, dtype=torch.float32, device=device)
    chunk = position_chunk or max(1, DOWNDATE_CHUNK_BYTES // (4 * n * d))
    starts = range(0, positions, chunk)
    # one block each for the unpacked whitener, the centred and the whitened samples, reused by
    # every chunk: fresh ones cost fresh pages from the kernel each time (RESULTS.md §40)
    block = model.row_buffer(chunk)  # None when the model's dense whitener exists (views, no unpacking)
    centred_block = torch.empty(min(chunk, positions), n, d, dtype=torch.float32, device=device)
    whitened_block = torch.empty_like(centred_block)
    for start in (progress(starts, len(starts), "held-out folds") if progress else starts):
        stop = min(start + chunk, positions)
        # [p, S, d], contiguous: a batched product of strided rows runs ~20× slower on two threads
        centred, whitened = centred_block[:stop - start], whitened_block[:stop - start]
        centred.copy_(x[:, :, start:stop].permute(2, 0, 1)).sub_(model.mean[start:stop, None, :])
        torch.bmm(centred, model.whitener_rows(start, stop, block).transpose(1, 2), out=whitened)  # Z rows, as in scoring
        with cholesky_thread_limit(x.device):  # batched Cholesky: see padim.gaussian.cholesky_threads
            _fold_chunk(whitened, algebra, out, start, stop)
    return out


def _fold_chunk(whitened: torch.Tensor, algebra, out: torch.Tensor, start: int, stop: int) -> None:
    """Each fold's downdated distances for one chunk of positions (see :func:`fold_distances`)."""
    for index, combos, base, factor_scale in algebra:
        z = whitened[:, index]
        gram = torch.bmm(z, z.transpose(1, 2)).to(torch.float64)  # [p, m, m]
        gc = gram @ combos  # G c_j in column j
        direct = (combos * gc).sum(dim=1)  # c_jᵀ G c_j
        factor, info = torch.linalg.cholesky_ex(base - gram)
        if bool((info > 0).any()):
            raise ValueError(f"held-out downdate is not positive definite at {int((info > 0).sum())} positions")
        correction = (gc * torch.cholesky_solve(gc, factor)).sum(dim=1)  # c_jᵀ G K⁻¹ G c_j
        squared = (direct + correction) * factor_scale
        out[index, start:stop] = squared.clamp_min(0).sqrt().T.to(torch.float32)


def refit_distances(stats: GaussianStats, fold_stats: GaussianStats, samples: torch.Tensor,
                    reg: float) -> torch.Tensor:
    """Distances ``[m, G]`` of a fold's samples under Gaussians refactorised without the fold,
    the same fold model as :func:`held_out_distances`. ``stats`` is restored afterwards."""
    lam = fold_regulariser(reg, stats.count, fold_stats.count)
    scale = fold_distance_scale(stats.count, fold_stats.count) ** 0.5
    stats.subtract_(fold_stats)
    try:
        model = stats.finalize(reg=lam, storage=None)
    finally:
        stats.merge_(fold_stats)
    return model.mahalanobis(samples) * scale


def held_out_scores(
    n_images: int,
    folds: int,
    seed: int,
    embeddings: Callable[[np.ndarray], Iterable[tuple[list[int], torch.Tensor]]],
    to_samples: Callable[[torch.Tensor], torch.Tensor],
    to_maps: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    model: GaussianModel,
    stats: GaussianStats | None = None,
    progress: Callable = lambda it, total, desc: it,
    all_at_once: bool = False,
    fold_cache_bytes: int = 0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Max and mean of each image's held-out anomaly map, and the median map value over all of
    them (the maxima are the scores that calibrate; the means set the whole-image rule,
    padim.whole_image; the median is the heatmaps' floor).

    ``embeddings(members)`` yields ``(local indices, embedding [b, d, h, w])`` for a fold's images;
    ``to_samples`` turns an embedding into ``[S, d, G]`` samples; ``to_maps(distances [S, G],
    embedding)`` gives the maps ``[b, H, W]``. ``model`` is the full fit. With ``stats`` (the
    fit's sums, restored afterwards) every fold is refactorised instead: the choice when a fold
    has more samples per Gaussian than dimensions (:func:`uses_downdate`), and the reference.
    ``all_at_once``: ``embeddings`` can give every image at once (cached), in order; then all
    samples are whitened in one pass over the whitener instead of one pass per fold.
    ``fold_cache_bytes``: how much of a refitted fold's embeddings may be kept between its two uses.
    """
    scores = np.full(n_images, np.nan)
    means = np.full(n_images, np.nan)
    medians = []

    def record(members, local, distances, embedding):
        maps = to_maps(distances, embedding).flatten(1)
        where = members[np.asarray(local, dtype=int)]
        scores[where] = maps.amax(dim=1).cpu().numpy()
        means[where] = maps.mean(dim=1).cpu().numpy()
        medians.append(maps.median(dim=1).values.cpu().numpy())

    members_of = fold_members(n_images, folds, seed)
    if stats is None and all_at_once:  # every image at hand: whiten all once, downdate each fold
        parts = list(embeddings(np.arange(n_images)))
        embedding = parts[0][1] if len(parts) == 1 else torch.cat([emb for _, emb in parts])  # kept as given
        if [i for indices, _ in parts for i in indices] != list(range(n_images)):
            raise ValueError("embeddings(all images) must yield them in order")
        del parts
        samples = to_samples(embedding)
        per_image = samples.shape[0] // n_images  # samples are image-major (see padim.tiling.to_cells)
        rows = [(members[:, None] * per_image + np.arange(per_image)).ravel() for members in members_of]
        distances = fold_distances(model, samples, rows, progress=progress)
        del samples
        for members, fold_rows in zip(members_of, rows):
            record(members, np.arange(len(members)), distances[torch.as_tensor(fold_rows)],
                   embedding[torch.as_tensor(members)])
        return scores, means, float(np.median(np.concatenate(medians)))
    for members in progress(members_of, folds, "held-out folds"):
        parts = list(embeddings(members)) if stats is None else None
        if parts is not None:  # the downdate needs the whole fold at once (≤ d samples per Gaussian)
            embedding = torch.cat([emb for _, emb in parts])  # as given (padim: float16), upcast per chunk
            local = [i for indices, _ in parts for i in indices]
            del parts
            record(members, local, held_out_distances(model, to_samples(embedding)), embedding)
            continue
        # Refit: the fold's sums, its model, then its distances; the fold's embeddings are kept
        # (as given: float16 from padim) while they fit ``fold_cache_bytes``, else extracted again.
        fold_stats = stats.empty_like()
        kept, kept_bytes = [], 0
        for local, emb in embeddings(members):
            fold_stats.update(to_samples(emb.float()))
            kept_bytes += emb.numel() * emb.element_size()
            kept = kept + [(local, emb)] if kept is not None and kept_bytes <= fold_cache_bytes else None
        lam = fold_regulariser(model.reg, stats.count, fold_stats.count)
        scale = fold_distance_scale(stats.count, fold_stats.count) ** 0.5
        stats.subtract_(fold_stats)  # in place, so the fold costs no second copy of the sums
        try:
            fold_model = stats.finalize(reg=lam, storage=None)
        finally:
            stats.merge_(fold_stats)
        del fold_stats
        for local, emb in (kept if kept is not None else embeddings(members)):
            emb = emb.float()
            record(members, local, fold_model.mahalanobis(to_samples(emb)) * scale, emb)
        del fold_model, kept
    return scores, means, float(np.median(np.concatenate(medians)))
