"""A short hash of everything that determines a fitted model's scores, probabilities and labels.

Result files record it, so that ``padim score --resume`` can tell whether the rows already
written came from the same model (see :mod:`padim.results`). Two models with equal
fingerprints give the same TSV rows for the same images; runtime options (device, batch size,
workers) are left out on purpose.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

DIGEST_BYTES = 16  # 32 hex digits: collisions are not a practical concern


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Raw bytes of a tensor's values, the same on every device and for any memory layout."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _feed_tensor(digest, name: str, tensor: torch.Tensor | None) -> None:
    if tensor is None:
        digest.update(f"{name}:none;".encode())
        return
    digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
    digest.update(_tensor_bytes(tensor))


def _plain(value):
    """JSON stand-in for the array-like values a model may hold (e.g. ``value_range_``)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def model_fingerprint(model) -> str:
    """Hex digest of a fitted model's Gaussians, channel selection, geometry and calibration.

    Covers every tensor of ``model.gaussian_`` (by attribute name), ``channel_index_``, and the
    settings that shape the outputs: layers, geometry, cell, blur sigma, eps, backbone (name and
    weights fingerprint), calibrator, whole-image rule and, where the model has them, ``value_range_`` and
    ``value_kind_``. It costs one pass over the Gaussian tensors, so callers compute it once per
    scoring run.
    """
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    gaussian = vars(model.gaussian_)
    derived = gaussian.get("packed") is not None  # then the dense ``_whitener`` is a cache of it
    for name in sorted(gaussian):
        if derived and name.startswith("_"):
            continue  # unpacked on first use: scoring must not change the fingerprint
        if isinstance(gaussian[name], torch.Tensor):
            _feed_tensor(digest, f"gaussian.{name}", gaussian[name])
    _feed_tensor(digest, "channel_index", model.channel_index_)
    calibrator = model.calibrator_
    settings = {
        "layers": list(model.layers_),
        "geometry": model.geometry_.as_dict(),
        "cell": model.cell_,
        "blur_sigma": model.blur_sigma,
        "eps": model.eps,
        "backbone": model.backbone,
        "backbone_fingerprint": getattr(model, "backbone_fingerprint_", None),
        "calibrator": None if calibrator is None else calibrator.to_dict(),
        "value_range": getattr(model, "value_range_", None),
        "value_kind": getattr(model, "value_kind_", None),
    }
    if getattr(model, "whole_image_", None) is not None:  # absent, as before the rule: fingerprints unchanged
        settings["whole_image"] = model.whole_image_.to_dict()
    digest.update(json.dumps(settings, sort_keys=True, default=_plain).encode())
    return digest.hexdigest()
