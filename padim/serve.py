"""``padim serve``: a FastAPI app that scores uploads over HTTP, with a web page for operators.

Endpoints: ``GET /health``, ``GET /model`` (what ``padim info`` shows), ``POST /predict`` (field
``file``), ``POST /predict_batch`` (field ``files``, repeated), ``POST /heatmap`` (PNG as
``padim score --heatmaps`` draws it), ``GET /`` (the web page), ``GET /docs`` (OpenAPI).
Uploads are decoded in memory (:mod:`padim.upload`) and scored by :class:`Scorer` through the
micro-batcher (:mod:`padim.batcher`), so a result equals ``padim score`` of the same file. The
model is a ``.padim`` file (torch) or an export (``.onnx`` / OpenVINO ``.xml``), which is served
through :mod:`padim.runtime` without importing torch.
With an API key, every endpoint but ``/``, ``/app.js``, ``/health``, ``/docs`` and
``/openapi.json`` (which carry no data) needs the header ``X-API-Key``.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .batcher import Job, MicroBatcher, QueueFullError, TooManyImagesError
from .errors import first_line
from .io import ImageReadError, load_image, named_array
from .runtime import ExportedModel, load_scoring_model
from .upload import DEFAULT_MAX_PIXELS, ImageTooLargeError, read_upload, upload_name
from .viz import _close, heatmap_figure
from .workflows import colour_scale, display_name

STATIC_DIR = Path(__file__).resolve().parent / "static"
PUBLIC_PATHS = frozenset({"/", "/app.js", "/health", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
API_KEY_HEADER = "x-api-key"
_DRAWING = threading.Lock()  # matplotlib is not thread-safe: one heatmap drawn at a time


@dataclass
class Outcome:
    """What the model says about one image, or why it could not score it."""

    score: float | None = None
    probability: float | None = None
    ng: bool = False
    anomaly_map: np.ndarray | None = None
    error: str = ""
    warnings: list[str] = field(default_factory=list)  # why its score may be off (padim.image_checks)


class Scorer:
    """Scores decoded uploads with the fitted estimator (or an export) and its calibration.

    The one place the server calls the model: switching to the scoring core means changing
    :meth:`__call__` only. Runs on the batcher's model thread.
    """

    def __init__(self, model):
        if model.calibrator_ is None:
            raise RuntimeError("the model has no calibration, so no probabilities; refit it with `padim fit`"
                               + (" and export it again" if isinstance(model, ExportedModel) else ""))
        self.model = model
        self.calibrator = model.calibrator_
        self.threshold = float(self.calibrator.threshold_)

    def __call__(self, jobs: Sequence[Job]) -> list[Outcome]:
        want_maps = any(job.want_map for job in jobs)
        results = list(self.model.iter_results([job.pixels for job in jobs], maps=want_maps))
        scored = [r for r in results if not r.error]
        scores = np.array([r.score for r in scored], dtype=np.float64)
        probability = self.calibrator.probability(scores) if len(scores) else scores
        ng = self.calibrator.predict(scores) if len(scores) else scores.astype(bool)
        by_index = {r.index: (r, float(p), bool(n)) for r, p, n in zip(scored, probability, ng)}
        outcomes = []
        for job, result in zip(jobs, results):
            if result.error:
                outcomes.append(Outcome(error=result.error))
                continue
            _, p, n = by_index[result.index]
            outcomes.append(Outcome(result.score, p, n, result.anomaly_map if job.want_map else None,
                                    warnings=self.model.image_warnings(job.pixels)))
        return outcomes


def heatmap_png(model, pixels: np.ndarray, outcome: Outcome, threshold: float, name: str) -> bytes:
    """The heatmap PNG ``padim score --heatmaps`` writes for this image, as bytes."""
    background = load_image(pixels, value_range=getattr(model, "value_range_", None),
                            value_kind=getattr(model, "value_kind_", None))
    vmin, vmax = colour_scale(model, threshold, outcome.anomaly_map)
    title = (f"{display_name(name)}  score {outcome.score:.3g}  p(defect) {outcome.probability:.3f}  "
             f"{'NG' if outcome.ng else 'OK'}")
    with _DRAWING:
        fig = heatmap_figure(background, outcome.anomaly_map, vmin=vmin, vmax=vmax, threshold=threshold,
                             title=title)
        try:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=fig.dpi)  # as viz.save_figure writes the file
            return buffer.getvalue()
        finally:
            _close(fig)


def json_safe(value):
    """``describe()`` values as JSON (numpy numbers and tuples included)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


class RequestGuard:
    """ASGI middleware: the API key (constant-time comparison) and the upload size limit,
    checked before a byte of the body is parsed. A body without Content-Length is counted as
    it streams and refused once past the limit."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        if self.api_key is not None and scope["path"] not in PUBLIC_PATHS:
            given = headers.get(API_KEY_HEADER, b"")
            if not hmac.compare_digest(given, self.api_key):
                return await _reply(send, 401, "missing or wrong X-API-Key header")
        length = headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _reply(send, 400, "invalid Content-Length header")
            if declared > self.max_body_bytes:
                return await _reply(send, 413, self._too_large())
            return await self.app(scope, receive, send)
        if scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        return await self._streamed(scope, receive, send)

    def _too_large(self) -> str:
        return f"request body over the upload limit of {self.max_body_bytes / 2**20:g} MB"

    async def _streamed(self, scope, receive, send):
        """A chunked body: buffered up to the limit, then handed on."""
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            total += len(message.get("body", b""))
            if total > self.max_body_bytes:
                return await _reply(send, 413, self._too_large())
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _reply(send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def create_app(model, *, api_key: str | None = None, max_upload_mb: float = 50, max_batch: int = 16,
               max_wait_s: float = 0.01, queue_capacity: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS):
    """The FastAPI app serving a fitted, calibrated ``model`` (a :class:`padim.PaDiM` or a
    :class:`padim.runtime.ExportedModel`).

    max_batch: most images in one model pass; queue_capacity: most images waiting (default
    4 × max_batch) before requests get 503; max_pixels: largest decoded image.
    """
    scorer = Scorer(model)
    model.batch_size = max(int(max_batch), 1)  # one loader batch per micro-batch
    batcher = MicroBatcher(scorer, max_batch=max_batch, max_wait_s=max_wait_s,
                           capacity=queue_capacity or 4 * max_batch)
    description = json_safe(model.describe())
    page = (STATIC_DIR / "index.html").read_bytes()
    script = (STATIC_DIR / "app.js").read_bytes()

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        # First pass builds the backbone: before /health answers, not in a client's request.
        h, w = model.input_size_
        await batcher.run_blocking(scorer, [Job(np.full((h, w, 3), 128, np.uint8))])
        yield
        await batcher.stop()

    app = FastAPI(title="padim", summary="PaDiM anomaly scores, probabilities and heatmaps",
                  lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def one_line_validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"detail": f"{where or 'request'}: {first.get('msg', 'invalid request')}"
                                       f" (multipart/form-data upload expected)"}, status_code=422)

    @app.exception_handler(Exception)
    async def one_line_internal_error(request: Request, exc: Exception):
        reason = first_line(exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}: {reason})"}, status_code=500)

    async def decode(upload: UploadFile) -> tuple[str, np.ndarray | None, Exception | None]:
        name = upload_name(upload.filename)
        with batcher.arriving():
            data = await upload.read()
            try:
                pixels = await run_in_threadpool(read_upload, data, name, max_pixels)
                return name, named_array(pixels, f"'{name}'"), None  # its warnings and errors name it
            except ImageReadError as exc:
                return name, None, exc

    async def score(jobs: list[Job]) -> list[Outcome]:
        try:
            return await batcher.submit(jobs)
        except QueueFullError as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        except TooManyImagesError as exc:
            raise HTTPException(413, str(exc)) from None

    async def score_one(upload: UploadFile, want_map: bool) -> tuple[str, np.ndarray, Outcome]:
        name, pixels, error = await decode(upload)
        if error is not None:
            raise HTTPException(413 if isinstance(error, ImageTooLargeError) else 400, str(error))
        (outcome,) = await score([Job(pixels, want_map)])
        if outcome.error:
            raise HTTPException(400, outcome.error)
        return name, pixels, outcome

    def result_json(name: str, outcome: Outcome) -> dict:
        return {"filename": name, "score": outcome.score, "probability": outcome.probability,
                "label": "NG" if outcome.ng else "OK", "threshold": scorer.threshold, "warnings": outcome.warnings}

    # HEAD too: load balancers and uptime probes often check with HEAD (GET alone answered 405)
    @app.api_route("/health", methods=["GET", "HEAD"], summary="200 once the model is loaded")
    async def health():
        return {"status": "ok", "queued": batcher.queued,
                "batches": batcher.batches, "images": batcher.images}

    @app.get("/model", summary="What `padim info` shows about the served model")
    async def model_info():
        return description

    @app.post("/predict", summary="Score one image: score, probability, label (OK/NG), threshold")
    async def predict(file: UploadFile = File(...)):
        name, _, outcome = await score_one(file, want_map=False)
        return result_json(name, outcome)

    @app.post("/predict_batch", summary="Score several images (field `files`, repeated), in order")
    async def predict_batch(files: list[UploadFile] = File(...)):
        decoded = await asyncio.gather(*(decode(upload) for upload in files))
        jobs = [Job(pixels) for _, pixels, error in decoded if error is None]
        outcomes = iter(await score(jobs) if jobs else [])
        results = []
        for name, _, error in decoded:
            outcome = Outcome(error=str(error)) if error is not None else next(outcomes)
            if outcome.error:
                results.append({"filename": name, "error": outcome.error})
            else:
                results.append(result_json(name, outcome))
        return {"results": results}

    @app.post("/heatmap", summary="The heatmap PNG as `padim score --heatmaps` draws it",
              response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def heatmap(file: UploadFile = File(...)):
        name, pixels, outcome = await score_one(file, want_map=True)
        png = await run_in_threadpool(heatmap_png, model, pixels, outcome, scorer.threshold, name)
        result = result_json(name, outcome)
        headers = {f"X-Padim-{key.title()}": str(result[key]) for key in ("score", "probability", "label", "threshold")}
        headers["X-Padim-Warnings"] = json.dumps(result["warnings"])  # a JSON list, ASCII (× escaped)
        return Response(png, media_type="image/png", headers=headers)

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/app.js", include_in_schema=False)
    async def app_js():
        return Response(script, media_type="text/javascript")

    return RequestGuard(app, api_key, int(max_upload_mb * 2**20))


def serve(model_path, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_upload_mb: float = 50, max_batch: int = 16, max_queue: int | None = None, device: str = "auto",
          threads: int | None = None, weights: str | None = None, log=print) -> None:
    """Load the model, then serve it with uvicorn until interrupted."""
    import uvicorn

    if max_batch < 1 or (max_queue is not None and max_queue < 1) or max_upload_mb <= 0:
        raise ValueError(f"--max-batch and --max-queue must be at least 1 and --max-upload-mb above 0, got "
                         f"{max_batch}, {max_queue} and {max_upload_mb}")
    _check_address(host, port)
    model = load_scoring_model(model_path, device=device, weights=weights, threads=threads, batch_size=max_batch,
                               workers=0)
    app = create_app(model, api_key=api_key, max_upload_mb=max_upload_mb, max_batch=max_batch,
                     queue_capacity=max_queue)
    engine = model.format if isinstance(model, ExportedModel) else "PyTorch"
    log(f"serving {model_path} ({engine}) on http://{host}:{port}/ (API docs: /docs"
        f"{', X-API-Key required' if api_key else ''})")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def _check_address(host: str, port: int) -> None:
    """Fail before loading the model when the address cannot be listened on (in use, not local)."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as exc:
        raise RuntimeError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
