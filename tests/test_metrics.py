"""Metrics against independent references: sklearn, hand-computed areas, brute-force loops."""
import ast
import json
import pathlib

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score, roc_auc_score

from padim.metrics import (best_f1_threshold, evaluate, image_auroc, pixel_auroc, pixel_auroc_and_pro,
                           pr_curve_points, pro_score, roc_curve_points, youden_threshold)


def _random_images(rng, n=6, levels=7):
    """Images of different sizes, blob masks (0/255), integer-valued maps (many ties)."""
    masks, maps = [], []
    for i in range(n):
        h, w = rng.integers(8, 20, size=2)
        m = ndimage.binary_dilation(rng.random((h, w)) < 0.04, iterations=1)
        if i == 0:
            m[:] = False                                # an image without defects
        masks.append(m.astype(np.uint8) * 255)
        maps.append(np.floor(rng.random((h, w)) * levels + 2.5 * m).astype(np.float32))
    return masks, maps


def _brute_pro(masks, maps, max_fpr):
    """PRO by definition: every distinct threshold, per-region overlap computed directly."""
    regions, normal = [], []
    for m, a in zip(masks, maps):
        lab, n = ndimage.label(np.asarray(m) > 0, structure=np.ones((3, 3)))
        regions += [a[lab == k] for k in range(1, n + 1)]
        normal.append(a[lab == 0])
    normal = np.concatenate(normal)
    fpr, pro = [0.0], [0.0]
    for t in np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]:
        fpr.append(np.mean(normal >= t))
        pro.append(np.mean([np.mean(r >= t) for r in regions]))
    fpr, pro = np.array(fpr), np.array(pro)
    k = np.argmax(fpr > max_fpr) if (fpr > max_fpr).any() else len(fpr)
    x, y = list(fpr[:k]), list(pro[:k])
    if k < len(fpr):
        f = (max_fpr - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
        x.append(max_fpr)
        y.append(pro[k - 1] + f * (pro[k] - pro[k - 1]))
    return np.trapezoid(y, x) / max_fpr


# ----------------------------------------------------------------------------- AUROC

def test_image_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)
    assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_image_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="one class"):
        image_auroc([1, 1, 1], [0.1, 0.2, 0.3])


@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_matches_sklearn_with_ties(seed):
    masks, maps = _random_images(np.random.default_rng(seed))
    y = np.concatenate([m.ravel() > 0 for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    bool_masks = [m > 0 for m in masks]
    assert pixel_auroc(bool_masks, maps) == pixel_auroc(masks, maps)


def test_pixel_auroc_errors():
    with pytest.raises(ValueError, match="one class"):
        pixel_auroc([np.zeros((3, 3))], [np.ones((3, 3))])
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc([np.zeros((3, 3))], [np.ones((3, 4))])
    with pytest.raises(ValueError, match="2 masks but 1 maps"):
        pixel_auroc([np.zeros((3, 3))] * 2, [np.ones((3, 3))])


# ----------------------------------------------------------------------------- PRO

def _hand_example():
    # Region A: 1 pixel (0.9); region B: 3 pixels (0.8, 0.5, 0.2); 8 normal pixels, one of
    # them tied with B's 0.5 so the curve has a diagonal segment.
    mask = np.array([[1, 0, 0, 0],
                     [0, 0, 1, 1],
                     [0, 0, 1, 0]], bool)
    amap = np.array([[0.9, 0.7, 0.6, 0.5],
                     [0.1, 0.1, 0.8, 0.5],
                     [0.1, 0.1, 0.2, 0.1]])
    return mask, amap


def test_pro_hand_computed():
    mask, amap = _hand_example()
    # Curve: (0,0) (0,1/2) (0,2/3) (1/8,2/3) (2/8,2/3) (3/8,5/6) (3/8,1) (1,1).
    # Up to 0.3: 0.25*2/3 + 0.05*(2/3 + 11/15)/2 = 121/600 -> / 0.3 = 121/180.
    assert pro_score([mask], [amap], max_fpr=0.3) == pytest.approx(121 / 180, abs=1e-12)
    # Whole curve: 1/6 + 0.125*(2/3+5/6)/2 + 0.625 = 85/96.
    assert pro_score([mask], [amap], max_fpr=1.0) == pytest.approx(85 / 96, abs=1e-12)


def test_pro_regions_are_eight_connected():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = mask[3, 3] = True         # 8-connected: regions of 2 and 1
    amap = np.zeros((4, 4))
    amap[0, 0], amap[1, 1], amap[3, 3] = 1.0, -1.0, 1.0
    # Until FPR 1: region {(0,0),(1,1)} half found, {(3,3)} found -> PRO 0.75 (4-conn: 2/3).
    assert pro_score([mask], [amap], max_fpr=0.1) == pytest.approx(0.75, abs=1e-12)


def test_pro_perfect_and_inverted():
    masks, _ = _random_images(np.random.default_rng(1))
    perfect = [(m > 0).astype(float) for m in masks]
    inverted = [1.0 - p for p in perfect]
    assert pro_score(masks, perfect) == pytest.approx(1.0, abs=1e-9)
    assert pro_score(masks, inverted) < 0.01


@pytest.mark.parametrize("max_fpr", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("seed", range(3))
def test_pro_matches_brute_force(seed, max_fpr):
    masks, maps = _random_images(np.random.default_rng(seed), levels=5 + seed * 20)
    assert pro_score(masks, maps, max_fpr) == pytest.approx(
        _brute_pro(masks, maps, max_fpr), abs=1e-9)


@pytest.mark.parametrize("max_fpr", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("seed", range(3))
def test_both_pixel_metrics_from_one_sort_match_sklearn_and_brute_force(seed, max_fpr):
    masks, maps = _random_images(np.random.default_rng(10 + seed), levels=5 + seed * 20)
    auroc, pro = pixel_auroc_and_pro(masks, maps, max_fpr)
    labels = np.concatenate([(np.asarray(m) > 0).ravel() for m in masks])
    assert auroc == pytest.approx(roc_auc_score(labels, np.concatenate([a.ravel() for a in maps])), abs=1e-12)
    assert pro == pytest.approx(_brute_pro(masks, maps, max_fpr), abs=1e-9)


def test_both_pixel_metrics_refuse_what_each_refuses():
    with pytest.raises(ValueError, match="only one class"):
        pixel_auroc_and_pro([np.zeros((3, 3))], [np.ones((3, 3))])
    with pytest.raises(ValueError, match="max_fpr"):
        pixel_auroc_and_pro([np.eye(3)], [np.ones((3, 3))], max_fpr=1.5)


def test_pro_errors():
    with pytest.raises(ValueError, match="no defect regions"):
        pro_score([np.zeros((3, 3))], [np.ones((3, 3))])
    with pytest.raises(ValueError, match="max_fpr"):
        pro_score([np.ones((3, 3))], [np.ones((3, 3))], max_fpr=0)


# ----------------------------------------------------------------------------- thresholds

def _brute_thresholds(y, s):
    best_f1, best_j = (-1, None), (-2, None)
    for t in np.unique(s):
        pred = s >= t
        tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
        f1 = 2 * tp / (2 * tp + fp + np.sum(~pred & (y == 1)))
        j = tp / np.sum(y == 1) - fp / np.sum(y == 0)
        best_f1 = max(best_f1, (f1, t), key=lambda v: v[0])
        best_j = max(best_j, (j, t), key=lambda v: v[0])
    return best_f1, best_j


@pytest.mark.parametrize("seed", range(5))
def test_f1_and_youden_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 80)
    s = np.round(rng.normal(size=80) + 1.2 * y, 1)
    (f1_ref, _), (j_ref, _) = _brute_thresholds(y, s)
    f1, t = best_f1_threshold(y, s)
    assert f1 == pytest.approx(f1_ref, abs=1e-12)
    assert t in s and f1_score(y, s >= t) == pytest.approx(f1_ref, abs=1e-12)
    t = youden_threshold(y, s)
    pred = s >= t
    assert t in s
    assert pred[y == 1].mean() - pred[y == 0].mean() == pytest.approx(j_ref, abs=1e-12)


def test_threshold_errors():
    with pytest.raises(ValueError, match="no defects"):
        best_f1_threshold([0, 0], [1.0, 2.0])
    with pytest.raises(ValueError, match="one class"):
        youden_threshold([1, 1], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        youden_threshold([0, 1], [np.nan, 2.0])


def test_curve_wrappers():
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    fpr, tpr, thr = roc_curve_points(y, s)
    assert fpr[0] == 0 and tpr[-1] == 1 and len(fpr) == len(tpr) == len(thr)
    prec, rec, thr = pr_curve_points(y, s)
    assert len(prec) == len(rec) == len(thr) + 1


# ----------------------------------------------------------------------------- evaluate

def test_evaluate_keys_and_per_type():
    rng = np.random.default_rng(3)
    masks, maps = _random_images(rng, n=9)
    types = ["good", "good", "good", "crack", "crack", "crack", "scratch", "scratch", "scratch"]
    y = np.array([t != "good" for t in types], int)
    s = np.array([a.max() + 0.1 * i for i, a in enumerate(maps)])
    masks = [np.zeros_like(m) if t == "good" else m for m, t in zip(masks, types)]
    masks[3][2, 2] = 255                                 # make sure every defect has a region
    masks[0] = None                                      # good without mask: all normal
    masks[8] = None                                      # defect without mask: left out
    out = evaluate(y, s, masks, maps, types)
    json.dumps(out)
    assert set(out) == {"image_auroc", "best_f1", "best_f1_threshold", "youden_threshold",
                        "n_good", "n_defect", "pixel_auroc", "pro", "per_defect_type"}
    assert (out["n_good"], out["n_defect"]) == (3, 6)
    assert out["image_auroc"] == pytest.approx(roc_auc_score(y, s))
    used = [np.zeros(maps[0].shape)] + masks[1:8]
    assert out["pixel_auroc"] == pytest.approx(pixel_auroc(used, maps[:8]))
    assert out["pro"] == pytest.approx(pro_score(used, maps[:8]))
    crack = out["per_defect_type"]["crack"]
    sel = [0, 1, 2, 3, 4, 5]
    assert crack["n"] == 3
    assert crack["image_auroc"] == pytest.approx(roc_auc_score(y[sel], s[sel]))
    assert crack["pixel_auroc"] == pytest.approx(pixel_auroc(masks[3:6], maps[3:6]))
    assert crack["pro"] == pytest.approx(pro_score(masks[3:6], maps[3:6]))
    assert set(out["per_defect_type"]) == {"crack", "scratch"}


def test_evaluate_images_only_and_bad_types():
    y, s = [0, 0, 1, 1], [0.1, 0.2, 0.3, 0.05]
    out = evaluate(y, s)
    assert "pixel_auroc" not in out and out["per_defect_type"] == {}
    assert out["image_auroc"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="good"):
        evaluate(y, s, defect_types=["good", "dent", "dent", "dent"])


def test_evaluate_no_usable_defect_mask():
    maps = [np.ones((3, 3))] * 3
    out = evaluate([0, 1, 1], [0.1, 0.5, 0.6], [None, None, None], maps)
    assert out["pixel_auroc"] is None and out["pro"] is None


def test_modules_depend_only_on_numpy_scipy_sklearn():
    allowed = {"numpy", "scipy", "sklearn", "__future__", "copy", "functools", "math",
               "warnings", "padim.metrics"}
    root = pathlib.Path(__file__).resolve().parents[1] / "padim"
    for name in ("metrics.py", "calibration.py"):
        for node in ast.walk(ast.parse((root / name).read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [f"padim.{node.module}" if node.level else node.module]
            else:
                continue
            for mod in mods:
                assert mod in allowed or mod.split(".")[0] in allowed - {"padim.metrics"}, \
                    (name, mod)


def test_evaluate_reports_one_progress_step_per_pixel_pass():
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 1])
    maps = [rng.random((8, 8)) for _ in labels]
    masks = [None, None] + [rng.random((8, 8)) > 0.7 for _ in range(3)]
    steps = []
    evaluate(labels, rng.random(5), masks=masks, maps=maps, defect_types=["good", "good", "a", "b", "a"],
             progress=lambda: steps.append(1))
    assert len(steps) == 1 + 2  # the whole set, then types a and b
