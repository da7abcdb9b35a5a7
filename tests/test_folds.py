"""padim.folds: held-out distances by downdate against a naive NumPy refit without each fold."""

import numpy as np
import pytest
import torch

import padim.folds as folds_module
from padim.folds import fold_members, fold_regulariser, held_out_distances, held_out_scores, refit_distances
from padim.gaussian import GaussianStats


def features(n, d, p, seed=0, offset=5.0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(p, d, d))
    x = np.einsum("npd,pkd->nkp", rng.normal(size=(n, p, d)), mixing) + offset
    return torch.from_numpy(x)


def naive_fold_distances(x, fold, reg, by_fold=False):
    """Per position, the fold model of padim.folds from the other samples, by np.cov and np.linalg.inv:
    scatter/(n − 1) + λI (default), or with ``by_fold`` np.cov + λ(n − 1)/(n_F − 1)·I."""
    x = x.numpy()
    n = x.shape[0]
    rest = np.setdiff1d(np.arange(n), fold)
    kept = len(rest)
    cov_scale, lam_fold = ((1.0, reg * (n - 1) / (kept - 1)) if by_fold else ((kept - 1) / (n - 1), reg))
    out = np.empty((len(fold), x.shape[2]))
    for p in range(x.shape[2]):
        others = x[rest, :, p]
        mean = others.mean(axis=0)
        precision = np.linalg.inv(cov_scale * np.cov(others, rowvar=False) + lam_fold * np.eye(x.shape[1]))
        for k, j in enumerate(fold):
            diff = x[j, :, p] - mean
            out[k, p] = np.sqrt(diff @ precision @ diff)
    return out


def full_model(x, eps=0.1, storage=None):
    stats = GaussianStats(x.shape[2], x.shape[1])
    stats.update(x)
    return stats, stats.finalize(eps, storage=storage)


@pytest.mark.parametrize("by_fold", [False, True])
@pytest.mark.parametrize("n, d, fold", [(20, 6, [1, 4, 9, 13]), (9, 12, [0, 5]), (40, 8, list(range(0, 40, 5)))])
def test_downdate_equals_naive_refit_without_the_fold(n, d, fold, by_fold, monkeypatch):
    # d > n covers the PaDiM regime (more channels than images) where only λ keeps Σ invertible.
    monkeypatch.setattr(folds_module, "NORMALISE_BY_FOLD", by_fold)
    x = features(n, d, p=5)
    stats, model = full_model(x)
    assert fold_regulariser(model.reg, n, len(fold)) == pytest.approx(model.reg * (n - 1) / (n - len(fold) - 1))
    expected = naive_fold_distances(x, fold, model.reg, by_fold)
    got = held_out_distances(model, x[fold])
    assert got.shape == (len(fold), 5)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-4)
    # the refit path agrees too, and leaves the statistics as they were
    before = stats.sum_outer.clone()
    fold_stats = stats.empty_like().update(x[fold])
    np.testing.assert_allclose(refit_distances(stats, fold_stats, x[fold], model.reg).double().numpy(),
                               expected, rtol=1e-4)
    np.testing.assert_allclose(stats.sum_outer.numpy(), before.numpy(), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("storage", [None, torch.float16])
def test_position_chunks_do_not_change_the_downdate(storage):
    # chunks of 2 of 7 positions (the last one short) reuse one block for the unpacked whitener and
    # the samples; against the naive refit, for the unrounded (a fit's) and the float16 model
    x = features(15, 6, p=7, seed=3)
    _, model = full_model(x, storage=storage)
    fold = [2, 3, 11]
    chunked = held_out_distances(model, x[fold], position_chunk=2)
    np.testing.assert_allclose(chunked.numpy(), held_out_distances(model, x[fold]).numpy(), rtol=1e-6)
    tolerance = 1e-4 if storage is None else 3e-3
    np.testing.assert_allclose(chunked.double().numpy(), naive_fold_distances(x, fold, model.reg), rtol=tolerance)
    assert model._whitener is None  # chunks were unpacked into the block, no dense copy was made


def test_fold_too_large_is_refused():
    x = features(5, 3, p=2)
    _, model = full_model(x)
    with pytest.raises(ValueError, match="at least 2"):
        held_out_distances(model, x[:4])
    with pytest.raises(ValueError, match="shape"):
        held_out_distances(model, x[:2, :2])


def test_fold_members_partition_the_images():
    folds = fold_members(23, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(23))
    assert [len(f) for f in folds] == [5, 5, 5, 4, 4]
    assert all((np.diff(f) > 0).all() for f in folds)


def test_held_out_scores_downdate_and_refit_agree():
    # Whole pipeline on "images" of 1×1 position: the map is the distance itself (identity maps).
    x = features(12, 5, p=3, seed=5)
    stats, model = full_model(x)

    def embeddings(members):
        yield list(range(len(members))), x[members].float()[:, :, :, None]  # [m, d, p, 1]

    to_samples = lambda emb: emb.flatten(2)
    to_maps = lambda distances, emb: distances
    by_downdate, means, median = held_out_scores(12, 3, 0, embeddings, to_samples, to_maps, model)
    by_refit, means_refit, median_refit = held_out_scores(12, 3, 0, embeddings, to_samples, to_maps, model,
                                                          stats=stats)
    np.testing.assert_allclose(by_downdate, by_refit, rtol=1e-4)
    np.testing.assert_allclose(means, means_refit, rtol=1e-4)
    assert median == pytest.approx(median_refit, rel=1e-4)
    expected, expected_means, values = np.empty(12), np.empty(12), []
    for members in fold_members(12, 3, 0):
        distances = naive_fold_distances(x, members, model.reg)  # [m, p]
        expected[members] = distances.max(axis=1)
        expected_means[members] = distances.mean(axis=1)
        values.append(np.median(distances, axis=1))
    np.testing.assert_allclose(by_downdate, expected, rtol=1e-4)
    np.testing.assert_allclose(means, expected_means, rtol=1e-4)  # the whole-image rule's statistic
    assert median == pytest.approx(np.median(np.concatenate(values)), rel=1e-4)  # of the images' medians


def test_all_folds_at_once_equal_one_fold_at_a_time():
    x = features(14, 5, p=4, seed=8)
    stats, model = full_model(x)

    def embeddings(members):
        yield list(range(len(members))), x[members].float()[:, :, :, None]

    args = (14, 4, 1, embeddings, lambda emb: emb.flatten(2), lambda distances, emb: distances, model)
    one_by_one, means, median = held_out_scores(*args)
    together, means_together, median_together = held_out_scores(*args, all_at_once=True)
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5)
    np.testing.assert_allclose(means_together, means, rtol=1e-5)
    assert median_together == pytest.approx(median, rel=1e-5)


def test_folds_of_cells_use_every_sample_of_an_image():
    # Two samples per image and Gaussian (as k×k cells give): image i owns rows 2i, 2i + 1.
    x = features(16, 4, p=3, seed=9)  # 8 images × 2 samples
    _, model = full_model(x)
    by_image = x.reshape(8, 2, 4, 3).permute(0, 2, 1, 3)  # [image, d, sample, p] as a fake grid

    def embeddings(members):
        yield list(range(len(members))), by_image[members].float()

    to_samples = lambda emb: emb.permute(0, 2, 1, 3).reshape(-1, 4, 3)
    to_maps = lambda distances, emb: distances.reshape(emb.shape[0], -1)
    got, _, _ = held_out_scores(8, 4, 0, embeddings, to_samples, to_maps, model, all_at_once=True)
    expected = np.empty(8)
    for members in fold_members(8, 4, 0):
        rows = np.concatenate([[2 * i, 2 * i + 1] for i in members])
        per_row = naive_fold_distances(x, rows, model.reg).max(axis=1)
        expected[members] = per_row.reshape(len(members), 2).max(axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_refit_keeps_a_fold_within_its_cache_budget_else_extracts_it_again():
    x = features(12, 5, p=3, seed=11)
    stats, model = full_model(x)
    calls = []

    def embeddings(members):
        calls.append(len(members))
        yield list(range(len(members))), x[members].float()[:, :, :, None]

    args = (12, 3, 0, embeddings, lambda emb: emb.flatten(2), lambda distances, emb: distances, model, stats)
    kept, _, _ = held_out_scores(*args, fold_cache_bytes=10**6)
    assert calls == [4, 4, 4]  # one extraction per fold
    calls.clear()
    again, _, _ = held_out_scores(*args, fold_cache_bytes=0)
    assert calls == [4, 4, 4, 4, 4, 4]  # sums, then distances
    np.testing.assert_allclose(kept, again, rtol=1e-6)  # the kept embeddings are the same values
