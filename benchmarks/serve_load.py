"""HTTP load on ``padim serve`` over loopback against in-process ``score_samples`` of the same images.

Starts ``padim serve`` (micro-batched, and with ``--plain`` also ``--max-batch 1``: each
request scored alone) on a free 127.0.0.1 port, then for each client count runs an asyncio
httpx load generator: every client posts the images to ``/predict`` in turn until
``--requests`` answers arrived or ``--seconds`` passed. Reports images/s and p50/p99 latency,
and the ratio to in-process throughput (files read from disk by the estimator, same threads).
With ``--exports onnx openvino`` the model's exports are served too (``padim serve model.onnx``,
no torch in the server); each row also gives the server's resident memory after the load (peak).

    python benchmarks/serve_load.py --data /work/shared/data/cookies --clients 1 4 16 --plain
    python benchmarks/serve_load.py --clients 1 16 --exports onnx openvino
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fit_model(train: Path, out: Path, image_size: int, threads: int) -> Path:
    subprocess.run([sys.executable, "-m", "padim.cli", "fit", str(train), "-o", str(out), "--image-size",
                    str(image_size), "--device", "cpu", "--threads", str(threads), "--workers", "0", "--quiet"],
                   check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return out


def export(model_path: Path, fmt: str) -> Path:
    out = model_path.with_suffix(".xml" if fmt == "openvino" else ".onnx")
    subprocess.run([sys.executable, "-m", "padim.cli", "export", str(model_path), "-o", str(out)], check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
    return out


def in_process(model_path: Path, paths: list[Path], threads: int, batch: int, repeats: int) -> float:
    """Images/s of ``PaDiM.score_samples`` on the files (after one warm-up pass)."""
    from padim import PaDiM

    model = PaDiM.load(model_path, device="cpu", threads=threads, batch_size=batch, workers=0)
    model.score_samples(paths[:batch])
    started = time.perf_counter()
    for _ in range(repeats):
        model.score_samples(paths)
    return repeats * len(paths) / (time.perf_counter() - started)


class Served:
    def __init__(self, model_path: Path, threads: int, max_batch: int):
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "padim.cli", "serve", str(model_path), "--port", port, "--device", "cpu",
             "--threads", str(threads), "--max-batch", str(max_batch), "--max-queue", "256"],
            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not become healthy")

    def peak_rss_mb(self) -> float:
        """The server process's peak resident memory so far (Linux VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


async def load(url: str, uploads: list[tuple[str, bytes]], clients: int, requests: int, seconds: float) -> dict:
    latencies: list[float] = []
    issued = 0
    failures = 0
    deadline = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal issued, failures
        while issued < requests and time.monotonic() < deadline:
            name, content = uploads[issued % len(uploads)]
            issued += 1
            started = time.perf_counter()
            response = await http.post("/predict", files={"file": (name, content, "application/octet-stream")})
            latencies.append(time.perf_counter() - started)
            failures += response.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await http.post("/predict", files={"file": uploads[0]})  # connection and first-request costs
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "failures": failures,
            "images_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "padim" / "sample_data" / "cookies_small",
                        help="MVTec layout: fits on train/good (unless --model), sends test/*")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=96, help="answers per client count (bound)")
    parser.add_argument("--seconds", type=float, default=60, help="time per client count (bound)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--plain", action="store_true", help="also a server scoring each request alone")
    parser.add_argument("--exports", nargs="*", choices=("onnx", "openvino"), default=[],
                        help="also serve the model's exports (micro-batched)")
    args = parser.parse_args()

    paths = sorted(p for p in (args.data / "test").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    uploads = [(p.name, p.read_bytes()) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or fit_model(args.data / "train" / "good", Path(tmp) / "model.padim",
                                             args.image_size, args.threads)
        baseline = in_process(model_path, paths, args.threads, args.max_batch,
                              repeats=max(1, args.requests // len(paths)))
        print(json.dumps({"in_process_images_per_s": round(baseline, 2), "images": len(paths),
                          "threads": args.threads}), flush=True)
        rows = []
        servers = [("micro-batched", model_path, args.max_batch)] + ([("plain", model_path, 1)] if args.plain else [])
        servers += [(f"{fmt}, micro-batched", export(model_path, fmt), args.max_batch) for fmt in args.exports]
        for label, served_path, max_batch in servers:
            server = Served(served_path, args.threads, max_batch)
            try:
                for clients in args.clients:
                    row = asyncio.run(load(server.url, uploads, clients, args.requests, args.seconds))
                    row.update(server=label, ratio=round(row["images_per_s"] / baseline, 2),
                               peak_rss_mb=server.peak_rss_mb())
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                server.stop()
    print("\n| server | clients | images/s | × in-process | p50 ms | p99 ms | server peak RSS MB | requests |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['clients']} | {r['images_per_s']} | {r['ratio']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['peak_rss_mb']} | "
              f"{r['requests']}{' (' + str(r['failures']) + ' failed)' if r['failures'] else ''} |")


if __name__ == "__main__":
    main()
