"""Model files that cannot run code: safetensors tensors plus JSON metadata with a format version."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import first_line
from .io import atomic_write_bytes
from .runtime import is_exported_model

FORMAT_NAME = "padim-model"
FORMAT_VERSION = 2  # 2: whitener as packed float16 lower triangle + per-position scale
READABLE_VERSIONS = (1, 2)
_META_KEY = "padim"


class ModelFileError(ValueError):
    """A model file is missing, truncated, corrupted, foreign or of an unknown version."""


def write_model_file(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write tensors and metadata to ``path`` atomically."""
    from safetensors.torch import save

    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **metadata}
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata={_META_KEY: json.dumps(header)})
    atomic_write_bytes(path, blob)


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a model file, or a :class:`ModelFileError` naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"'{path}': no such model file")
    if is_exported_model(path):
        raise ModelFileError(f"'{path}': an exported model; this needs the model file it was exported from "
                             f"(padim score, eval, info and serve, and padim.runtime.ExportedModel, take exports)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            raw = (handle.metadata() or {}).get(_META_KEY)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for broken files
        raise ModelFileError(f"'{path}': not a readable padim model file ({first_line(exc)})") from None
    if raw is None:
        raise ModelFileError(f"'{path}': a safetensors file, but not a padim model (no padim metadata)")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError:
        raise ModelFileError(f"'{path}': padim metadata is corrupted") from None
    if not isinstance(metadata, dict):
        raise ModelFileError(f"'{path}': padim metadata is corrupted (not a JSON object)")
    if metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(f"'{path}': not a padim model file")
    version = metadata.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ModelFileError(
            f"'{path}': model format version {version} is not supported by this padim "
            f"(reads versions {', '.join(map(str, READABLE_VERSIONS))}); refit or upgrade padim"
        )
    return tensors, metadata
