"""padim.low_rank: Woodbury distances of Gaussians fitted on fewer samples than features, against a
naive NumPy Mahalanobis distance and against the plain fit's whitener."""

import numpy as np
import pytest
import torch

from padim.gaussian import GaussianStats
from padim.low_rank import LowRankGaussians
from padim.net import _whitened_norm


def naive_distances(train: np.ndarray, test: np.ndarray, lam: float) -> np.ndarray:
    """``train [m, d, G]``, ``test [S, d, G]`` → ``[S, G]``: √(rᵀ(cov + λI)⁻¹r), with np.cov and np.linalg.inv."""
    out = np.zeros((test.shape[0], test.shape[2]))
    for g in range(train.shape[2]):
        x = train[:, :, g].astype(np.float64)
        cov = np.cov(x, rowvar=False) + lam * np.eye(x.shape[1])
        r = test[:, :, g] - x.mean(axis=0)
        out[:, g] = np.sqrt(np.einsum("sd,de,se->s", r, np.linalg.inv(cov), r))
    return out


@pytest.mark.parametrize("m, d", [(5, 40), (12, 30), (30, 30), (40, 12)])
def test_distances_equal_the_naive_mahalanobis(m, d):
    rng = np.random.default_rng(m * d)
    scales = np.linspace(0.2, 4.0, d)[None, :, None]
    train = (rng.normal(size=(m, d, 6)) * scales + 3).astype(np.float32)
    test = (rng.normal(size=(9, d, 6)) * scales * 1.5 + 3).astype(np.float32)
    model = LowRankGaussians(torch.from_numpy(train), eps=0.1)
    # the relative ε: λ = eps · the mean unbiased variance over every feature and Gaussian
    expected_lam = 0.1 * np.var(train.astype(np.float64), axis=0, ddof=1).mean()
    assert model.reg == pytest.approx(expected_lam, rel=1e-9)
    reference = naive_distances(train, test, expected_lam)
    np.testing.assert_allclose(model.distances(torch.from_numpy(test)).numpy(), reference, rtol=2e-5)


def test_it_scores_as_the_plain_fit_and_its_regulariser():
    torch.manual_seed(0)
    train = torch.randn(16, 64, 20) * 2 + 7
    test = torch.randn(5, 64, 20) * 3 + 7
    stats = GaussianStats(20, 64)
    stats.update(train)
    plain = stats.finalize(0.1, storage=None)
    low_rank = LowRankGaussians(train, eps=0.1)
    assert low_rank.reg == pytest.approx(plain.reg, rel=1e-6)  # the plain fit sums about a shift
    expected = _whitened_norm(test.permute(2, 0, 1), plain.mean, plain.whitener).T
    torch.testing.assert_close(low_rank.distances(test), expected, rtol=1e-4, atol=1e-5)


def test_a_training_sample_is_near_and_constant_features_fall_back_to_eps():
    train = torch.zeros(4, 10, 3)
    model = LowRankGaussians(train, eps=0.5)
    assert model.reg == 0.5  # all-constant features: λ = eps itself, as the plain fit does
    assert torch.equal(model.distances(train), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="at least 2"):
        LowRankGaussians(torch.zeros(1, 10, 3), eps=0.1)


@pytest.mark.parametrize("gaussians", [1, 7])
def test_the_samples_are_left_unchanged(gaussians):
    """The fit centres a copy in place: never the caller's tensor, also where one Gaussian's
    samples (``cell="image"``) already lie Gaussians-first in memory."""
    train = torch.randn(6, 9, gaussians) + 3
    before = train.clone()
    model = LowRankGaussians(train, eps=0.1)
    assert torch.equal(train, before)
    assert model.distances(train).shape == (6, gaussians)
