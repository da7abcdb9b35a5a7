"""Evaluation metrics for anomaly detection: image/pixel AUROC, PRO, thresholds.

Depends on numpy, scipy and scikit-learn only. Pixel metrics never build a full ROC curve
over all pixels: they split pixels into defect and normal sets (float32), sort each once and
count with ``searchsorted``, so hundreds of millions of pixels fit in a few bytes per pixel.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "image_auroc",
    "pixel_auroc",
    "pro_score",
    "pixel_auroc_and_pro",
    "best_f1_threshold",
    "youden_threshold",
    "roc_curve_points",
    "pr_curve_points",
    "evaluate",
]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_CHUNK = 1 << 22  # positives per searchsorted call


# ----------------------------------------------------------------------------- helpers

def _labels_scores(labels, scores):
    """Validate and return (bool labels, float64 scores) as 1-D arrays."""
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (good) or 1 (defect)")
    return y.astype(bool), s


def _need_both_classes(n_pos, n_neg, what="labels"):
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"{what} contain only one class ({n_pos} defect, {n_neg} good); "
            "AUROC/thresholds need both")


def _auroc_sorted(pos, neg):
    """Exact Mann-Whitney AUROC from two ascending-sorted arrays; ties count one half.

    AUC = P(pos > neg) + 0.5 P(pos == neg), i.e. the rank-sum statistic with average ranks.
    Counts are summed exactly as Python ints, in chunks to bound the temporary index arrays.
    """
    twice_wins = 0
    for i in range(0, pos.size, _CHUNK):
        p = pos[i:i + _CHUNK]
        twice_wins += int(np.searchsorted(neg, p, side="left").sum(dtype=np.int64))  # neg < p
        twice_wins += int(np.searchsorted(neg, p, side="right").sum(dtype=np.int64))  # neg <= p
    return twice_wins / (2.0 * pos.size * neg.size)


def _as_mask(mask, shape):
    """Ground-truth mask as bool (nonzero = defect); checks the shape against its map."""
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} differs from its map's shape {shape}")
    return m > 0


def _split_pixels(masks, maps):
    """Flatten all images into (defect scores, normal scores, bool masks); scores float32.

    Maps are converted one image at a time, so peak memory is one float32 copy of all pixels
    plus one byte per pixel for the masks (kept for PRO's region labelling).
    """
    masks, maps = list(masks), list(maps)
    if len(masks) != len(maps):
        raise ValueError(f"got {len(masks)} masks but {len(maps)} maps")
    if not masks:
        raise ValueError("no images given")
    bools = []
    for mask, amap in zip(masks, maps):
        shape = np.shape(amap)
        if len(shape) != 2:
            raise ValueError(f"anomaly maps must be 2-D, got shape {shape}")
        bools.append(_as_mask(mask, shape))
    n_pos = sum(int(np.count_nonzero(m)) for m in bools)
    n_all = sum(m.size for m in bools)
    pos = np.empty(n_pos, np.float32)
    neg = np.empty(n_all - n_pos, np.float32)
    ip = ineg = 0
    for m, amap in zip(bools, maps):
        a = np.asarray(amap, dtype=np.float32)
        if np.isnan(a).any():
            raise ValueError("anomaly maps contain NaN")
        k = int(np.count_nonzero(m))
        pos[ip:ip + k] = a[m]
        neg[ineg:ineg + a.size - k] = a[~m]
        ip, ineg = ip + k, ineg + a.size - k
    return pos, neg, bools


# ----------------------------------------------------------------------------- AUROC

def image_auroc(labels, scores) -> float:
    """Image-level ROC AUC (labels: 1 = defect); exact, ties count one half."""
    y, s = _labels_scores(labels, scores)
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    _need_both_classes(pos.size, neg.size)
    return _auroc_sorted(pos, neg)


def pixel_auroc(masks, maps) -> float:
    """Exact pixel-level ROC AUC over all pixels of all images.

    masks: sequence of 2-D bool or 0-255 arrays (nonzero = defect); maps: same-shaped 2-D
    anomaly maps. Images may differ in size. Rank-based (Mann-Whitney, average ranks for
    ties) on float32 copies, so tens of millions of pixels need ~4 bytes each.
    """
    pos, neg, _ = _split_pixels(masks, maps)
    _need_both_classes(pos.size, neg.size, "masks")
    pos.sort()
    neg.sort()
    return _auroc_sorted(pos, neg)


# ----------------------------------------------------------------------------- PRO

def pro_score(masks, maps, max_fpr=0.3) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to `max_fpr` (MVTec AD).

    Regions are the 8-connected components of each ground-truth mask. At threshold t,
    PRO(t) = mean over all regions of the fraction of region pixels with score >= t, and
    FPR(t) = fraction of normal pixels with score >= t. The curve through every distinct
    score (plus the origin) is integrated exactly with trapezoids, cut at exactly `max_fpr`
    by linear interpolation, and divided by `max_fpr`: a perfect map scores 1.0.
    """
    _check_max_fpr(max_fpr)
    pos, neg, bools = _split_pixels(masks, maps)
    order = np.argsort(pos, kind="stable")
    return _pro_area(pos[order], order, neg, bools, max_fpr, neg_sorted=False)


def pixel_auroc_and_pro(masks, maps, max_fpr=0.3) -> tuple[float, float]:
    """``(pixel_auroc, pro_score)`` from one split and one sort of the pixels, for about the
    cost of one of them (the auto-configuration computes both for every candidate and fold)."""
    _check_max_fpr(max_fpr)
    pos, neg, bools = _split_pixels(masks, maps)
    _need_both_classes(pos.size, neg.size, "masks")
    neg.sort()
    order = np.argsort(pos, kind="stable")
    pos_sorted = pos[order]
    return _auroc_sorted(pos_sorted, neg), _pro_area(pos_sorted, order, neg, bools, max_fpr, neg_sorted=True)


def _check_max_fpr(max_fpr) -> None:
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")


def _pro_area(pos, order, neg, bools, max_fpr, neg_sorted: bool) -> float:
    """:func:`pro_score` from the defect pixels sorted ascending (``pos``; ``order``: the sorting
    permutation of :func:`_split_pixels`' order), the normal pixels (``neg``, sorted ascending
    if ``neg_sorted``, else partially sorted here in place) and the masks."""
    n = neg.size
    if n == 0:
        raise ValueError("masks contain no normal pixels; FPR is undefined")
    # Per-pixel weight 1 / (region size * number of regions), in the split's order.
    weights, n_regions = [], 0
    for m in bools:
        lab, k = ndimage.label(m, structure=_EIGHT_CONNECTED)
        sizes = np.bincount(lab.ravel(), minlength=k + 1).astype(np.float64)
        weights.append((1.0 / sizes)[lab[m]])
        n_regions += k
    if n_regions == 0:
        raise ValueError("masks contain no defect regions; PRO is undefined")
    w = np.concatenate(weights) / n_regions

    # Defect pixels ascending with suffix sums of weights: PRO(>= t) for any t by search.
    w_above = np.append(np.cumsum(w[order][::-1])[::-1], 0.0)    # w_above[i] = sum(w[i:])

    # FPR only moves at normal-pixel values: one curve segment per distinct normal score v,
    # from (FPR(>v), PRO(>v)) to (FPR(>=v), PRO(>=v)). Defect-only thresholds in between are
    # vertical steps: no area, but carried in PRO(>v). Only the top max_fpr share of normal
    # pixels can start a segment below max_fpr, so partition and sort just that tail.
    k = max(n - int(np.ceil(max_fpr * n)), 0)
    if k and not neg_sorted:
        neg.partition(k)
    tail = neg[k:]
    if not neg_sorted:
        tail.sort()
    first = np.flatnonzero(np.r_[True, tail[1:] != tail[:-1]])   # first index of each value
    v = tail[first]
    n_ge = (tail.size - first).astype(np.float64)
    n_ge[0] += np.count_nonzero(neg[:k] == v[0])                  # ties left below the cut
    fpr_hi, fpr_lo = n_ge / n, np.append(n_ge[1:], 0.0) / n
    pro_hi = w_above[np.searchsorted(pos, v, side="left")]
    pro_lo = w_above[np.searchsorted(pos, v, side="right")]

    # Segments starting below max_fpr; the one crossing it is cut there (linear in both axes).
    keep = fpr_lo < max_fpr
    f0, f1, p0, p1 = fpr_lo[keep], fpr_hi[keep], pro_lo[keep], pro_hi[keep]
    frac = np.minimum((max_fpr - f0) / (f1 - f0), 1.0)
    area = np.sum(frac * (f1 - f0) * (p0 + p0 + frac * (p1 - p0)) / 2.0)
    return float(area / max_fpr)


# ----------------------------------------------------------------------------- thresholds

def _confusion_at_distinct(labels, scores):
    """Distinct scores (descending) with TP and FP counts for the rule 'NG iff score >= t'."""
    y, s = _labels_scores(labels, scores)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    end = np.append(np.flatnonzero(np.diff(s) != 0), s.size - 1)
    tp = np.cumsum(y)[end]
    fp = (end + 1) - tp
    return s[end], tp, fp, int(y.sum()), int((~y).sum())


def best_f1_threshold(labels, scores):
    """Threshold maximising F1 for 'NG iff score >= t'; returns (f1, t), t an actual score.

    Needs at least one defect: without defects F1 is undefined (and optimising it on goods
    alone flags everything). Ties in F1 go to the highest threshold.
    """
    t, tp, fp, n_pos, _ = _confusion_at_distinct(labels, scores)
    if n_pos == 0:
        raise ValueError("labels contain no defects; F1 threshold is undefined")
    f1 = 2.0 * tp / (tp + fp + n_pos)
    i = int(np.argmax(f1))
    return float(f1[i]), float(t[i])


def youden_threshold(labels, scores) -> float:
    """Threshold maximising Youden's J = TPR - FPR for 'NG iff score >= t' (an actual score)."""
    t, tp, fp, n_pos, n_neg = _confusion_at_distinct(labels, scores)
    _need_both_classes(n_pos, n_neg)
    j = tp / n_pos - fp / n_neg
    return float(t[int(np.argmax(j))])


def roc_curve_points(labels, scores):
    """(fpr, tpr, thresholds) arrays of the image ROC curve, for plotting."""
    from sklearn.metrics import roc_curve
    y, s = _labels_scores(labels, scores)
    _need_both_classes(int(y.sum()), int((~y).sum()))
    return roc_curve(y, s)


def pr_curve_points(labels, scores):
    """(precision, recall, thresholds) arrays of the precision-recall curve, for plotting."""
    from sklearn.metrics import precision_recall_curve
    y, s = _labels_scores(labels, scores)
    if not y.any():
        raise ValueError("labels contain no defects; precision-recall curve is undefined")
    return precision_recall_curve(y, s)


# ----------------------------------------------------------------------------- summary

def _pixel_metrics(masks, maps, idx):
    """pixel_auroc and pro over images `idx` that have masks; None where undefined."""
    sel = [i for i in idx if masks[i] is not None]
    ms, ps = [masks[i] for i in sel], [maps[i] for i in sel]
    if not any(np.any(np.asarray(m) > 0) for m in ms):
        return {"pixel_auroc": None, "pro": None}
    auroc, pro = pixel_auroc_and_pro(ms, ps)
    return {"pixel_auroc": auroc, "pro": pro}


def evaluate(labels, scores, masks=None, maps=None, defect_types=None, progress=None) -> dict:
    """All metrics as a JSON-serialisable dict.

    Keys: image_auroc, best_f1, best_f1_threshold, youden_threshold, n_good, n_defect,
    per_defect_type, and pixel_auroc, pro when masks and maps are given. A mask of None on a
    defect image means "no mask": that image is left out of pixel metrics; a good image
    without a mask counts as all-normal. Pixel metrics are None when no usable defect mask
    exists. `defect_types` (one string per image, "good" for normal images) gives
    per_defect_type = {type: {image_auroc (type vs all goods), n, pixel_auroc, pro}}, the
    pixel metrics computed over that type's images only. `progress`, if given, is called with
    no argument after each pixel-metric pass (the whole set, then each type): one step each.
    """
    y, s = _labels_scores(labels, scores)
    step = progress or (lambda: None)
    f1, f1_t = best_f1_threshold(y, s)
    out = {
        "image_auroc": image_auroc(y, s),
        "best_f1": f1,
        "best_f1_threshold": f1_t,
        "youden_threshold": youden_threshold(y, s),
        "n_good": int((~y).sum()),
        "n_defect": int(y.sum()),
    }
    with_pixels = masks is not None or maps is not None
    if with_pixels:
        if masks is None or maps is None:
            raise ValueError("pixel metrics need both masks and maps")
        masks, maps = list(masks), list(maps)
        if not len(masks) == len(maps) == y.size:
            raise ValueError(
                f"got {y.size} labels, {len(masks)} masks and {len(maps)} maps")
        masks = [np.zeros(np.shape(a), bool) if m is None and not yi else m
                 for m, a, yi in zip(masks, maps, y)]
        out.update(_pixel_metrics(masks, maps, range(y.size)))
        step()

    per_type = {}
    if defect_types is not None:
        types = np.asarray(defect_types, dtype=str).ravel()
        if types.size != y.size:
            raise ValueError(f"got {types.size} defect_types for {y.size} images")
        if np.any((types == "good") == y):
            raise ValueError('defect_types must be "good" exactly for images labelled 0')
        for t in sorted(set(types[y].tolist())):
            this = types == t
            entry = {"n": int(this.sum()), "image_auroc": image_auroc(y[this | ~y], s[this | ~y])}
            if with_pixels:
                entry.update(_pixel_metrics(masks, maps, np.flatnonzero(this)))
                step()
            per_type[t] = entry
    out["per_defect_type"] = per_type
    return out
