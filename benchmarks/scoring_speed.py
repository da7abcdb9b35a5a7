"""Scoring speed on the CPU: where the time goes, torch against ONNX Runtime and OpenVINO, and
before/after a change — interleaved, because the machine is shared and noisy.

    python benchmarks/scoring_speed.py --data ../shared/data/cookies --threads 2
    python benchmarks/scoring_speed.py --data ../shared/data/cookies --before /work/main   # A/B, interleaved

Stages (ms per image, median over rounds): decode (file → RGB array), resize (to the model's
input, → float tensor), backbone (normalise + truncated backbone + embedding), mahalanobis,
map (bilinear to the input size + blur), to original (map resized to the image's size).
End-to-end img/s: ``iter_results(maps=True)`` in-process (workers 0) for torch; the
torch-free runtime (``padim.runtime.ExportedModel``, the same decode and resize) for ONNX
Runtime (float32 and fp16 storage) and OpenVINO. Start-up: load the model file and score one
image, in a fresh interpreter. With ``--before TREE`` the end-to-end torch figure is measured
for TREE and for this tree alternately, in fresh interpreters, ``--rounds`` times each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def images_of(data: Path, n: int) -> list[str]:
    from padim.io import list_images

    return [str(p) for p in list_images(data / "test")][:n]


def end_to_end_torch(model_path: str, paths: list[str], threads: int, batch_size: int) -> float:
    """Images per second of ``iter_results(maps=True)`` (the model loaded and warmed up first)."""
    import torch

    from padim import PaDiM

    torch.set_num_threads(threads)
    model = PaDiM.load(model_path, device="cpu", workers=0, batch_size=batch_size, threads=threads)
    list(model.iter_results(paths[:2]))
    start = time.perf_counter()
    list(model.iter_results(paths, maps=True))
    return len(paths) / (time.perf_counter() - start)


def end_to_end_runtime(path: str, paths: list[str], threads: int, batch_size: int) -> float:
    from padim.runtime import ExportedModel

    model = ExportedModel(path, threads=threads, batch_size=batch_size)
    model.predict(paths[:2])
    start = time.perf_counter()
    model.predict(paths, maps=True)
    return len(paths) / (time.perf_counter() - start)


def stage_times(model_path: str, paths: list[str], threads: int, batch_size: int) -> dict[str, float]:
    """Seconds per image of each scoring stage, run as ``iter_results`` runs them."""
    import torch

    from padim import PaDiM
    from padim.data import Resize
    from padim.io import load_image
    from padim.maps import resize_map
    from padim.tiling import to_cells

    torch.set_num_threads(threads)
    model = PaDiM.load(model_path, device="cpu", workers=0, threads=threads)
    embedder, head = model._get_extractor(), model._head()
    resize = Resize(model.input_size_)
    totals = dict.fromkeys(("decode", "resize", "backbone", "mahalanobis", "map", "to original"), 0.0)

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        totals[name] += time.perf_counter() - start
        return out

    for s in range(0, len(paths), batch_size):
        chunk = paths[s:s + batch_size]
        arrays = timed("decode", lambda: [load_image(p, keep_uint8=True, value_range=model.value_range_,
                                                     value_kind=model.value_kind_) for p in chunk])
        batch = timed("resize", lambda: torch.stack([resize(a) for a in arrays]))
        emb = timed("backbone", lambda: embedder(batch))
        dist = timed("mahalanobis", lambda: head.distances(to_cells(emb, model.cell_)))
        maps = timed("map", lambda: head.to_maps(dist, emb.shape[0], *emb.shape[-2:]).numpy())
        timed("to original", lambda: [resize_map(maps[k], arrays[k].shape[:2]) for k in range(len(chunk))])
    return {k: v / len(paths) for k, v in totals.items()}


def startup(kind: str, path: str, image: str, threads: int, tree: Path = HERE) -> float:
    """Seconds from a fresh interpreter to the first image scored (imports included)."""
    code = ("import sys, time; t = time.perf_counter()\n"
            + ("from padim import PaDiM; m = PaDiM.load(sys.argv[1], device='cpu', workers=0, threads=int(sys.argv[3]))\n"
               "list(m.iter_results([sys.argv[2]]))\n" if kind == "torch" else
               "from padim.runtime import ExportedModel; m = ExportedModel(sys.argv[1], threads=int(sys.argv[3]))\n"
               "m.predict([sys.argv[2]])\n")
            + "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code, path, image, str(threads)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(tree)})
    return float(out.stdout.strip().splitlines()[-1])


def subprocess_rate(tree: Path, model_path: str, paths: list[str], threads: int, batch_size: int) -> float:
    code = ("import json, sys; sys.path.insert(0, sys.argv[1] + '/benchmarks'); import scoring_speed as s; "
            "print(s.end_to_end_torch(sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))")
    out = subprocess.run([sys.executable, "-c", code, str(HERE), model_path, json.dumps(paths), str(threads),
                          str(batch_size)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="MVTec-layout folder (train/good, test)")
    parser.add_argument("--model", type=Path, default=None, help="fitted .padim (default: fit one on train/good)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n", type=int, default=32, help="test images scored per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, default=None, help="another source tree to compare, interleaved")
    args = parser.parse_args()

    import torch

    from padim import PaDiM
    from padim.export import export_model

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="padim-scoring-"))
    model_path = args.model
    if model_path is None:
        model_path = work / "model.padim"
        PaDiM(device="cpu", workers=0, calibration_folds=5, threads=args.threads, config="fixed").fit(args.data / "train" / "good").save(model_path)
    model = PaDiM.load(model_path, device="cpu")
    paths = images_of(args.data, args.n)
    files = {"torch (.padim)": str(model_path),
             "onnxruntime": str(export_model(model, work / "model.onnx")),
             "onnxruntime fp16": str(export_model(model, work / "model16.onnx", fp16=True))}
    try:
        files["openvino"] = str(export_model(model, work / "model.xml", fmt="openvino"))
    except ValueError as exc:
        print(f"openvino skipped: {exc}", file=sys.stderr)

    def size_mb(path: str) -> float:
        p = Path(path)
        extra = [p.with_suffix(".bin")] if p.suffix == ".xml" else [Path(str(p) + ".data")]
        return round(sum(f.stat().st_size for f in [p, *extra] if f.exists()) / 2**20, 1)

    report = {"input_size": list(model.input_size_), "threads": args.threads, "images": len(paths),
              "load_avg_start": os.getloadavg()[0], "stages_ms": [], "img_per_s": {k: [] for k in files}}
    for _ in range(args.rounds):  # interleaved: every variant once per round
        report["stages_ms"].append({k: round(1000 * v, 2) for k, v in
                                    stage_times(str(model_path), paths, args.threads, args.batch_size).items()})
        for name, path in files.items():
            rate = (end_to_end_torch(path, paths, args.threads, args.batch_size) if name.startswith("torch")
                    else end_to_end_runtime(path, paths, args.threads, args.batch_size))
            report["img_per_s"][name].append(round(rate, 2))
    report["stages_ms_median"] = {k: statistics.median(r[k] for r in report["stages_ms"])
                                  for k in report["stages_ms"][0]}
    report["img_per_s_median"] = {k: statistics.median(v) for k, v in report["img_per_s"].items()}
    report["file_mb"] = {k: size_mb(v) for k, v in files.items()}
    report["startup_s"] = {k: round(startup("torch" if k.startswith("torch") else "runtime", v, paths[0],
                                            args.threads), 2) for k, v in files.items()}
    if args.before is not None:
        ab = {"before": [], "after": []}
        for _ in range(args.rounds):
            ab["before"].append(round(subprocess_rate(args.before, str(model_path), paths, args.threads,
                                                      args.batch_size), 2))
            ab["after"].append(round(subprocess_rate(HERE, str(model_path), paths, args.threads,
                                                     args.batch_size), 2))
        report["torch_before_after_img_per_s"] = ab
    report["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
