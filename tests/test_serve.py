"""``padim serve`` end to end: a real server in a subprocess on a free loopback port, against
``padim score`` of the same files (its TSV read with the csv module, its heatmap PNGs), plus the
in-memory decoder against file reading and the micro-batcher on its own.
"""

import asyncio
import csv
import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

for module in ("fastapi", "uvicorn", "multipart"):  # the serve extra: pip install -e ".[serve]"
    pytest.importorskip(module, reason="padim serve needs the serve extra (.ci/run installs it)")
httpx = pytest.importorskip("httpx")

from serve_support import Server  # noqa: E402
from test_cli import FIT, RUNTIME, cli, product, save  # noqa: E402

# Expected here: 16-bit inputs to an 8-bit model, and one input of another aspect ratio.
pytestmark = pytest.mark.filterwarnings("ignore:.*deeper-than-8-bit:UserWarning",
                                        "ignore:some images differ in aspect ratio:UserWarning")
KEY = "s3cret-key"
TOP_LEVEL = ["a_good.png", "b_blob.png", "c_wide.png", "d_gray16.png", "e_rgb48.png"]


# ----------------------------------------------------------------------------- data

def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width``×``height`` RGB pixels, with one tiny IDAT (written by hand)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Ten good training products; inputs of three sizes, 16-bit gray and 48-bit colour, and a sub-folder."""
    root = tmp_path_factory.mktemp("serve")
    for i in range(10):
        save(product(seed=i)[0], root / "train" / f"{i:02d}.png")
    inputs = root / "inputs"
    save(product(seed=400)[0], inputs / "a_good.png")
    save(product(seed=401, blob=(0.3, 0.3, 0.12))[0], inputs / "b_blob.png")
    save(product(80, 112, seed=402, blob=(0.6, 0.4, 0.1))[0], inputs / "c_wide.png")
    gray16 = (product(seed=403)[0].mean(axis=2) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(inputs / "d_gray16.png")
    rgb48 = product(96, 96, seed=404, blob=(0.7, 0.3, 0.1))[0].astype(np.uint16) * 257
    cv2.imwrite(str(inputs / "e_rgb48.png"), rgb48[:, :, ::-1])  # 16 bits per channel, RGB order in the file
    save(product(seed=405)[0], inputs / "sub" / "f_good.png")
    return {"root": root, "train": root / "train", "inputs": inputs}


@pytest.fixture(scope="module")
def model_path(data):
    path = data["root"] / "model.padim"
    rc, out, err = cli("fit", data["train"], "-o", path, *FIT)
    assert rc == 0, err
    return path


@pytest.fixture(scope="module")
def scored(data, model_path):
    """``padim score`` of the inputs with heatmaps: {name: (score, probability, label)}, read with csv."""
    out = data["root"] / "scored" / "scores.tsv"
    heatmaps = data["root"] / "scored" / "heatmaps"
    rc, _, err = cli("score", model_path, data["inputs"], "-o", out, "--heatmaps", heatmaps, *RUNTIME)
    assert rc == 0, err
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return {"rows": {r["path"]: (float(r["score"]), float(r["probability"]), r["label"]) for r in rows},
            "heatmaps": heatmaps}


@pytest.fixture(scope="module")
def reference(model_path, data):
    """Full-precision in-process scores of the input files (the estimator reading the paths)."""
    from padim import PaDiM

    model = PaDiM.load(model_path, device="cpu", workers=0)
    paths = [data["inputs"] / name for name in TOP_LEVEL] + [data["inputs"] / "sub" / "f_good.png"]
    scores = model.score_samples(paths)
    return {"scores": dict(zip([p.name for p in paths], scores)), "threshold": model.calibrator_.threshold_,
            "model": model}


@pytest.fixture(scope="module")
def server(model_path, data):
    srv = Server(model_path, log_path=data["root"] / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def strict(model_path, data):
    """A server with an API key, a 1 MB upload limit, one image per pass and a queue of two."""
    srv = Server(model_path, "--api-key", KEY, "--max-upload-mb", "1", "--max-batch", "1", "--max-queue", "2",
                 log_path=data["root"] / "strict.log")
    yield srv
    srv.stop()


def upload(path: Path, name: str | None = None):
    return (name or path.name, path.read_bytes(), "application/octet-stream")


def one_line_detail(response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail, response.text
    return detail


def assert_healthy(srv) -> None:
    assert httpx.get(srv.url + "/health", timeout=10).status_code == 200
    assert srv.process.poll() is None


# ----------------------------------------------------------------------------- endpoints

def test_health_model_and_docs(server, model_path):
    health = httpx.get(server.url + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert httpx.head(server.url + "/health", timeout=10).status_code == 200
    rc, out, err = cli("info", model_path)
    assert rc == 0, err
    shown = dict(line.split(": ", 1) for line in out.splitlines())
    info = httpx.get(server.url + "/model", timeout=10).json()
    assert list(info) == list(shown)
    for key, value in info.items():
        assert (json.dumps(value) if isinstance(value, (list, dict)) else str(value)) == shown[key], key
    docs = httpx.get(server.url + "/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = httpx.get(server.url + "/openapi.json", timeout=10).json()["paths"]
    assert {"/health", "/model", "/predict", "/predict_batch", "/heatmap"} <= set(paths)


def test_an_uploads_warnings_name_the_upload(server, data):
    """A 16-bit upload to an 8-bit model is mapped by its own type's full scale, with a warning in
    the server's log that names the upload (it said "array input": the model scores arrays)."""
    response = httpx.post(server.url + "/predict", files={"file": upload(data["inputs"] / "d_gray16.png",
                                                                        "line-3 camera.png")}, timeout=60)
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 10
    while "line-3 camera.png" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)  # the log is written by another process
    warned = [line for line in server.log().splitlines() if "deeper-than-8-bit" in line]
    assert warned and all("'line-3 camera.png': deeper-than-8-bit integer pixels" in line for line in warned), warned
    assert "array input" not in server.log()


# What each input's result says about it, written out by hand: c_wide is 80×112 against the
# 64×64 input (w/h 1.40), d_gray16 and e_rgb48 are 16-bit files for a model fitted on 8-bit ones.
ASPECT_WARNING = ("aspect ratio 1.40 (w/h) differs from the training images' 1.00 by more than 15 %: "
                  "resized to 64×64, it may score high")
DEPTH_WARNING = ("deeper-than-8-bit integer pixels, but the model's value range 0..255 is for 8-bit images; "
                 "mapped by its own type's full scale instead")
EXPECTED_WARNINGS = {"a_good.png": [], "b_blob.png": [], "c_wide.png": [ASPECT_WARNING],
                     "d_gray16.png": [DEPTH_WARNING], "e_rgb48.png": [DEPTH_WARNING]}


def test_each_result_says_why_its_score_may_be_off(server, data):
    """The log's warnings reach the caller: each result carries its upload's own (an integrator on
    the line reads the JSON, not the server's log), and /heatmap sends them in a header."""
    names = list(EXPECTED_WARNINGS)
    files = [("files", upload(data["inputs"] / n)) for n in names]
    results = httpx.post(server.url + "/predict_batch", files=files, timeout=60).json()["results"]
    assert {r["filename"]: r["warnings"] for r in results} == EXPECTED_WARNINGS
    for name in ("c_wide.png", "a_good.png"):
        single = httpx.post(server.url + "/predict", files={"file": upload(data["inputs"] / name)}, timeout=60).json()
        assert single["warnings"] == EXPECTED_WARNINGS[name]
        response = httpx.post(server.url + "/heatmap", files={"file": upload(data["inputs"] / name)}, timeout=60)
        assert json.loads(response.headers["X-Padim-Warnings"]) == EXPECTED_WARNINGS[name]


def test_predict_equals_padim_score(server, scored, reference, data):
    for name in TOP_LEVEL + ["sub/f_good.png"]:
        response = httpx.post(server.url + "/predict", files={"file": upload(data["inputs"] / name)}, timeout=60)
        assert response.status_code == 200, response.text
        result = response.json()
        score, probability, label = scored["rows"][name]
        assert result["filename"] == Path(name).name
        assert result["score"] == pytest.approx(score, rel=1e-3)  # the TSV keeps 6 digits
        assert result["score"] == pytest.approx(reference["scores"][Path(name).name], rel=1e-4)
        assert result["probability"] == pytest.approx(probability, rel=1e-3, abs=1e-6)
        assert result["label"] == label
        assert result["threshold"] == pytest.approx(reference["threshold"], rel=1e-12)
    labels = {name: scored["rows"][name][2] for name in TOP_LEVEL}
    assert labels["a_good.png"] == "OK" and labels["b_blob.png"] == "NG"  # the set tells both apart


def test_predict_batch_keeps_request_order_and_reports_unreadable_files(server, reference, data):
    names = ["e_rgb48.png", "a_good.png", "notes.txt", "c_wide.png", "b_blob.png", "d_gray16.png"]
    files = [("files", upload(data["inputs"] / n) if n != "notes.txt" else (n, b"not an image", "text/plain"))
             for n in names]
    response = httpx.post(server.url + "/predict_batch", files=files, timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == names
    assert set(results[2]) == {"filename", "error"} and "notes.txt" in results[2]["error"]
    for name, result in zip(names, results):
        if name != "notes.txt":
            assert result["score"] == pytest.approx(reference["scores"][name], rel=1e-4), name
            assert result["label"] == ("NG" if result["score"] >= reference["threshold"] else "OK")


def test_heatmap_is_the_png_padim_score_draws(server, scored, reference, data):
    for name in ("a_good.png", "b_blob.png", "c_wide.png"):
        response = httpx.post(server.url + "/heatmap", files={"file": upload(data["inputs"] / name)}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        served = np.asarray(Image.open(io.BytesIO(response.content)))
        drawn = np.asarray(Image.open(scored["heatmaps"] / name))
        assert served.shape == drawn.shape
        assert np.array_equal(served, drawn), name  # same title, map, colours and scale
        assert float(response.headers["x-padim-score"]) == pytest.approx(reference["scores"][name], rel=1e-4)
        assert response.headers["x-padim-label"] == scored["rows"][name][2]


def test_concurrent_requests_share_batches_and_score_the_same(server, reference, data):
    names = ["a_good.png", "b_blob.png", "c_wide.png", "d_gray16.png"] * 4
    before = httpx.get(server.url + "/health", timeout=10).json()

    async def fire():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/predict", files={"file": upload(data["inputs"] / n)})
                                          for n in names))

    responses = asyncio.run(fire())
    after = httpx.get(server.url + "/health", timeout=10).json()
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    for name, response in zip(names, responses):
        assert response.json()["filename"] == name
        assert response.json()["score"] == pytest.approx(reference["scores"][name], rel=1e-4)
    assert after["images"] - before["images"] == len(names)
    assert after["batches"] - before["batches"] < len(names)  # some passes scored several requests


# ----------------------------------------------------------------------------- bad input

def bad_uploads(data):
    good = (data["inputs"] / "a_good.png").read_bytes()
    return {
        "non-image": (("notes.txt", b"hello, not an image\n", "text/plain"), 400),
        "empty": (("empty.png", b"", "image/png"), 400),
        "truncated": (("cut.png", good[: len(good) // 2], "image/png"), 400),
        "60000x60000 header": (("bomb.png", png_header_only(60000, 60000), "image/png"), 413),
        "9000x9000 header": (("big.png", png_header_only(9000, 9000), "image/png"), 413),
        "4x4 px": (("tiny.png", png_bytes(np.zeros((4, 4, 3), np.uint8)), "image/png"), 400),
    }


@pytest.mark.parametrize("endpoint", ["/predict", "/heatmap"])
def test_bad_uploads_get_a_quick_one_line_4xx(server, data, endpoint):
    for case, (file, status) in bad_uploads(data).items():
        response = httpx.post(server.url + endpoint, files={"file": file}, timeout=30)
        assert response.status_code == status, (case, response.text)
        detail = one_line_detail(response)
        assert file[0] in detail, (case, detail)
    response = httpx.post(server.url + endpoint, files={"image": upload(data["inputs"] / "a_good.png")}, timeout=30)
    assert response.status_code == 422 and "file" in one_line_detail(response)
    response = httpx.post(server.url + endpoint, content=b"raw bytes", timeout=30)
    assert response.status_code == 422 and one_line_detail(response)
    assert_healthy(server)


def test_client_file_names_are_names_only(server, reference, data):
    content = (data["inputs"] / "b_blob.png").read_bytes()
    for claimed in ("/etc/passwd", "../../model.padim", "C:\\Windows\\win.ini"):
        response = httpx.post(server.url + "/predict", files={"file": (claimed, content, "image/png")}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["filename"] == claimed.replace("\\", "/").rsplit("/", 1)[-1]
        assert response.json()["score"] == pytest.approx(reference["scores"]["b_blob.png"], rel=1e-4)
    response = httpx.post(server.url + "/predict", data={"path": "/etc/passwd"}, timeout=30)
    assert response.status_code == 422


def test_memory_stays_flat_over_1000_requests(server, data):
    good = (data["inputs"] / "a_good.png").read_bytes()
    cases = [("a.png", good, 200)] + [(f, c, s) for (f, c, _), s in bad_uploads(data).values()]
    deadline = time.monotonic() + 240
    done, rss = 0, []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while done < 1000 and time.monotonic() < deadline:
            name, content, status = cases[done % len(cases)]
            assert client.post("/predict", files={"file": (name, content, "image/png")}).status_code == status
            done += 1
            if done in (200, 1000):
                rss.append(server.rss_bytes())
    assert done == 1000, f"only {done} requests within the time bound"
    assert rss[1] - rss[0] < 40 * 2**20, f"RSS grew {(rss[1] - rss[0]) / 2**20:.1f} MB over 800 requests"
    assert_healthy(server)


# ----------------------------------------------------------------------------- key, limits, queue

def test_api_key_is_required_except_on_the_public_pages(strict, data):
    file = {"file": upload(data["inputs"] / "a_good.png")}
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY + "x"}, {"X-API-Key": ""}):
        for method, path in (("POST", "/predict"), ("POST", "/heatmap"), ("GET", "/model"),
                             ("POST", "/predict_batch")):
            response = httpx.request(method, strict.url + path, headers=headers,
                                     files=file if method == "POST" else None, timeout=30)
            assert response.status_code == 401, (headers, path)
            assert "X-API-Key" in one_line_detail(response)
    ok = httpx.post(strict.url + "/predict", headers={"X-API-Key": KEY}, files=file, timeout=30)
    assert ok.status_code == 200 and ok.json()["label"] in ("OK", "NG")
    assert httpx.get(strict.url + "/model", headers={"X-API-Key": KEY}, timeout=30).status_code == 200
    for path in ("/", "/app.js", "/health", "/docs", "/openapi.json"):
        assert httpx.get(strict.url + path, timeout=30).status_code == 200, path


def test_uploads_over_the_limit_get_413(strict):
    headers = {"X-API-Key": KEY}
    big = b"\0" * int(1.5 * 2**20)
    response = httpx.post(strict.url + "/predict", headers=headers, files={"file": ("big.png", big, "image/png")},
                          timeout=30)
    assert response.status_code == 413 and "1 MB" in one_line_detail(response)

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(24):
            yield b"\0" * 65536

    response = httpx.post(strict.url + "/predict", headers={**headers, "Content-Type": "multipart/form-data; boundary=x"},
                          content=chunks(), timeout=30)
    assert response.status_code == 413 and "1 MB" in one_line_detail(response)
    assert_healthy(strict)


def test_full_queue_answers_503_and_recovers(strict, data):
    headers = {"X-API-Key": KEY}
    files = [("files", upload(data["inputs"] / n)) for n in ("a_good.png", "b_blob.png")]
    too_many = httpx.post(strict.url + "/predict_batch", headers=headers, files=files + files[:1], timeout=30)
    assert too_many.status_code == 413 and "queue holds 2" in one_line_detail(too_many)

    async def crowd():
        async with httpx.AsyncClient(base_url=strict.url, timeout=120, headers=headers) as client:
            return await asyncio.gather(*(client.post("/predict_batch", files=files) for _ in range(16)))

    responses = asyncio.run(crowd())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1" and "queue is full" in one_line_detail(response)
        else:
            assert [r["filename"] for r in response.json()["results"]] == ["a_good.png", "b_blob.png"]
    assert_healthy(strict)
    again = httpx.post(strict.url + "/predict_batch", headers=headers, files=files, timeout=30)
    assert again.status_code == 200


def test_serve_command_defaults_to_loopback_and_reads_the_key_from_the_environment(monkeypatch, model_path):
    import padim.serve

    seen = {}
    monkeypatch.setattr(padim.serve, "serve", lambda path, **kwargs: seen.update(kwargs, path=path))
    monkeypatch.setenv("PADIM_API_KEY", "from-env")
    rc, _, err = cli("serve", model_path)
    assert rc == 0, err
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000 and seen["api_key"] == "from-env"
    rc, _, err = cli("serve", model_path, "--api-key", "flag")
    assert rc == 0 and seen["api_key"] == "flag"


# ----------------------------------------------------------------------------- parts on their own

def test_upload_decoding_equals_reading_the_file(data, tmp_path):
    from padim.io import read_pixels
    from padim.upload import read_upload

    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    Image.fromarray(product(48, 80, seed=9)[0]).save(rotated, exif=exif, quality=95)
    files = [data["inputs"] / n for n in TOP_LEVEL] + [rotated]
    for path in files:
        from_bytes = read_upload(path.read_bytes(), path.name)
        from_file = read_pixels(path)
        assert from_bytes.dtype == from_file.dtype and np.array_equal(from_bytes, from_file), path.name
    assert read_upload(rotated.read_bytes(), "r").shape[:2] == (80, 48)
    assert read_upload((data["inputs"] / "e_rgb48.png").read_bytes(), "x").dtype == np.uint16


def test_micro_batcher_batches_concurrent_jobs_in_order_and_bounds_its_queue():
    from padim.batcher import Job, MicroBatcher, QueueFullError, TooManyImagesError

    seen_batches, entered, release = [], threading.Event(), threading.Event()

    def double(jobs):
        entered.set()
        release.wait(10)  # a model pass in progress: the next requests queue up meanwhile
        seen_batches.append([job.pixels for job in jobs])
        return [2 * job.pixels for job in jobs]

    async def scenario():
        batcher = MicroBatcher(double, max_batch=4, max_wait_s=0.01, capacity=6)
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit([Job(-1)]))
            while not entered.is_set():
                await asyncio.sleep(0.001)
            with pytest.raises(TooManyImagesError, match="holds 6"):
                await batcher.submit([Job(i) for i in range(7)])
            pending = [asyncio.ensure_future(batcher.submit([Job(i), Job(i + 100)])) for i in range(3)]
            await asyncio.sleep(0.01)
            with pytest.raises(QueueFullError, match="full"):
                await batcher.submit([Job(1000)])
            release.set()
            return await first, await asyncio.gather(*pending)
        finally:
            release.set()
            await batcher.stop()

    first, later = asyncio.run(scenario())
    assert first == [-2]
    assert later == [[2 * i, 2 * (i + 100)] for i in range(3)]
    assert seen_batches == [[-1], [0, 100, 1, 101], [2, 102]]  # queued jobs share passes, in order


def test_serve_command_reports_a_busy_port_in_one_line(model_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, _, err = cli("serve", model_path, "--port", port)
    assert rc == 2
    assert err.strip().splitlines() == [f"padim serve: error: cannot listen on 127.0.0.1:{port} (Address already in use)"]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_failing_model_pass_is_a_one_line_500_and_the_app_keeps_serving(model_path, data):
    from fastapi.testclient import TestClient

    from padim import PaDiM
    from padim.serve import create_app

    model = PaDiM.load(model_path, device="cpu", workers=0)
    with TestClient(create_app(model), raise_server_exceptions=False) as client:
        working = model.iter_results
        model.iter_results = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA error: device lost\nmore"))
        response = client.post("/predict", files={"file": upload(data["inputs"] / "a_good.png")})
        assert response.status_code == 500
        assert one_line_detail(response) == "internal error (RuntimeError: CUDA error: device lost)"
        model.iter_results = working
        assert client.post("/predict", files={"file": upload(data["inputs"] / "a_good.png")}).status_code == 200
        assert client.get("/health").status_code == 200


# ----------------------------------------------------------------------------- an export, served without torch

@pytest.fixture(scope="module", params=["onnx", "openvino"])
def served_export(request, model_path, data):
    """The model exported to ONNX (or OpenVINO IR), ``padim score`` of the export with heatmaps,
    and a server of the export."""
    pytest.importorskip("onnxruntime", reason="exports need the export extra (.ci/run installs it)")
    if request.param == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO needs the openvino extra (.ci/run installs it)")
    root = data["root"] / f"export-{request.param}"
    path = root / ("model.xml" if request.param == "openvino" else "model.onnx")
    rc, _, err = cli("export", model_path, "-o", path)
    assert rc == 0, err
    rc, _, err = cli("score", path, data["inputs"], "-o", root / "scores.tsv", "--heatmaps", root / "heatmaps", *RUNTIME)
    assert rc == 0, err
    with open(root / "scores.tsv", newline="", encoding="utf-8") as handle:
        rows = {r["path"]: (float(r["score"]), float(r["probability"]), r["label"])
                for r in csv.DictReader(handle, delimiter="\t")}
    srv = Server(path, log_path=root / "server.log")
    yield {"path": path, "rows": rows, "heatmaps": root / "heatmaps", "server": srv}
    srv.stop()


def test_an_export_is_served_as_padim_score_scores_it_without_importing_torch(served_export, reference, data):
    srv, rows = served_export["server"], served_export["rows"]
    mapped = Path(f"/proc/{srv.process.pid}/maps")
    if mapped.exists():  # Linux: the libraries the server process has loaded
        assert "libtorch" not in mapped.read_text()
    rc, out, err = cli("info", served_export["path"])
    assert rc == 0, err
    shown = dict(line.split(": ", 1) for line in out.splitlines())
    info = httpx.get(srv.url + "/model", timeout=10).json()
    assert list(info) == list(shown) and info["format"] in ("ONNX", "OpenVINO IR")
    for name in TOP_LEVEL + ["sub/f_good.png"]:
        response = httpx.post(srv.url + "/predict", files={"file": upload(data["inputs"] / name)}, timeout=60)
        assert response.status_code == 200, response.text
        result = response.json()
        score, probability, label = rows[name]
        assert result["score"] == pytest.approx(score, rel=1e-3)  # the TSV keeps 6 digits
        assert result["score"] == pytest.approx(reference["scores"][Path(name).name], rel=1e-3)  # the torch model
        assert result["probability"] == pytest.approx(probability, rel=1e-3, abs=1e-6)
        assert result["label"] == label
        assert result["threshold"] == pytest.approx(reference["threshold"], rel=1e-6)
    names = ["c_wide.png", "notes.txt", "a_good.png"]
    files = [("files", upload(data["inputs"] / n) if n != "notes.txt" else (n, b"not an image", "text/plain"))
             for n in names]
    results = httpx.post(srv.url + "/predict_batch", files=files, timeout=60).json()["results"]
    assert [r["filename"] for r in results] == names and "error" in results[1]
    assert [r["warnings"] for r in results if "label" in r] == [[ASPECT_WARNING], []]  # as the torch model's
    assert [r["label"] for r in results if "label" in r] == [rows["c_wide.png"][2], rows["a_good.png"][2]]
    for name in ("a_good.png", "b_blob.png"):
        response = httpx.post(srv.url + "/heatmap", files={"file": upload(data["inputs"] / name)}, timeout=60)
        assert response.status_code == 200, response.text
        served = np.asarray(Image.open(io.BytesIO(response.content)))
        assert np.array_equal(served, np.asarray(Image.open(served_export["heatmaps"] / name))), name
    response = httpx.post(srv.url + "/predict", files={"file": ("bomb.png", png_header_only(60000, 60000))}, timeout=30)
    assert response.status_code == 413 and "bomb.png" in one_line_detail(response)
    assert_healthy(srv)


def test_serving_or_scoring_an_export_refuses_the_torch_only_options(served_export, data, tmp_path):
    from serve_support import free_port

    path = served_export["path"]
    for command, options, named in [
            (["serve", path, "--port", free_port()], ["--weights", "w.pth"], "--weights w.pth"),
            (["serve", path, "--port", free_port()], ["--device", "cuda"], "--device cuda"),
            (["score", path, data["inputs"], "-o", tmp_path / "s.tsv", "--quiet"], ["--device", "cuda:1"],
             "--device cuda:1")]:
        rc, _, err = cli(*command, *options)
        assert rc == 2
        (line,) = err.strip().splitlines()
        assert line.startswith(f"padim {command[0]}: error: ") and named in line and ".padim" in line
    assert not (tmp_path / "s.tsv").exists()


def test_an_export_warns_once_per_call_of_another_aspect_ratio_as_the_torch_model_does(served_export, data):
    """Exports scored silently what the torch model warns of (their metadata has said since the
    first export whether the model keeps the aspect ratio)."""
    import warnings

    from padim.runtime import ExportedModel

    model = ExportedModel(served_export["path"], workers=0)
    inputs = data["inputs"]
    for images, expected in (([inputs / "c_wide.png", inputs / "c_wide.png", inputs / "a_good.png"], 1),
                             ([inputs / "a_good.png", inputs / "b_blob.png"], 0)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.score_samples(images)
        aspect = [str(w.message) for w in caught if "aspect ratio" in str(w.message)]
        assert aspect == ["some images differ in aspect ratio from the training images; they are resized "
                          "to 64×64 and may score high"] * expected
    assert model.image_warnings(np.asarray(Image.open(inputs / "c_wide.png"))) == [ASPECT_WARNING]


def test_an_export_without_calibration_is_refused_in_one_line(data, tmp_path):
    pytest.importorskip("onnxruntime", reason="exports need the export extra (.ci/run installs it)")
    from serve_support import free_port

    model = tmp_path / "plain.padim"
    rc, _, err = cli("fit", data["train"], "-o", model, "--folds", "0", *FIT)
    assert rc == 0, err
    rc, _, err = cli("export", model, "-o", tmp_path / "plain.onnx")
    assert rc == 0, err
    rc, _, err = cli("serve", tmp_path / "plain.onnx", "--port", free_port())
    assert rc == 2
    assert err.strip().splitlines() == ["padim serve: error: the model has no calibration, so no probabilities; "
                                        "refit it with `padim fit` and export it again"]
