"""Patch-level metrics, with scikit-learn doing the counting.

`best_f1` picks its threshold on the very labels it reports against, so its precision/recall/F1 are
optimistic (an oracle threshold, as in the study); calibrated thresholds come from normal data only.
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


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
    return float(roc_auc_score(labels, scores))


def average_precision(labels, scores) -> float:
    labels, scores = _check(labels, scores)
    if not labels.any():
        return math.nan
    return float(average_precision_score(labels, scores))


def best_f1(labels, scores) -> dict[str, float]:
    """Precision, recall and F1 at the threshold that maximises F1 (a patch is flagged when
    score >= threshold)."""
    labels, scores = _check(labels, scores)
    if not labels.any():
        return {"precision": math.nan, "recall": math.nan, "f1": math.nan, "threshold": math.nan}
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
