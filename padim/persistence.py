"""Model persistence: a fitted estimator to and from one safetensors file plus JSON metadata.

The tensors are the Gaussians as stored (mean, packed float16 whitener rows and their per-position
scale), the channel selection and the held-out calibration scores (map maxima and means); the metadata holds the
parameters, the decided geometry, cell and value range, and the calibrator. See padim.modelfile
for the container and its format versions. ``PaDiM.save`` / ``PaDiM.load`` call these.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import __version__
from .calibration import Calibrator
from .gaussian import GaussianModel
from .geometry import Geometry
from .errors import first_line
from .memory import MemoryPlan
from .metadata import check_metadata, check_tensors
from .modelfile import ModelFileError, read_model_file, write_model_file
from .model import cell_count
from .value_range import as_value_range
from .whole_image import WholeImageRule


def save_model(model, path: str | Path) -> Path:
    """Write a fitted :class:`padim.PaDiM` to one safetensors file (no pickled code)."""
    model._check_fitted()
    path = Path(path)
    tensors = dict(model.gaussian_.storage_tensors())  # packed float16 lower triangle + scale
    if model.channel_index_ is not None:
        tensors["channel_index"] = model.channel_index_
    if getattr(model, "calibration_scores_", None) is not None:
        tensors["calibration_scores"] = torch.from_numpy(np.asarray(model.calibration_scores_))
    if getattr(model, "calibration_means_", None) is not None:
        tensors["calibration_means"] = torch.from_numpy(np.asarray(model.calibration_means_))
    metadata = {
        "padim_version": __version__,
        "params": {k: getattr(model, k) for k in model._PARAMS},
        "layers": model.layers_,
        "geometry": model.geometry_.as_dict(),
        "cell": model.cell_,
        "memory_plan": None if model.plan_ is None else model.plan_.as_dict(),
        "n_features": model.n_features_,
        "n_train": model.n_train_,
        "regularisation": model.gaussian_.reg,
        "normalisation": {"mean": list(model.spec.mean), "std": list(model.spec.std)},
        "backbone_fingerprint": getattr(model, "backbone_fingerprint_", None),
        "backbone_weights_file": getattr(model, "backbone_weights_file_", None),  # a name, for messages only
        "calibrator": None if model.calibrator_ is None else model.calibrator_.to_dict(),
        "map_floor": getattr(model, "map_floor_", None),
        "whole_image": None if getattr(model, "whole_image_", None) is None else model.whole_image_.to_dict(),
        "value_range": None if model.value_range_ is None else list(model.value_range_),
        "value_kind": model.value_kind_,
        "auto": (None if not getattr(model, "auto_table_", None) else
                 {"choice": model.auto_choice_, "table": model.auto_table_}),
    }
    write_model_file(path, tensors, metadata)
    return path


# What building the model from checked metadata may still raise on a file the checks let through.
_INVALID = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)


def load_model(cls, path: str | Path, device: str = "auto", weights: str | None = None, **overrides):
    """A ``cls`` (:class:`padim.PaDiM`) read from a file written by :func:`save_model`; runtime
    options (device, batch_size, …) may be given. Its configuration is the one it was fitted with
    (``config="fixed"``): a refit keeps it rather than choosing again."""
    tensors, meta = read_model_file(path)
    try:
        check_metadata(meta)
        check_tensors(tensors, meta)
        params = dict(meta["params"])
        if isinstance(params.get("image_size"), list):
            params["image_size"] = tuple(params["image_size"])
        model = cls(**{"config": "fixed", **params, "device": device, "weights": weights, **overrides})
        reg = float(meta["regularisation"])
        if "whitener_packed" in tensors:
            model.gaussian_ = GaussianModel(tensors["mean"], None, reg, packed=tensors["whitener_packed"],
                                            scale=tensors.get("whitener_scale"), count=int(meta["n_train"]))
        else:  # format version 1: dense float32 whitener
            model.gaussian_ = GaussianModel(tensors["mean"], tensors["whitener"], reg)
        model.channel_index_ = tensors.get("channel_index")
        model.layers_ = list(meta["layers"])
        model.geometry_ = Geometry.from_dict(meta["geometry"])
        model.input_size_ = model.geometry_.input_size
        model.feature_size_ = model.geometry_.feature_size
        model.cell_ = meta["cell"]
        model.n_gaussians_ = cell_count(*model.feature_size_, model.cell_)
        plan = meta.get("memory_plan")
        model.plan_ = None if plan is None else MemoryPlan(**{k: v for k, v in plan.items() if k not in ("peak", "total")})
        model.n_features_ = int(meta["n_features"])
        model.n_train_ = int(meta["n_train"])
        model.backbone_fingerprint_ = meta.get("backbone_fingerprint")
        model.backbone_weights_file_ = meta.get("backbone_weights_file")
        scores = tensors.get("calibration_scores")
        model.calibration_scores_ = None if scores is None else scores.numpy()
        means = tensors.get("calibration_means")  # files before the whole-image check have none
        model.calibration_means_ = None if means is None else means.numpy()
        model.calibrator_ = None
        model.map_floor_ = meta.get("map_floor")
        model.whole_image_ = None if meta.get("whole_image") is None else WholeImageRule.from_dict(meta["whole_image"])
        # Files written before value ranges have none: None maps each image by its pixel type's
        # full scale, which is exactly how they were fitted (0..255 for 8-bit data).
        stored_range = meta.get("value_range")
        model.value_range_ = None if stored_range is None else as_value_range(stored_range)
        model.value_kind_ = meta.get("value_kind")
        auto = meta.get("auto") or {}
        model.auto_table_, model.auto_choice_ = auto.get("table"), auto.get("choice")
        if meta.get("calibrator"):
            model.calibrator_ = Calibrator.from_dict(meta["calibrator"])
    except _INVALID as exc:
        raise ModelFileError(f"'{path}': model file is incomplete or invalid ({first_line(exc)})") from None
    p, d = model.n_gaussians_, model.n_features_
    g = model.gaussian_
    stored = (p, d * (d + 1) // 2) if g.packed is not None else (p, d, d)
    found = tuple((g.packed if g.packed is not None else g.whitener).shape)
    if tuple(g.mean.shape) != (p, d) or found != stored or (g.scale is not None and tuple(g.scale.shape) != (p,)):
        raise ModelFileError(f"'{path}': tensor shapes do not match the metadata")
    return model
