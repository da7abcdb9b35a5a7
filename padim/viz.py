"""Pictures for inspection results: anomaly heatmaps and evaluation plots.

Everything here draws on explicit :class:`matplotlib.figure.Figure` objects rendered by the Agg
canvas, so importing this module never touches pyplot or the global matplotlib backend (safe
in servers, notebooks and tests alike).

Depends only on numpy, matplotlib and OpenCV (scikit-learn is imported lazily by the curve
plots). No torch, no other padim modules.

Colour scale: heatmaps are drawn on a FIXED scale ``[vmin, vmax]`` chosen by the caller (e.g.
the 1st percentile of good-image scores and the defect threshold times two), never on each
map's own min/max, so that the same colour means the same score in every picture.

Huge images (3872×3200 and up) are reduced for display only: the photo with ``INTER_AREA``,
the anomaly map and the masks by max-pooling, so that a hot spot of a few pixels still shows.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib import colormaps

from .io import naming_path

__all__ = [
    "heatmap_figure",
    "save_heatmap",
    "save_figure",
    "plot_roc",
    "plot_pr",
    "plot_score_histogram",
    "display_size",
    "downsample_image",
    "downsample_max",
    "value_to_rgba",
]

PathLike = Union[str, os.PathLike]

CMAP = "jet"
OVERLAY_ALPHA = 0.45
GT_COLOUR = "lime"
PRED_COLOUR = "red"
_DPI = 100
_MAX_RINGS = 5


# --------------------------------------------------------------------------------------------
# Helpers (public so that they can be tested and reused)
# --------------------------------------------------------------------------------------------

def display_size(height: int, width: int, max_side: int) -> Tuple[int, int]:
    """(h, w) scaled down so that the longer side is at most ``max_side`` (never scaled up)."""
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    longest = max(height, width)
    if longest <= max_side:
        return int(height), int(width)
    s = max_side / float(longest)
    return max(1, min(max_side, int(round(height * s)))), max(1, min(max_side, int(round(width * s))))


def downsample_image(image: np.ndarray, max_side: int) -> np.ndarray:
    """Area-average ``image`` (HxW or HxWxC) so that its longer side is <= ``max_side``."""
    h, w = image.shape[:2]
    nh, nw = display_size(h, w, max_side)
    if (nh, nw) == (h, w):
        return image
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)


def downsample_max(values: np.ndarray, max_side: int) -> np.ndarray:
    """Max-pool a 2-D array so that its longer side is <= ``max_side``.

    Every output cell is the maximum over the block of input pixels it covers (blocks tile the
    input exactly, sizes differ by at most one pixel), so a hot spot of any size, even a single
    pixel, keeps its peak value after downsampling. Works for float maps and for boolean/uint8
    masks alike (dtype is preserved).
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {values.shape}")
    h, w = values.shape
    nh, nw = display_size(h, w, max_side)
    if (nh, nw) == (h, w):
        return values
    src = values.view(np.uint8) if values.dtype == np.bool_ else values
    rows = (np.arange(nh, dtype=np.int64) * h) // nh
    cols = (np.arange(nw, dtype=np.int64) * w) // nw
    out = np.maximum.reduceat(src, rows, axis=0)
    out = np.maximum.reduceat(out, cols, axis=1)
    return out.view(np.bool_) if values.dtype == np.bool_ else out


def value_to_rgba(values, vmin: float, vmax: float, cmap: str = CMAP) -> np.ndarray:
    """Colours (RGBA floats, shape ``values.shape + (4,)``) that the heatmap uses for ``values``.

    The scale is fixed to ``[vmin, vmax]`` (values outside are clipped to the end colours), so
    a given score has the same colour in every figure, whatever the map's own range.
    """
    norm = _norm(vmin, vmax)
    return colormaps[cmap](norm(np.asarray(values, dtype=np.float64)))


def _norm(vmin: float, vmax: float) -> Normalize:
    vmin, vmax = float(vmin), float(vmax)
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        raise ValueError(f"vmin/vmax must be finite, got {vmin}, {vmax}")
    if not vmax > vmin:
        raise ValueError(f"vmax must be greater than vmin, got vmin={vmin}, vmax={vmax}")
    return Normalize(vmin=vmin, vmax=vmax, clip=True)


def _as_rgb01(image: np.ndarray) -> np.ndarray:
    """Any HxW / HxWx1 / HxWx3 / HxWx4 image (uint8, uint16, bool, float in [0, 1]) -> HxWx3
    float32 in [0, 1]."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"image must be HxW or HxWx{{1,3,4}}, got shape {np.shape(image)}")
    img = img[:, :, :3]
    if img.dtype == np.bool_:
        return img.astype(np.float32)
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    if np.issubdtype(img.dtype, np.integer):
        return np.clip(img, 0, 255).astype(np.float32) / 255.0
    return np.clip(np.nan_to_num(img.astype(np.float32)), 0.0, 1.0)


def _outline(ax, mask: np.ndarray, colour: str, linewidth: float = 1.2) -> int:
    """Draw the outer contours of a binary mask on ``ax``; returns the number of contours."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if not m.any():
        return 0
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    # Regions of a few display pixels would be invisible: circle them, unless there are many
    # (speckle), where rings would hide the picture.
    small = max(4.0, 0.006 * max(m.shape))
    extents = [np.ptp(c[:, 0, :], axis=0).max() for c in contours]
    ring_small = sum(e < small for e in extents) <= _MAX_RINGS
    for c, extent in zip(contours, extents):
        pts = c[:, 0, :].astype(np.float64)
        if len(pts) > 1:
            closed = np.vstack([pts, pts[:1]])  # close the polygon
            ax.plot(closed[:, 0], closed[:, 1], color=colour, linewidth=linewidth)
        if ring_small and extent < small:
            x0, y0 = pts.min(axis=0)
            x1, y1 = pts.max(axis=0)
            ax.plot([(x0 + x1) / 2], [(y0 + y1) / 2], marker="o", markersize=14,
                    markerfacecolor="none", markeredgecolor=colour, markeredgewidth=1.5,
                    linestyle="none")
    return len(contours)


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: PathLike, *, dpi: Optional[float] = None) -> Path:
    """Write ``fig`` as a PNG atomically (temp file in the same folder, then ``os.replace``),
    creating parent folders. Returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temp name in the target folder (same file system, so os.replace is atomic);
    # os.open with mode 0o666 lets the umask decide the final permissions, as for open().
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with naming_path(path), os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi or fig.dpi)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _close(fig: Figure) -> None:
    # Figures made here are not registered with pyplot; clearing releases the artists now.
    fig.clear()


# --------------------------------------------------------------------------------------------
# Heatmaps
# --------------------------------------------------------------------------------------------

def heatmap_figure(image, anomaly_map, *, vmin: float, vmax: float,
                   threshold: Optional[float] = None, mask=None, title: str = "",
                   max_side: int = 1024) -> Figure:
    """Two panels: the image (ground-truth outline in green if ``mask`` is given) and the image
    with the anomaly map overlaid in 'jet' on the fixed scale ``[vmin, vmax]`` (with a colorbar),
    the predicted defect outline (``map >= threshold``) in red and the ground truth in green.

    image: HxWx3 (RGB uint8, or float in [0, 1]) or HxW grayscale.
    anomaly_map: HxW float at the image's resolution.
    mask: optional HxW ground truth (nonzero = defect).
    max_side: images are reduced for display so that their longer side is at most this (the
        map and masks by max-pooling, so small hot spots stay visible).
    """
    amap = np.asarray(anomaly_map)
    if amap.ndim == 3 and amap.shape[0] == 1:
        amap = amap[0]
    if amap.ndim != 2:
        raise ValueError(f"anomaly_map must be HxW, got shape {np.shape(anomaly_map)}")
    img = np.asarray(image)
    if img.shape[:2] != amap.shape:
        raise ValueError(f"anomaly_map shape {amap.shape} does not match image size "
                         f"{img.shape[:2]}; upsample the map to the image first")
    norm = _norm(vmin, vmax)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.ndim == 3:
            mask = mask[..., 0]
        if mask.shape != amap.shape:
            raise ValueError(f"mask shape {mask.shape} does not match image size {amap.shape}")

    # Display-only reduction: photo by area averaging, map and masks by max-pooling.
    rgb = downsample_image(_as_rgb01(img), max_side)
    amap_d = downsample_max(amap.astype(np.float32, copy=False), max_side)
    pred_d = None
    if threshold is not None:
        pred_d = downsample_max(amap >= threshold, max_side)  # == (pooled map >= threshold)
    gt_d = downsample_max(mask != 0, max_side) if mask is not None else None

    h, w = amap_d.shape
    # Panel size in inches: about one figure pixel per display pixel, at least 4 in.
    scale = max(4.0 / (max(h, w) / _DPI), 1.0)
    pw, ph = w / _DPI * scale, h / _DPI * scale
    top_in = 0.75 if title else 0.4
    fig_w, fig_h = 2 * pw + 1.2, ph + top_in + 0.15
    fig = _new_figure(fig_w, fig_h)
    gs = fig.add_gridspec(1, 2, wspace=0.04, left=0.1 / fig_w, right=1.0 - 1.0 / fig_w,
                          bottom=0.1 / fig_h, top=1.0 - top_in / fig_h)
    ax0 = fig.add_subplot(gs[0, 0])
    ax1 = fig.add_subplot(gs[0, 1])
    # The colorbar follows the right panel's drawn box (same height, whatever the aspect).
    cax = ax1.inset_axes([1.0 + 0.1 / pw, 0.0, 0.2 / pw, 1.0])

    ax0.imshow(rgb, interpolation="antialiased")
    ax0.set_title("image" + (" + ground truth" if gt_d is not None else ""), fontsize=9)
    ax1.imshow(rgb, interpolation="antialiased")
    im = ax1.imshow(np.ma.masked_invalid(amap_d), cmap=CMAP, norm=norm, alpha=OVERLAY_ALPHA,
                    interpolation="nearest")
    sub = "anomaly map"
    if threshold is not None:
        sub += f" (red: score ≥ {threshold:.3g})"
    ax1.set_title(sub, fontsize=9)
    if gt_d is not None:
        _outline(ax0, gt_d, GT_COLOUR)
        _outline(ax1, gt_d, GT_COLOUR)
    if pred_d is not None:
        _outline(ax1, pred_d, PRED_COLOUR)
    for ax in (ax0, ax1):
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    cb = fig.colorbar(im, cax=cax)
    cb.solids.set_alpha(1.0)
    cb.ax.tick_params(labelsize=8)
    if threshold is not None and vmin <= threshold <= vmax:
        cax.axhline(threshold, color=PRED_COLOUR, linewidth=1.5)
    if title:
        fig.suptitle(title, fontsize=10, parse_math=False)  # file names may hold "$"
    return fig


def save_heatmap(path: PathLike, image, anomaly_map, **kwargs) -> Path:
    """Draw :func:`heatmap_figure` (same keyword arguments) and write it to ``path`` as a PNG
    atomically, creating parent folders. Returns the path."""
    fig = heatmap_figure(image, anomaly_map, **kwargs)
    try:
        return save_figure(fig, path)
    finally:
        _close(fig)


# --------------------------------------------------------------------------------------------
# Evaluation plots
# --------------------------------------------------------------------------------------------

def _labels_scores(labels, scores) -> Tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel().astype(bool).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError("curves need both good (label 0) and defect (label 1) samples; got "
                         f"{y.size - n_pos} good and {n_pos} defect")
    return y, s


def plot_roc(labels: Sequence[int], scores: Sequence[float], path: PathLike, *,
             title: str = "ROC") -> Path:
    """ROC curve (label 1 = defect, higher score = more anomalous), AUROC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y, s = _labels_scores(labels, scores)
    fpr, tpr, _ = roc_curve(y, s)
    auc = roc_auc_score(y, s)
    fig = _new_figure(5.0, 5.0)
    try:
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(fpr, tpr, color="tab:blue", linewidth=2,
                label=f"AUROC = {auc:.4f}  (n={y.size}, {int(y.sum())} defect)")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
        _style_unit_axes(ax, "false positive rate (good flagged NG)", "true positive rate (defects caught)",
                         title, "lower right")
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        _close(fig)


def _style_unit_axes(ax, xlabel: str, ylabel: str, title: str, legend_loc: str) -> None:
    """Square [0, 1] axes with labels, grid and legend, shared by the ROC and PR plots."""
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc, fontsize=8)


def plot_pr(labels: Sequence[int], scores: Sequence[float], path: PathLike, *,
            title: str = "Precision-recall") -> Path:
    """Precision-recall curve for the defect class, average precision (AP) in the legend."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, s = _labels_scores(labels, scores)
    precision, recall, _ = precision_recall_curve(y, s)
    ap = average_precision_score(y, s)
    base = y.mean()
    fig = _new_figure(5.0, 5.0)
    try:
        ax = fig.add_subplot(1, 1, 1)
        ax.step(recall, precision, where="post", color="tab:blue", linewidth=2,
                label=f"AP = {ap:.4f}  (n={y.size}, {int(y.sum())} defect)")
        ax.axhline(base, color="grey", linestyle="--", linewidth=1,
                   label=f"chance = {base:.3f}")
        _style_unit_axes(ax, "recall (defects caught)", "precision (NG calls that are defects)", title, "lower left")
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        _close(fig)


def plot_score_histogram(good_scores: Sequence[float], defect_scores: Sequence[float],
                         path: PathLike, threshold: Optional[float] = None, *,
                         title: str = "Image scores", bins: int = 40) -> Path:
    """Overlaid histograms of good and defect image scores on shared bins, with the decision
    threshold as a vertical line. Either list may be empty (e.g. no labelled defects yet)."""
    good = np.asarray(good_scores, dtype=np.float64).ravel()
    bad = np.asarray(defect_scores, dtype=np.float64).ravel()
    good, bad = good[np.isfinite(good)], bad[np.isfinite(bad)]
    both = np.concatenate([good, bad])
    if threshold is not None:
        both = np.append(both, float(threshold))
    if both.size == 0:
        raise ValueError("no finite scores to plot")
    lo, hi = float(both.min()), float(both.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, int(bins) + 1)
    fig = _new_figure(6.0, 4.0)
    try:
        ax = fig.add_subplot(1, 1, 1)
        if good.size:
            ax.hist(good, bins=edges, color="tab:green", alpha=0.55, label=f"good (n={good.size})")
        if bad.size:
            ax.hist(bad, bins=edges, color="tab:red", alpha=0.55, label=f"defect (n={bad.size})")
        if threshold is not None:
            ax.axvline(float(threshold), color="black", linestyle="--", linewidth=1.5,
                       label=f"threshold = {float(threshold):.4g}")
        ax.set_xlabel("image score")
        ax.set_ylabel("images")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        _close(fig)
