"""The command line end to end: fit → score → eval on a tiny synthetic MVTec-layout set.

The CLI runs in-process through ``padim.cli.main`` (one model fit shared by the module; tiny
64-px images, one thread, no worker processes); two checks run the real ``padim`` console script.
"""

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import padim.results
from padim import __version__
from padim.cli import CliError, EXAMPLES, main

RUNTIME = ["--device", "cpu", "--workers", "0", "--batch-size", "4", "--quiet", "--threads", "1"]
FIT = ["--image-size", "64", "--d", "50", "--config", "fixed", *RUNTIME]
HEADER = "path\tscore\tprobability\tlabel"


# ----------------------------------------------------------------------------- helpers

def cli(*args):
    """Run ``padim ARGS`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exc:  # argparse: --help, --version, usage errors
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def product(h=64, w=64, seed=0, blob=None, line=False):
    """A smooth product picture (gradients, a dark square, a soft ring) with mild noise.
    ``blob`` = (cy, cx, r) in relative units adds a bright disk; ``line`` a bright diagonal
    scratch. Returns (uint8 HxWx3 image, bool defect mask)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    yr, xr = (y + 0.5) / h, (x + 0.5) / w
    img = np.empty((h, w, 3))
    img[..., 0] = 0.30 + 0.30 * xr
    img[..., 1] = 0.50 - 0.20 * yr
    img[..., 2] = 0.40 + 0.10 * np.sin(3 * xr + 2 * yr)
    img[(np.abs(yr - 0.7) < 0.12) & (np.abs(xr - 0.7) < 0.12)] = (0.15, 0.18, 0.22)
    ring = np.hypot(yr - 0.3, xr - 0.7)
    img[(ring > 0.08) & (ring < 0.13)] *= 0.75
    mask = np.zeros((h, w), dtype=bool)
    if blob is not None:
        cy, cx, r = blob
        mask |= np.hypot((yr - cy) * h, (xr - cx) * w) < r * min(h, w)
    if line:
        mask |= (np.abs(yr - xr) < 0.05) & (xr > 0.15) & (xr < 0.6)
    img[mask] = (0.98, 0.96, 0.92)
    img += rng.normal(0, 0.01, size=(h, w, 3))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), mask


def save(array, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def read_tsv(path):
    return [line.split("\t") for line in Path(path).read_text(encoding="utf-8").splitlines()]


def table(path):
    """Default-format TSV → {path: (score, probability, label)}; checks the header."""
    lines = read_tsv(path)
    assert "\t".join(lines[0]) == HEADER
    return {f[0]: (float(f[1]), float(f[2]), f[3]) for f in lines[1:]}


def journal_names(partial):
    """Image names in a ``.partial`` journal (JSON lines after a provenance header)."""
    header, *records = Path(partial).read_text(encoding="utf-8").splitlines()
    assert json.loads(header)["padim_journal"] == 1
    return [json.loads(record)["path"] for record in records]


def error_lines(err, command):
    """The stderr of a failed command without the memory plan ``fit`` prints first."""
    lines = [line for line in err.splitlines() if not line.startswith("memory")]
    assert lines, f"nothing on stderr for {command}"
    return lines


# ----------------------------------------------------------------------------- data and model

BLOBS = [(0.30, 0.25, 0.12), (0.65, 0.30, 0.11), (0.30, 0.30, 0.13)]
INPUT_NAMES = ["a_good.png", "b_blob.png", "sub/c_good.png", "sub/deeper/d_blob.png", "sub/e_good.png"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An MVTec-layout set (train/good, test/good, test/blob with masks, test/scratch without)
    and a plain input folder with nested sub-folders, three image sizes (one not square: a good
    product of another aspect ratio would look squashed, so that one has a defect anyway) and a
    non-image file."""
    root = tmp_path_factory.mktemp("cli")
    mvtec = root / "mvtec"
    for i in range(10):
        save(product(seed=i)[0], mvtec / "train" / "good" / f"{i:02d}.png")
    (mvtec / "train" / "good" / "readme.txt").write_text("not an image\n")
    for i in range(3):
        save(product(seed=100 + i)[0], mvtec / "test" / "good" / f"{i:02d}.png")
    for i, blob in enumerate(BLOBS):
        img, mask = product(seed=200 + i, blob=blob)
        save(img, mvtec / "test" / "blob" / f"{i:02d}.png")
        save(mask.astype(np.uint8) * 255, mvtec / "ground_truth" / "blob" / f"{i:02d}_mask.png")
    for i in range(2):
        save(product(seed=300 + i, line=True)[0], mvtec / "test" / "scratch" / f"{i:02d}.png")

    inputs = root / "inputs"
    sizes = {"a_good.png": (64, 64), "b_blob.png": (64, 64), "sub/c_good.png": (96, 96),
             "sub/deeper/d_blob.png": (80, 112), "sub/e_good.png": (64, 64)}
    for k, name in enumerate(INPUT_NAMES):
        h, w = sizes[name]
        save(product(h, w, seed=400 + k, blob=(0.3, 0.3, 0.12) if "blob" in name else None)[0], inputs / name)
    (inputs / "notes.txt").write_text("ignored\n")
    return {"root": root, "mvtec": mvtec, "train": mvtec / "train" / "good", "test": mvtec / "test",
            "inputs": inputs, "sizes": sizes}


@pytest.fixture(scope="module")
def fitted(data):
    path = data["root"] / "models" / "model.padim"
    rc, out, err = cli("fit", data["train"], "-o", path, *FIT)
    return {"path": path, "rc": rc, "out": out, "err": err}


@pytest.fixture(scope="module")
def model(fitted):
    from padim import PaDiM

    assert fitted["rc"] == 0, fitted["err"]
    return PaDiM.load(fitted["path"], device="cpu")


@pytest.fixture(scope="module")
def scored_test(data, fitted):
    """``padim score`` of the MVTec test folder (default format), maps in ``scores/maps``."""
    out = data["root"] / "scores" / "test.tsv"
    rc, stdout, err = cli("score", fitted["path"], data["test"], "-o", out, "--save-maps", out.parent / "maps",
                          *RUNTIME)
    assert rc == 0, err
    return out


@pytest.fixture(scope="module")
def scored_inputs(data, fitted):
    """An uninterrupted ``padim score`` of the input folder with maps and heatmaps."""
    root = data["root"] / "full"
    out = root / "scores.tsv"
    rc, stdout, err = cli("score", fitted["path"], data["inputs"], "-o", out, "--save-maps", root / "maps",
                          "--heatmaps", root / "heatmaps", *RUNTIME)
    assert rc == 0, err
    return {"out": out, "maps": root / "maps", "heatmaps": root / "heatmaps", "stdout": stdout, "err": err}


# ----------------------------------------------------------------------------- fit

def test_fit_writes_one_model_file_and_prints_a_memory_estimate(fitted):
    assert fitted["rc"] == 0, fitted["err"]
    assert fitted["path"].is_file()
    assert sorted(p.name for p in fitted["path"].parent.iterdir()) == ["model.padim"]  # no temp files
    plan = [line for line in fitted["err"].splitlines() if line.startswith("memory")]
    assert plan and "peak" in " ".join(plan)
    assert "fitted on 10 images" in fitted["out"]  # readme.txt ignored
    assert "good-only calibration" in fitted["out"]


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write to a full disk: no file name


def test_a_full_disk_is_one_line_naming_the_file(data, fitted, tmp_path, monkeypatch):
    """ENOSPC names no file; the error names the one being written (it was "[Errno 28] No space
    left on device"), and what was written before stays."""
    from matplotlib.figure import Figure

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", _disk_full)
        rc, out, err = cli("fit", data["train"], "-o", tmp_path / "m.padim", *FIT)
    assert rc == 2 and error_lines(err, "fit") == [
        f"padim fit: error: '{tmp_path / 'm.padim'}': cannot write ({os.strerror(errno.ENOSPC)})"]
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(Figure, "savefig", _disk_full)
    rc, out, err = cli("score", fitted["path"], data["inputs"], "-o", tmp_path / "s.tsv",
                       "--heatmaps", tmp_path / "hm", *RUNTIME)
    assert rc == 2 and error_lines(err, "score")[-1] == (
        f"padim score: error: '{tmp_path / 'hm' / 'a_good.png'}': cannot write ({os.strerror(errno.ENOSPC)})")
    assert "Traceback" not in err
    assert list((tmp_path / "hm").iterdir()) == []


def test_a_fit_whose_model_file_cannot_fit_the_disk_is_refused_before_the_work(data, tmp_path, monkeypatch):
    import shutil as shutil_module

    from padim import PaDiM
    from padim.memory import MIB

    def plan_of(images):
        return PaDiM(image_size=64, d=50, config="fixed", device="cpu", progress=False).plan(images)

    real = shutil_module.disk_usage
    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: real(p)._replace(free=MIB // 10))
    rc, out, err = cli("fit", data["train"], "-o", tmp_path / "m.padim", *FIT)
    assert rc == 2 and "fitted" not in out
    (line,) = error_lines(err, "fit")
    assert line.startswith(f"padim fit: error: -o '{tmp_path / 'm.padim'}': the model file needs about ")
    assert f"'{tmp_path}' has 0.1 MiB free" in line and not (tmp_path / "m.padim").exists()
    # the planned size is the file's: per Gaussian a packed float16 whitener, a float32 mean and scale
    monkeypatch.setattr(shutil_module, "disk_usage", real)
    assert cli("fit", data["train"], "-o", tmp_path / "m.padim", *FIT)[0] == 0
    g, d = PaDiM.load(tmp_path / "m.padim", device="cpu").gaussian_.mean.shape
    assert (tmp_path / "m.padim").stat().st_size == pytest.approx(g * (d * (d + 1) + 4 * d + 4), abs=64 * 1024)
    assert plan_of(data["train"]).file_bytes == g * (d * (d + 1) + 4 * d + 4)


def test_a_model_that_cannot_be_written_is_saved_in_the_temporary_folder(data, tmp_path, monkeypatch):
    """The write failing after the fit (the disk filled meanwhile, a larger choice than planned)
    does not throw the fit away."""
    import tempfile

    import padim.modelfile
    from padim import PaDiM
    from padim.io import WriteError

    write = padim.modelfile.atomic_write_bytes

    def full_under_out(path, blob):
        if Path(path).parent == tmp_path / "out":
            raise WriteError(path, os.strerror(errno.ENOSPC), errno.ENOSPC)
        write(path, blob)

    monkeypatch.setattr(padim.modelfile, "atomic_write_bytes", full_under_out)
    (tmp_path / "rescue").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "rescue"))
    rc, out, err = cli("fit", data["train"], "-o", tmp_path / "out" / "m.padim", *FIT)
    assert rc == 2
    (rescued,) = (tmp_path / "rescue").iterdir()
    (line,) = error_lines(err, "fit")
    assert line == (f"padim fit: error: '{tmp_path / 'out' / 'm.padim'}': cannot write ({os.strerror(errno.ENOSPC)}); "
                    f"the fitted model was saved to '{rescued}' instead: move it where it belongs")
    assert PaDiM.load(rescued, device="cpu").calibrator_ is not None


def test_memory_estimate_is_printed_before_fitting_starts(data, tmp_path, monkeypatch):
    from padim.model import PaDiM

    def no_fit(self, *args, **kwargs):
        raise CliError("fit started")

    monkeypatch.setattr(PaDiM, "fit", no_fit)
    rc, out, err = cli("fit", data["train"], "-o", tmp_path / "m.padim", *FIT)
    assert rc == 2
    lines = err.splitlines()
    assert lines[0].startswith("memory")
    assert lines[-1] == "padim fit: error: fit started"
    assert error_lines(err, "fit") == lines[-1:]
    assert not (tmp_path / "m.padim").exists()


def test_fit_calibrates_from_held_out_good_scores(model):
    cal = model.calibrator_
    assert cal.method_ == "good-only"
    assert cal.n_good_ == 10 and model.n_train_ == 10
    assert model.calibration_scores_.shape == (10,)


def test_threshold_without_defects_does_not_flag_every_good_image(model, scored_test):
    """No defects at fit: the threshold lies above the good scores' minimum (and median), and
    the good test images (and nearly all held-out good scores) are OK."""
    threshold = model.calibrator_.threshold_
    good_scores = model.calibration_scores_
    assert threshold > good_scores.min()
    assert threshold > np.median(good_scores)
    assert (good_scores < threshold).mean() >= 0.8
    rows = table(scored_test)
    good = [v for k, v in rows.items() if k.startswith("good/")]
    assert all(label == "OK" for _, _, label in good)
    assert all(score < threshold for score, _, _ in good)


def test_fit_with_unreadable_images_reports_them_exits_1_and_still_writes_the_model(data, tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    for i in range(6):
        shutil.copy(data["train"] / f"{i:02d}.png", train / f"{i:02d}.png")
    (train / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (train / "notes.txt").write_text("ignored")
    out = tmp_path / "m.padim"
    rc, stdout, err = cli("fit", train, "-o", out, *FIT)
    assert rc == 1
    assert out.is_file()
    assert "fitted on 6 images" in stdout
    warnings = [line for line in err.splitlines() if line.startswith("padim: warning:")]
    assert len(warnings) == 1 and "broken.png" in warnings[0]
    assert "notes.txt" not in err
    rc, info, _ = cli("info", out)
    assert rc == 0 and "training images: 6" in info


def test_fit_threshold_overrides_and_score_threshold_overrides_again(data, fitted, tmp_path):
    model_path = tmp_path / "fixed.padim"
    rc, out, err = cli("fit", data["train"], "-o", model_path, "--threshold", "123.5", *FIT)
    assert rc == 0, err
    assert "threshold 123.5" in out
    rc, info, _ = cli("info", model_path)
    assert 'threshold 123.5' in info
    tsv = tmp_path / "s.tsv"
    rc, _, err = cli("score", model_path, data["test"], "-o", tsv, *RUNTIME)
    assert rc == 0, err
    rows = table(tsv)
    assert all(label == ("NG" if score >= 123.5 else "OK") for score, _, label in rows.values())
    # at score time: a threshold between the scores splits them there
    scores = sorted(score for score, _, _ in rows.values())
    cut = (scores[3] + scores[4]) / 2
    rc, _, err = cli("score", model_path, data["test"], "-o", tsv, "--threshold", cut, *RUNTIME)
    assert rc == 0, err
    labels = [label for _, _, label in sorted(table(tsv).values())]
    assert labels == ["OK"] * 4 + ["NG"] * (len(scores) - 4)


def test_val_defects_give_a_logistic_calibration(data, tmp_path):
    model_path = tmp_path / "logistic.padim"
    rc, out, err = cli("fit", data["train"], "-o", model_path, "--val-defects", data["test"] / "blob", *FIT)
    assert rc == 0, err
    assert "logistic calibration" in out
    rc, info, _ = cli("info", model_path)
    assert 'logistic on labelled defects' in info
    tsv = tmp_path / "s.tsv"
    rc, _, err = cli("score", model_path, data["test"], "-o", tsv, *RUNTIME)
    assert rc == 0, err
    rows = table(tsv)
    assert_probabilities_monotone(rows)
    assert all(label == "NG" for path, (_, _, label) in rows.items() if path.startswith("blob/"))


def test_masks_beside_the_labelled_defects_are_not_scored_as_defects(data, fitted, tmp_path, monkeypatch):
    """``x.png`` with ``x_mask.png`` beside it: recalibrate scores x.png only (the selection
    always left masks out; recalibrate had scored them as defects too)."""
    from padim import PaDiM

    folder = tmp_path / "defects"
    folder.mkdir()
    images = sorted((data["test"] / "blob").glob("*.png"))
    for image in images:
        shutil.copy(image, folder / image.name)
        shutil.copy(data["mvtec"] / "ground_truth" / "blob" / f"{image.stem}_mask.png", folder / f"{image.stem}_mask.png")
    seen = []
    score_samples = PaDiM.score_samples
    monkeypatch.setattr(PaDiM, "score_samples", lambda self, sources: (seen.extend(sources), score_samples(self, sources))[1])
    PaDiM.load(fitted["path"]).recalibrate(folder)
    assert sorted(p.name for p in seen) == [image.name for image in images]


def test_unusable_val_defects_are_refused_before_the_fit(data, tmp_path):
    only_masks = tmp_path / "masks"
    only_masks.mkdir()
    shutil.copy(next((data["mvtec"] / "ground_truth" / "blob").glob("*.png")), only_masks / "a_mask.png")
    for folder, error in ((only_masks, "only masks"), (tmp_path / "missing", "no such file or folder")):
        rc, _, err = cli("fit", data["train"], "-o", tmp_path / "m.padim", "--val-defects", folder, *FIT)
        assert rc == 2 and f"--val-defects: '{folder}': " in err and error in err, err
        assert "memory plan" not in err and not (tmp_path / "m.padim").exists()


# ----------------------------------------------------------------------------- score: formats

def test_default_tsv_header_columns_sorted_relative_paths(scored_inputs, model):
    lines = read_tsv(scored_inputs["out"])
    assert "\t".join(lines[0]) == HEADER
    body = lines[1:]
    assert all(len(f) == 4 for f in body)
    assert [f[0] for f in body] == sorted(INPUT_NAMES)  # notes.txt ignored, nested paths with '/'
    threshold = model.calibrator_.threshold_
    for name, score, probability, label in body:
        assert label in ("OK", "NG")
        assert label == ("NG" if float(score) >= threshold else "OK")
        assert 0.0 <= float(probability) <= 1.0
        assert ("NG" if "blob" in name else "OK") == label
    assert "scored 5 images" in scored_inputs["stdout"]


def test_signate_tsv_is_file_name_and_probability_without_header(data, fitted, scored_inputs, tmp_path):
    out = tmp_path / "submit.tsv"
    rc, stdout, err = cli("score", fitted["path"], data["inputs"], "-o", out, "--format", "signate", *RUNTIME)
    assert rc == 0, err
    lines = read_tsv(out)
    assert all(len(f) == 2 for f in lines)
    assert [f[0] for f in lines] == sorted(INPUT_NAMES)
    default = table(scored_inputs["out"])
    for name, probability in lines:
        assert float(probability) == pytest.approx(default[name][1], abs=1.5e-6)


def test_single_image_input_gives_its_file_name(data, fitted, scored_inputs, tmp_path):
    out = tmp_path / "one.tsv"
    rc, _, err = cli("score", fitted["path"], data["inputs"] / "sub" / "deeper" / "d_blob.png", "-o", out, *RUNTIME)
    assert rc == 0, err
    rows = table(out)
    assert list(rows) == ["d_blob.png"]
    assert rows["d_blob.png"][0] == pytest.approx(table(scored_inputs["out"])["sub/deeper/d_blob.png"][0], rel=1e-5)


def assert_probabilities_monotone(rows):
    values = sorted((score, probability) for score, probability, _ in rows.values())
    probabilities = [p for _, p in values]
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert all(a <= b for a, b in zip(probabilities, probabilities[1:])), values


def test_probabilities_in_unit_interval_and_monotone_in_the_score(scored_test, scored_inputs):
    rows = {**table(scored_test), **{"in/" + k: v for k, v in table(scored_inputs["out"]).items()}}
    assert_probabilities_monotone(rows)
    # defects are far out: probability near 1; good images are not
    assert min(p for k, (_, p, _) in rows.items() if "blob" in k) > 0.9
    assert max(p for k, (_, p, _) in rows.items() if "good" in k) < 0.5


# ----------------------------------------------------------------------------- score: maps, heatmaps

def test_save_maps_are_float32_at_the_original_size(scored_inputs, data):
    maps = scored_inputs["maps"]
    found = sorted(p.relative_to(maps).as_posix() for p in maps.rglob("*") if p.is_file())
    assert found == sorted(str(Path(n).with_suffix(".npy").as_posix()) for n in INPUT_NAMES)
    shapes = set()
    for name, size in data["sizes"].items():
        amap = np.load(maps / Path(name).with_suffix(".npy"), allow_pickle=False)
        assert amap.dtype == np.float32
        assert amap.shape == size
        shapes.add(amap.shape)
        if "blob" in name:  # the map peaks on the blob (centre at (0.3, 0.3) of the image)
            y, x = np.unravel_index(np.argmax(amap), amap.shape)
            assert abs(y - 0.3 * size[0]) < 0.2 * size[0] and abs(x - 0.3 * size[1]) < 0.2 * size[1]
    assert shapes == {(64, 64), (96, 96), (80, 112)}


def test_heatmaps_one_png_per_image(scored_inputs):
    heatmaps = scored_inputs["heatmaps"]
    found = sorted(p.relative_to(heatmaps).as_posix() for p in heatmaps.rglob("*") if p.is_file())
    assert found == sorted(INPUT_NAMES)
    for name in found:
        with Image.open(heatmaps / name) as image:
            assert image.format == "PNG" and min(image.size) > 0


# ----------------------------------------------------------------------------- score: resume

def _interrupt_on_call(monkeypatch, call):
    """Make ``ResultJournal.add`` raise KeyboardInterrupt on its ``call``-th call (a kill after
    the earlier flushes)."""
    real = padim.results.ResultJournal.add
    calls = []

    def add(self, rows):
        calls.append(len(rows))
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(self, rows)

    monkeypatch.setattr(padim.results.ResultJournal, "add", add)
    return calls


def test_resume_after_an_interrupted_run(data, fitted, scored_inputs, tmp_path, monkeypatch):
    out = tmp_path / "scores.tsv"
    partial = tmp_path / "scores.tsv.partial"
    args = ["score", fitted["path"], data["inputs"], "-o", out, *RUNTIME, "--batch-size", "2"]
    calls = _interrupt_on_call(monkeypatch, 2)
    rc, stdout, err = cli(*args)
    assert rc == 130 and calls == [2, 2]
    assert err.strip().splitlines()[-1] == "padim score: interrupted"
    assert not out.exists()  # OUT is never half-written
    assert partial.is_file()
    assert journal_names(partial) == sorted(INPUT_NAMES)[:2]
    # a hard kill can also cut the journal's last line: that image must be scored again
    with open(partial, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"path": sorted(INPUT_NAMES)[2], "score": 9.0, "probability": 0.5, "label": "OK"}))
    monkeypatch.undo()

    rc, stdout, err = cli(*args, "--resume")
    assert rc == 0, err
    assert "scored 3 images, 2 already done" in stdout
    assert not partial.exists()
    lines = read_tsv(out)
    assert "\t".join(lines[0]) == HEADER
    assert [f[0] for f in lines[1:]] == sorted(INPUT_NAMES)  # every image exactly once, in order
    resumed, full = table(out), table(scored_inputs["out"])
    for name in INPUT_NAMES:
        assert resumed[name][0] == pytest.approx(full[name][0], rel=1e-5)
        assert resumed[name][1] == pytest.approx(full[name][1], abs=2e-6)
        assert resumed[name][2] == full[name][2]


def test_interrupted_run_leaves_an_existing_output_untouched(data, fitted, scored_inputs, tmp_path, monkeypatch):
    out = tmp_path / "scores.tsv"
    shutil.copy(scored_inputs["out"], out)
    before = out.read_bytes()
    _interrupt_on_call(monkeypatch, 1)
    rc, _, _ = cli("score", fitted["path"], data["inputs"], "-o", out, *RUNTIME)
    assert rc == 130
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.tsv", "scores.tsv.partial"]


def test_resume_with_a_complete_output_scores_nothing_new(data, fitted, scored_inputs, tmp_path, monkeypatch):
    from padim.model import PaDiM

    out = tmp_path / "scores.tsv"
    shutil.copy(scored_inputs["out"], out)
    shutil.copy(str(scored_inputs["out"]) + ".meta.json", tmp_path / "scores.tsv.meta.json")
    before = out.read_text(encoding="utf-8")

    def no_scoring(self, *args, **kwargs):
        raise AssertionError("nothing should be scored")

    monkeypatch.setattr(PaDiM, "iter_results", no_scoring)
    rc, stdout, err = cli("score", fitted["path"], data["inputs"], "-o", out, "--resume", *RUNTIME)
    assert rc == 0, err
    assert "scored 0 images, 5 already done" in stdout
    assert out.read_text(encoding="utf-8") == before
    assert not (tmp_path / "scores.tsv.partial").exists()


def test_signate_resume_after_an_interrupted_run(data, fitted, scored_inputs, tmp_path, monkeypatch):
    out = tmp_path / "submit.tsv"
    args = ["score", fitted["path"], data["inputs"], "-o", out, "--format", "signate", *RUNTIME, "--batch-size", "2"]
    _interrupt_on_call(monkeypatch, 3)
    assert cli(*args)[0] == 130
    assert not out.exists() and len(journal_names(tmp_path / "submit.tsv.partial")) == 4
    monkeypatch.undo()
    rc, stdout, err = cli(*args, "--resume")
    assert rc == 0, err
    assert "scored 1 images, 4 already done" in stdout
    lines = read_tsv(out)
    assert [f[0] for f in lines] == sorted(INPUT_NAMES) and all(len(f) == 2 for f in lines)
    full = table(scored_inputs["out"])
    assert all(float(p) == pytest.approx(full[name][1], abs=2e-6) for name, p in lines)
    # resuming the finished signate file changes nothing
    before = out.read_bytes()
    rc, stdout, err = cli(*args, "--resume")
    assert rc == 0 and "scored 0 images, 5 already done" in stdout
    assert out.read_bytes() == before


def test_heatmaps_inside_the_input_folder_are_not_scored_next_time(data, fitted, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(data["inputs"], inputs)
    args = ["score", fitted["path"], inputs, "-o", inputs / "scores.tsv", "--heatmaps", inputs / "heatmaps", *RUNTIME]
    for _ in range(2):
        rc, stdout, err = cli(*args)
        assert rc == 0, err
        assert "scored 5 images" in stdout
        assert list(table(inputs / "scores.tsv")) == sorted(INPUT_NAMES)
    assert len(list((inputs / "heatmaps").rglob("*.png"))) == 5



def test_per_image_files_replace_neither_an_input_nor_each_other(data, fitted, scored_inputs, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(data["inputs"], inputs)
    with Image.open(inputs / "b_blob.png") as image:  # another image under a_good's stem
        image.save(inputs / "a_good.bmp")
    before = folder_bytes(inputs)
    for args, needle in (((inputs, "-o", tmp_path / "s.tsv", "--heatmaps", inputs), "is the input folder"),
                         ((inputs, "-o", tmp_path / "s.tsv", "--save-maps", inputs), "is the input folder"),
                         ((inputs, "-o", inputs / "b_blob.png"), "is one of the input images"),
                         ((inputs / "a_good.bmp", "-o", tmp_path / "s.tsv", "--heatmaps", inputs),
                          "is the input folder"),
                         ((inputs / "sub" / "c_good.png", "-o", tmp_path / "s.tsv", "--heatmaps", inputs / "sub"),
                          "is the input folder")):
        rc, out, err = cli("score", fitted["path"], *args, *RUNTIME)
        assert rc == 2 and needle in err, err
        assert folder_bytes(inputs) == before and not (tmp_path / "s.tsv").exists()
    rc, out, err = cli("score", fitted["path"], inputs, "-o", tmp_path / "s.tsv", "--heatmaps", tmp_path / "hm",
                       "--save-maps", tmp_path / "maps", *RUNTIME)
    assert rc == 0, err
    assert folder_bytes(inputs) == before
    names = sorted(p.relative_to(tmp_path / "maps").as_posix() for p in (tmp_path / "maps").rglob("*.npy"))
    assert names == sorted(["a_good.png.npy", "a_good.bmp.npy", "b_blob.npy", "sub/c_good.npy",
                            "sub/deeper/d_blob.npy", "sub/e_good.npy"])
    assert len(list((tmp_path / "hm").rglob("*.png"))) == 6 and (tmp_path / "hm" / "a_good.bmp.png").is_file()
    # each file is its own image's: the same pixels as b_blob.png, the same map; a_good.png's as before
    maps = {name: np.load(tmp_path / "maps" / name) for name in names}
    np.testing.assert_allclose(maps["a_good.bmp.npy"], maps["b_blob.npy"], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(maps["a_good.png.npy"], np.load(scored_inputs["maps"] / "a_good.npy"),
                               rtol=1e-4, atol=1e-3)
    assert not np.allclose(maps["a_good.png.npy"], maps["a_good.bmp.npy"], rtol=1e-2)


# ----------------------------------------------------------------------------- score: bad inputs

def test_unreadable_and_non_image_files_do_not_stop_the_run(data, fitted, tmp_path):
    inputs = tmp_path / "in"
    for name in ("a_good.png", "b_blob.png", "sub/c_good.png"):
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data["inputs"] / name, inputs / name)
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (inputs / "sub" / "bad.jpg").write_bytes(b"not a jpeg at all")
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out" / "scores.tsv"
    rc, stdout, err = cli("score", fitted["path"], inputs, "-o", out, *RUNTIME)
    assert rc == 1
    assert "scored 3 images" in stdout
    assert list(table(out)) == ["a_good.png", "b_blob.png", "sub/c_good.png"]
    errors_file = tmp_path / "out" / "scores.tsv.errors.tsv"
    errors = read_tsv(errors_file)
    assert [f[0] for f in errors] == ["corrupt.png", "sub/bad.jpg"]
    assert all(len(f) == 2 and "cannot read image" in f[1] for f in errors)
    reported = err.splitlines()
    assert any("corrupt.png" in line and "cannot read image" in line for line in reported)
    assert any("bad.jpg" in line and "cannot read image" in line for line in reported)
    assert any("2 image(s) could not be read" in line and str(errors_file) in line for line in reported)
    assert "notes.txt" not in err
    assert not (tmp_path / "out" / "scores.tsv.partial").exists()

    # once the bad files are gone, a new run succeeds and no stale error list is left behind
    (inputs / "corrupt.png").unlink()
    (inputs / "sub" / "bad.jpg").unlink()
    rc, stdout, err = cli("score", fitted["path"], inputs, "-o", out, *RUNTIME)
    assert rc == 0, err
    assert not errors_file.exists()


# ----------------------------------------------------------------------------- eval

@pytest.fixture(scope="module")
def evaluated(data, fitted):
    report = data["root"] / "report"
    rc, out, err = cli("eval", fitted["path"], data["mvtec"], "-o", report, "--heatmaps", *RUNTIME)
    assert rc == 0, err
    return {"report": report, "out": out, "metrics": json.loads((report / "metrics.json").read_text())}


def test_eval_writes_the_report(evaluated):
    report = evaluated["report"]
    for name in ("metrics.json", "summary.md", "roc.png", "pr.png", "score_histogram.png"):
        assert (report / name).is_file(), name
    for name in ("roc.png", "pr.png", "score_histogram.png"):
        with Image.open(report / name) as image:
            assert image.format == "PNG"
    heatmaps = sorted(p.relative_to(report / "heatmaps").as_posix() for p in (report / "heatmaps").rglob("*.png"))
    assert len(heatmaps) == 8 and "blob/00.png" in heatmaps
    summary = (report / "summary.md").read_text()
    assert "image_auroc" in summary and "Per defect type" in summary and "| blob |" in summary
    printed = json.loads(evaluated["out"].splitlines()[0])
    assert set(printed) == {"image_auroc", "pixel_auroc", "pro", "best_f1"}


def test_eval_metrics_match_hand_computed_values(evaluated, scored_test, model, data):
    m = evaluated["metrics"]
    for key in ("image_auroc", "pixel_auroc", "pro", "best_f1", "best_f1_threshold", "model_threshold",
                "per_defect_type", "n_good", "n_defect", "false_reject_rate", "miss_rate"):
        assert key in m, key
    rows = table(scored_test)
    good = [s for k, (s, _, _) in rows.items() if k.startswith("good/")]
    bad = [s for k, (s, _, _) in rows.items() if not k.startswith("good/")]
    assert (m["n_good"], m["n_defect"], m["n_images"]) == (3, 5, 8)
    # obvious defects: every defect above every good image
    assert min(bad) > max(good)
    assert m["image_auroc"] == 1.0
    pairs = [(b > g) + 0.5 * (b == g) for b in bad for g in good]
    assert m["image_auroc"] == pytest.approx(sum(pairs) / len(pairs))
    assert m["best_f1"] == 1.0
    # the best-F1 threshold is an actual score: the highest one with F1 = 1, the lowest defect score
    assert m["best_f1_threshold"] == pytest.approx(min(bad), rel=1e-5)
    assert m["model_threshold"] == model.calibrator_.threshold_
    assert m["false_reject_rate"] == sum(label == "NG" for k, (_, _, label) in rows.items() if k.startswith("good/")) / 3
    assert m["miss_rate"] == sum(label == "OK" for k, (_, _, label) in rows.items() if not k.startswith("good/")) / 5
    # pixel metrics from the blob masks (the scratches have none, so they are left out) against
    # an independent AUROC of the maps `padim score --save-maps` wrote
    from sklearn.metrics import roc_auc_score

    maps = scored_test.parent / "maps"
    good_px = np.concatenate([np.load(maps / "good" / f"{i:02d}.npy").ravel() for i in range(3)])
    blob_maps = [np.load(maps / "blob" / f"{i:02d}.npy") for i in range(3)]
    masks = [np.asarray(Image.open(data["mvtec"] / "ground_truth" / "blob" / f"{i:02d}_mask.png")) > 0
             for i in range(3)]
    blob_px = np.concatenate([a.ravel() for a in blob_maps])
    blob_y = np.concatenate([k.ravel() for k in masks])
    overall = roc_auc_score(np.r_[np.zeros(good_px.size), blob_y], np.r_[good_px, blob_px])
    assert m["pixel_auroc"] == pytest.approx(overall, abs=1e-6)
    assert 0.9 < m["pixel_auroc"] <= 1.0
    assert 0.5 < m["pro"] <= 1.0
    per = m["per_defect_type"]
    assert sorted(per) == ["blob", "scratch"]
    assert per["blob"]["n"] == 3 and per["scratch"]["n"] == 2
    assert per["blob"]["image_auroc"] == per["scratch"]["image_auroc"] == 1.0
    assert per["blob"]["pixel_auroc"] == pytest.approx(roc_auc_score(blob_y, blob_px), abs=1e-6)  # own images only
    assert 0.5 < per["blob"]["pro"] <= 1.0
    assert per["scratch"]["pixel_auroc"] is None and per["scratch"]["pro"] is None


def test_eval_of_an_export_gives_the_model_files_metrics(data, fitted, evaluated, tmp_path):
    pytest.importorskip("onnxruntime", reason="exports need the export extra (.ci/run installs it)")
    rc, _, err = cli("export", fitted["path"], "-o", tmp_path / "m.onnx")
    assert rc == 0, err
    rc, out, err = cli("eval", tmp_path / "m.onnx", data["mvtec"], "-o", tmp_path / "report", "--heatmaps", *RUNTIME)
    assert rc == 0, err
    exported, reference = json.loads((tmp_path / "report" / "metrics.json").read_text()), evaluated["metrics"]
    assert json.loads(out.splitlines()[0]).keys() == {"image_auroc", "pixel_auroc", "pro", "best_f1"}
    for key in ("image_auroc", "pixel_auroc", "pro", "best_f1", "best_f1_threshold", "model_threshold"):
        assert exported[key] == pytest.approx(reference[key], rel=1e-3, abs=1e-4), key
    for key in ("n_good", "n_defect", "n_images", "false_reject_rate", "miss_rate"):
        assert exported[key] == reference[key], key
    drawn = sorted(p.relative_to(tmp_path / "report" / "heatmaps").as_posix()
                   for p in (tmp_path / "report" / "heatmaps").rglob("*.png"))
    assert drawn == sorted(p.relative_to(evaluated["report"] / "heatmaps").as_posix()
                           for p in (evaluated["report"] / "heatmaps").rglob("*.png"))


def test_eval_without_masks_has_no_pixel_metrics(data, fitted, tmp_path):
    shutil.copytree(data["test"], tmp_path / "set" / "test")
    rc, out, err = cli("eval", fitted["path"], tmp_path / "set", "-o", tmp_path / "report", *RUNTIME)
    assert rc == 0, err
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert m["image_auroc"] == 1.0
    assert m.get("pixel_auroc") is None and m.get("pro") is None
    assert set(m["per_defect_type"]) == {"blob", "scratch"}


def test_defect_images_without_a_mask_are_counted_and_left_out_of_pixel_metrics(data, fitted, tmp_path):
    """A blob image whose mask is missing: a warning naming it, the count in metrics.json, and the
    pixel metrics of the set without that image at all (the scratches never had masks)."""
    reports = {}
    for case in ("mask removed", "image removed"):
        root = tmp_path / case.replace(" ", "_")
        shutil.copytree(data["mvtec"], root)
        image = sorted((root / "test" / "blob").glob("*.png"))[0]
        (root / "ground_truth" / "blob" / f"{image.stem}_mask.png").unlink()
        if case == "image removed":
            image.unlink()
        rc, out, err = cli("eval", fitted["path"], root, "-o", root / "report", *RUNTIME)
        assert rc == 0, err
        reports[case] = (json.loads((root / "report" / "metrics.json").read_text()), err, image)
    metrics, err, image = reports["mask removed"]
    n_scratch = len(list((data["test"] / "scratch").glob("*.png")))
    assert metrics["defect_images_without_mask"] == n_scratch + 1
    assert f"defect images have no mask (first: '{image}')" in err
    other = reports["image removed"][0]
    assert other["defect_images_without_mask"] == n_scratch
    assert metrics["n_images"] == other["n_images"] + 1
    assert metrics["pixel_auroc"] == other["pixel_auroc"] and metrics["pro"] == other["pro"]


@pytest.mark.parametrize("bad", ["rotated", "garbage"])
def test_eval_refuses_a_bad_mask_before_scoring(data, fitted, tmp_path, monkeypatch, bad):
    """A mask that cannot be read, or of another aspect ratio, stops `padim eval` in one line naming
    it before any image is scored (it stopped at that image, after scoring the ones before)."""
    from padim.model import PaDiM

    shutil.copytree(data["mvtec"], tmp_path / "set")
    masks = sorted((tmp_path / "set" / "ground_truth" / "blob").glob("*_mask.png"))
    last = masks[-1]
    if bad == "rotated":
        save(np.zeros((64, 32), np.uint8), last)
    else:
        last.write_bytes(b"not a png")
    monkeypatch.setattr(PaDiM, "iter_results", lambda *a, **k: pytest.fail("scored before the masks were checked"))
    rc, out, err = cli("eval", fitted["path"], tmp_path / "set", "-o", tmp_path / "report", *RUNTIME)
    assert rc == 2
    lines = error_lines(err, "eval")
    assert len(lines) == 1 and lines[0].startswith(f"padim eval: error: '{last}': ")
    assert ("mask of 32×64 px for an image of 64×64 px" if bad == "rotated" else "cannot read image") in lines[0]


# ----------------------------------------------------------------------------- info, version, help

def test_info_describes_the_model(fitted, model):
    rc, out, err = cli("info", fitted["path"])
    assert rc == 0, err
    fields = dict(line.split(": ", 1) for line in out.splitlines())
    assert fields["backbone"] == "efficientnet_lite0"
    assert fields["features (d)"] == "50"
    assert fields["training images"] == "10"
    assert json.loads(fields["layers"]) == model.layers_
    assert json.loads(fields["input size (h, w)"]) == [64, 64]
    assert fields["calibration"].startswith("good images only (10 held-out scores)")
    assert f"threshold {model.calibrator_.threshold_:.6g} at a 1 % false-reject rate" in fields["calibration"]


def test_info_into_a_closed_pipe_is_quiet(fitted, monkeypatch, capsys):
    # `padim info model.padim | head -3` printed "padim info: error: [Errno 32] Broken pipe"
    from padim.cli import main

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["info", str(fitted["path"])]) == 141
    assert capsys.readouterr().err == ""


def test_version():
    rc, out, err = cli("--version")
    assert rc == 0
    assert out.strip() == f"padim {__version__}"


@pytest.mark.parametrize("command", [None, "fit", "score", "eval", "demo", "info"])
def test_help_shows_an_example(command):
    rc, out, err = cli(*([command] if command else []), "--help")
    assert rc == 0 and err == ""
    if command:
        assert "example:" in out and EXAMPLES[command] in out
    else:
        assert "examples:" in out and all(example in out for example in EXAMPLES.values())


def test_no_command_prints_help_and_exits_2():
    rc, out, err = cli()
    assert rc == 2
    assert "usage: padim" in out and "fit" in out


# ----------------------------------------------------------------------------- boundary errors

def _bad_model_files(root, model_path):
    blob = model_path.read_bytes()
    (root / "garbage.padim").write_bytes(os.urandom(2000))
    (root / "truncated.padim").write_bytes(blob[: len(blob) // 2])
    (root / "text.padim").write_text("hello")
    (root / "empty.padim").write_bytes(b"")


ERROR_CASES = {
    "fit-missing-folder": ("fit", "{root}/nope -o {root}/m.padim", "nope"),
    "fit-empty-folder": ("fit", "{root}/empty -o {root}/m.padim", "no images found"),
    "fit-unknown-backbone": ("fit", "{train} -o {root}/m.padim --backbone resnet9000", "unknown backbone"),
    "fit-unknown-layer": ("fit", "{train} -o {root}/m.padim --layers layer9", "no hook point"),
    "fit-all-unreadable": ("fit", "{root}/broken -o {root}/m.padim",
                           "none of the 3 training images can be read; first: '{root}/broken/0.png': cannot read"),
    "fit-missing-weights": ("fit", "{train} -o {root}/m.padim --weights {root}/no.pth", "no.pth"),
    "fit-threshold-without-folds": ("fit", "{train} -o {root}/m.padim --folds 0 --threshold 5", "--folds 2"),
    "score-missing-model": ("score", "{root}/none.padim {inputs} -o {root}/s.tsv", "none.padim"),
    "score-garbage-model": ("score", "{root}/garbage.padim {inputs} -o {root}/s.tsv", "garbage.padim"),
    "score-truncated-model": ("score", "{root}/truncated.padim {inputs} -o {root}/s.tsv", "truncated.padim"),
    "score-text-model": ("score", "{root}/text.padim {inputs} -o {root}/s.tsv", "text.padim"),
    "score-empty-model": ("score", "{root}/empty.padim {inputs} -o {root}/s.tsv", "empty.padim"),
    "score-missing-input": ("score", "{model} {root}/nope -o {root}/s.tsv", "nope"),
    "score-empty-input": ("score", "{model} {root}/empty -o {root}/s.tsv", "no images found"),
    "score-nan-threshold": ("score", "{model} {inputs} -o {root}/s.tsv --threshold nan", "finite"),
    "score-resume-foreign-output": ("score", "{model} {inputs} -o {root}/foreign.tsv --resume", "foreign.tsv"),
    "score-resume-signate-as-default": ("score", "{model} {inputs} -o {root}/signate.tsv --resume", "--format signate"),
    "score-resume-older-padim-output": ("score", "{model} {inputs} -o {root}/old.tsv --resume", "no record"),
    "eval-missing-folder": ("eval", "{model} {root}/nope", "nope"),
    "eval-no-test-folder": ("eval", "{model} {root}/empty", "test"),
    "eval-garbage-model": ("eval", "{root}/garbage.padim {mvtec}", "garbage.padim"),
    "info-garbage-model": ("info", "{root}/garbage.padim", "garbage.padim"),
    "info-missing-model": ("info", "{root}/none.padim", "none.padim"),
    # outputs checked before any work (a fit into -o FOLDER ran to the end, then failed to write)
    "fit-output-is-a-folder": ("fit", "{train} -o {root}/empty", "-o '{root}/empty' is a folder"),
    "export-output-is-a-folder": ("export", "{model} -o {root}/empty", "is a folder"),
    "score-output-is-a-folder": ("score", "{model} {inputs} -o {root}/empty", "is a folder"),
    "score-output-under-a-file": ("score", "{model} {inputs} -o {root}/foreign.tsv/s.tsv", "is a file, not a folder"),
    "score-heatmaps-is-a-file": ("score", "{model} {inputs} -o {root}/s.tsv --heatmaps {root}/foreign.tsv",
                                 "--heatmaps '{root}/foreign.tsv' is a file"),
    "eval-report-is-a-file": ("eval", "{model} {mvtec} -o {root}/foreign.tsv", "is a file; give a folder"),
    "demo-output-is-a-file": ("demo", "-o {root}/foreign.tsv", "is a file; give a folder"),
}


# Option values numpy, torch or the server rejected deep inside, with a traceback (exit 3):
# argparse's usage and one error line naming the option.
USAGE_CASES = {
    "fit-negative-seed": ("fit", "{train} -o {root}/m.padim --seed -1", "--seed: expected an integer ≥ 0"),
    "fit-negative-threads": ("fit", "{train} -o {root}/m.padim --threads -1", "--threads: expected an integer ≥ 0"),
    "fit-negative-overlap": ("fit", "{train} -o {root}/m.padim --overlap -5", "--overlap: expected an integer ≥ 0"),
    "fit-zero-batch": ("fit", "{train} -o {root}/m.padim --batch-size 0", "--batch-size: expected an integer ≥ 1"),
    "fit-zero-width": ("fit", "{train} -o {root}/m.padim --image-size 64x0", "integers ≥ 1"),
    "fit-zero-eps": ("fit", "{train} -o {root}/m.padim --eps 0", "--eps: expected a finite number > 0"),
    "fit-infinite-eps": ("fit", "{train} -o {root}/m.padim --eps inf", "--eps: expected a finite number > 0"),
    "score-zero-batch": ("score", "{model} {inputs} -o {root}/s.tsv --batch-size -3", "--batch-size"),
    "serve-negative-port": ("serve", "{model} --port -1", "--port: expected an integer in 0..65535"),
    "serve-zero-batch": ("serve", "{model} --max-batch 0", "--max-batch: expected an integer ≥ 1"),
    "serve-nan-upload-limit": ("serve", "{model} --max-upload-mb nan", "--max-upload-mb"),
}


def _filled(template, setup):
    """A case's text with the error set-up's paths filled in."""
    return template.format(**{k: str(v) for k, v in setup.items()})


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_out_of_range_option_values_are_usage_errors(case, error_setup):
    command, template, needle = USAGE_CASES[case]
    rc, out, err = cli(command, *_filled(template, error_setup).split())
    assert rc == 2, (out, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"padim {command}: error: argument ") and needle in last, err
    assert "Traceback" not in err


def _write_record(tsv, model_path, fmt):
    """The provenance record ``padim score`` writes beside a TSV, for a hand-made TSV."""
    import hashlib

    from padim import PaDiM
    from padim.fingerprint import model_fingerprint

    model = PaDiM.load(model_path, device="cpu")
    record = {"padim_result": 1, "model": model_fingerprint(model), "threshold": model.calibrator_.threshold_,
              "format": fmt, "sha256": hashlib.sha256(Path(tsv).read_bytes()).hexdigest()}
    Path(str(tsv) + ".meta.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def error_setup(data, fitted, tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    (root / "broken").mkdir()
    for i in range(3):
        (root / "broken" / f"{i}.png").write_bytes(b"garbage")
    _bad_model_files(root, fitted["path"])
    (root / "foreign.tsv").write_text("this is not a padim TSV\n")
    (root / "signate.tsv").write_text("a_good.png\t0.012345\n")
    _write_record(root / "signate.tsv", fitted["path"], "signate")  # as if this model had written it
    (root / "old.tsv").write_text("path\tscore\tprobability\tlabel\na_good.png\t1.5\t0.012345\tOK\n")
    return {"root": root, "train": data["train"], "inputs": data["inputs"], "mvtec": data["mvtec"],
            "model": fitted["path"]}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_boundary_errors_are_one_line_with_exit_code_2(case, error_setup):
    command, template, needle = ERROR_CASES[case]
    needle = _filled(needle, error_setup)
    extra = FIT if command == "fit" else RUNTIME if command in ("score", "eval") else []
    rc, out, err = cli(command, *_filled(template, error_setup).split(), *extra)
    assert rc == 2, (out, err)
    lines = error_lines(err, command)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"padim {command}: error: ")
    assert needle in lines[0]
    assert "Traceback" not in err
    if "output" in case or "report" in case:
        assert "memory plan" not in err and "fitted" not in out  # refused before the work


def test_score_with_an_uncalibrated_model_is_a_boundary_error(data, tmp_path):
    model_path = tmp_path / "nocal.padim"
    rc, out, err = cli("fit", data["train"], "-o", model_path, "--folds", "0", *FIT)
    assert rc == 0, err
    rc, out, err = cli("score", model_path, data["inputs"], "-o", tmp_path / "s.tsv", *RUNTIME)
    assert rc == 2
    assert err.splitlines() == [err.strip()] and err.startswith("padim score: error: ")
    assert "calibration" in err
    # padim info says what is missing in words (it printed "None" for each)
    rc, out, err = cli("info", model_path)
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert rc == 0 and "None" not in out
    assert fields["calibration"].startswith("none: ") and "no probabilities" in fields["calibration"]
    assert fields["auto-configuration"] == "none: the options were fitted as given"
    assert fields["whole-image check"].startswith("off: ")


@pytest.mark.parametrize("kept, missing", [("good", "no defect images"), ("blob", "no good images")])
def test_eval_of_one_class_is_refused_before_scoring(data, fitted, tmp_path, monkeypatch, kept, missing):
    """A test folder of good images only, or defects only: one line naming it and what is missing,
    before any image is scored (it came after scoring them all, naming neither)."""
    from padim.model import PaDiM

    shutil.copytree(data["test"] / kept, tmp_path / "set" / "test" / kept)
    monkeypatch.setattr(PaDiM, "iter_results", lambda *a, **k: pytest.fail("scored before the classes were checked"))
    rc, out, err = cli("eval", fitted["path"], tmp_path / "set", *RUNTIME)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"padim eval: error: '{tmp_path / 'set' / 'test'}': {missing}"), err


# ----------------------------------------------------------------------------- the real console script

def _console_script():
    script = Path(sys.executable).with_name("padim")
    return str(script) if script.exists() else shutil.which("padim")


@pytest.mark.skipif(_console_script() is None, reason="padim console script not installed")
def test_console_script_version_and_one_line_error(error_setup):
    script = _console_script()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.strip() == f"padim {__version__}"
    root = error_setup["root"]
    done = subprocess.run([script, "score", str(root / "garbage.padim"), str(error_setup["inputs"]),
                           "-o", str(root / "s.tsv"), "--quiet"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("padim score: error: ") and "garbage.padim" in lines[0]


# ----------------------------------------------------------------------------- exit codes and --debug

def test_help_documents_the_exit_codes():
    rc, out, err = cli("--help")
    assert rc == 0
    for code in ("0", "1", "2", "3", "130"):
        assert any(line.split()[:1] == [code] for line in out.splitlines()), code


def test_debug_prints_the_traceback_of_an_input_error(error_setup):
    root = error_setup["root"]
    args = ("score", root / "garbage.padim", error_setup["inputs"], "-o", root / "s.tsv", *RUNTIME)
    rc, out, err = cli(*args)
    assert rc == 2 and "Traceback" not in err
    rc, out, err = cli(*args, "--debug")
    assert rc == 2
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("padim score: error: ") and "garbage.padim" in err


def test_an_internal_error_shows_its_traceback_and_exits_3(data, tmp_path, monkeypatch):
    import torch

    import padim.model

    def broken_to_cells(embedding, cell):  # a bug deep inside a library call: a shape mismatch
        return torch.ones(3) + torch.ones(4)

    monkeypatch.setattr(padim.model, "to_cells", broken_to_cells)
    rc, out, err = cli("fit", data["train"], "-o", tmp_path / "m.padim", *FIT)
    assert rc == 3, err
    assert "Traceback (most recent call last)" in err and "must match" in err
    assert "internal error (RuntimeError)" in err.strip().splitlines()[-1]
    assert not (tmp_path / "m.padim").exists()


def test_too_few_images_to_calibrate_is_an_error_not_a_model(data, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(Path(data["train"]).glob("*.png"))[:3]:
        shutil.copy(path, few / path.name)
    rc, out, err = cli("fit", few, "-o", tmp_path / "m.padim", *FIT)
    assert rc == 2
    assert error_lines(err, "fit")[-1].startswith("padim fit: error: calibration needs at least 5 good images, got 3")
    assert not (tmp_path / "m.padim").exists()
    rc, out, err = cli("fit", few, "-o", tmp_path / "m.padim", "--folds", "0", *FIT)
    assert rc == 0 and (tmp_path / "m.padim").exists()
    assert "no calibration" in err
    rc, out, err = cli("fit", few, "-o", tmp_path / "m1.padim", "--folds", "1", *FIT)
    assert rc == 2 and "--folds must be 0" in err


def test_scores_in_the_tsv_have_labels_that_agree_with_probabilities(fitted, data, tmp_path):
    import csv

    for threshold in (None, "1e-9", "1e9", None):
        extra = () if threshold is None else ("--threshold", threshold)
        out_tsv = tmp_path / f"s{threshold}.tsv"
        rc, out, err = cli("score", fitted["path"], data["inputs"], "-o", out_tsv, *extra, *RUNTIME)
        assert rc == 0, err
        with open(out_tsv, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        assert rows and all((float(r["probability"]) >= 0.5) == (r["label"] == "NG") for r in rows)
        if threshold == "1e-9":
            assert all(r["label"] == "NG" for r in rows)
        if threshold == "1e9":
            assert all(r["label"] == "OK" and float(r["probability"]) < 0.5 for r in rows)

# ----------------------------------------------------------------------------- score: file names, safe resume

def csv_rows(path):
    """A TSV as Python's csv module reads it."""
    import csv

    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        return list(csv.reader(handle, delimiter="\t"))


def pandas_rows(path, fmt):
    """A TSV as pandas reads it (C engine; names as text, "nan"/"NA"/"007" kept)."""
    import pandas as pd

    if fmt == "default":
        return pd.read_csv(path, sep="\t", dtype={"path": str}, keep_default_na=False,
                           encoding_errors="surrogateescape").values.tolist()
    return pd.read_csv(path, sep="\t", header=None, dtype={0: str}, keep_default_na=False,
                       encoding_errors="surrogateescape").values.tolist()


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


# file names the file system allows; each is a copy of the input image it maps to
HOSTILE_FILES = {
    "tab\there.png": "a_good.png",
    "new\nline.png": "b_blob.png",
    "carriage\rreturn.png": "sub/c_good.png",
    "crlf\r\n/in a folder.png": "sub/deeper/d_blob.png",
    " leading space.png": "sub/e_good.png",
    '"quoted" and \'single\'.png': "a_good.png",
    "back\\slash.png": "b_blob.png",
    "ünïcødé/日本語.png": "sub/c_good.png",
    "\ufeffbom.png": "sub/e_good.png",
    "nan.png": "a_good.png",
    "caf\udce9 (not utf-8).png": "b_blob.png",
    "$\\frac$ dollars.png": "sub/deeper/d_blob.png",  # matplotlib would read a title "$…$" as math
}


@pytest.fixture(scope="module")
def hostile_inputs(data):
    folder = data["root"] / "hostile"
    for name, source in HOSTILE_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data["inputs"] / source, folder / name)
    return folder


@pytest.mark.parametrize("fmt", ["default", "signate"])
def test_any_file_name_reads_back_exactly_with_csv_and_pandas(fmt, hostile_inputs, fitted, scored_inputs,
                                                             tmp_path, monkeypatch):
    """Tabs, newlines, carriage returns, quotes, leading spaces, backslashes, non-ASCII and
    non-UTF-8 names: one row per image with the exact name, also after an interrupted run."""
    out = tmp_path / "scores.tsv"
    args = ["score", fitted["path"], hostile_inputs, "-o", out, "--format", fmt, *RUNTIME, "--batch-size", "2"]
    _interrupt_on_call(monkeypatch, 3)
    assert cli(*args)[0] == 130
    assert len(journal_names(str(out) + ".partial")) == 4
    monkeypatch.undo()
    rc, stdout, err = cli(*args, "--resume")
    assert rc == 0, err
    assert f"scored {len(HOSTILE_FILES) - 4} images, 4 already done" in stdout
    expected = sorted(HOSTILE_FILES)
    full = table(scored_inputs["out"])
    records = csv_rows(out)
    if fmt == "default":
        assert "\t".join(records[0]) == HEADER
        records = records[1:]
    assert [r[0] for r in records] == expected
    by_pandas = pandas_rows(out, fmt)
    assert [r[0] for r in by_pandas] == expected
    for read, record in zip(by_pandas, records):  # the same values as the csv module's
        assert read[1:] == pytest.approx([float(record[1])] + ([float(record[2]), record[3]] if fmt == "default"
                                                               else []))
    for record in records:
        score, probability, label = full[HOSTILE_FILES[record[0]]]
        if fmt == "default":
            assert float(record[1]) == pytest.approx(score, rel=1e-5) and record[3] == label
            assert float(record[2]) == pytest.approx(probability, abs=2e-6)
        else:
            assert len(record) == 2 and float(record[1]) == pytest.approx(probability, abs=2e-6)


def test_unreadable_images_with_odd_names_are_listed_exactly(data, fitted, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(data["inputs"] / "a_good.png", inputs / "ok.png")
    bad = ["broken\twith tab.png", "broken\nwith newline.png", '"broken".png']
    for name in bad:
        (inputs / name).write_bytes(b"not an image")
    out = tmp_path / "scores.tsv"
    rc, stdout, err = cli("score", fitted["path"], inputs, "-o", out, *RUNTIME)
    assert rc == 1
    errors = csv_rows(tmp_path / "scores.tsv.errors.tsv")
    assert [r[0] for r in errors] == sorted(bad)
    assert all(len(r) == 2 and "cannot read image" in r[1] for r in errors)
    assert [r[0] for r in csv_rows(out)[1:]] == ["ok.png"]


@pytest.fixture(scope="module")
def other_model(data):
    """Model B: fitted on the same images with another random channel selection."""
    path = data["root"] / "models" / "other.padim"
    rc, out, err = cli("fit", data["train"], "-o", path, "--seed", "1", *FIT)
    assert rc == 0, err
    return path


def test_resume_with_another_model_is_refused_and_changes_nothing(data, fitted, other_model, tmp_path,
                                                                  monkeypatch):
    """`padim score B IN -o OUT --resume` where OUT was written by model A: one line, exit 2,
    OUT, its record and the journal untouched; without --resume, B's own rows replace A's."""
    out = tmp_path / "scores.tsv"
    a_args = ["score", fitted["path"], data["inputs"], "-o", out, *RUNTIME, "--batch-size", "2"]
    b_args = ["score", other_model, data["inputs"], "-o", out, *RUNTIME, "--batch-size", "2"]
    # A interrupted: only its journal exists
    _interrupt_on_call(monkeypatch, 2)
    assert cli(*a_args)[0] == 130
    monkeypatch.undo()
    before = folder_bytes(tmp_path)
    assert sorted(before) == ["scores.tsv.partial"]
    rc, stdout, err = cli(*b_args, "--resume")
    assert rc == 2 and stdout == ""
    assert err.splitlines() == [err.strip()]
    assert err.startswith(f"padim score: error: '{out}.partial' was written with another model")
    assert "without --resume" in err
    assert folder_bytes(tmp_path) == before
    # A finishes; B still may not resume A's finished TSV
    rc, stdout, err = cli(*a_args, "--resume")
    assert rc == 0 and "scored 3 images, 2 already done" in stdout
    a_rows = table(out)
    before = folder_bytes(tmp_path)
    assert sorted(before) == ["scores.tsv", "scores.tsv.meta.json"]
    rc, stdout, err = cli(*b_args, "--resume")
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert err.startswith(f"padim score: error: '{out}' was written with another model")
    assert folder_bytes(tmp_path) == before
    # without --resume, B rescores everything: its rows are those of a fresh B run, none of A's
    rc, stdout, err = cli(*b_args)
    assert rc == 0 and "scored 5 images" in stdout
    fresh = tmp_path / "b_only" / "scores.tsv"
    assert cli("score", other_model, data["inputs"], "-o", fresh, *RUNTIME)[0] == 0
    assert out.read_bytes() == fresh.read_bytes()
    b_rows = table(out)
    assert all(b_rows[name][0] != a_rows[name][0] for name in INPUT_NAMES)
    # and now A may not resume B's TSV
    rc, _, err = cli(*a_args, "--resume")
    assert rc == 2 and "another model" in err


def test_resume_with_another_threshold_or_format_is_refused(data, fitted, tmp_path):
    out = tmp_path / "scores.tsv"
    args = ["score", fitted["path"], data["inputs"], "-o", out, *RUNTIME]
    assert cli(*args, "--threshold", "12.5")[0] == 0
    before = folder_bytes(tmp_path)
    rc, _, err = cli(*args, "--resume")
    assert rc == 2
    assert "threshold 12.5 (this run: " in err and "resume with --threshold 12.5" in err
    rc, _, err = cli(*args, "--resume", "--threshold", "12.5", "--format", "signate")
    assert rc == 2
    assert "format default (this run: signate)" in err and "--format default" in err
    assert folder_bytes(tmp_path) == before
    rc, stdout, err = cli(*args, "--resume", "--threshold", "12.5")
    assert rc == 0 and "scored 0 images, 5 already done" in stdout
    assert folder_bytes(tmp_path) == before
    # the model's own threshold given explicitly is the same threshold: resumable
    own = tmp_path / "own.tsv"
    assert cli("score", fitted["path"], data["inputs"], "-o", own, *RUNTIME)[0] == 0
    threshold = json.loads(Path(str(own) + ".meta.json").read_text())["threshold"]
    rc, stdout, err = cli("score", fitted["path"], data["inputs"], "-o", own, *RUNTIME, "--resume",
                          "--threshold", repr(threshold))
    assert rc == 0 and "scored 0 images, 5 already done" in stdout


def test_resume_drops_rows_of_images_no_longer_in_the_input(data, fitted, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(data["inputs"], inputs)
    out = tmp_path / "scores.tsv"
    args = ["score", fitted["path"], inputs, "-o", out, *RUNTIME]
    assert cli(*args)[0] == 0
    first = table(out)
    (inputs / "b_blob.png").unlink()
    shutil.copy(data["inputs"] / "b_blob.png", inputs / "sub" / "moved_blob.png")
    rc, stdout, err = cli(*args, "--resume")
    assert rc == 0, err
    assert "scored 1 images, 4 already done" in stdout
    rows = table(out)
    assert sorted(rows) == sorted(set(INPUT_NAMES) - {"b_blob.png"} | {"sub/moved_blob.png"})
    assert rows["sub/moved_blob.png"][0] == pytest.approx(first["b_blob.png"][0], rel=1e-5)
    assert all(rows[name] == first[name] for name in rows if name in first)


def test_heatmaps_and_maps_for_any_file_name(hostile_inputs, fitted, tmp_path):
    rc, stdout, err = cli("score", fitted["path"], hostile_inputs, "-o", tmp_path / "scores.tsv",
                          "--heatmaps", tmp_path / "heatmaps", "--save-maps", tmp_path / "maps", *RUNTIME)
    assert rc == 0, err
    for folder, suffix in (("heatmaps", ".png"), ("maps", ".npy")):
        written = [p for p in (tmp_path / folder).rglob("*") if p.is_file()]
        found = sorted(p.relative_to(tmp_path / folder).as_posix() for p in written)
        assert found == sorted(Path(name).with_suffix(suffix).as_posix() for name in HOSTILE_FILES)
    with Image.open(tmp_path / "heatmaps" / "$\\frac$ dollars.png") as image:
        assert image.format == "PNG"


def test_display_name_escapes_what_a_title_cannot_draw():
    from padim.workflows import display_name

    assert display_name("caf\udce9.png") == "caf\\xe9.png"
    assert display_name("a\tb\nc\rd.png") == "a\\tb\\nc\\rd.png"
    assert display_name("$x$.png") == "$x$.png"  # drawn without math parsing (viz.save_heatmap)
    assert display_name("ünïcødé/日本語 1.png") == "ünïcødé/日本語 1.png"


def test_a_warning_for_every_image_is_one_line_each_then_a_count(data, fitted, tmp_path):
    """16-bit copies scored by a model fitted on 8-bit images warn once per file: the first
    MAX_SAME as single lines (not Python's two-line format), the rest counted at the end."""
    from padim.warning_lines import MAX_SAME

    deep = tmp_path / "deep"
    deep.mkdir()
    n = MAX_SAME + 3
    for i in range(n):
        pixels = np.asarray(Image.open(data["test"] / "good" / "00.png").convert("L"), np.uint16) * 257
        Image.fromarray(pixels).save(deep / f"{i}.png")
    rc, stdout, err = cli("score", fitted["path"], deep, "-o", tmp_path / "s.tsv")
    assert rc == 0 and f"scored {n} images" in stdout
    lines = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(lines) == MAX_SAME + 1, err
    assert all(line.startswith("padim: warning: '") and "deeper-than-8-bit" in line for line in lines[:MAX_SAME])
    assert lines[-1].startswith(f"padim: warning: 3 more like the above ({n} in all): deeper-than-8-bit")
    assert "UserWarning" not in err and "load_image(" not in err
