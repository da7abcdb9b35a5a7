"""Command line: ``padim fit | score | eval | demo | info``. Errors are one line, exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from . import __version__

EXAMPLES = {
    "fit": "padim fit images/good -o model.padim",
    "score": "padim score model.padim images/new -o scores.tsv --heatmaps heatmaps/",
    "eval": "padim eval model.padim data/mvtec_like -o report/",
    "demo": "padim demo -o demo_output",
    "info": "padim info model.padim",
}


class CliError(Exception):
    """An error to print as one line (exit code 2)."""


def _image_size(text: str):
    try:
        if "x" in text.lower():
            h, w = text.lower().split("x")
            return int(h), int(w)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None


def _tile(text: str):
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, none or a tile side in pixels, got {text!r}") from None


def _cell(text: str):
    if text in ("auto", "image"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, image or a cell side k, got {text!r}") from None


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: its own choice)")
    p.add_argument("--weights", default=None, help="local backbone weights file (.pth or .safetensors)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="padim",
        description="Unsupervised visual inspection with PaDiM: fit on good images, score new ones.",
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"padim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text,
                              epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add("fit", "Fit a model on a folder of good images (recursive) and calibrate it.")
    p.add_argument("train_dir", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="model file to write")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--layers", default=None, help="comma-separated hook points (default: the backbone's)")
    p.add_argument("--image-size", type=_image_size, default=256, help="N (area of N×N, aspect kept) or HxW")
    p.add_argument("--squash", action="store_true", help="with --image-size N, resize to N×N ignoring aspect")
    p.add_argument("--d", type=int, default=None, help="random feature channels kept (0: all)")
    p.add_argument("--eps", type=float, default=None, help="covariance regulariser relative to feature variance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=5, help="k-fold held-out scoring for calibration")
    p.add_argument("--max-false-reject", type=float, default=0.01, help="target share of good images flagged NG")
    p.add_argument("--threshold", type=float, default=None, help="fixed score threshold")
    p.add_argument("--val-defects", type=Path, default=None, help="folder of labelled defect images for calibration")
    p.add_argument("--threshold-method", choices=("youden", "f1"), default="youden",
                   help="threshold rule when --val-defects is given")
    large = p.add_argument_group("large images (stored in the model; scoring needs no options repeated)")
    large.add_argument("--tile", type=_tile, default="auto",
                       help="tile side in px, 'none', or 'auto' (images with a long side over 2000 px are rescaled "
                            "and tiled if still over 4.5 MP)")
    large.add_argument("--overlap", type=int, default=None, help="px cropped from each tile side (default 128)")
    large.add_argument("--scale", type=float, default=None,
                       help="rescale factor for large images (default: long side to 1600 px)")
    large.add_argument("--cell", type=_cell, default="auto",
                       help="Gaussian per position (1), per k×k cell (k), one shared ('image'), or 'auto'")
    large.add_argument("--max-memory", default=None,
                       help="memory budget for the Gaussians, e.g. 6G (default: 4G or half the RAM)")
    _add_runtime(p)

    p = add("score", "Score an image or a folder into a TSV of defect probabilities.")
    p.add_argument("model", type=Path)
    p.add_argument("input", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="TSV file to write")
    p.add_argument("--format", choices=("default", "signate"), default="default")
    p.add_argument("--heatmaps", type=Path, default=None, help="folder for heatmap PNGs")
    p.add_argument("--save-maps", type=Path, default=None, help="folder for float32 .npy anomaly maps")
    p.add_argument("--resume", action="store_true", help="skip images already in OUTPUT")
    p.add_argument("--threshold", type=float, default=None, help="override the model's score threshold")
    _add_runtime(p)

    p = add("eval", "Evaluate a model on a labelled set in MVTec AD layout.")
    p.add_argument("model", type=Path)
    p.add_argument("data_dir", type=Path)
    p.add_argument("-o", "--output", type=Path, default=None, help="report folder")
    p.add_argument("--heatmaps", action="store_true", help="also write a heatmap per test image")
    _add_runtime(p)

    p = add("demo", "Fit, score, draw heatmaps and evaluate on the cookie sample shipped with padim.")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_output"))
    p.add_argument("--data", type=Path, default=None, help="MVTec-layout data (default: padim/sample_data/cookies_small)")
    _add_runtime(p)

    p = add("info", "Print what a model file holds.")
    p.add_argument("model", type=Path)
    return parser


def _runtime(args) -> dict:
    return dict(device=args.device, batch_size=args.batch_size, workers=args.workers, threads=args.threads,
                progress=not args.quiet)


def cmd_fit(args) -> int:
    from .model import PaDiM

    params = dict(backbone=args.backbone, image_size=args.image_size, keep_aspect=not args.squash, d=args.d,
                  seed=args.seed, weights=args.weights, calibration_folds=args.folds,
                  max_false_reject=args.max_false_reject, tile=args.tile, overlap=args.overlap,
                  scale=args.scale, cell=args.cell, max_memory=args.max_memory, **_runtime(args))
    if args.layers:
        params["layers"] = [s.strip() for s in args.layers.split(",")]
    if args.eps is not None:
        params["eps"] = args.eps
    if args.folds < 2 and (args.threshold is not None or args.val_defects is not None):
        raise CliError("--threshold and --val-defects calibrate probabilities, which needs --folds 2 or more")
    model = PaDiM(**params)
    print(model.plan(args.train_dir).describe(), file=sys.stderr)
    started = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(args.train_dir)
    for w in caught:
        print(f"padim: warning: {w.message}", file=sys.stderr)
    if args.val_defects is not None or args.threshold is not None:
        model.recalibrate(args.val_defects, threshold=args.threshold, threshold_method=args.threshold_method)
    model.save(args.output)
    cal = model.calibrator_
    print(f"fitted on {model.n_train_} images in {time.time() - started:.1f} s → {args.output}"
          + (f" (threshold {cal.threshold_:.4g}, {cal.method_} calibration)" if cal else ""))
    return 1 if model.skipped_ else 0


def cmd_score(args) -> int:
    from .model import PaDiM
    from .workflows import score_folder

    model = PaDiM.load(args.model, device=args.device, weights=args.weights,
                       **{k: v for k, v in _runtime(args).items() if k != "device"})
    summary = score_folder(model, args.input, args.output, fmt=args.format, heatmaps=args.heatmaps,
                           save_maps=args.save_maps, resume=args.resume, threshold=args.threshold)
    print(f"scored {summary.scored} images" + (f", {summary.skipped} already done" if summary.skipped else "")
          + f" → {summary.out}")
    if summary.failed:
        print(f"padim: {len(summary.failed)} image(s) could not be read; listed in {summary.errors_file}",
              file=sys.stderr)
        return 1
    return 0


def cmd_eval(args) -> int:
    from .model import PaDiM
    from .workflows import evaluate_folder

    model = PaDiM.load(args.model, device=args.device, weights=args.weights,
                       **{k: v for k, v in _runtime(args).items() if k != "device"})
    metrics = evaluate_folder(model, args.data_dir, args.output, heatmaps=args.heatmaps)
    shown = {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "pro", "best_f1") if k in metrics}
    print(json.dumps(shown))
    if args.output:
        print(f"report → {args.output}")
    return 0


def cmd_demo(args) -> int:
    from .workflows import run_demo

    run_demo(args.output, data=args.data, **_runtime(args))
    return 0


def cmd_info(args) -> int:
    from .model import PaDiM, format_description

    print(format_description(PaDiM.load(args.model, device="cpu").describe()))
    return 0


COMMANDS = {"fit": cmd_fit, "score": cmd_score, "eval": cmd_eval, "demo": cmd_demo, "info": cmd_info}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from .backbones import WeightsUnavailableError
    from .io import ImageReadError
    from .modelfile import ModelFileError

    try:
        return COMMANDS[args.command](args)
    except (CliError, FileNotFoundError, ImageReadError, ModelFileError, WeightsUnavailableError,
            ValueError, RuntimeError, MemoryError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"padim {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"padim {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
