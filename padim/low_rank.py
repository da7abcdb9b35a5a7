"""Gaussians fitted on fewer samples than features, scored without a d×d factorisation.

A Gaussian fitted on m < d samples has the covariance ``Σ + λI`` with ``Σ = XᵀX/(m − 1)`` of rank
below m (X: the m centred samples). By the Woodbury identity its Mahalanobis distance is

    rᵀ(Σ + λI)⁻¹r = (‖r‖² − ‖L⁻¹Xr‖²) / λ,    LLᵀ = XXᵀ + λ(m − 1)I   (an m×m Cholesky factor),

exactly the distance :meth:`padim.gaussian.GaussianStats.finalize`'s whitener gives, at a cost of
m·d per sample and Gaussian instead of d² to score and m³ instead of d³ to fit. The
auto-configuration's trial fits (at most 40 images, d up to 344) are such fits: a default Lite0
trial's d×d factorisations were most of its time.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .net import gaussians_first

CHUNK_BYTES = 64 * 2**20  # float64 temporaries per chunk of Gaussians when fitting


class LowRankGaussians:
    """``samples [m, d, G]`` (the fit's samples of each of G Gaussians, as
    :func:`padim.tiling.to_cells` lays them out; any float dtype), or a sequence of such batches
    joined here → mean and ``L⁻¹X`` per Gaussian, with ``λ = eps · mean(diag Σ)`` over all
    Gaussians as the fit's relative ε (``eps`` itself if every feature is constant). Needs 2 ≤ m;
    pays off for m < d."""

    def __init__(self, samples: torch.Tensor | Sequence[torch.Tensor], eps: float):
        parts = [samples] if isinstance(samples, torch.Tensor) else list(samples)
        m = sum(len(part) for part in parts)
        if m < 2:
            raise ValueError(f"need at least 2 samples per Gaussian, got {m}")
        _, d, gaussians = parts[0].shape
        device = parts[0].device
        means = torch.empty(gaussians, d, dtype=torch.float64, device=device)
        # [G, m, d] for the batched products, in one copy: each batch Gaussians-first (a view for a
        # channels_last embedding's, else a transposed copy), joined
        joined = [gaussians_first(part) for part in parts]
        factors = torch.cat(joined, dim=1) if len(joined) > 1 else joined[0]
        if factors.untyped_storage().data_ptr() == parts[0].untyped_storage().data_ptr():
            factors = factors.clone(memory_format=torch.contiguous_format)  # centred in place below: never the caller's
        chunk = max(1, CHUNK_BYTES // (8 * m * d * 2))
        variance_sum = 0.0
        for start in range(0, gaussians, chunk):  # the means, and the centred samples in place
            x = factors[start:start + chunk].to(torch.float64)  # [g, m, d]
            means[start:start + chunk] = x.mean(dim=1)
            x -= means[start:start + chunk, None, :]
            variance_sum += float(x.square().sum()) / (m - 1)
            factors[start:start + chunk] = x
        lam = float(eps) * variance_sum / (gaussians * d)
        if lam <= 0 and eps > 0:
            lam = float(eps)
        eye = torch.eye(m, dtype=torch.float64, device=device)
        for start in range(0, gaussians, chunk):  # then L⁻¹X in their place
            x = factors[start:start + chunk].to(torch.float64)
            lower = torch.linalg.cholesky(torch.bmm(x, x.transpose(1, 2)) + lam * (m - 1) * eye)
            # L⁻¹ (m×m), then one product: cheaper than solving for all d columns of X
            inverse = torch.linalg.solve_triangular(lower, eye.expand_as(lower), upper=False)
            factors[start:start + chunk] = torch.bmm(inverse, x)
        self.mean = means.to(torch.float32)
        self.factors = factors  # [G, m, d]: L⁻¹X
        self.reg = lam

    def distances(self, samples: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distances ``[S, G]`` of ``samples [S, d, G]``."""
        r = gaussians_first(samples) - self.mean[:, None, :]  # [G, S, d]
        projected = torch.bmm(r, self.factors.transpose(1, 2))  # [G, S, m]
        # ‖r‖² by a float32 norm (a vectorised reduction, the same rounding as r itself), the
        # difference in float64: for a sample near the fit's span it is a small one of two large
        squared = (torch.linalg.vector_norm(r, dim=2).to(torch.float64).square()
                   - projected.square().sum(dim=2, dtype=torch.float64)) / self.reg
        return squared.clamp_min(0).sqrt().to(torch.float32).T
