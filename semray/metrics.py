"""Patch-level metrics, with scikit-learn doing the counting.

`best_f1` picks its threshold on the very labels it reports against, so its precision/recall/F1 are
optimistic (an oracle threshold, as in the study); calibrated thresholds come from normal data only.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

# scikit-learn is imported where a metric is computed, not here: this module is imported by every
# process that can evaluate (Ray Train workers and Ray Data actors among them), and sklearn alone
# is ~0.9 s of a worker's start-up that most of them never use.


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    return labels, scores


def auroc(labels, scores) -> float:
    """Area under the ROC curve; NaN when only one class is present (it is undefined then)."""
    labels, scores = _check(labels, scores)
    if labels.all() or not labels.any():
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def average_precision(labels, scores) -> float:
    labels, scores = _check(labels, scores)
    if not labels.any():
        return math.nan
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(labels, scores))


def best_f1(labels, scores) -> dict[str, float]:
    """Precision, recall and F1 at the threshold that maximises F1 (a patch is flagged when
    score >= threshold)."""
    labels, scores = _check(labels, scores)
    if not labels.any():
        return {"precision": math.nan, "recall": math.nan, "f1": math.nan, "threshold": math.nan}
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    i = int(np.argmax(f1))
    return {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
            "threshold": float(thresholds[i])}


def at_threshold(labels, scores, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 at a given threshold (score >= threshold is flagged)."""
    labels, scores = _check(labels, scores)
    flagged = scores >= threshold
    tp = int((flagged & labels).sum())
    precision = tp / flagged.sum() if flagged.any() else 0.0
    recall = tp / labels.sum() if labels.any() else math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "threshold": float(threshold)}


def held_out_f1(labels, scores, groups) -> float:
    """F1 with every threshold chosen on *other* images: groups (one id per patch, e.g. its image)
    are split in two folds by id; each fold is flagged at the other fold's best-F1 threshold and the
    pooled counts give one F1. An honest companion to `best_f1`, which picks its own threshold."""
    labels, scores = _check(labels, scores)
    groups = np.asarray(groups).ravel()
    ids = np.unique(groups)
    if ids.size < 2 or not labels.any():
        return math.nan
    fold = np.isin(groups, ids[::2])
    tp = fp = 0
    for test in (fold, ~fold):
        threshold = best_f1(labels[~test], scores[~test])["threshold"]
        if math.isnan(threshold):
            return math.nan
        flagged = scores[test] >= threshold
        tp += int((flagged & labels[test]).sum())
        fp += int((flagged & ~labels[test]).sum())
    fn = int(labels.sum()) - tp
    return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


def patch_metrics(labels, scores) -> dict[str, float]:
    """AUROC, average precision, and precision/recall/F1 at the best-F1 threshold."""
    return {"auroc": auroc(labels, scores), "average_precision": average_precision(labels, scores),
            **best_f1(labels, scores)}


# ---------------------------------------------------------------- pixel and region level
def pixel_auroc(masks, maps) -> float:
    """AUROC over every pixel of every image: ground-truth masks against per-pixel anomaly maps."""
    masks, maps = list(masks), list(maps)
    _same_shapes(masks, maps)
    return auroc(np.concatenate([np.ravel(m) for m in masks]), np.concatenate([np.ravel(a) for a in maps]))


def pro_curve(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """The per-region overlap curve (Bergmann et al., MVTec AD): for every threshold, the mean over
    ground-truth regions (connected components, 8-connected, across all images) of the fraction of
    each region's pixels flagged, against the false-positive rate over all defect-free pixels.

    Exact, with no threshold grid: each defect pixel carries weight 1 / (regions x its region's
    size), so sorting all pixels by score and taking cumulative sums gives PRO and FPR at every
    distinct score. Returns (fpr, pro), both ascending from (0, 0).
    """
    masks, maps = list(masks), list(maps)
    _same_shapes(masks, maps)
    weights, scores, normal = [], [], []
    regions = 0
    structure = ndimage.generate_binary_structure(2, 2)
    labelled = []
    for mask in masks:
        labels, n = ndimage.label(np.asarray(mask, bool), structure=structure)
        labelled.append((labels, n))
        regions += n
    n_normal = sum(int((~np.asarray(m, bool)).sum()) for m in masks)
    if regions == 0 or n_normal == 0:
        return np.array([0.0, 1.0]), np.array([math.nan, math.nan])
    for (labels, n), a in zip(labelled, maps):
        sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
        w = np.zeros(labels.size)
        defect = labels.ravel() > 0
        w[defect] = 1.0 / (regions * sizes[labels.ravel()[defect]])
        weights.append(w)
        normal.append(~defect)
        scores.append(np.asarray(a, np.float64).ravel())
    s = np.concatenate(scores)
    if not np.isfinite(s).all():
        raise ValueError("anomaly maps contain NaN or infinite values")
    order = np.argsort(-s, kind="stable")
    s, w, fp = s[order], np.concatenate(weights)[order], np.concatenate(normal)[order]
    pro, fpr = np.cumsum(w), np.cumsum(fp) / n_normal
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # one point per distinct score
    return np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]


def aupro(masks, maps, max_fpr: float = 0.3) -> float:
    """Area under the PRO curve up to max_fpr (default 30%), divided by max_fpr: 1 is perfect and
    a random map scores about max_fpr / 2."""
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, pro = pro_curve(masks, maps)
    if np.isnan(pro).any():
        return math.nan
    end = np.interp(max_fpr, fpr, pro)
    keep = fpr <= max_fpr
    x, y = np.r_[fpr[keep], max_fpr], np.r_[pro[keep], end]
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 names it trapz
    return float(trapezoid(y, x) / max_fpr)


def image_auroc(masks, maps) -> float:
    """Image level: an image is anomalous when its mask has any defect pixel, and scores its map's
    maximum. NaN unless both defect-free and defective images are present."""
    masks, maps = list(masks), list(maps)
    return auroc([np.asarray(m).any() for m in masks], [float(np.max(a)) for a in maps])


def _same_shapes(masks: list, maps: list) -> None:
    if len(masks) != len(maps):
        raise ValueError(f"{len(masks)} masks but {len(maps)} maps")
    for i, (m, a) in enumerate(zip(masks, maps)):
        if np.shape(m) != np.shape(a):
            raise ValueError(f"image {i}: mask {np.shape(m)} and map {np.shape(a)} differ in shape")
