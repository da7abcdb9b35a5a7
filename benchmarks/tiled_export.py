"""Exports of large (tiled or whole-image) models: export cost, scoring memory and speed, parity.

    python benchmarks/tiled_export.py --test DIR MODEL.padim [MODEL.padim ...] [--work DIR]

For each fitted model file, each step in a fresh process (peak RSS of that process alone):
``padim export`` to ONNX (seconds, peak RSS, MB on disk); ``padim score`` of the test folder with
the torch model and with the export (seconds, peak RSS; ``--batch-size`` left at its default);
the largest relative difference of their scores; and ONNX Runtime alone, one image per call, with
and without its memory pattern (load seconds, seconds per image after the first call, resident
GB after the calls, peak GB). ``--openvino`` adds the OpenVINO IR's export and ``padim score``;
``--one-piece`` probes an export whose whitener is rebuilt by one ``Gather`` however large it is
(padim.export.whitener_chunks cuts one over 512 MiB into pieces of 256 MiB, which ONNX Runtime folds).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ORT_PROBE = r"""
import sys, time, resource, numpy as np, onnxruntime as ort
def resident(): return int(open('/proc/self/statm').read().split()[1]) * 4096 / 1e9
options = ort.SessionOptions(); options.enable_mem_pattern = sys.argv[2] == "on"
start = time.perf_counter()
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
load = time.perf_counter() - start
h, w = map(int, session.get_modelmeta().custom_metadata_map["input_size"].split("x"))
image = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
times = []
for _ in range(int(sys.argv[3])):
    start = time.perf_counter(); session.run(None, {"image": image}); times.append(time.perf_counter() - start)
print(load, sum(times[1:]) / max(1, len(times) - 1), resident(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
"""

ONE_PIECE_EXPORT = r"""
import sys
import padim.export as export
from padim import PaDiM
export.ONE_PIECE_MAX_BYTES = 2**62
export.export_model(PaDiM.load(sys.argv[1]), sys.argv[2])
"""


def timed(command: list[str]) -> tuple[float, float, str]:
    """Run ``command``; its wall seconds, its own peak RSS in GB (``wait4``), and its stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read().strip()
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {stderr.splitlines()[-1] if stderr else child.returncode}")
    return seconds, usage.ru_maxrss / 1e6, stdout


def scores(tsv: Path) -> dict[str, float]:
    with open(tsv, newline="") as f:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(f, delimiter="\t") if row.get("score")}


def run_padim(*args: str) -> list[str]:
    return [sys.executable, "-m", "padim", *args]


def measure(model: Path, test: Path, work: Path, calls: int, openvino: bool, one_piece: bool) -> list[str]:
    rows = []
    name = model.stem
    onnx = work / f"{name}.onnx"
    s, peak, _ = timed(run_padim("export", str(model), "-o", str(onnx)))
    size = sum(p.stat().st_size for p in work.glob(f"{name}.onnx*")) / 2**20
    rows.append(f"| {name} | export ONNX | {s:.1f} s | {peak:.2f} GB | {size:.0f} MiB on disk |")
    s, peak, _ = timed(run_padim("score", str(model), str(test), "-o", str(work / f"{name}_torch.tsv"), "--quiet"))
    n = len(scores(work / f"{name}_torch.tsv"))
    rows.append(f"| {name} | padim score, torch ({n} images) | {s:.1f} s | {peak:.2f} GB | |")
    s, peak, _ = timed(run_padim("score", str(onnx), str(test), "-o", str(work / f"{name}_onnx.tsv"), "--quiet"))
    a, b = scores(work / f"{name}_torch.tsv"), scores(work / f"{name}_onnx.tsv")
    worst = max(abs(a[k] - b[k]) / abs(a[k]) for k in a)
    rows.append(f"| {name} | padim score, ONNX | {s:.1f} s | {peak:.2f} GB | scores within {worst:.1e} of torch |")
    if openvino:
        xml = work / f"{name}.xml"
        s, peak, _ = timed(run_padim("export", str(model), "-o", str(xml), "--format", "openvino"))
        rows.append(f"| {name} | export OpenVINO | {s:.1f} s | {peak:.2f} GB | |")
        s, peak, _ = timed(run_padim("score", str(xml), str(test), "-o", str(work / f"{name}_ov.tsv"), "--quiet"))
        c = scores(work / f"{name}_ov.tsv")
        worst = max(abs(a[k] - c[k]) / abs(a[k]) for k in a)
        rows.append(f"| {name} | padim score, OpenVINO | {s:.1f} s | {peak:.2f} GB | scores within {worst:.1e} of torch |")
    probes = [(onnx, "on", "memory pattern on"), (onnx, "off", "memory pattern off")]
    if one_piece:
        whole = work / f"{name}_one_piece.onnx"
        subprocess.run([sys.executable, "-c", ONE_PIECE_EXPORT, str(model), str(whole)], check=True)
        probes.append((whole, "off", "memory pattern off, whitener in one piece"))
    for path, pattern, label in probes:
        _, _, out = timed([sys.executable, "-c", ORT_PROBE, str(path), pattern, str(calls)])
        load, per_image, resident, peak = map(float, out.split())
        rows.append(f"| {name} | ONNX Runtime, {label} | load {load:.1f} s, {per_image:.3f} s / image "
                    f"| {peak:.2f} GB | {resident:.2f} GB resident after {calls} calls |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--test", type=Path, required=True, help="folder of test images")
    parser.add_argument("--work", type=Path, default=None, help="where exports and TSVs go (default: a temporary folder)")
    parser.add_argument("--calls", type=int, default=4, help="ONNX Runtime calls per probe (default: 4)")
    parser.add_argument("--openvino", action="store_true")
    parser.add_argument("--one-piece", action="store_true",
                        help="also probe an export whose whitener is one Gather however large (as before §38)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print("| model | step | time | peak RSS | |\n|---|---|---|---|---|")
        for model in args.models:
            for row in measure(model, args.test, work, args.calls, args.openvino, args.one_piece):
                print(row, flush=True)


if __name__ == "__main__":
    main()
