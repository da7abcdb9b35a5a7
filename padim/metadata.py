"""What a model file's metadata and tensors must hold, and an export's metadata, checked once
when the file is loaded.

A corrupted or hand-edited file then fails in ``PaDiM.load`` with one line naming the field,
instead of later, mid-scoring, with a TypeError from deep inside the code, or worse with scores
that are silently wrong (a NaN mean, a float16 whitener read without its scale, a value kind
nobody knows). :func:`check_metadata` and :func:`check_tensors` raise ``ValueError("<field>:
<what is wrong>")``, which ``padim.persistence.load_model`` turns into a
:class:`padim.modelfile.ModelFileError` naming the file; :func:`check_export_metadata` serves
``padim.runtime``, so this module imports torch only inside :func:`check_tensors`. Fields a
file may lack (older files) are checked only when present.
"""

from __future__ import annotations

import json
import math

from .value_range import KIND_NAMES, as_value_range
from .whole_image import WholeImageRule


def is_int(value, low: int = 0) -> bool:
    """An integer (not a bool) ≥ ``low``, as JSON gives it."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_number(value, low: float = -math.inf, above: bool = False) -> bool:
    """A finite real (not a bool) ≥ ``low`` (> ``low`` with ``above``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value > low if above else value >= low


def _is_height_width(value) -> bool:
    """``[height, width]`` of integers ≥ 1 (an input size)."""
    return isinstance(value, list) and len(value) == 2 and all(is_int(v, 1) for v in value)


def _is_size(value) -> bool:
    """An image side or ``[height, width]``, positive numbers (the size rule takes floats)."""
    positive = lambda v: is_number(v, 0, above=True)  # noqa: E731
    return positive(value) or (isinstance(value, list) and len(value) == 2 and all(map(positive, value)))


def _parses(parse, value) -> bool:
    """Whether ``parse(value)`` accepts the value (a memory size, a value range)."""
    try:
        parse(value)
    except (TypeError, ValueError):
        return False
    return True


def _need(ok: bool, field: str, expected: str, value, shown: str | None = None) -> None:
    """``ValueError("<field>: expected <expected>, got <value>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{field}: expected {expected}, got {shown or repr(value)}"[:200])


def _dict(meta: dict, key: str, optional: bool = True) -> dict:
    value = meta.get(key)
    if value is None and optional:
        return {}
    _need(isinstance(value, dict), key, "a JSON object", value)
    return value


# (field, test, what it must be); a field a file lacks takes the constructor's default. These are
# what a refit uses: as lenient as a fit that succeeded with them may have been.
_PARAMS = (
    ("layers", lambda v: v is None or (isinstance(v, list) and v and all(isinstance(x, str) for x in v)),
     "null or a list of hook point names"),
    ("d", lambda v: v is None or is_int(v), "null or an integer ≥ 0"),  # 0: all channels
    ("image_size", _is_size, "a side or [height, width] > 0"),
    ("keep_aspect", lambda v: isinstance(v, bool), "true or false"),
    ("eps", lambda v: is_number(v, 0), "a number ≥ 0"),
    ("blur_sigma", lambda v: is_number(v, 0) and v <= 1e4, "a number in [0, 10000]"),  # kernel side 8σ
    ("seed", lambda v: v is None or is_int(v), "null or an integer ≥ 0"),
    ("calibration_folds", is_int, "an integer ≥ 0"),
    ("max_false_reject", lambda v: is_number(v, 0) and v <= 1, "a number in [0, 1]"),  # unused without folds
    ("tile", lambda v: v is None or v == "auto" or v is True or is_number(v, 1), "null, 'auto' or a side ≥ 1"),
    ("overlap", lambda v: v is None or is_number(v, 0), "null or a number ≥ 0"),
    ("scale", lambda v: v is None or is_number(v, 0, above=True), "null or a number > 0"),
    ("cell", lambda v: v in ("auto", "image") or is_int(v, 1), "'auto', 'image' or an integer ≥ 1"),
    ("max_memory", lambda v: v is None or _parses(_parse_memory, v), "null or a memory size"),
    ("value_range", lambda v: v in (None, "auto") or _parses(as_value_range, v), "null, 'auto' or [lo, hi]"),
    ("whole_image", lambda v: isinstance(v, bool), "true or false"),
)
_GEOMETRY = (
    ("input_size", _is_height_width, "[height, width] of integers ≥ 1", True),
    ("stride", lambda v: is_int(v, 1), "an integer ≥ 1", True),
    ("multiple", lambda v: is_int(v, 1), "an integer ≥ 1", True),
    ("tile", lambda v: v is None or is_int(v, 1), "null or an integer ≥ 1", False),
    ("margin", is_int, "an integer ≥ 0", False),
    ("scale", lambda v: v is None or is_number(v, 0, above=True), "null or a number > 0", False),
    ("batch", is_int, "an integer ≥ 0", False),
)
_COUNTS = ("gaussians", "d", "batch_size", "feature_positions")  # memory plan fields that count things


def _parse_memory(value) -> int:
    from .memory import parse_memory

    return parse_memory(value)


def _check_value_fields(meta: dict) -> None:
    """The fields a model file and an export share: value range and kind, map floor, calibrator,
    whole-image rule."""
    floor = meta.get("map_floor")
    _need(floor is None or is_number(floor), "map_floor", "null or a finite number", floor)
    if meta.get("value_range") is not None:
        as_value_range(meta["value_range"], where="value_range")
    kind = meta.get("value_kind")
    _need(kind is None or (isinstance(kind, str) and kind in KIND_NAMES), "value_kind",
          f"null or one of {', '.join(KIND_NAMES)}", kind)
    _dict(meta, "calibrator")  # its fields: Calibrator.from_dict
    if meta.get("whole_image") is not None:
        WholeImageRule.from_dict(meta["whole_image"])  # ValueError("whole_image.<field>: …")


def check_export_metadata(meta) -> None:
    """The fields of an export's metadata (a dict) that ``padim.runtime.ExportedModel`` uses."""
    _need(_is_height_width(meta.get("input_size")), "input_size", "[height, width] of integers ≥ 1",
          meta.get("input_size"))
    _need(isinstance(meta.get("model_fingerprint"), str), "model_fingerprint", "a string", meta.get("model_fingerprint"))
    _need(meta.get("max_batch") is None or is_int(meta.get("max_batch"), 1), "max_batch", "null or an integer ≥ 1",
          meta.get("max_batch"))
    _need(meta.get("tiles") is None or isinstance(meta.get("tiles"), dict), "tiles", "null or an object",
          meta.get("tiles"))
    _check_value_fields(meta)


def check_metadata(meta) -> None:
    """Every field of a model file's metadata (a dict: ``read_model_file``) that loading and
    scoring use, by type and range."""
    from .backbones import get_spec

    params = _dict(meta, "params", optional=False)
    backbone = params.get("backbone")
    _need(isinstance(backbone, str), "params.backbone", "a backbone name", backbone)
    spec = get_spec(backbone)
    for key, test, expected in _PARAMS:
        if key in params:
            _need(test(params[key]), f"params.{key}", expected, params[key])
    layers = meta.get("layers")
    _need(isinstance(layers, list) and layers and all(isinstance(x, str) for x in layers), "layers",
          "a list of hook point names", layers)
    for name in layers:
        spec.hook_point(name)  # ValueError naming the backbone's hook points
    geometry = _dict(meta, "geometry", optional=False)
    for key, test, expected, required in _GEOMETRY:
        if required or key in geometry:
            _need(key in geometry and test(geometry[key]), f"geometry.{key}", expected, geometry.get(key))
    cell = meta.get("cell")
    _need(cell == "image" or is_int(cell, 1), "cell", "'image' or an integer ≥ 1", cell)
    for key in ("n_features", "n_train"):
        _need(is_int(meta.get(key), 1), key, "an integer ≥ 1", meta.get(key))
    _need(is_number(meta.get("regularisation"), 0), "regularisation", "a number ≥ 0", meta.get("regularisation"))
    for key, value in _dict(meta, "memory_plan").items():
        if key == "downdate":
            _need(isinstance(value, bool), "memory_plan.downdate", "true or false", value)
        elif key != "peak":  # written for reading, recomputed from the parts
            counts = key in _COUNTS
            _need(is_int(value, 1) if counts else is_number(value, 0), f"memory_plan.{key}",
                  "an integer ≥ 1" if counts else "a number of bytes ≥ 0", value)
    for key in ("backbone_fingerprint", "backbone_weights_file"):
        _need(meta.get(key) is None or isinstance(meta[key], str), key, "null or a string", meta.get(key))
    _check_value_fields(meta)
    auto = _dict(meta, "auto")
    if auto:
        table, choice = auto.get("table"), auto.get("choice")
        _need(isinstance(table, list) and all(isinstance(row, dict) and isinstance(row.get("name"), str)
                                              for row in table), "auto.table", "a list of named rows", table)
        _need(isinstance(choice, str), "auto.choice", "a candidate name", choice)


def check_tensors(tensors: dict, meta: dict) -> None:
    """The stored tensors: present, of a float (or, for the channels, integer) type, finite, and
    the channel selection within the hooked layers' channels. Shapes: ``load_model``."""
    import torch

    from .backbones import get_spec

    whitener = "whitener_packed" if "whitener_packed" in tensors else "whitener"
    for key in ("mean", whitener):
        _need(key in tensors, key, "a tensor", None, "none")
    for key in ("mean", whitener, "whitener_scale", "calibration_scores", "calibration_means"):
        if key in tensors:
            tensor = tensors[key]
            _need(tensor.is_floating_point(), key, "a float tensor", None, str(tensor.dtype))
            _need(bool(torch.isfinite(tensor).all()), key, "finite values", None, "NaN or infinity")
    if "calibration_means" in tensors:
        scores = tensors.get("calibration_scores")
        _need(scores is not None and scores.shape == tensors["calibration_means"].shape, "calibration_means",
              "one mean per calibration score", None, str(tuple(tensors["calibration_means"].shape)))
    if whitener == "whitener_packed" and tensors[whitener].dtype == torch.float16:
        _need("whitener_scale" in tensors, "whitener_scale", "a tensor beside the float16 whitener", None, "none")
    if "whitener_scale" in tensors:
        _need(bool((tensors["whitener_scale"] > 0).all()), "whitener_scale", "positive values", None, "values ≤ 0")
    channels = tensors.get("channel_index")
    spec = get_spec(meta["params"]["backbone"])
    total = sum(spec.hook_point(name).channels for name in meta["layers"])
    if channels is None:
        _need(meta["n_features"] == total, "channel_index", f"a tensor (the model keeps {meta['n_features']} "
              f"of the layers' {total} channels)", None, "none")
        return
    _need(not channels.is_floating_point() and channels.dtype != torch.bool and channels.dim() == 1,
          "channel_index", "a 1-D integer tensor", None, f"{channels.dim()}-D {channels.dtype}")
    _need(channels.numel() == meta["n_features"], "channel_index", f"{meta['n_features']} channels", channels.numel())
    in_range = channels.numel() == 0 or (int(channels.min()) >= 0 and int(channels.max()) < total)
    _need(in_range and channels.unique().numel() == channels.numel(), "channel_index",
          f"distinct channels in 0..{total - 1}", None, "others")


def format_description(info: dict) -> str:
    """A model's ``describe()`` as ``padim info`` prints it: one ``key: value`` line per field."""
    return "\n".join(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in info.items())
