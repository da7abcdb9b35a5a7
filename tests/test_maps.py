"""padim.maps: the anomaly maps' Gaussian blur against SciPy's gaussian_filter."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from padim.maps import gaussian_blur


def scipy_blur(maps: np.ndarray, sigma: float, mode: str) -> np.ndarray:
    """Each map blurred along both axes by SciPy (taps out to 4σ, as padim's kernel), in float64."""
    return np.stack([gaussian_filter(m.astype(np.float64), sigma, mode=mode, truncate=4.0) for m in maps])


@pytest.mark.parametrize("shape, sigma", [((3, 64, 48), 4.0), ((2, 31, 70), 1.5), ((1, 40, 40), 0.7)])
def test_blur_equals_scipy_reflecting_at_the_borders(shape, sigma):
    maps = np.random.default_rng(0).random(shape, dtype=np.float32)
    # torch's "reflect" padding (the edge pixel not repeated) is SciPy's "mirror"
    expected = scipy_blur(maps, sigma, "mirror")
    np.testing.assert_allclose(gaussian_blur(torch.from_numpy(maps), sigma).numpy(), expected, atol=2e-6)


def test_a_map_smaller_than_the_kernel_replicates_its_edges():
    maps = np.random.default_rng(1).random((2, 6, 9), dtype=np.float32)  # radius 16 > 6
    expected = scipy_blur(maps, 4.0, "nearest")
    np.testing.assert_allclose(gaussian_blur(torch.from_numpy(maps), 4.0).numpy(), expected, atol=2e-6)


def test_the_cpu_path_equals_the_convolution_path():
    """float32 on the CPU takes OpenCV's separable filter; float64 the two convolutions export traces."""
    maps = torch.rand(2, 50, 37, generator=torch.Generator().manual_seed(2))
    fast = gaussian_blur(maps, 4.0)
    assert fast.dtype == torch.float32 and fast.shape == maps.shape
    torch.testing.assert_close(fast.double(), gaussian_blur(maps.double(), 4.0), rtol=0, atol=1e-6)
    assert torch.equal(gaussian_blur(maps, 0.0), maps)
