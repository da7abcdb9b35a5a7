"""padim.gaussian against a naive per-position NumPy reference (np.cov, np.linalg.inv, loops)."""

import numpy as np
import pytest
import torch

from padim.gaussian import GaussianModel, GaussianStats, position_major

B, D, P = 12, 5, 7
OFFSET = 1000.0


def make_features(n=B, d=D, p=P, offset=OFFSET, seed=0, dtype=torch.float32):
    """[n, d, p] features with correlated channels, a large mean and a different scale per position."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(p, d, d))
    base = rng.normal(size=(n, p, d))
    x = np.einsum("npd,pkd->nkp", base, mixing)  # correlated channels, [n, d, p]
    x = x * rng.uniform(0.5, 3.0, size=(1, 1, p)) + offset + rng.normal(size=(1, d, p))
    return torch.from_numpy(x).to(dtype)


def reference_cov(feats):
    """Per-position np.cov of float64 copies of the features: [P, d, d]."""
    x = feats.double().numpy()
    return np.stack([np.cov(x[:, :, p], rowvar=False) for p in range(x.shape[2])])


def reference_model(feats, eps=0.01, relative=True):
    """Per-position mean and inverse of Σ + λI, λ = eps·mean(diag Σ) over all positions (or eps)."""
    x = feats.double().numpy()
    covs = reference_cov(feats)
    lam = eps * np.mean([np.mean(np.diag(c)) for c in covs]) if relative else eps
    means = x.mean(axis=0).T  # [P, d]
    inverses = np.stack([np.linalg.inv(c + lam * np.eye(c.shape[0])) for c in covs])
    return means, inverses, lam


def reference_mahalanobis(test, means, inverses):
    x = test.double().numpy()
    out = np.empty((x.shape[0], x.shape[2]))
    for b in range(x.shape[0]):
        for p in range(x.shape[2]):
            diff = x[b, :, p] - means[p]
            out[b, p] = np.sqrt(diff @ inverses[p] @ diff)
    return out


def fit(feats, batches=1, **kwargs):
    stats = GaussianStats(feats.shape[2], feats.shape[1])
    for chunk in torch.tensor_split(feats, batches):
        stats.update(chunk)
    return stats


def test_mean_and_covariance_match_numpy():
    feats = make_features()
    stats = fit(feats)
    assert stats.count == B
    np.testing.assert_allclose(stats.mean().numpy(), feats.double().mean(0).T.numpy(), rtol=1e-12)
    # products are float32 (accumulated in float64): errors of a few float32 ulps of the spread
    np.testing.assert_allclose(stats.covariance().numpy(), reference_cov(feats), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e7])
def test_covariance_survives_a_huge_mean(offset):
    # Features with unit-scale spread around a mean of 1e7: Σxxᵀ − nμμᵀ in float64 would lose
    # ~14 of its 16 digits; the shifted sums must not. (Shifted data are multiplied in float32,
    # so the bound is float32's, 1e-5 of unit-scale spread, whatever the offset.)
    feats = make_features(offset=offset, dtype=torch.float64)
    stats = fit(feats, batches=3)
    np.testing.assert_allclose(stats.covariance().numpy(), reference_cov(feats), rtol=1e-5, atol=1e-5)
    # and shards with different shifts merge without the cancellation either
    merged = fit(feats[:4]).merge(fit(feats[4:]))
    np.testing.assert_allclose(merged.covariance().numpy(), reference_cov(feats), rtol=1e-5, atol=1e-5)


def test_mahalanobis_matches_naive_reference():
    feats = make_features()
    test = make_features(n=6, seed=1)
    test[0, :, 3] += 25.0  # one clearly anomalous patch
    model = fit(feats).finalize(eps=0.01)
    means, inverses, lam = reference_model(feats, eps=0.01)
    assert model.reg == pytest.approx(lam, rel=1e-6)  # float32 products
    assert model.mean.shape == (P, D) and model.whitener.shape == (P, D, D)
    np.testing.assert_allclose(model.mean.double().numpy(), means, rtol=1e-6)
    expected = reference_mahalanobis(test, means, inverses)
    got = model.mahalanobis(test)
    assert got.shape == (6, P) and got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=2e-3, atol=2e-3)
    assert got.argmax().item() == 0 * P + 3
    # training samples themselves: small, finite distances
    train = model.mahalanobis(feats).numpy()
    np.testing.assert_allclose(train, reference_mahalanobis(feats, means, inverses), rtol=2e-3, atol=2e-3)


def test_mahalanobis_of_the_mean_is_zero_and_whitener_inverts_regularised_cov():
    feats = make_features()
    stats = fit(feats)
    model = stats.finalize(eps=0.05, storage=None)  # the algebra; float16 rounding is tested below
    _, inverses, lam = reference_model(feats, eps=0.05)
    # Wᵀ W = (Σ + λI)⁻¹ at every position
    w = model.whitener.double().numpy()
    np.testing.assert_allclose(np.transpose(w, (0, 2, 1)) @ w, inverses, rtol=1e-3, atol=1e-5)
    at_mean = model.mahalanobis(stats.mean().T[None].float())
    np.testing.assert_allclose(at_mean.numpy(), 0.0, atol=2e-2)


def test_absolute_eps():
    feats = make_features(offset=0.0)
    model = fit(feats).finalize(eps=0.3, relative_eps=False)
    means, inverses, lam = reference_model(feats, eps=0.3, relative=False)
    assert lam == 0.3 and model.reg == pytest.approx(0.3)
    test = make_features(n=4, seed=2, offset=0.0)
    np.testing.assert_allclose(model.mahalanobis(test).double().numpy(),
                               reference_mahalanobis(test, means, inverses), rtol=2e-3, atol=2e-3)
    # relative and absolute regularisation differ here (mean variance is not 1)
    assert fit(feats).finalize(eps=0.3).reg != pytest.approx(0.3)


def test_streaming_equals_one_shot():
    feats = make_features()
    one = fit(feats)
    for batches in (2, 5, B):
        many = fit(feats, batches=batches)
        assert many.count == B
        np.testing.assert_allclose(many.mean().numpy(), one.mean().numpy(), rtol=1e-12)
        np.testing.assert_allclose(many.covariance().numpy(), one.covariance().numpy(), rtol=1e-5, atol=1e-5)
    test = make_features(n=3, seed=3)
    # (float16 storage: two fits an ulp apart may round some entries to neighbouring values)
    np.testing.assert_allclose(fit(feats, batches=4).finalize().mahalanobis(test).numpy(),
                               one.finalize().mahalanobis(test).numpy(), rtol=2e-3)


def test_position_chunks_do_not_change_results():
    feats = make_features()
    chunked = GaussianStats(P, D)
    for part in torch.tensor_split(feats, 3):
        chunked.update(part, position_chunk=3)  # 7 positions: chunks of 3, 3, 1
    whole = fit(feats, batches=3)
    np.testing.assert_allclose(chunked.covariance().numpy(), whole.covariance().numpy(), rtol=1e-12)
    model = whole.finalize()
    test = make_features(n=5, seed=4)
    np.testing.assert_allclose(model.mahalanobis(test, position_chunk=2).numpy(),
                               model.mahalanobis(test).numpy(), rtol=1e-6)


def test_merge_of_shards_equals_fit_on_all():
    feats = make_features()
    full = fit(feats)
    shards = [fit(part) for part in (feats[:3], feats[3:8], feats[8:])]
    merged = shards[0].merge(shards[1]).merge(shards[2])
    also = shards[0] + shards[1] + shards[2]
    for stats in (merged, also):
        assert stats.count == B
        np.testing.assert_allclose(stats.mean().numpy(), full.mean().numpy(), rtol=1e-12)
        np.testing.assert_allclose(stats.covariance().numpy(), reference_cov(feats), rtol=1e-5, atol=1e-5)
    # merging does not modify its operands
    assert shards[0].count == 3 and shards[1].count == 5


def test_merge_with_empty_stats():
    feats = make_features()
    full = fit(feats)
    empty = GaussianStats(P, D)
    for stats in (full.merge(empty), empty.merge(full), empty + full):
        assert stats.count == B
        np.testing.assert_allclose(stats.covariance().numpy(), reference_cov(feats), rtol=1e-5, atol=1e-5)
    assert (empty + GaussianStats(P, D)).count == 0


def test_subtract_fold_equals_fit_on_the_rest():
    feats = make_features(n=15)
    full = fit(feats, batches=2)
    fold = torch.tensor([1, 4, 9, 13])
    rest = torch.tensor([i for i in range(15) if i not in fold.tolist()])
    held_out = full.subtract(fit(feats[fold]))
    assert held_out.count == len(rest)
    np.testing.assert_allclose(held_out.mean().numpy(), feats[rest].double().mean(0).T.numpy(), rtol=1e-10)
    np.testing.assert_allclose(held_out.covariance().numpy(), reference_cov(feats[rest]), rtol=1e-5, atol=1e-5)
    means, inverses, _ = reference_model(feats[rest])
    np.testing.assert_allclose(held_out.finalize().mahalanobis(feats[fold]).double().numpy(),
                               reference_mahalanobis(feats[fold], means, inverses), rtol=2e-3, atol=2e-3)


def test_in_place_subtract_then_merge_restores_the_statistics():
    feats = make_features(n=15)
    full = fit(feats, batches=2)
    fold = fit(feats[torch.tensor([0, 5, 11])])
    same_shift = full.empty_like().update(feats[torch.tensor([0, 5, 11])])
    before_sum, before_outer = full.sum.clone(), full.sum_outer.clone()
    expected = full.subtract(fold)
    for other in (fold, same_shift):
        full.subtract_(other)
        assert full.count == 12
        np.testing.assert_allclose(full.covariance().numpy(), expected.covariance().numpy(), rtol=1e-5, atol=1e-5)
        full.merge_(other)
        assert full.count == 15
        np.testing.assert_allclose(full.sum.numpy(), before_sum.numpy(), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(full.sum_outer.numpy(), before_outer.numpy(), rtol=1e-12, atol=1e-9)


def test_subtract_rejects_removing_everything():
    stats = fit(make_features())
    with pytest.raises(ValueError):
        stats.subtract(stats)
    with pytest.raises(ValueError):
        GaussianStats(P, D).subtract(GaussianStats(P, D))


@pytest.mark.parametrize("shape", [(4, D + 1, P), (4, D, P + 1), (D, P), (4, D, P, 1)])
def test_update_rejects_wrong_shapes(shape):
    stats = GaussianStats(P, D)
    with pytest.raises(ValueError, match="shape"):
        stats.update(torch.zeros(shape))
    assert stats.count == 0


def test_mahalanobis_rejects_wrong_shapes():
    model = fit(make_features()).finalize()
    for shape in [(2, D + 1, P), (2, D, P - 1), (D, P)]:
        with pytest.raises(ValueError, match="shape"):
            model.mahalanobis(torch.zeros(shape))


def test_merge_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        fit(make_features()).merge(fit(make_features(d=4)))
    with pytest.raises(ValueError):
        fit(make_features()).merge(fit(make_features(p=3)))


def test_fewer_than_two_samples_raise():
    empty = GaussianStats(P, D)
    with pytest.raises(ValueError, match="at least"):
        empty.finalize()
    with pytest.raises(ValueError):
        empty.mean()
    one = fit(make_features(n=1))
    assert one.mean().shape == (P, D)
    with pytest.raises(ValueError, match="at least 2"):
        one.finalize()
    with pytest.raises(ValueError, match="at least 2"):
        one.covariance()


def test_finalized_tensors_are_contiguous():
    # A model read back from a file has contiguous tensors; a freshly fitted one must match that
    # layout, or the batched matmul takes another path and save → load changes scores by an ulp.
    model = fit(make_features()).finalize()
    assert model.mean.is_contiguous() and model.whitener.is_contiguous()


def test_to_device_keeps_values():
    model = fit(make_features()).finalize()
    moved = model.to("cpu")
    assert isinstance(moved, GaussianModel) and moved.reg == model.reg
    assert moved.num_positions == P and moved.dim == D
    assert torch.equal(moved.whitener, model.whitener)


def test_constant_features_fall_back_to_absolute_eps():
    feats = torch.full((4, D, P), 3.0)
    model = fit(feats).finalize(eps=0.5)
    assert model.reg == pytest.approx(0.5)
    # 1/√λ is stored in float16: within half a float16 ulp (2⁻¹¹ relative)
    np.testing.assert_allclose(model.mahalanobis(feats + 1.0).numpy(), np.sqrt(D / 0.5), rtol=2**-11)


# ------------------------------------------------------------------ stored precision

from padim.gaussian import pack_whitener, round_packed, unpack_whitener  # noqa: E402


def test_packed_lower_triangle_round_trip():
    rng = np.random.default_rng(0)
    dense = np.tril(rng.normal(size=(4, 6, 6))).astype(np.float32)
    packed = pack_whitener(torch.from_numpy(dense))
    assert packed.shape == (4, 21)
    rows, cols = np.tril_indices(6)  # numpy's row-major order of the lower triangle
    np.testing.assert_array_equal(packed.numpy(), dense[:, rows, cols])
    np.testing.assert_array_equal(unpack_whitener(packed, None, 6).numpy(), dense)


def test_unpacking_chunk_after_chunk_into_one_buffer_gives_each_chunk_exactly():
    # Scoring and the held-out folds unpack chunk after chunk into one reused block: each result
    # must be exactly that chunk's matrices (np.tril of the reference, scale applied), the upper
    # triangle zero, however full the block was before, a short last chunk included.
    from padim.gaussian import whitener_buffer

    rng = np.random.default_rng(2)
    dense = np.tril(rng.normal(size=(7, 5, 5))).astype(np.float32)
    packed = pack_whitener(torch.from_numpy(dense))
    scale = torch.tensor([2.0, 0.5, 4.0, 1.0, 0.25, 8.0, 2.0])
    block = whitener_buffer(3, 5)
    for start in (0, 3, 6, 2):  # chunks of 3, 3, a short one of 1, then 3 again over a full block
        stop = min(start + 3, 7)
        got = unpack_whitener(packed[start:stop], scale[start:stop], 5, out=block)
        assert got.data_ptr() == block.data_ptr() and got.shape == (stop - start, 5, 5)
        expected = dense[start:stop] * scale[start:stop].numpy()[:, None, None]
        np.testing.assert_array_equal(got.numpy(), expected)
        assert not np.triu(block.numpy(), k=1).any()


def test_float16_rounding_error_bound_and_power_of_two_scale():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(5, 40)) * np.array([[1e-6], [1e-2], [1.0], [3e3], [1e7]])  # far beyond float16's range
    stored, scale = round_packed(torch.from_numpy(values))
    assert stored.dtype == torch.float16 and torch.isfinite(stored).all()
    s = scale.double().numpy()
    assert np.all(np.log2(s) == np.round(np.log2(s)))  # powers of two: stored · scale is exact in float32
    amax = np.abs(values).max(axis=1)
    assert np.all(s >= amax) and np.all(s < 2 * amax)
    rebuilt = stored.double().numpy() * s[:, None]
    # half a float16 ulp (2⁻¹¹ relative) for normal values, 2⁻²⁵·scale for subnormal ones
    bound = np.maximum(2.0**-11 * np.abs(values), 2.0**-25 * s[:, None])
    assert np.all(np.abs(rebuilt - values) <= bound)


def test_stored_model_scores_with_exactly_the_stored_values():
    feats = make_features(n=30, d=D)
    stats = fit(feats)
    exact, stored = stats.finalize(eps=0.05, storage=None), stats.finalize(eps=0.05)
    rebuilt = unpack_whitener(stored.packed, stored.scale, D)
    assert torch.equal(stored.whitener, rebuilt)
    assert torch.equal(stored.whitener, torch.tril(stored.whitener))  # upper triangle exactly zero
    # float16 storage moves distances by well under 0.5 % (measured: ~1e-4) of their float32 values
    test = make_features(n=8, seed=7)
    rel = (stored.mahalanobis(test) / exact.mahalanobis(test) - 1).abs().max().item()
    assert rel < 5e-3
    # rounding again is a no-op: a saved model written twice does not drift
    again = stored.rounded()
    assert again is stored
    assert torch.equal(GaussianModel(stored.mean, stored.whitener).rounded().whitener, stored.whitener)


def test_grouped_updates_equal_numpy_whatever_the_batching():
    # float16 samples (as a fit hands them) in batches of 2 and one of 7: groups of up to d = 5
    # samples, the batch of 7 (more than a group) updated as it comes; np.cov of the same values
    from padim.gaussian import GroupedUpdates

    feats = make_features(n=23, offset=10.0).half()
    stats = GaussianStats(P, D)
    grouped = GroupedUpdates(stats)
    for part in [feats[0:2], feats[2:4], feats[4:11], feats[11:13], feats[13:15], feats[15:17], feats[17:19],
                 feats[19:23]]:
        grouped.add(part)
    assert stats.count == 19  # the last 4 are still queued
    assert grouped.close() is stats and stats.count == 23 and grouped.block is None
    assert grouped.stats is None  # a closed updater keeps no reference to the sums (they can be freed)
    np.testing.assert_allclose(stats.mean().numpy(), feats.double().mean(0).T.numpy(), rtol=1e-6)
    np.testing.assert_allclose(stats.covariance().numpy(), reference_cov(feats), rtol=1e-4, atol=1e-5)


def test_float64_data_with_a_huge_mean_keeps_its_covariance():
    # float64 samples are centred in float64 (a mean of 1e7 cancels exactly before float32 products)
    feats = make_features(offset=1e7, dtype=torch.float64)
    stats = fit(feats, batches=3)
    np.testing.assert_allclose(stats.covariance().numpy(), reference_cov(feats), rtol=1e-4, atol=1e-4)


def test_merged_statistics_with_an_unrounded_shift_still_update_exactly():
    # a shift not representable in float32 (from float64 data) makes float32 data centre in float64
    feats = make_features(offset=1e3)
    first = GaussianStats(P, D).update(feats[:6].double() + 1e-9)
    first.update(feats[6:])  # float32 data, float64 shift
    both = torch.cat([feats[:6].double() + 1e-9, feats[6:].double()])
    np.testing.assert_allclose(first.covariance().numpy(), reference_cov(both), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads, cores, load, expected", [
    (2, 2, 0.0, 1),     # a 2-core machine: one thread (any other process makes it busy)
    (8, 16, 8.0, 8),    # idle 16 cores, this process's 8 threads running: all 8
    (8, 16, 9.0, 8),    # one other busy core: still 16 − 1 ≥ 8 + 1
    (8, 16, 16.0, 1),   # 8 other busy cores leave 8 < 8 + 1: one thread
    (4, 64, 30.0, 4),   # a large machine, half busy
    (1, 64, 0.0, 1),
    (4, None, 0.0, 1),  # unknown core count or load: treated as small and busy
    (4, 16, None, 1),
])
def test_cholesky_threads_rule(threads, cores, load, expected):
    from padim.gaussian import cholesky_threads

    assert cholesky_threads(threads, cores, load) == expected


def test_a_covariance_float32_cannot_factorise_is_factorised_in_float64():
    """The whitener is factorised in float32 (FACTOR_DTYPE); a chunk float32 cannot handle (here a
    rank-2 covariance with a tiny λ) is redone in float64 and still inverts Σ + λI. Small
    integers, ± pairs (mean 0): the sums are exact, so float64 sees the exact Σ."""
    rng = np.random.default_rng(3)
    base = rng.integers(-8, 9, size=(20, 2, P)).astype(np.float64)
    mixing = rng.integers(-3, 4, size=(2, D)).astype(np.float64)
    half = np.einsum("nkp,kd->ndp", base, mixing)  # 5 channels spanning 2 directions
    feats = torch.from_numpy(np.concatenate([half, -half])).float()
    stats = fit(feats)
    lam = 1e-7
    cov = torch.from_numpy(reference_cov(feats)) + lam * torch.eye(D, dtype=torch.float64)
    assert bool((torch.linalg.cholesky_ex(cov.float())[1] > 0).any())  # float32 fails here
    model = stats.finalize(reg=lam, storage=None)
    w = model.whitener.double()
    product = w @ cov @ w.transpose(1, 2)  # L⁻¹ (LLᵀ) L⁻ᵀ = I
    np.testing.assert_allclose(product.numpy(), np.broadcast_to(np.eye(D), (P, D, D)), atol=1e-2)


def test_strided_and_contiguous_updates_give_the_same_sums(monkeypatch):
    """update() transposes a contiguous batch in one copy (gaussian.position_major) and permutes
    other batches chunk by chunk: both paths accumulate the same sums as np.cov."""
    feats = make_features(offset=3.0).half().contiguous()
    assert position_major(feats) is not None
    strided = feats.permute(0, 2, 1).contiguous().permute(0, 2, 1)  # same values, not contiguous
    assert not strided.is_contiguous()
    contiguous_stats = GaussianStats(P, D).update(feats, position_chunk=3)
    strided_stats = GaussianStats(P, D).update(strided, position_chunk=3)
    np.testing.assert_array_equal(contiguous_stats.sum_outer.numpy(), strided_stats.sum_outer.numpy())
    np.testing.assert_allclose(contiguous_stats.covariance().numpy(), reference_cov(feats), rtol=1e-5, atol=1e-6)


def test_finalize_in_parallel_threads_equals_one_thread_and_the_reference(monkeypatch):
    """Chunks of positions factorised side by side (gaussian.finalize_workers; each worker a share
    of one chunk's size, so the temporaries stay those of one thread) give the very same whitener
    as one after the other, and it inverts the reference Σ + λI; every chunk is counted."""
    import padim.gaussian as gaussian

    feats = make_features(n=40, p=23)
    stats = fit(feats)
    monkeypatch.setattr(gaussian, "FINALIZE_CHUNK_BYTES", 8 * D * D * 6)  # 6 positions a chunk: 4 chunks
    results = {}
    for workers, chunks in ((1, 4), (3, 12)):  # 3 workers: 2 positions each, 12 chunks
        monkeypatch.setattr(gaussian, "finalize_workers", lambda device, w=workers: w)
        steps = []

        def progress(iterable, total):
            steps.append(total)
            for item in iterable:
                steps.append(item)
                yield item

        results[workers] = stats.finalize(progress=progress), stats.finalize(storage=None)
        assert steps[0] == chunks and len(steps) == chunks + 1
    (stored_1, exact_1), (stored_3, exact_3) = results[1], results[3]
    assert torch.equal(stored_1.packed, stored_3.packed) and torch.equal(stored_1.scale, stored_3.scale)
    assert torch.equal(exact_1.packed, exact_3.packed)
    _, inverses, _ = reference_model(feats)
    w = exact_3.whitener.double().numpy()
    np.testing.assert_allclose(np.einsum("pji,pjk->pik", w, w), inverses, rtol=1e-4, atol=1e-5)  # float32 factor


def test_a_failing_chunk_in_a_worker_thread_raises_the_one_line_error(monkeypatch):
    import padim.gaussian as gaussian

    stats = fit(make_features(n=40, p=23))
    monkeypatch.setattr(gaussian, "FINALIZE_CHUNK_BYTES", 8 * D * D * 3)
    monkeypatch.setattr(gaussian, "finalize_workers", lambda device: 2)
    with pytest.raises(ValueError, match="not positive definite"):
        stats.finalize(reg=-1e9)


@pytest.mark.parametrize("threads, cores, device, expected", [
    (2, 2, "cpu", 2),     # a 2-core machine: OpenMP held to 1, chunks on 2 Python threads
    (1, 2, "cpu", 1),
    (8, 64, "cpu", 1),    # an idle large machine: the batched Cholesky uses the 8 OpenMP threads itself
    (2, 2, "meta", 1),    # not the CPU: one stream of work
])
def test_finalize_workers_rule(monkeypatch, threads, cores, device, expected):
    import padim.gaussian as gaussian

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(gaussian, "_machine_load", lambda: (cores, 0.0))
    assert gaussian.finalize_workers(torch.device(device)) == expected
