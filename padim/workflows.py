"""What users run: score a folder into a probability TSV (with heatmaps and maps), evaluate a
labelled set, and the self-contained demo. The CLI is a thin layer over these functions."""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from typing import TYPE_CHECKING

from . import distributed
from .artefacts import artefact_names, check_inputs_kept
from .io import atomic_output, list_images, load_image
from .mvtec import check_both_classes, check_masks, load_mask, read_labelled_set
from .results import Provenance, ResultJournal, Row, write_error_list
from .value_range import EIGHT_BIT

if TYPE_CHECKING:  # torch-free at import: padim.runtime scores folders through score_folder
    from .model import PaDiM


@dataclass
class ScoreSummary:
    scored: int = 0
    skipped: int = 0  # already in the output (resume)
    failed: list[tuple[str, str]] = field(default_factory=list)
    out: Path | None = None
    errors_file: Path | None = None


def relative_name(path: Path, root: Path) -> str:
    """Path of an image relative to the scored input, with forward slashes."""
    if root.is_file():
        return path.name
    return path.relative_to(root).as_posix()


def display_name(name: str) -> str:
    """A file name as a heatmap title can draw it: bytes that are not UTF-8 and unprintable
    characters escaped (\\xe9, \\n); ``save_heatmap`` draws titles without math parsing."""
    shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in shown)
    return shown


def model_image(model: PaDiM, path: Path, decoded: np.ndarray | None = None) -> np.ndarray:
    """The image as the model reads it (its pixel value range), for a heatmap's background;
    ``decoded``: the loader's decoding of it (uint8 for 8-bit files), which saves a second decode."""
    if decoded is not None:
        return EIGHT_BIT.to_unit(decoded) if decoded.dtype == np.uint8 else decoded
    return load_image(path, value_range=getattr(model, "value_range_", None),
                      value_kind=getattr(model, "value_kind_", None))


def colour_scale(model: PaDiM, threshold: float, anomaly_map: np.ndarray | None = None) -> tuple[float, float]:
    """Fixed heatmap colour range: from the typical good-pixel value to as far above the threshold,
    so the threshold sits mid-scale in every image of a model."""
    floor = getattr(model, "map_floor_", None)
    if floor is None or not floor < threshold:
        floor = float(np.median(anomaly_map)) if anomaly_map is not None else 0.0
        floor = min(floor, threshold * 0.5)
    return floor, threshold + (threshold - floor)


def _write_map(path: Path, anomaly_map: np.ndarray) -> None:
    with atomic_output(path, "wb") as handle:
        np.save(handle, anomaly_map.astype(np.float32), allow_pickle=False)


def score_folder(model: PaDiM, input_path: str | Path, out: str | Path, *, fmt: str = "default",
                 heatmaps: str | Path | None = None, save_maps: str | Path | None = None,
                 resume: bool = False, threshold: float | None = None, log=None) -> ScoreSummary:
    """Score every image under ``input_path`` into a TSV; unreadable images are reported, not fatal.

    Unreadable images are reported on ``log`` (default: the current ``sys.stderr``) and listed
    in ``OUT.errors.tsv``; a run without failures removes a stale errors file. With ``resume``,
    the rows already in ``OUT`` (and its journal) are kept only if the same model, threshold and
    format produced them (else a ValueError, nothing changed); rows of images no longer under
    ``input_path`` are dropped. See :mod:`padim.results` for the files written.
    """
    from .viz import save_heatmap

    log = sys.stderr if log is None else log  # looked up now: sys.stderr may have been redirected
    root = Path(input_path)
    calibrator = model.calibrator_
    if calibrator is None:
        raise RuntimeError("the model has no calibration, so no probabilities; refit it with `padim fit`")
    if threshold is not None:
        calibrator = calibrator.with_threshold(threshold)
    paths = list_images(root)
    if heatmaps is not None and root.is_dir():
        # heatmap PNGs written inside the input folder must not be scored by the next run (or --resume)
        folder, top = Path(heatmaps).resolve(), root.resolve()
        if folder != top and folder.is_relative_to(top):
            paths = [p for p in paths if not p.resolve().is_relative_to(folder)]
    names = [relative_name(p, root) for p in paths]
    if Path(out).resolve() in {p.resolve() for p in paths}:
        raise ValueError(f"output '{out}' is one of the input images; give another file name")
    # per-image files: distinct names (a.png and a.jpg do not share one), never an input image
    heatmap_names = artefact_names(names, ".png")
    map_names = artefact_names(names, ".npy")
    for folder, artefacts, what in ((heatmaps, heatmap_names, "heatmaps folder"), (save_maps, map_names, "maps folder")):
        if folder is not None:
            check_inputs_kept(Path(folder), artefacts, paths, root, what)
    artefact_of = {name: (png, npy) for name, png, npy in zip(names, heatmap_names, map_names)}
    # --resume keeps earlier rows only if this model, threshold and format produced them, and
    # drops the rows of images no longer under the input
    provenance = Provenance(getattr(model, "fingerprint_", None) or _fingerprint(model), calibrator.threshold_, fmt)
    # Under torchrun each rank scores its block of what is left into OUT.partial.rank{r}; rank 0
    # merges them into OUT (padim.distributed). Every rank reads all journals before any is rewritten.
    sharded = distributed.active()
    journal = ResultJournal(Path(out), provenance, resume, names=names,
                            rank=distributed.rank() if sharded else None,
                            before_write=distributed.barrier if sharded else None)
    summary = ScoreSummary(out=Path(out))
    todo, todo_names = [], []
    for path, name in zip(paths, names):
        if not journal.done(name):
            todo.append(path)
            todo_names.append(name)
    summary.skipped = len(paths) - len(todo)
    if sharded:
        block = distributed.shard_range(len(todo))
        todo, todo_names = todo[block.start:block.stop], todo_names[block.start:block.stop]
    want_maps = heatmaps is not None or save_maps is not None
    try:
        pending: list[Row] = []
        for result in model.iter_results(todo, maps=want_maps, originals=heatmaps is not None) if todo else []:
            path, name = todo[result.index], todo_names[result.index]
            if result.error:
                summary.failed.append((name, result.error))
                print(f"padim: {result.error}", file=log)
                continue
            probability = float(calibrator.probability([result.score])[0])
            ng = bool(calibrator.predict([result.score])[0])
            if save_maps is not None:
                _write_map(Path(save_maps) / artefact_of[name][1], result.anomaly_map)
            if heatmaps is not None:
                vmin, vmax = colour_scale(model, calibrator.threshold_, result.anomaly_map)
                save_heatmap(Path(heatmaps) / artefact_of[name][0], model_image(model, path, result.image),
                             result.anomaly_map,
                             vmin=vmin, vmax=vmax, threshold=calibrator.threshold_,
                             title=f"{display_name(name)}  score {result.score:.3g}  p(defect) {probability:.3f}  "
                                   f"{'NG' if ng else 'OK'}")
            pending.append(Row(name, result.score, probability, "NG" if ng else "OK"))
            summary.scored += 1
            if len(pending) >= model.batch_size:
                journal.add(pending)
                pending = []
        journal.add(pending)
    except BaseException:
        journal.close()  # keep the journal: `--resume` continues from it
        raise
    if sharded:  # rank 0 writes OUT, its record and the error list once every rank's journal is complete
        journal.close()
        failed = [f for part in distributed.all_gather(summary.failed) for f in part]
        summary.scored = sum(distributed.all_gather(summary.scored))
        summary.failed = failed
        if distributed.is_main():
            journal.finish(ranks=distributed.world_size())
        distributed.barrier()
        if not distributed.is_main():
            return summary
    else:
        journal.finish()
    errors_file = Path(str(out) + ".errors.tsv")
    if summary.failed:
        summary.errors_file = errors_file
        write_error_list(summary.errors_file, summary.failed)
    else:
        errors_file.unlink(missing_ok=True)  # a list from an earlier run would be stale now
    return summary


def _fingerprint(model) -> str:
    from .fingerprint import model_fingerprint

    return model_fingerprint(model)


def evaluate_folder(model: PaDiM, data_dir: str | Path, report_dir: str | Path | None = None,
                    heatmaps: bool = False, max_side: int = 2048) -> dict:
    """Metrics of ``model`` on an MVTec-layout test set, with plots and a Markdown summary.

    Pixel metrics use maps and masks at the original resolution, or scaled so the longer side
    is at most ``max_side`` (huge images), with masks resized by nearest neighbour.
    """
    import cv2

    from .metrics import evaluate
    from .viz import plot_pr, plot_roc, plot_score_histogram, save_heatmap

    data = read_labelled_set(data_dir)
    check_both_classes(data)
    check_masks(data)
    report = Path(report_dir) if report_dir else None
    scores, maps, masks = [], [], []
    threshold = model.calibrator_.threshold_ if model.calibrator_ is not None else None
    started = time.time()
    drawing = bool(heatmaps and report is not None and threshold is not None)
    test_root = data.root / "test"
    heatmap_names = artefact_names([p.relative_to(test_root).as_posix() for p in data.paths], ".png")
    for result in model.iter_results(data.paths, maps=True, originals=drawing):
        path = data.paths[result.index]
        if result.error:
            raise ValueError(result.error)
        amap = result.anomaly_map
        h, w = amap.shape
        factor = min(1.0, max_side / max(h, w))
        if factor < 1:
            amap = cv2.resize(amap, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
        mask_path = data.mask_paths[result.index]
        defect = data.labels[result.index] == 1
        mask = None if (defect and mask_path is None) else load_mask(mask_path, amap.shape)
        scores.append(result.score)
        maps.append(amap)
        masks.append(mask)
        if drawing:
            vmin, vmax = colour_scale(model, threshold, amap)
            rel = path.relative_to(test_root)
            save_heatmap(report / "heatmaps" / heatmap_names[result.index], model_image(model, path, result.image),
                         result.anomaly_map,
                         vmin=vmin, vmax=vmax, threshold=threshold,
                         mask=None if mask_path is None else load_mask(mask_path, result.anomaly_map.shape),
                         title=f"{display_name(rel.as_posix())}  score {result.score:.3g}")
    seconds = time.time() - started
    labels = np.array(data.labels)
    pixel = data.has_masks
    unmasked = data.defects_without_mask
    if pixel and unmasked:
        warnings.warn(f"{len(unmasked)} of {int(labels.sum())} defect images have no mask (first: "
                      f"'{unmasked[0]}'): pixel AUROC and PRO leave them out")
    from tqdm.auto import tqdm

    n_types = len({t for t in data.defect_types if t != "good"}) if data.defect_types is not None else 0
    with tqdm(total=1 + n_types if pixel else 0, desc="metrics", unit="pass", leave=False,
              disable=not (pixel and model.progress)) as bar:
        metrics = evaluate(labels, np.array(scores), masks=masks if pixel else None, maps=maps if pixel else None,
                           defect_types=data.defect_types, progress=lambda: bar.update(1))
    metrics["n_images"] = len(scores)
    if pixel:
        metrics["defect_images_without_mask"] = len(unmasked)
    metrics["seconds"] = round(seconds, 2)
    metrics["images_per_second"] = round(len(scores) / seconds, 2) if seconds else None
    if threshold is not None:
        predicted = np.array(scores) >= threshold
        metrics["model_threshold"] = threshold
        metrics["false_reject_rate"] = float(predicted[labels == 0].mean()) if (labels == 0).any() else None
        metrics["miss_rate"] = float((~predicted[labels == 1]).mean()) if (labels == 1).any() else None
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        with atomic_output(report / "metrics.json") as handle:
            json.dump(metrics, handle, indent=2)
        with atomic_output(report / "summary.md") as handle:
            handle.write(markdown_summary(metrics, Path(data_dir)))
        plot_roc(labels, scores, report / "roc.png")
        plot_pr(labels, scores, report / "pr.png")
        plot_score_histogram(np.array(scores)[labels == 0], np.array(scores)[labels == 1],
                             report / "score_histogram.png", threshold=threshold)
    return metrics


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_summary(metrics: dict, data_dir: Path) -> str:
    keys = ("image_auroc", "pixel_auroc", "pro", "best_f1", "best_f1_threshold", "model_threshold",
            "false_reject_rate", "miss_rate", "n_good", "n_defect", "images_per_second")
    lines = [f"# Evaluation on `{data_dir}`", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(metrics[k])} |" for k in keys if metrics.get(k) is not None]
    per_type = metrics.get("per_defect_type") or {}
    if per_type:
        lines += ["", "## Per defect type", "", "| type | n | image AUROC | pixel AUROC | PRO |", "|---|---|---|---|---|"]
        for name, m in per_type.items():
            lines.append(f"| {name} | {m.get('n')} | {_fmt(m.get('image_auroc'))} | "
                         f"{_fmt(m.get('pixel_auroc', '–'))} | {_fmt(m.get('pro', '–'))} |")
    return "\n".join(lines) + "\n"


DEMO_MAX_FALSE_REJECT = 0.10


def default_demo_data() -> Path:
    """The cookie sample shipped inside the package (``padim/sample_data/cookies_small``, package
    data), so the demo runs from an installed wheel in any directory, not only from a clone."""
    return Path(__file__).resolve().parent / "sample_data" / "cookies_small"


def run_demo(out_dir: str | Path, data: str | Path | None = None, log=print, **runtime) -> dict:
    """Fit on the sample's good images, score its test images to a TSV with heatmaps, evaluate."""
    from .model import PaDiM

    data = Path(data) if data is not None else default_demo_data()
    if not (data / "train" / "good").is_dir():
        raise FileNotFoundError(
            f"'{data}': demo data not found (expected train/good inside); reinstall padim (the sample "
            f"ships as package data) or pass --data DIR in MVTec AD layout")
    out = Path(out_dir)
    started = time.time()
    # 31 good cookies are too few for a 1 % false-reject threshold to catch cracks (it must sit
    # above the most unusual of them); the demo aims at 10 % (benchmarks/RESULTS.md, section 2).
    model = PaDiM(max_false_reject=DEMO_MAX_FALSE_REJECT, **runtime)
    log(model.plan(data / "train" / "good").describe())
    model.fit(data / "train" / "good")
    model_path = model.save(out / "model.padim")
    if model.auto_table_:
        tried = [row["name"] for row in model.auto_table_ if row["selection"] is not None]
        log(f"auto-configuration: chose {model.auto_choice_} of {len(tried)} candidates tried "
            f"({', '.join(tried)}; `padim info {model_path}` shows the table)")
    log(f"fit: {model.n_train_} good images, threshold {model.calibrator_.threshold_:.4g} for a "
        f"{DEMO_MAX_FALSE_REJECT:.0%} false-reject target "
        f"({time.time() - started:.1f} s) → {model_path}")
    summary = score_folder(model, data / "test", out / "scores.tsv", heatmaps=out / "heatmaps")
    log(f"score: {summary.scored} test images → {summary.out}, heatmaps → {out / 'heatmaps'}")
    metrics = evaluate_folder(model, data, out / "report")
    log(f"eval: image AUROC {metrics['image_auroc']:.3f}, pixel AUROC {metrics.get('pixel_auroc', float('nan')):.3f}, "
        f"PRO {metrics.get('pro', float('nan')):.3f} → {out / 'report'}")
    log(f"demo finished in {time.time() - started:.1f} s; everything is in {out}/")
    return metrics
