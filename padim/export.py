"""Export a fitted model's scoring core (:class:`padim.net.ScoringNet`) to ONNX or OpenVINO IR.

The graph takes ``image``: float32 ``[N, 3, H, W]``, RGB in [0, 1] at the model's input size
(static H and W, dynamic N) and returns ``anomaly_map`` ``[N, H, W]`` and ``score`` ``[N]``.
Everything else a deployment needs — how to read and resize images, the value range, the
calibration and threshold — is stored as JSON metadata (ONNX ``metadata_props`` key
``padim``; OpenVINO ``rt_info`` key ``padim``) and used by :mod:`padim.runtime`.

The Gaussians' whitener travels as the model file stores it — packed lower triangle, float16
times a power-of-two scale per Gaussian — and a constant ``Gather`` rebuilds the dense float32
matrix, which ONNX Runtime folds once at load: the same scores the torch model gives, a
quarter of a dense float32 file. ``fp16`` also stores the backbone's weights in float16 (a
``Cast`` after each), computing in float32; scores stay within 1e-2 relative. A tiled model's
graph takes the whole image too: it pads it, runs the backbone on one tile after the other
(the trace unrolls the loop over the model's fixed tile layout, the weights stored once) and
stitches the tiles' features, as the estimator does (:class:`padim.net.TiledEmbedder`). The
metadata's ``max_batch`` caps the images per engine call: at the images per batch of the fit's
memory plan, and at one for a tiled model (whose traced head, unlike the estimator's, holds the
whole feature grid's temporaries at once: 2.5–3 GB per 12-megapixel image, RESULTS.md §38).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .errors import first_line
from .io import naming_path
from .modelfile import ModelFileError
from .net import Embedder, ScoreHead, ScoringNet

METADATA_KEY = "padim"
EXPORT_FORMAT = "padim-export"
EXPORT_VERSION = 1
OPSET = 17
RESIZE_RULE = ("whole image resized to the input size (aspect not kept): area averaging when shrinking, "
               "bilinear when enlarging, as OpenCV INTER_AREA / INTER_LINEAR on 8-bit RGB")
VALUE_RANGE_RULE = ("stored values mapped to [0, 1] by value_range (lo → 0, hi → 1, clipped) for images of "
                    "pixel kind value_kind; otherwise (or when value_range is null) by the pixel type's full scale")
FORMATS = ("onnx", "openvino")


class ExportError(ValueError):
    """A model that cannot be exported, with what to do instead."""


def export_metadata(model, fp16: bool) -> dict:
    """What a runtime needs besides the graph (JSON-serialisable)."""
    from .fingerprint import model_fingerprint

    cal = model.calibrator_
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "padim_version": __version__,
        "input_name": "image",
        "output_names": ["anomaly_map", "score"],
        "input_size": list(model.input_size_),
        "resize": RESIZE_RULE,
        "value_range": None if model.value_range_ is None else [float(v) for v in model.value_range_],
        "value_kind": model.value_kind_,
        "value_rule": VALUE_RANGE_RULE,
        "channels": "RGB",
        "threshold": None if cal is None else float(cal.threshold_),
        "calibrator": None if cal is None else cal.to_dict(),
        "map_floor": None if model.map_floor_ is None else float(model.map_floor_),
        "whole_image": None if getattr(model, "whole_image_", None) is None else model.whole_image_.to_dict(),
        "keep_aspect": model._checks_aspect(),  # the runtime warns of images of another aspect ratio
        "backbone": model.backbone,
        "layers": list(model.layers_),
        "cell": model.cell_,
        "blur_sigma": model.blur_sigma,
        "fp16": bool(fp16),
        "tiles": tiles_metadata(model),
        "max_batch": model.geometry_.max_images,
        "model_fingerprint": model_fingerprint(model),
    }


def tiles_metadata(model) -> dict | None:
    """How a tiled model's graph cuts its input (None: untiled)."""
    g = model.geometry_
    if not g.tiled:
        return None
    layout = g.layout()
    return {"tile": g.tile, "overlap": g.margin, "grid": [layout.tiles_y, layout.tiles_x]}


def check_exportable(model) -> None:
    """Raise :class:`ExportError` saying why ``model`` cannot be exported, and what to do."""
    if not hasattr(model, "gaussian_"):
        raise ExportError("the model is not fitted; fit it (padim fit) before exporting")


def export_net(model, whitener: torch.Tensor | None = None) -> ScoringNet:
    """The model's scoring core on the CPU with a plain backbone (no oneDNN-only fused operators);
    with ``whitener``, that tensor in place of the model's dense one (see :func:`_trace_onnx`)."""
    try:
        backbone = model.fitted_backbone(prepare=False)
    except ModelFileError as exc:  # weights other than the fitted ones
        raise ExportError(first_line(exc)) from None
    embedder = model.image_embedder(Embedder(backbone, model.spec, model.layers_, model.channel_index_,
                                                   channels_last=False))
    gaussian = model.gaussian_.to("cpu")
    head = ScoreHead(gaussian.mean, gaussian.whitener if whitener is None else whitener, model.cell_, model.input_size_,
                               model.geometry_.stride, model.blur_sigma)
    return ScoringNet(embedder, head, getattr(model, "whole_image_", None)).eval()


def export_model(model, out: str | Path, fmt: str = "onnx", fp16: bool = False) -> Path:
    """Write ``model`` (a fitted :class:`padim.PaDiM`) as ONNX (``.onnx``) or OpenVINO IR
    (``.xml`` + ``.bin``) with its metadata; returns the path written. ``out`` takes the format's
    suffix if it has another one: scoring recognises an export by its suffix."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from: {', '.join(FORMATS)}")
    check_exportable(model)
    out = Path(out)
    metadata = export_metadata(model, fp16)
    if fmt == "onnx":
        out = out if out.suffix.lower() == ".onnx" else out.with_suffix(".onnx")
        _write_onnx(model, out, metadata, fp16)
        return out
    return _write_openvino(model, out, metadata, fp16)


WHITENER_INPUT = "whitener"  # the traced graph's second input; store_whitener_packed replaces it


class _WhitenerAsInput(torch.nn.Module):
    """A scoring net whose head takes its whitener from a second input while it is traced: the
    tracer then holds no ``[G, d, d]`` constant, nor the transposed copy it would fold from it."""

    def __init__(self, net: ScoringNet):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, whitener: torch.Tensor):
        self.net.head.whitener = whitener
        return self.net(image)


def _trace_onnx(model, path: Path) -> None:
    """Trace ``model``'s :func:`export_net` to ONNX at ``path``, its whitener a graph input
    (:data:`WHITENER_INPUT`) given as a zero-strided stand-in of its shape (4 bytes): the dense
    float32 whitener (991 MiB for a 12 MP model) and the tracer's folded copy of it are never
    made. The export's peak was inside this trace (RESULTS.md §45)."""
    import warnings

    g, d = model.gaussian_.num_positions, model.gaussian_.dim
    stand_in = torch.zeros(1, d, d).expand(g, d, d)
    net = _WhitenerAsInput(export_net(model, whitener=stand_in)).eval()
    h, w = model.input_size_
    dummy = torch.rand(1, 3, h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape checks that hold for every N
        torch.onnx.export(net, (dummy, stand_in), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["image", WHITENER_INPUT], output_names=["anomaly_map", "score"],
                          dynamic_axes={"image": {0: "N"}, "anomaly_map": {0: "N"}, "score": {0: "N"}},
                          do_constant_folding=True)


def _write_onnx(model, out: Path, metadata: dict, fp16: bool) -> None:
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    with naming_path(out), tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        traced = Path(tmp) / "traced.onnx"
        _trace_onnx(model, traced)
        graph = onnx.load(str(traced))
        set_output_shapes(graph, model.input_size_)
        store_whitener_packed(graph, model.gaussian_)
        if fp16:
            store_initializers_as_float16(graph)
        set_metadata(graph, metadata)
        staged = Path(tmp) / out.name
        large = graph.ByteSize() > 2**31 - 2**20
        onnx.save_model(graph, str(staged), save_as_external_data=large, all_tensors_to_one_file=True,
                        location=out.name + ".data")
        if large:
            os.replace(Path(tmp) / (out.name + ".data"), out.parent / (out.name + ".data"))
        os.replace(staged, out)


def set_output_shapes(graph, input_size) -> None:
    """Declare ``anomaly_map [N, H, W]`` and ``score [N]`` (the tracer cannot infer H, W through Resize)."""
    shapes = {"anomaly_map": ["N", *input_size], "score": ["N"]}
    for output in graph.graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for value in shapes[output.name]:
            dim = dims.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = int(value)


def set_metadata(graph, metadata: dict) -> None:
    """Store ``metadata`` as JSON under ``padim``, plus a few plain keys for other tools."""
    del graph.metadata_props[:]
    plain = {METADATA_KEY: json.dumps(metadata), "padim_version": metadata["padim_version"],
             "input_size": "x".join(map(str, metadata["input_size"])),
             "threshold": "" if metadata["threshold"] is None else repr(metadata["threshold"])}
    for key, value in plain.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value


PACKED_SUFFIX = "__packed"


def name_is_exact(name: str) -> bool:
    return name.endswith(PACKED_SUFFIX + "_scale")


def store_whitener_packed(graph, gaussian) -> None:
    """Put the model file's packed lower triangle (float16, or float32 rows for old files) and a
    ``Gather`` + ``Cast`` that rebuild the dense transposed whitener in place of the traced graph's
    whitener input (:data:`WHITENER_INPUT`) and its ``Transpose``: the same float32 values, a
    quarter of the bytes. Their inputs are all constants, so ONNX Runtime folds them once at load.
    The per-Gaussian power-of-two scale multiplies the distance (``[G, S]``) instead of the matrix
    (exact either way): every folded intermediate is a full-size copy that ONNX Runtime keeps until
    the end of the load, so the fewer steps, the lower its peak memory (RESULTS.md §33)."""
    from onnx import TensorProto, helper, numpy_helper

    g, d = gaussian.num_positions, gaussian.dim
    inputs = [i for i in graph.graph.input if i.name == WHITENER_INPUT]
    readers = [node for node in graph.graph.node if WHITENER_INPUT in node.input]
    if len(inputs) != 1 or len(readers) != 1 or readers[0].op_type != "Transpose" \
            or [list(a.ints) for a in readers[0].attribute if a.name == "perm"] != [[0, 2, 1]]:
        raise ExportError(f"internal: expected the traced whitener input to feed one Transpose, found "
                          f"{[node.op_type for node in readers]}")
    transpose = readers[0]
    target = transpose.output[0]
    products = [node for node in graph.graph.node if node.op_type == "MatMul" and list(node.input)[1:] == [target]]
    if len(products) != 1 or sum(target in node.input for node in graph.graph.node) != 1:
        raise ExportError(f"internal: expected the whitener to feed one MatMul, found {len(products)}")
    graph.graph.input.remove(inputs[0])
    graph.graph.node.remove(transpose)
    padded, gather = packed_whitener_gather(gaussian)
    base = target + PACKED_SUFFIX
    bounds = whitener_chunks(g, d)
    new_inits, nodes = [numpy_helper.from_array(gather, base + "_index")], []
    old = list(graph.graph.node)
    if len(bounds) == 1:
        new_inits.insert(0, numpy_helper.from_array(padded, base))
        nodes += [helper.make_node("Gather", [base, base + "_index"], [base + "_dense"], axis=1),
                  helper.make_node("Cast", [base + "_dense"], [target], to=TensorProto.FLOAT)]
    else:  # each chunk folds on its own; the product is split along the Gaussians and concatenated
        product, parts = products[0], []
        for k, (start, stop) in enumerate(bounds):
            name = f"{base}{k}"
            new_inits.append(numpy_helper.from_array(padded[start:stop], name))
            nodes += [helper.make_node("Gather", [name, base + "_index"], [name + "_dense"], axis=1),
                      helper.make_node("Cast", [name + "_dense"], [name + "_float"], to=TensorProto.FLOAT)]
            parts.append(name)
        new_inits.append(numpy_helper.from_array(np.array([b - a for a, b in bounds], np.int64), base + "_sizes"))
        chunked = [helper.make_node("Split", [product.input[0], base + "_sizes"], [p + "_in" for p in parts], axis=0)]
        chunked += [helper.make_node("MatMul", [p + "_in", p + "_float"], [p + "_out"]) for p in parts]
        chunked.append(helper.make_node("Concat", [p + "_out" for p in parts], [product.output[0]], axis=0))
        at = old.index(product)
        old[at:at + 1] = chunked
    if gaussian.scale is not None:  # ‖L⁻¹(x − μ)‖·s, right after the square root (topological order kept)
        root = _distance_root(old, products[0])
        new_inits.append(numpy_helper.from_array(gaussian.scale.cpu().numpy().astype(np.float32).reshape(g, 1),
                                                 base + "_scale"))
        for node in old:
            node.input[:] = [base + "_scaled_distance" if x == root.output[0] else x for x in node.input]
        for output in graph.graph.output:
            if output.name == root.output[0]:
                raise ExportError("internal: the distance is a graph output")
        old.insert(old.index(root) + 1, helper.make_node("Mul", [root.output[0], base + "_scale"],
                                                         [base + "_scaled_distance"]))
    graph.graph.initializer.extend(new_inits)
    del graph.graph.node[:]
    graph.graph.node.extend(nodes + old)


def sample_gaussians(g: int) -> np.ndarray:
    """Eight Gaussians spread over ``g`` (all when fewer): a whitener constant is recognised by
    its shape and their rows, so that finding it copies no dense matrix."""
    return np.unique(np.linspace(0, g - 1, 8).round().astype(int))


ONE_PIECE_MAX_BYTES = 2**29  # a whitener up to this size is rebuilt in one piece
WHITENER_CHUNK_BYTES = 2**28  # else in pieces of at most this (ONNX Runtime folds none over 1 GiB)


def whitener_chunks(g: int, d: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of Gaussians whose dense float32 ``[., d, d]`` whitener is rebuilt
    by one ``Gather``: all G in one while it is at most ``ONE_PIECE_MAX_BYTES``, else in chunks of
    at most ``WHITENER_CHUNK_BYTES``. ONNX Runtime folds each piece into a constant when it loads
    the file, holding a piece twice meanwhile, and leaves one over 1 GiB unfolded, warning three
    times at every load (its constant_folding.cc). Pieces of 256 MiB lowered the load peak of a 12 MP model
    (991 MiB whitener) from 2.35 to 1.97 GB at the same resident memory and speed; 128 MiB held
    0.1–0.3 GB more resident (RESULTS.md §38, §43)."""
    dense = g * d * d * 4
    if dense <= ONE_PIECE_MAX_BYTES:
        return [(0, g)]
    count = -(-dense // WHITENER_CHUNK_BYTES)
    edges = np.linspace(0, g, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def packed_whitener_gather(gaussian) -> tuple[np.ndarray, np.ndarray]:
    """The model file's packed lower triangles with a zero column in front, ``[G, 1 + d(d+1)/2]``,
    and the ``[d, d]`` indices whose ``Gather`` along axis 1 rebuilds the transposed whitener."""
    packed = gaussian.packed
    if packed is None:
        from .gaussian import pack_whitener

        packed = pack_whitener(gaussian.whitener)
    packed = packed.cpu().numpy()
    g, d = packed.shape[0], gaussian.dim
    padded = np.concatenate([np.zeros((g, 1), packed.dtype), packed], axis=1)  # column 0: the upper triangle
    # dense_t[g, i, j] = L⁻¹[g, j, i]: packed entry j(j+1)/2 + i where j ≥ i (shifted by the zero column), else 0
    i, j = np.divmod(np.arange(d * d), d)
    gather = np.where(j >= i, 1 + j * (j + 1) // 2 + i, 0).astype(np.int64).reshape(d, d)
    return padded, gather


def store_openvino_whitener_packed(ov_model, gaussian) -> None:
    """OpenVINO's conversion folds the ONNX graph's ``Gather`` + ``Cast`` (see
    :func:`store_whitener_packed`) into one dense float32 ``[G, d, d]`` constant (one per chunk of a
    large whitener, :func:`whitener_chunks`): an IR four times
    the ONNX file. Put the packed rows and the ``Gather`` back in its place: the IR is as small as
    the ONNX file, and the CPU plugin folds them once when the model is compiled, to the same
    values (RESULTS.md §36)."""
    from openvino import Type
    from openvino import opset13 as ops

    padded, gather = packed_whitener_gather(gaussian)
    d = gather.shape[0]
    constants = [node for node in ov_model.get_ordered_ops() if node.get_type_name() == "Constant"
                 and len(node.get_output_shape(0)) == 3 and list(node.get_output_shape(0))[1:] == [d, d]]
    for start, stop in whitener_chunks(padded.shape[0], d):  # one folded constant per chunk
        sample = sample_gaussians(stop - start)  # as store_whitener_packed recognises it
        folded = padded[start + sample][:, gather].astype(np.float32)  # what the conversion folded (scale later)
        found = [node for node in constants if list(node.get_output_shape(0)) == [stop - start, d, d]
                 and np.array_equal(node.get_data()[sample], folded)]
        if len(found) != 1:
            raise ExportError(f"internal: expected one dense whitener constant of shape {[stop - start, d, d]} in "
                              f"the OpenVINO model, found {len(found)}")
        dense = ops.convert(ops.gather(ops.constant(padded[start:stop]), ops.constant(gather),
                                       ops.constant(np.int64(1))), Type.f32)
        for reader in list(found[0].output(0).get_target_inputs()):
            reader.replace_source_output(dense.output(0))


def _distance_root(nodes, product):
    """The ``Sqrt`` that ends ``‖whitened‖`` after ``product``, the whitening ``MatMul``: the
    traced chain square, sum, clamp, square root, each node the only reader of the one before."""
    node = product
    for _ in range(6):
        readers = [n for n in nodes if node.output[0] in n.input]
        if len(readers) != 1 or readers[0].op_type not in ("Mul", "Pow", "ReduceSum", "Clip", "Max", "Relu", "Sqrt"):
            break
        node = readers[0]
        if node.op_type == "Sqrt":
            return node
    raise ExportError("internal: no square root of the whitened distance after the whitening MatMul")


def store_initializers_as_float16(graph) -> None:
    """Every float32 initialiser becomes float16 followed by a ``Cast`` back to float32 under its
    old name: the file halves, arithmetic stays float32 (ONNX Runtime folds the casts at load)."""
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    for init in graph.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size < 16 or name_is_exact(init.name):  # tiny constants; power-of-two scales stay float32
            continue
        name = init.name
        half = numpy_helper.from_array(values.astype(np.float16), name + "__fp16")
        init.CopyFrom(half)
        casts.append(helper.make_node("Cast", [name + "__fp16"], [name], to=TensorProto.FLOAT,
                                      name=name + "__to_fp32"))
    nodes = list(graph.graph.node)
    del graph.graph.node[:]
    graph.graph.node.extend(casts + nodes)


def _write_openvino(model, out: Path, metadata: dict, fp16: bool) -> Path:
    try:
        import openvino as ov
    except ImportError:
        raise ExportError("OpenVINO export needs the package 'openvino': pip install 'padim[openvino]'") from None
    xml = out if out.suffix == ".xml" else out.with_suffix(".xml")  # OpenVINO saves to a lower-case .xml only
    xml.parent.mkdir(parents=True, exist_ok=True)
    with naming_path(xml), tempfile.TemporaryDirectory(dir=xml.parent) as tmp:
        staged = Path(tmp) / "staged.onnx"
        _write_onnx(model, staged, metadata, False)
        ov_model = ov.convert_model(str(staged))
        store_openvino_whitener_packed(ov_model, model.gaussian_)
        ov_model.set_rt_info(json.dumps(metadata), [METADATA_KEY])
        ov.save_model(ov_model, str(xml), compress_to_fp16=bool(fp16))
    return xml
