"""padim at its defaults, side by side with anomalib's and AnomaVision's PaDiM, in one run.

Each row runs once, in a fresh subprocess with its own interpreter (the peers are never imported
into padim's environment, each lives in its own virtual environment), back to back, with the same
thread count. Rows:

- ``padim``: ``PaDiM()`` exactly as ``padim fit`` builds it (auto-configuration at its 4x budget
  around EfficientNet-Lite0's default hook points, all channels, aspect kept, k-fold calibration
  included), decoding with its own loader; scoring through ``iter_results`` (maps at each image's
  original size, as users get them).
- ``padim-fixed``: the same with ``config="fixed"``: the default parameters fitted as given, no
  selection (``padim fit --config fixed``).
- ``padim-r18``: ``PaDiM()`` with ``backbone="resnet18", d=100`` and the ResNet18 weights file that
  AnomaVision gets too (torchvision weights cannot be downloaded here; seeded random weights
  serve for timing, so this row's accuracy is meaningless).
- ``anomalib``: anomalib 2.7 ``PadimModel`` driven at the torch level (training-mode forwards fill
  its memory bank, ``fit()`` fits the Gaussians), EfficientNet-Lite0 with padim's hook points and
  100 random channels, images squashed to ``size``×``size``. It does not calibrate.
- ``anomavision``: AnomaVision ``Padim("resnet18", layer_indices=[0, 1, 2], feat_dim=100)``, its
  ``fit(DataLoader)``, ``predict`` per batch, ``save_statistics`` for the file size. It does not
  calibrate.

Measured per row: fit wall time (decoding + features + Gaussians (+ calibration for padim)),
scoring throughput (decoding included), peak RSS of the process (VmHWM) and the model file
size. Image AUROC and pixel AUROC are computed here with sklearn, on every map resized to
``size``×``size`` (masks resized with nearest neighbour).

    python benchmarks/peers_compare.py --data ../shared/data/bsdata --n-train 209
    python benchmarks/peers_compare.py --data ../shared/data/cookies
    python benchmarks/peers_compare.py --n-train 20 --n-test 10 --rows padim,anomavision   # quick check
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomalib_compare import (  # noqa: E402 - a sibling script, no package
    _batches, _current_rss_mb, _hwm_mb, _lite_backbone, _load_like_padim, evaluate, read_dataset,
)
from anomalib_compare import run_child as shared_run_child  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "bsdata"
ROWS = ("padim", "padim-fixed", "padim-r18", "anomalib", "anomavision")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _threads(n: int) -> None:
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)


def _square(amap, size: int):
    import cv2

    return cv2.resize(amap.astype("float32"), (size, size), interpolation=cv2.INTER_LINEAR)


def _save(path: str, scores, maps) -> None:
    import numpy as np

    np.savez(path, scores=np.asarray(scores, dtype=np.float64), maps=np.stack(maps).astype(np.float32))


def _row(side: str, version: str, fit_s: float, score_s: float, file_bytes: int, **extra) -> dict:
    import torch

    return {"side": side, "version": version, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "fit_s": fit_s, "score_s": score_s, "peak_rss_mb": _hwm_mb(), "rss_end_mb": _current_rss_mb(),
            "model_file_mib": file_bytes / 2**20, **extra}


# ----------------------------------------------------------------------------------- children
def padim_child(job: dict, side: str) -> dict:
    import padim
    from padim import PaDiM

    _threads(job["threads"])
    params = {"padim": {}, "padim-fixed": {"config": "fixed"},
              "padim-r18": dict(backbone="resnet18", d=100, weights=job["resnet18_weights"])}[side]
    model = PaDiM(device="cpu", threads=job["threads"], **params)
    t0 = time.perf_counter()
    model.fit(job["train"])
    fit_s = time.perf_counter() - t0
    path = Path(job["workdir"]) / f"{side}.padim"
    model.save(path)
    t0 = time.perf_counter()
    scores, maps = [], []
    for result in model.iter_results(job["test"], maps=True):
        if result.error:
            raise RuntimeError(result.error)
        scores.append(result.score)
        maps.append(_square(result.anomaly_map, job["size"]))
    score_s = time.perf_counter() - t0
    _save(job["outputs"][side], scores, maps)
    return _row(side, padim.__version__, fit_s, score_s, path.stat().st_size,
                d=model.n_features_, grid=list(model.feature_size_), input_size=list(model.input_size_),
                calibrated=model.calibrator_ is not None, config=model.config, choice=model.auto_choice_)


def anomalib_child(job: dict) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np
    import torch

    import anomalib
    from anomalib.models.image.padim.torch_model import PadimModel

    _threads(job["threads"])
    torch.manual_seed(0)
    size = job["size"]
    model = PadimModel(backbone=_lite_backbone("efficientnet_lite0"), layers=job["lite_layers"],
                       pre_trained=False, n_features=100)
    mean = torch.tensor(job["lite_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(job["lite_std"]).view(1, 3, 1, 1)

    def batch_tensor(paths):
        return (torch.from_numpy(np.stack([_load_like_padim(p, size) for p in paths])) - mean) / std

    t0 = time.perf_counter()
    model.train()
    for paths in _batches(job["train"], job["batch_size"]):
        model(batch_tensor(paths))
    model.fit()
    fit_s = time.perf_counter() - t0
    path = Path(job["workdir"]) / "anomalib.pt"
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("feature_extractor")}, path)
    t0 = time.perf_counter()
    model.eval()
    scores, maps = [], []
    with torch.no_grad():
        for paths in _batches(job["test"], job["batch_size"]):
            out = model(batch_tensor(paths))
            scores.extend(out.pred_score.reshape(-1).tolist())
            maps.extend(_square(m, size) for m in out.anomaly_map[:, 0].numpy())
    score_s = time.perf_counter() - t0
    _save(job["outputs"]["anomalib"], scores, maps)
    return _row("anomalib", anomalib.__version__, fit_s, score_s, path.stat().st_size, d=100)


def anomavision_child(job: dict) -> dict:
    import importlib.metadata

    import torch
    import torchvision

    import anomavision.algorithm.common.feature_extraction as fe
    from anomavision import Padim

    _threads(job["threads"])
    state = torch.load(job["resnet18_weights"], weights_only=True)

    def resnet18_from_file(weights=None, progress=True):  # offline: the same file padim-r18 loads
        net = torchvision.models.resnet18(weights=None)
        net.load_state_dict(state)
        return net

    fe.BACKBONES["resnet18"] = (resnet18_from_file, None)
    size = job["size"]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    class Images(torch.utils.data.Dataset):
        def __init__(self, paths):
            self.paths = paths

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, i):
            return (torch.from_numpy(_load_like_padim(self.paths[i], size)) - mean) / std

    def loader(paths):
        return torch.utils.data.DataLoader(Images(paths), batch_size=job["batch_size"], shuffle=False,
                                           num_workers=0)

    model = Padim(backbone="resnet18", device=torch.device("cpu"), layer_indices=[0, 1, 2], feat_dim=100)
    t0 = time.perf_counter()
    model.fit(loader(job["train"]))
    fit_s = time.perf_counter() - t0
    path = Path(job["workdir"]) / "anomavision.pth"
    model.save_statistics(str(path), half=False)
    t0 = time.perf_counter()
    scores, maps = [], []
    with torch.no_grad():
        for batch in loader(job["test"]):
            image_scores, score_maps = model.predict(batch)
            scores.extend(image_scores.tolist())
            maps.extend(_square(m, size) for m in score_maps.numpy())
    score_s = time.perf_counter() - t0
    _save(job["outputs"]["anomavision"], scores, maps)
    return _row("anomavision", importlib.metadata.version("anomavision"), fit_s, score_s, path.stat().st_size,
                d=100)


def weights_child(job: dict) -> dict:
    """Seeded random ResNet18 weights in a file both ResNet rows load (runs in padim's interpreter)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), job["resnet18_weights"])
    from padim.backbones import get_spec

    spec = get_spec("efficientnet_lite0")
    return {"lite_layers": list(spec.default_layers), "lite_mean": list(spec.mean), "lite_std": list(spec.std)}


CHILDREN = {**{side: (lambda job, side=side: padim_child(job, side)) for side in ("padim", "padim-fixed", "padim-r18")},
            "anomalib": anomalib_child, "anomavision": anomavision_child, "weights": weights_child}


# ------------------------------------------------------------------------------------- parent
def run_child(python: str, side: str, job_path: Path, threads: int) -> dict:
    return shared_run_child(python, side, job_path, threads, script=__file__)


def markdown_table(rows: dict[str, dict]) -> str:
    head = ("| implementation | fit s | scoring img/s | fit peak RSS MB | model file MiB "
            "| image AUROC | pixel AUROC |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for side, r in rows.items():
        pixel = f"{r['pixel_auroc']:.4f}" if "pixel_auroc" in r else "–"
        chose = f" (chose {r['choice']})" if r.get("choice") else ""
        lines.append(f"| {side} {r['version']}{chose} | {r['fit_s']:.1f} | {r['score_images_per_s']:.1f} "
                     f"| {r['peak_rss_mb']:.0f} | {r['model_file_mib']:.1f} | {r['image_auroc']:.4f} | {pixel} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="dataset in MVTec layout")
    parser.add_argument("--n-train", type=int, default=None, help="first N training images, sorted (default all)")
    parser.add_argument("--n-test", type=int, default=None, help="N test images spread over the set (default all)")
    parser.add_argument("--size", type=int, default=256, help="peers' square input side; maps compared at it")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="the peers' batch size (padim uses its default)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--padim-python", default="/work/venv/bin/python")
    parser.add_argument("--anomalib-python", default="/work/venv_anomalib/bin/python")
    parser.add_argument("--anomavision-python", default="/work/venv_anomavision/bin/python")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "peers_compare.jsonl"),
                        help="JSON rows are appended here")
    parser.add_argument("--child", choices=tuple(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(Path(args.job).read_text()))), flush=True)
        return
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(wanted) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {ROWS}")
    data = Path(args.data)
    train, test = read_dataset(data, args.n_train, args.n_test)
    if len(train) < 5 or not test:
        raise SystemExit(f"'{data}': need ≥ 5 training images and some test images")
    command = shlex.join([sys.executable, *sys.argv])
    pythons = {"padim": args.padim_python, "padim-fixed": args.padim_python, "padim-r18": args.padim_python,
               "anomalib": args.anomalib_python, "anomavision": args.anomavision_python}
    with tempfile.TemporaryDirectory(prefix="peers_compare_") as work:
        job = {"size": args.size, "threads": args.threads, "batch_size": args.batch_size, "workdir": work,
               "train": [str(p) for p in train], "test": [str(p) for p, _, _ in test],
               "resnet18_weights": str(Path(work) / "resnet18_random.pth"),
               "outputs": {side: str(Path(work) / f"{side}.npz") for side in ROWS}}
        job_path = Path(work) / "job.json"
        job_path.write_text(json.dumps(job))
        job.update(run_child(args.padim_python, "weights", job_path, args.threads))
        job_path.write_text(json.dumps(job))
        labels = [y for _, y, _ in test]
        masks = [m for _, _, m in test]
        rows = {}
        for side in wanted:  # back to back, never in parallel
            rows[side] = run_child(pythons[side], side, job_path, args.threads)
            rows[side].update(evaluate(job["outputs"][side], labels, masks))
    for r in rows.values():
        r.update(dataset=str(data.resolve()), n_train=len(train), n_test=len(test), size=args.size,
                 score_images_per_s=len(test) / r["score_s"], command=command,
                 time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    print(f"{len(train)} training / {len(test)} test images from {data}, {args.threads} threads\n")
    print(markdown_table(rows))
    for ours, peer in (("padim", "anomalib"), ("padim", "anomavision"), ("padim-fixed", "anomalib"),
                       ("padim-fixed", "anomavision"), ("padim-r18", "anomavision")):
        if ours in rows and peer in rows:
            p, q = rows[ours], rows[peer]
            print(f"{ours} vs {peer}: fit {q['fit_s'] / p['fit_s']:.2f}× faster, scoring "
                  f"{p['score_images_per_s'] / q['score_images_per_s']:.2f}× faster, peak RSS "
                  f"{p['peak_rss_mb'] / q['peak_rss_mb']:.2f}×")
    print(f"\ncommand: {command}")
    out = Path(args.out)
    with out.open("a") as handle:
        for r in rows.values():
            handle.write(json.dumps(r) + "\n")
    print(f"rows appended to {out}")


if __name__ == "__main__":
    main()
