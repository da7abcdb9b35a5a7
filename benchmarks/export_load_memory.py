"""Peak memory of loading an export: ONNX Runtime's session (which folds the whitener's unpacking)
and OpenVINO's compiled model, each in a fresh process, against the process before the load.

    python benchmarks/export_load_memory.py --model model.padim          # exports it, then loads
    python benchmarks/export_load_memory.py --onnx a.onnx b.onnx         # given exports

Prints per file: its size, the peak resident memory (Linux VmHWM) after the load and after
scoring one batch, the resident memory then, and images/s on a random batch (3 rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, time
from pathlib import Path
import numpy as np

def memory():
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(status[key].split()[0]) // 1024 for key in ("VmHWM", "VmRSS")}

path, threads, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if path.suffix == ".xml":
    import openvino as ov
    before = memory()
    started = time.perf_counter()
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "INFERENCE_NUM_THREADS": threads})
    shape = [d.get_length() for d in compiled.input(0).get_partial_shape()[2:]]
    run = lambda x: compiled(x)
else:
    import onnxruntime as ort
    before = memory()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    started = time.perf_counter()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape[2:]
    run = lambda x: session.run(None, {"image": x})
load_s = time.perf_counter() - started
loaded = memory()
x = np.random.default_rng(0).random((batch, 3, *shape)).astype(np.float32)
run(x)
started = time.perf_counter()
for _ in range(3):
    run(x)
speed = 3 * batch / (time.perf_counter() - started)
print(json.dumps({"before_load_mb": before["VmRSS"], "load_s": round(load_s, 2), "peak_after_load_mb": loaded["VmHWM"],
                  "rss_after_load_mb": loaded["VmRSS"], "peak_after_scoring_mb": memory()["VmHWM"],
                  "images_per_s": round(speed, 1)}))
"""


def probe(path: Path, threads: int, batch: int) -> dict:
    run = subprocess.run([sys.executable, "-c", PROBE, str(path), str(threads), str(batch)], check=True,
                         capture_output=True, text=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a .padim model: exported to ONNX and OpenVINO first")
    parser.add_argument("--onnx", type=Path, nargs="*", default=[], help="exports to load (.onnx or .xml)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = list(args.onnx)
        if args.model:
            for suffix in (".onnx", ".xml"):
                out = Path(tmp) / f"model{suffix}"
                subprocess.run([sys.executable, "-m", "padim.cli", "export", str(args.model), "-o", str(out)],
                               check=True, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
                files.append(out)
        print("| file | MiB on disk | RSS before load MB | load s | peak after load MB | RSS after load MB "
              "| peak after one batch MB | img/s |")
        print("|---|---|---|---|---|---|---|---|")
        for path in files:
            parts = [path, path.with_suffix(".bin") if path.suffix == ".xml" else Path(f"{path}.data")]
            size = sum(p.stat().st_size for p in parts if p.exists()) / 2**20
            r = probe(path, args.threads, args.batch)
            print(f"| {path.name} | {size:.1f} | {r['before_load_mb']} | {r['load_s']} | {r['peak_after_load_mb']} | "
                  f"{r['rss_after_load_mb']} | {r['peak_after_scoring_mb']} | {r['images_per_s']} |", flush=True)


if __name__ == "__main__":
    main()
