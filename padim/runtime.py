"""Score images with an exported model, without torch (``pip install 'padim[runtime]'``).

:class:`ExportedModel` loads a file written by ``padim export`` — ONNX through onnxruntime, or
OpenVINO IR (``.xml``) through openvino — reads its metadata, reads and resizes images as the
fitted model did (same value range, same resize), and returns per image the score, the defect
probability, the OK/NG label and the anomaly map at the image's original size. It offers the
estimator's scoring interface (``iter_results``, ``calibrator_``, …), so
:func:`padim.workflows.score_folder` writes the same TSV from it as from a torch model.

This module must not import torch (tests check it in a fresh interpreter).
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from .errors import first_line
from .image_checks import some_aspect_warning
from .image_result import NO_CALIBRATION, ImageResult, ScoringMethods
from .io import ImageReadError, load_image
from .sources import as_sources
from .metadata import check_export_metadata
from .value_range import as_value_range
from .whole_image import NO_WHOLE_IMAGE_CHECK, WholeImageRule

METADATA_KEY = "padim"  # as padim.export.METADATA_KEY (not imported: that module needs torch)
EXPORT_FORMAT = "padim-export"


class ExportedModelError(ValueError):
    """An exported model file that is missing, foreign or unreadable."""


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[h, w, 3]`` (uint8 or float in [0, 1]) → float32 ``[3, H, W]`` in [0, 1], resized as
    :class:`padim.data.Resize` does: OpenCV area averaging when shrinking, bilinear when
    enlarging. Without OpenCV, Pillow's box and bilinear filters (they differ at sharp edges:
    below one 8-bit step on average, so scores agree within a few per cent, not exactly)."""
    h, w = size
    if image.shape[:2] != (h, w):
        shrink = h * w < image.shape[0] * image.shape[1]
        try:
            import cv2
        except ImportError:
            image = _pillow_resize(image, (h, w), shrink)
        else:
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    return chw.astype(np.float32) / 255.0 if chw.dtype == np.uint8 else chw.astype(np.float32)


def _pillow_resize(image: np.ndarray, size: tuple[int, int], shrink: bool) -> np.ndarray:
    h, w = size
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((w, h), method))
    planes = [np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F").resize((w, h), method))
              for c in range(image.shape[2])]
    return np.stack(planes, axis=2)


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 map to ``(height, width)`` (as :func:`padim.maps.resize_map`)."""
    h, w = size
    if anomaly_map.shape == (h, w):
        return anomaly_map
    try:
        import cv2
    except ImportError:
        return np.asarray(Image.fromarray(anomaly_map, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    return cv2.resize(anomaly_map, (w, h), interpolation=cv2.INTER_LINEAR)


def _parsed_metadata(path: Path, raw: str):
    try:
        return json.loads(raw)
    except ValueError:
        raise ExportedModelError(f"'{path}': padim metadata is corrupted (not JSON)") from None


def _is_model_file(path: Path) -> bool:
    """Whether ``path`` starts as a .padim file does (safetensors: an 8-byte header length, then
    its JSON), which no ONNX or OpenVINO file does."""
    with open(path, "rb") as f:
        head = f.read(10)
    return len(head) == 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < 2**31


class _OnnxSession:
    def __init__(self, path: Path, threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportedModelError("scoring an .onnx model needs onnxruntime: pip install 'padim[runtime]'") from None
        options = ort.SessionOptions()
        # No memory pattern: ONNX Runtime would lay every intermediate of the first run out in one
        # block for the next runs, +0.3 GB resident for a 1616×1328 graph, +0.8 GB for a tiled one
        # and +1.9 GB at 3872×3200, at no measurable speed gain (RESULTS.md §38)
        options.enable_mem_pattern = False
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ExportedModelError(f"'{path}': not a loadable ONNX model ({first_line(exc)})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ExportedModelError(f"'{path}': an ONNX model, but not exported by padim (no padim metadata)")
        self.metadata = _parsed_metadata(path, raw)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(["anomaly_map", "score"], {"image": images})
        return maps, scores


class _OpenVinoSession:
    def __init__(self, path: Path, threads: int | None):
        try:
            import openvino as ov
        except ImportError:
            raise ExportedModelError("scoring an OpenVINO model needs openvino: pip install 'padim[openvino]'") from None
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ExportedModelError(f"'{path}': not a readable OpenVINO model ({first_line(exc)})") from None
        if not model.has_rt_info([METADATA_KEY]):
            raise ExportedModelError(f"'{path}': an OpenVINO model, but not exported by padim (no padim metadata)")
        self.metadata = _parsed_metadata(path, model.get_rt_info([METADATA_KEY]).astype(str))
        # f32 arithmetic: on CPUs with bf16/AMX units OpenVINO would otherwise pick bf16 (2 % off)
        config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})}
        self.compiled = core.compile_model(model, "CPU", config)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.compiled(images)
        return (np.asarray(out[self.compiled.output("anomaly_map")]),
                np.asarray(out[self.compiled.output("score")]))


def tiles_description(tiles: dict | None) -> str:
    """An export's ``tiles`` metadata in the words of a model file's ``describe()``."""
    if not tiles:
        return "no (whole image resized)"
    grid = "×".join(map(str, tiles.get("grid") or []))
    return f"{tiles.get('tile')} px, overlap {tiles.get('overlap')} px, {grid} tiles in the graph"


class ExportedModel(ScoringMethods):
    """An exported padim model, ready to score: ``ExportedModel("model.onnx").predict(folder)``.

    threads: CPU threads of the inference engine (default: its own choice). batch_size: images
    per engine call. workers: decoding threads, which read and resize the next batch while the
    engine scores this one ("auto": up to 4, one per core; 0: read in the calling thread, one
    batch at a time, which holds half the decoded images). progress: progress bars where a
    workflow shows them (``padim eval``'s metrics).
    """

    def __init__(self, path: str | Path, threads: int | None = None, batch_size: int = 8, progress: bool = False,
                 workers: int | str = "auto"):
        self.path = Path(path)
        self.progress = bool(progress)
        self.workers = min(4, os.cpu_count() or 1) if workers == "auto" else max(0, int(workers))
        self._pool = None
        if not self.path.is_file():
            raise ExportedModelError(f"'{self.path}': no such exported model file")
        if _is_model_file(self.path):
            raise ExportedModelError(f"'{self.path}': a padim model file, not an export: load it with "
                                     f"padim.PaDiM.load, or export it first (padim export)")
        self.batch_size = max(1, int(batch_size))
        self.format = "OpenVINO IR" if self.path.suffix.lower() == ".xml" else "ONNX"  # as is_exported_model
        self._session = (_OpenVinoSession if self.format == "OpenVINO IR" else _OnnxSession)(self.path, threads)
        meta = self.metadata = self._session.metadata
        if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
            raise ExportedModelError(f"'{self.path}': metadata is not a padim export")
        try:
            check_export_metadata(meta)
            self.input_size_ = tuple(meta["input_size"])
            self.value_range_ = None if meta.get("value_range") is None else as_value_range(meta["value_range"])
            self.value_kind_ = meta.get("value_kind")
            self.map_floor_ = meta.get("map_floor")
            self.calibrator_ = None
            if meta.get("calibrator"):
                from .calibration import Calibrator

                self.calibrator_ = Calibrator.from_dict(meta["calibrator"])
            self.whole_image_ = None if meta.get("whole_image") is None else WholeImageRule.from_dict(meta["whole_image"])
            # images per engine call: at most those per batch of the fit's memory plan (one for a
            # tiled model), so that a large model's activations are not multiplied by the batch
            self.max_batch = meta.get("max_batch")
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportedModelError(f"'{self.path}': export metadata is incomplete or invalid "
                                     f"({first_line(exc)})") from None
        # Result files of an export must not be resumed with the torch model's rows (or another format's).
        self.fingerprint_ = f"{meta['model_fingerprint']}:{self.path.suffix.lstrip('.')}{':fp16' if meta.get('fp16') else ''}"

    def describe(self) -> dict:
        """What ``padim info`` and ``padim serve``'s ``/model`` show of the export: its metadata,
        under the names a model file's ``describe()`` uses where they are the same fields."""
        meta = self.metadata
        return {"file": str(self.path), "format": self.format,
                "padim version": meta.get("padim_version"), "backbone": meta.get("backbone"),
                "layers": meta.get("layers"), "input size (h, w)": list(self.input_size_), "cell": meta.get("cell"),
                "blur sigma": meta.get("blur_sigma"),
                "calibration": NO_CALIBRATION if self.calibrator_ is None else self.calibrator_.describe(),
                "whole-image check": (NO_WHOLE_IMAGE_CHECK if self.whole_image_ is None
                                      else self.whole_image_.describe()),
                "value range": meta.get("value_range"), "value kind": meta.get("value_kind"),
                "tiles": tiles_description(meta.get("tiles")),
                "images per engine call": "any" if self.max_batch is None else f"at most {self.max_batch}",
                "fp16": meta.get("fp16"), "model fingerprint": meta.get("model_fingerprint")}

    def _checks_aspect(self) -> bool:
        return bool(self.metadata.get("keep_aspect"))

    def _read(self, source) -> tuple[np.ndarray, np.ndarray]:
        image = load_image(source, keep_uint8=True, value_range=self.value_range_, value_kind=self.value_kind_)
        return resize_rgb(image, self.input_size_), image

    def _reading(self, sources: list, indices: range) -> list:
        """The batch's reads: futures on the decoding threads (started now), or read here and now."""
        if not self.workers:
            return [self._read_now(sources[i]) for i in indices]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="padim-decode")
        return [self._pool.submit(self._read, sources[i]) for i in indices]

    def _read_now(self, source) -> Future:
        """A read made in the calling thread, as a finished future (the same ``result()``)."""
        done = Future()
        try:
            done.set_result(self._read(source))
        except ImageReadError as exc:
            done.set_exception(exc)
        return done

    def iter_results(self, images: Any, maps: bool = True, originals: bool = False) -> Iterator[ImageResult]:
        """Results in input order, ``batch_size`` images per engine call (at most the export's
        ``max_batch``); unreadable images carry an error. With ``originals`` each result holds the
        decoded image too (to draw its heatmap)."""
        sources = as_sources(images)
        size = min(self.batch_size, self.max_batch or self.batch_size)
        batches = [range(start, min(start + size, len(sources))) for start in range(0, len(sources), size)]
        pending = self._reading(sources, batches[0]) if batches else []
        warned = False
        for k, batch in enumerate(batches):
            reads, pending = pending, self._reading(sources, batches[k + 1]) if k + 1 < len(batches) else []
            results, arrays, decoded, indices = {}, [], [], []
            for index, read in zip(batch, reads):
                try:
                    array, image = read.result()
                except ImageReadError as exc:
                    results[index] = ImageResult(index, error=str(exc))
                    continue
                arrays.append(array)
                decoded.append(image)
                indices.append(index)
                if not warned and self._aspect_mismatch([image.shape[:2]]):
                    warned = True
                    warnings.warn(some_aspect_warning(self.input_size_), stacklevel=2)
            if arrays:
                batch_maps, scores = self._session.run(np.stack(arrays))
                for k, index in enumerate(indices):
                    score = float(scores[k])
                    amap = resize_map(batch_maps[k], decoded[k].shape[:2]) if maps else None
                    image = decoded[k] if originals else None
                    results[index] = self._labelled(ImageResult(index, score, amap, image=image))
            for index in sorted(results):
                yield results[index]

    def _labelled(self, result: ImageResult) -> ImageResult:
        if self.calibrator_ is not None:
            result.probability = float(self.calibrator_.probability([result.score])[0])
            result.label = "NG" if bool(self.calibrator_.predict([result.score])[0]) else "OK"
        return result

    def predict(self, images: Any, maps: bool = True) -> list[ImageResult]:
        """Every image's score, probability, label (when calibrated) and map; unreadable ones raise.
        (``PaDiM.predict`` gives the NG flags; ``score_samples``, ``predict_proba`` and
        ``anomaly_maps`` are the same calls on both.)"""
        return self._collect(images, maps)


def score_folder(model_path: str | Path, input_path: str | Path, out: str | Path, **options):
    """``padim score`` for an exported model: the same TSV (see :func:`padim.workflows.score_folder`)."""
    from .workflows import score_folder as run

    runtime = ExportedModel(model_path, threads=options.pop("threads", None),
                            batch_size=options.pop("batch_size", 8))
    return run(runtime, input_path, out, **options)


def is_exported_model(path: str | Path) -> bool:
    """True for file names ``padim export`` writes (.onnx, OpenVINO .xml)."""
    return Path(path).suffix.lower() in (".onnx", ".xml")


def check_export_options(device: str = "auto", weights: str | None = None) -> None:
    """An export runs on the CPU with the backbone it holds: ``--device cuda`` or ``--weights``
    would be ignored, so they are refused rather than silently dropped."""
    if weights:
        raise ExportedModelError(f"--weights applies to .padim models only: an export holds its backbone's weights "
                                 f"(got --weights {weights})")
    if str(device).split(":")[0] not in ("auto", "cpu"):
        raise ExportedModelError(f"an export runs on the CPU (ONNX Runtime / OpenVINO): --device {device} applies to "
                                 f".padim models only")


def load_scoring_model(path: str | Path, *, device: str = "auto", weights: str | None = None,
                       threads: int | None = None, batch_size: int = 8, progress: bool = False,
                       workers: int | str = "auto", **torch_options):
    """What ``padim score``, ``eval`` and ``serve`` score with: an ``.onnx`` / ``.xml`` export as
    :class:`ExportedModel` (torch not imported; the torch-only ``device`` and ``weights`` refused;
    ``workers`` its decoding threads), any other file as :class:`padim.PaDiM` (``workers`` its
    decoding processes; ``torch_options``: its other runtime options)."""
    if is_exported_model(path):
        check_export_options(device=device, weights=weights)
        return ExportedModel(path, threads=threads, batch_size=batch_size, progress=progress, workers=workers)
    from .model import PaDiM

    return PaDiM.load(path, device=device, weights=weights, threads=threads, batch_size=batch_size, progress=progress,
                      workers=workers, **torch_options)

