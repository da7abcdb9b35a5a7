"""Per-position Gaussian statistics: streaming, mergeable sums and batched Mahalanobis distance.

Features arrive as ``[B, d, P]`` tensors (batch, channels, positions). The fit keeps only the
sums ``n``, ``Σx`` and ``Σxxᵀ`` per position in float64, so its memory does not depend on the
number of training images and shards fitted apart can simply be added. Each batch's products are
taken in float32 (twice the speed of float64) on data shifted by the first batch's mean, and
accumulated into the float64 sums.

The fitted whitener ``L⁻¹`` is stored as its packed lower triangle in float16, scaled per
position by a power of two (:func:`round_packed`); the fitted object scores with exactly those
rounded values, so a saved and reloaded model scores bit-identically.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch


FINALIZE_CHUNK_BYTES = 2**25  # float64 covariance of one chunk of positions
UPDATE_CHUNK_BYTES = 2**27  # float64 temporaries of one chunk of positions while accumulating
STORAGE_DTYPE = torch.float16  # whitener entries as stored (and scored, after a float32 upcast)
FACTOR_DTYPE = torch.float32  # Cholesky and inverse of the float64 covariance (see GaussianStats._inverse_factor)


def finalize_chunk(dim: int) -> int:
    """Positions per chunk when finalising: a covariance chunk of about 32 MiB."""
    return max(1, FINALIZE_CHUNK_BYTES // (8 * dim * dim))


def update_chunk(dim: int, batch: int) -> int:
    """Positions per chunk when accumulating: temporaries of about 128 MiB."""
    return max(1, UPDATE_CHUNK_BYTES // (8 * dim * (dim + batch)))


def cholesky_threads(threads: int, cores: int | None, load: float | None) -> int:
    """Threads for the batched CPU Cholesky/inverse of :meth:`GaussianStats.finalize`.

    Batched CPU Cholesky runs up to 100× slower when its OpenMP threads spin on cores another
    process holds (measured on a busy 2-core machine); one thread costs at most 2× on an idle
    one. So: one thread on machines of ≤ 2 cores (where any other process makes them busy), and
    when the other processes' load (the 1-minute load average less this process's ``threads``)
    leaves fewer than ``threads + 1`` cores free (one spare core for the rest of the system);
    otherwise all ``threads``. ``cores``/``load`` unknown (None): treated as small and busy.
    """
    if threads <= 1 or cores is None or cores <= 2 or load is None:
        return 1
    others = max(0.0, load - threads)  # the load average counts this process's running threads too
    return threads if cores - others >= threads + 1 else 1


def _machine_load() -> tuple[int | None, float | None]:
    try:
        return os.cpu_count(), os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return os.cpu_count(), None


def finalize_workers(device: torch.device) -> int:
    """Python threads that factorise chunks of positions side by side in :meth:`GaussianStats.finalize`.

    Where :func:`cholesky_threads` holds the batched Cholesky to one OpenMP thread (small or busy
    machines), chunks still run on every thread PyTorch was given, each in its own Python thread
    with one OpenMP thread: the ops release the GIL, and a thread that waits for a core sleeps
    instead of spinning, so a busy machine slows down no more than its load says."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads <= 1 or cholesky_threads(threads, *_machine_load()) > 1:
        return 1
    return threads


@contextmanager
def cholesky_thread_limit(device: torch.device):
    """Run the block with :func:`cholesky_threads` CPU threads, then restore the setting."""
    previous = torch.get_num_threads()
    wanted = cholesky_threads(previous, *_machine_load())
    if device.type != "cpu" or wanted == previous:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


TRANSPOSE_MAX_BYTES = 2**28  # updates up to this size are made position-major in one transpose


def position_major(x: torch.Tensor) -> torch.Tensor | None:
    """Samples ``[B, d, P]`` → a ``[P, d, B]`` view of a position-major copy, or None if ``x``
    is not contiguous or larger than TRANSPOSE_MAX_BYTES.

    One 2-D transpose of the contiguous ``[B·d, P]`` rows (cache-blocked in PyTorch) leaves each
    position's ``B × d`` samples contiguous, so the per-chunk swap to ``[p, d, B]`` is cheap. The
    3-D permute copy of each chunk it replaces ran 3× slower (benchmarks/RESULTS.md §18)."""
    if not x.is_contiguous() or x.numel() * x.element_size() > TRANSPOSE_MAX_BYTES:
        return None
    batch, dim, positions = x.shape
    return x.view(batch * dim, positions).t().contiguous().view(positions, batch, dim).transpose(1, 2)


class GaussianStats:
    """Running count, sum and sum of outer products of feature vectors, one set per position.

    ``update`` folds in a batch; ``merge`` (or ``+``) adds statistics gathered elsewhere, e.g. on
    another shard of the training set; ``finalize`` turns the sums into a :class:`GaussianModel`.
    Sums are taken about a fixed ``shift`` (the first batch's mean) so that float64 accumulation
    does not lose the covariance to cancellation when features have a large mean.
    """

    def __init__(self, num_positions: int, dim: int, device: str | torch.device = "cpu"):
        self.num_positions = int(num_positions)
        self.dim = int(dim)
        self.device = torch.device(device)
        self.count = 0
        self.shift: torch.Tensor | None = None  # [P, d] float64
        self.sum = torch.zeros(num_positions, dim, dtype=torch.float64, device=self.device)
        # Σxxᵀ is symmetric: only its lower triangle is kept, packed row by row (half the memory).
        self.sum_outer = torch.zeros(num_positions, dim * (dim + 1) // 2, dtype=torch.float64, device=self.device)
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, features: torch.Tensor, position_chunk: int | None = None) -> "GaussianStats":
        """Add a batch of features ``[B, d, P]`` (any float dtype, any device)."""
        if features.ndim != 3 or features.shape[1] != self.dim or features.shape[2] != self.num_positions:
            raise ValueError(
                f"features must have shape [B, {self.dim}, {self.num_positions}], got {tuple(features.shape)}"
            )
        x = features.to(self.device)  # [B, d, P], still in the caller's dtype and memory layout
        batch = x.shape[0]
        if self.shift is None:
            shift = x.mean(dim=0, dtype=torch.float64).T.contiguous()  # [P, d]
            # float32-representable unless the data is float64: then x − shift in float32 is the
            # correctly rounded exact difference, as a float64 subtraction rounded to float32 gives
            self.shift = shift if x.dtype == torch.float64 else shift.to(torch.float32).to(torch.float64)
        shift32 = self._float32_shift() if x.dtype != torch.float64 else None
        position_chunk = position_chunk or update_chunk(self.dim, batch)
        by_position = position_major(x)  # [P, d, B]
        for start in range(0, self.num_positions, position_chunk):
            stop = min(start + position_chunk, self.num_positions)
            # Centred samples as [p, d, B], contiguous: the batched product A·Aᵀ in this layout runs
            # several times faster than AᵀA of [p, B, d]. Float32 products into float64 sums.
            centred = torch.empty(stop - start, self.dim, batch, dtype=torch.float32, device=self.device)
            block = x[:, :, start:stop].permute(2, 1, 0) if by_position is None else by_position[start:stop]
            if shift32 is not None:
                centred.copy_(block).sub_(shift32[start:stop, :, None])
                self.sum[start:stop] += centred.sum(dim=2)  # float32 sum of ≤ d samples, into float64
            else:  # float64 data, or a shift from merged statistics: subtract in float64 (a huge mean cancels)
                wide = block.to(torch.float64) - self.shift[start:stop, :, None]
                self.sum[start:stop] += wide.sum(dim=2)
                centred.copy_(wide)
                del wide
            square, packed, wide_packed = self._product_buffers(position_chunk, stop - start)
            torch.bmm(centred, centred.transpose(1, 2), out=square)
            del centred
            torch.index_select(square.view(square.shape[0], -1), 1, self._flat_lower(), out=packed)
            self.sum_outer[start:stop] += wide_packed.copy_(packed)  # a mixed-dtype add_ runs 2.5× slower
        self.count += features.shape[0]
        return self

    def _float32_shift(self) -> torch.Tensor | None:
        """The shift in float32 when that is exact (as :meth:`update` makes it), else None."""
        cached = getattr(self, "_shift32", None)
        if cached is not None and cached[0] is self.shift:
            return cached[1]
        narrow = self.shift.to(torch.float32)
        value = narrow if torch.equal(narrow.to(torch.float64), self.shift) else None
        self._shift32 = (self.shift, value)
        return value

    def _flat_lower(self) -> torch.Tensor:
        """Indices of the packed lower triangle in a flattened d×d matrix."""
        rows, cols = torch.tril_indices(self.dim, self.dim, device=self.device)
        return rows * self.dim + cols

    def _product_buffers(self, chunk: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reused outputs of a chunk's products: the float32 square and packed triangle, and the
        triangle widened to float64 (fresh large tensors cost page faults each time)."""
        if self._buffers is None or self._buffers[0].shape[0] < chunk:
            d = self.dim
            self._buffers = (torch.empty(chunk, d, d, dtype=torch.float32, device=self.device),
                             torch.empty(chunk, d * (d + 1) // 2, dtype=torch.float32, device=self.device),
                             torch.empty(chunk, d * (d + 1) // 2, dtype=torch.float64, device=self.device))
        return tuple(buffer[:size] for buffer in self._buffers)

    def release_buffers(self) -> None:
        self._buffers = None

    def empty_like(self) -> "GaussianStats":
        """Empty statistics with the same shape and shift, so combining them needs no re-centring."""
        empty = GaussianStats(self.num_positions, self.dim, self.device)
        empty.shift = self.shift
        return empty

    def reshift_(self, shift: torch.Tensor) -> "GaussianStats":
        """Re-express the sums about ``shift`` ``[P, d]`` (float64), in place: x − a = (x − b) + (b − a).

        Ranks of a distributed fit agree on one shift this way, so their sums add exactly."""
        shift = shift.to(self.device, torch.float64)
        if self.count and self.shift is not None and not torch.equal(shift, self.shift):
            delta = self.shift - shift  # [P, d]
            rows, cols = torch.tril_indices(self.dim, self.dim, device=self.device)
            self.sum_outer += (self.sum[:, rows] * delta[:, cols] + delta[:, rows] * self.sum[:, cols]
                               + self.count * delta[:, rows] * delta[:, cols])
            self.sum += self.count * delta
        self.shift = shift
        return self

    def merge(self, other: "GaussianStats") -> "GaussianStats":
        """Statistics of both sets of samples together (e.g. shards fitted apart)."""
        return self._combine(other, +1)

    def subtract(self, other: "GaussianStats") -> "GaussianStats":
        """Statistics of these samples without ``other``'s, which must be a subset of them."""
        if other.count >= self.count:
            raise ValueError(f"cannot remove {other.count} samples from {self.count}")
        return self._combine(other, -1)

    def merge_(self, other: "GaussianStats") -> "GaussianStats":
        """In-place :meth:`merge`: no second copy of the sums is allocated."""
        return self._combine(other, +1, inplace=True)

    def subtract_(self, other: "GaussianStats") -> "GaussianStats":
        """In-place :meth:`subtract`; ``merge_(other)`` afterwards restores the statistics."""
        if other.count >= self.count:
            raise ValueError(f"cannot remove {other.count} samples from {self.count}")
        return self._combine(other, -1, inplace=True)

    def _combine(self, other: "GaussianStats", sign: int, inplace: bool = False) -> "GaussianStats":
        if (other.num_positions, other.dim) != (self.num_positions, self.dim):
            raise ValueError(
                f"cannot combine statistics of shape ({other.num_positions}, {other.dim}) "
                f"with ({self.num_positions}, {self.dim})"
            )
        if other.count == 0 and inplace:
            return self
        result = GaussianStats(self.num_positions, self.dim, self.device)
        if other.count == 0:
            result.count, result.shift = self.count, self.shift
            result.sum, result.sum_outer = self.sum.clone(), self.sum_outer.clone()
            return result
        if self.count == 0:
            if sign < 0:
                raise ValueError("cannot subtract from empty statistics")
            merged = other._combine(self, +1)
            if not inplace:
                return merged
            self.count, self.shift, self.sum, self.sum_outer = merged.count, merged.shift, merged.sum, merged.sum_outer
            return self
        o_sum = other.sum.to(self.device)
        o_outer = other.sum_outer.to(self.device)
        if other.shift is not self.shift and not torch.equal(other.shift.to(self.device), self.shift):
            # Re-express the other's sums about our shift: x − a = (x − b) + (b − a).
            delta = other.shift.to(self.device) - self.shift  # [P, d]
            rows, cols = torch.tril_indices(self.dim, self.dim, device=self.device)
            o_outer = (o_outer
                       + o_sum[:, rows] * delta[:, cols]
                       + delta[:, rows] * o_sum[:, cols]
                       + other.count * delta[:, rows] * delta[:, cols])
            o_sum = o_sum + other.count * delta
        shifted_sum, shifted_outer = o_sum, o_outer
        if inplace:
            self.count += sign * other.count
            self.sum.add_(shifted_sum, alpha=sign)
            self.sum_outer.add_(shifted_outer, alpha=sign)
            return self
        result.count = self.count + sign * other.count
        result.shift = self.shift.clone()
        result.sum = self.sum + sign * shifted_sum
        result.sum_outer = self.sum_outer + sign * shifted_outer
        return result

    __add__ = merge

    def mean(self) -> torch.Tensor:
        """Per-position mean ``[P, d]`` in float64."""
        self._require_samples(1)
        return self.shift + self.sum / self.count

    def covariance(self) -> torch.Tensor:
        """Per-position unbiased covariance ``[P, d, d]`` in float64 (as ``np.cov``)."""
        self._require_samples(2)
        centred_mean = self.sum / self.count
        cov = torch.baddbmm(self._unpacked(0, self.num_positions), centred_mean[:, :, None], centred_mean[:, None, :],
                            alpha=-self.count)
        return cov.div_(self.count - 1)

    def _unpacked(self, start: int, stop: int, lower_only: bool = False) -> torch.Tensor:
        """Full symmetric Σxxᵀ ``[stop − start, d, d]`` (float64) of positions ``start:stop``;
        ``lower_only``: the lower triangle, zeros above it."""
        rows, cols = torch.tril_indices(self.dim, self.dim, device=self.device)
        packed = self.sum_outer[start:stop]
        make = torch.zeros if lower_only else torch.empty
        full = make(packed.shape[0], self.dim * self.dim, dtype=torch.float64, device=self.device)
        full.index_copy_(1, rows * self.dim + cols, packed)
        if not lower_only:
            full.index_copy_(1, cols * self.dim + rows, packed)
        return full.view(-1, self.dim, self.dim)

    def _diagonal(self) -> torch.Tensor:
        """Diagonal of Σxxᵀ ``[P, d]``: packed entry i(i+1)/2 + i of each row."""
        i = torch.arange(self.dim, device=self.device)
        return self.sum_outer[:, i * (i + 1) // 2 + i]

    def regulariser(self, eps: float = 0.01, relative_eps: bool = True) -> float:
        """``λ = eps · mean(diag Σ)`` over all positions (``relative_eps``), else ``λ = eps``."""
        self._require_samples(2)
        centred_mean = self.sum / self.count
        variances = (self._diagonal() - self.count * centred_mean**2) / (self.count - 1)
        lam = float(eps) * (float(variances.mean()) if relative_eps else 1.0)
        if lam <= 0 and eps > 0:
            lam = float(eps)  # all-constant features: fall back to the absolute value
        return lam

    def finalize(self, eps: float = 0.01, relative_eps: bool = True, reg: float | None = None,
                 storage: torch.dtype | None = STORAGE_DTYPE, progress=None) -> "GaussianModel":
        """Mean and Cholesky-whitening matrix of ``Σ + λI`` for every position.

        With ``relative_eps`` the regulariser is ``λ = eps · mean(diag Σ)`` (averaged over all
        positions), so one ``eps`` suits backbones whose features have very different scales;
        otherwise ``λ = eps`` as in the paper; ``reg`` gives ``λ`` directly. ``storage`` is the
        precision the whitener is rounded to (see :func:`round_packed`; ``None`` keeps float32).
        ``progress(iterable, total)`` may wrap the loop over chunks (a progress bar).
        Works through positions in chunks so that its float64 temporaries stay small next to the
        statistics themselves; the rounded whitener is kept packed until it is first used, so the
        full float32 matrix need not exist next to the statistics.
        """
        self._require_samples(2)
        self.release_buffers()
        lam = self.regulariser(eps, relative_eps) if reg is None else float(reg)
        centred_mean = self.sum / self.count
        d = self.dim
        lower = self._flat_lower()
        packed = torch.empty(self.num_positions, lower.numel(), dtype=storage or torch.float32, device=self.device)
        scale = torch.ones(self.num_positions, dtype=torch.float32, device=self.device)
        eye = torch.eye(d, dtype=torch.float64, device=self.device)
        # with several worker threads each takes a share of one chunk's size: the temporaries
        # (and so the peak memory) stay those of one thread
        workers = finalize_workers(self.device)
        chunk = max(1, finalize_chunk(d) // workers)
        starts = range(0, self.num_positions, chunk)

        def whiten(start: int) -> None:
            stop = min(start + chunk, self.num_positions)
            inverse = self._inverse_factor(centred_mean, start, stop, lam, eps, eye)
            if storage is None:
                packed[start:stop] = inverse.flatten(1).index_select(1, lower)
            else:
                packed[start:stop], scale[start:stop] = round_packed(inverse.flatten(1).index_select(1, lower), storage)

        workers = min(workers, len(starts))
        with cholesky_thread_limit(self.device), ThreadPoolExecutor(workers) as pool:
            done = pool.map(whiten, starts) if workers > 1 else map(whiten, starts)
            for _ in (progress(done, len(starts)) if progress else done):
                pass
        return GaussianModel(mean=self.mean().to(torch.float32).contiguous(), reg=lam, packed=packed,
                             scale=None if storage is None else scale, count=self.count)

    def _inverse_factor(self, centred_mean, start, stop, lam, eps, eye) -> torch.Tensor:
        """``L⁻¹`` with ``LLᵀ = Σ + λI`` for positions ``start:stop``.

        The covariance is formed in float64 (``Σxxᵀ/n − μμᵀ`` cancels), then factorised and
        inverted in ``FACTOR_DTYPE`` (float32: 4× faster than float64 on the CPU; λI bounds the
        condition number, so the factor keeps ~1e-6 relative accuracy, far below the float16
        storage rounding). A chunk that float32 cannot factorise is redone in float64.
        """
        m = centred_mean[start:stop]
        # Cholesky reads only the lower triangle (LAPACK's uplo="L"): the upper one is left at zero
        cov = self._unpacked(start, stop, lower_only=True).baddbmm_(m[:, :, None], m[:, None, :], alpha=-self.count)
        cov.div_(self.count - 1).diagonal(dim1=1, dim2=2).add_(lam)
        chol, info = torch.linalg.cholesky_ex(cov.to(FACTOR_DTYPE))
        if FACTOR_DTYPE != torch.float64 and bool((info > 0).any()):
            chol, info = torch.linalg.cholesky_ex(cov)
        del cov
        if bool((info > 0).any()):
            raise ValueError(
                f"covariance is not positive definite at {int((info > 0).sum())} positions; "
                f"increase eps (now {eps})"
            )
        return torch.linalg.solve_triangular(chol, eye.to(chol.dtype).expand_as(chol), upper=False)

    def _require_samples(self, k: int) -> None:
        if self.count < k:
            raise ValueError(f"need at least {k} training samples per position, have {self.count}")


SUM_GROUP_BYTES = 2**27  # samples gathered before one GaussianStats.update (float16: ~90 images at 256 px)


def group_rows(dim: int, row_bytes: int, group_bytes: int = SUM_GROUP_BYTES) -> int:
    """Samples per grouped update: ``dim`` (beyond, the products' work dominates), at most ``group_bytes``."""
    return max(1, min(int(dim), int(group_bytes) // max(1, int(row_bytes))))


class GroupedUpdates:
    """Feeds :meth:`GaussianStats.update` groups of samples rather than every batch.

    An update's cost is mostly writing each position's d×d product and adding it into the float64
    sums, whatever the number of samples S, until the products' S·d² work takes over at S ≈ d;
    gathering up to d samples (at most ``group_bytes``: ~90 images at 256 px) per update instead
    of one batch of 16 makes the sums several times cheaper for the same result. Samples are held in the dtype
    given (the fit hands float16 embeddings whose values are exactly those of its features) in
    one preallocated block of ``group_bytes``; call :meth:`flush` after the last batch.
    """

    def __init__(self, stats: GaussianStats, group_bytes: int = SUM_GROUP_BYTES):
        self.stats = stats
        self.group_bytes = int(group_bytes)
        self.block: torch.Tensor | None = None
        self.filled = 0

    def add(self, samples: torch.Tensor) -> None:
        """Queue samples ``[S, d, P]``; the sums are updated when the block is full."""
        capacity = group_rows(self.stats.dim, samples[0].numel() * samples.element_size(), self.group_bytes)
        if self.block is not None and (samples.dtype != self.block.dtype or self.filled + len(samples) > len(self.block)):
            self.flush()
        if len(samples) > capacity or (self.block is not None and samples.dtype != self.block.dtype):
            self.stats.update(samples)  # larger than a group, or of another dtype: as it is
            return
        if self.block is None:
            self.block = torch.empty((capacity, *samples.shape[1:]), dtype=samples.dtype, device=samples.device)
        self.block[self.filled:self.filled + len(samples)] = samples
        self.filled += len(samples)

    def flush(self) -> GaussianStats:
        """Update the sums with the queued samples; returns the statistics."""
        if self.filled:
            self.stats.update(self.block[:self.filled])
            self.filled = 0
        return self.stats

    def close(self) -> GaussianStats:
        """:meth:`flush`, then let go of the block and of the statistics, which are returned: a
        closed updater left in scope must not keep the sums alive once their owner drops them (a
        fit frees them before its held-out phase; 1 GiB for a 12 MP model)."""
        self.flush()
        stats, self.stats, self.block = self.stats, None, None
        return stats


def round_packed(packed: torch.Tensor, storage: torch.dtype = STORAGE_DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed rows ``[p, n]`` → (``storage`` values, float32 scale ``[p]``), value ≈ stored · scale.

    The scale is a power of two at or above each row's largest magnitude, so float16 never
    overflows whatever the feature scale, and ``stored.float() * scale`` is exact: the float32
    values a fitted model scores with are the same bits a reloaded one rebuilds.
    """
    amax = packed.abs().amax(dim=1).to(torch.float32)
    _, exponent = torch.frexp(torch.where(amax > 0, amax, torch.ones_like(amax)))
    scale = torch.ldexp(torch.ones_like(amax), exponent)
    return (packed / scale.to(packed.dtype)[:, None]).to(storage), scale


def whitener_buffer(rows: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A zeroed float32 ``[rows, d, d]`` block that :func:`unpack_whitener` unpacks chunk after
    chunk into. Only lower-triangle entries are ever written, so its upper triangle stays zero.
    A fresh block per chunk meant fresh pages from the kernel: about 1.3 million page faults in a
    12 MP fit's held-out folds (benchmarks/RESULTS.md §40)."""
    return torch.zeros(rows, dim, dim, dtype=torch.float32, device=device)


def unpack_whitener(packed: torch.Tensor, scale: torch.Tensor | None, dim: int,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Dense float32 lower-triangular ``[p, d, d]`` from packed rows ``[p, d(d+1)/2]`` (and scale).

    ``out``: a :func:`whitener_buffer` of at least p rows to fill instead of a new tensor; the
    result is then its first p rows, valid until the buffer is filled again."""
    rows, cols = torch.tril_indices(dim, dim, device=packed.device)
    if out is None:
        dense = torch.zeros(packed.shape[0], dim * dim, dtype=torch.float32, device=packed.device)
    else:
        dense = out[:packed.shape[0]].view(packed.shape[0], dim * dim)
    lower = rows * dim + cols
    for start in range(0, packed.shape[0], 256):  # chunks: no full-size float32 copy of the packed rows
        values = packed[start:start + 256].to(torch.float32)
        if scale is not None:
            values = values * scale[start:start + 256].to(torch.float32)[:, None]
        dense[start:start + 256].index_copy_(1, lower, values)
    return dense.view(-1, dim, dim)


def pack_whitener(whitener: torch.Tensor) -> torch.Tensor:
    """Packed lower triangle ``[p, d(d+1)/2]`` of ``[p, d, d]`` (row-major, as ``torch.tril_indices``)."""
    d = whitener.shape[-1]
    rows, cols = torch.tril_indices(d, d, device=whitener.device)
    return whitener.reshape(whitener.shape[0], d * d).index_select(1, rows * d + cols)


class GaussianModel:
    """Fitted Gaussians: ``mean [P, d]`` and ``whitener [P, d, d] = L⁻¹`` with ``LLᵀ = Σ + λI``.

    The squared Mahalanobis distance is ``‖L⁻¹(x − μ)‖²``: one batched triangular product.
    The whitener is held as ``packed`` lower-triangle rows (float16 times a per-position power of
    two ``scale``, as in the model file) and unpacked to dense float32 on first use. A model built
    from a dense ``whitener`` keeps it as given. ``count``: training samples per Gaussian.
    """

    def __init__(self, mean: torch.Tensor, whitener: torch.Tensor | None = None, reg: float = 0.0, *,
                 packed: torch.Tensor | None = None, scale: torch.Tensor | None = None, count: int = 0):
        if whitener is None and packed is None:
            raise ValueError("GaussianModel needs a whitener or its packed form")
        self.mean = mean
        self.reg = reg
        self.count = int(count)
        self.packed = packed
        self.scale = scale
        self._whitener = whitener

    @property
    def whitener(self) -> torch.Tensor:
        if self._whitener is None:
            self._whitener = unpack_whitener(self.packed, self.scale, self.dim)
        return self._whitener

    def whitener_rows(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Dense float32 whitener of positions ``start:stop``: a view of the dense one if it exists,
        else unpacked from the packed rows for this chunk only (no full dense copy is made), into
        ``out`` (a :func:`whitener_buffer` reused from chunk to chunk) if given."""
        if self._whitener is not None:
            return self._whitener[start:stop]
        scale = None if self.scale is None else self.scale[start:stop]
        return unpack_whitener(self.packed[start:stop], scale, self.dim, out)

    def row_buffer(self, rows: int) -> torch.Tensor | None:
        """A :func:`whitener_buffer` for :meth:`whitener_rows` of up to ``rows`` positions, or
        None when the dense whitener exists (its rows are views: nothing to unpack)."""
        if self._whitener is not None:
            return None
        return whitener_buffer(min(rows, self.num_positions), self.dim, self.mean.device)

    def storage_tensors(self) -> dict[str, torch.Tensor]:
        """What a model file holds: mean, packed whitener rows and (for rounded models) their scale."""
        if self.packed is not None:
            out = {"mean": self.mean, "whitener_packed": self.packed}
            if self.scale is not None:
                out["whitener_scale"] = self.scale
            return out
        return {"mean": self.mean, "whitener_packed": pack_whitener(self._whitener)}

    @property
    def num_positions(self) -> int:
        return self.mean.shape[0]

    @property
    def dim(self) -> int:
        return self.mean.shape[1]

    def rounded(self, storage: torch.dtype = STORAGE_DTYPE, chunk: int = 256) -> "GaussianModel":
        """This model with its whitener rounded to ``storage`` (what a fit keeps and saves);
        chunk by chunk of positions, so the temporaries stay small."""
        packed = self.packed if self.packed is not None else pack_whitener(self._whitener)
        if self.scale is not None and packed.dtype == storage:
            return self
        values = torch.empty(packed.shape, dtype=storage, device=packed.device)
        scale = torch.empty(packed.shape[0], dtype=torch.float32, device=packed.device)
        for start in range(0, packed.shape[0], chunk):
            part = packed[start:start + chunk].to(torch.float32)
            if self.scale is not None:
                part = part * self.scale[start:start + chunk, None]
            values[start:start + chunk], scale[start:start + chunk] = round_packed(part, storage)
        return GaussianModel(self.mean, None, self.reg, packed=values, scale=scale, count=self.count)

    def drop_dense(self) -> None:
        """Forget the dense whitener unpacked for scoring (rebuilt on next use), to free memory."""
        if self.packed is not None:
            self._whitener = None

    def to(self, device) -> "GaussianModel":
        move = (lambda t: None if t is None else t.to(device))
        return GaussianModel(self.mean.to(device), move(self._whitener), self.reg, packed=move(self.packed),
                             scale=move(self.scale), count=self.count)

    def mahalanobis(self, features: torch.Tensor, position_chunk: int = 1024) -> torch.Tensor:
        """Mahalanobis distance ``[B, P]`` of features ``[B, d, P]`` to each position's Gaussian.

        Chunked over positions so the temporary ``[chunk, B, d]`` stays small.
        """
        if features.ndim != 3 or features.shape[1:] != (self.dim, self.num_positions):
            raise ValueError(
                f"features must have shape [B, {self.dim}, {self.num_positions}], got {tuple(features.shape)}"
            )
        x = features.to(self.mean.device, torch.float32)
        out = torch.empty(x.shape[0], self.num_positions, dtype=torch.float32, device=x.device)
        for start in range(0, self.num_positions, position_chunk):
            stop = start + position_chunk
            centred = x[:, :, start:stop].permute(2, 0, 1) - self.mean[start:stop, None, :]  # [p, B, d]
            whitened = centred @ self.whitener[start:stop].transpose(1, 2)  # [p, B, d]
            out[:, start:stop] = whitened.square().sum(dim=2).T
        return out.clamp_min_(0).sqrt_()
