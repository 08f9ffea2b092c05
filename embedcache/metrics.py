"""Full-split evaluation metrics from scikit-learn, returned as plain floats and lists (JSON-able).

Macro mAP here is the mean of per-class average precision over the classes that have at least one positive, i.e.
what BirdSet calls cmAP; classes without positives get NaN in `per_class_ap` and are left out of the mean.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def _as_scores(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    targets = np.asarray(targets)
    scores = np.asarray(scores, dtype=np.float64)
    if targets.ndim != 2 or targets.shape != scores.shape:
        raise ValueError(
            f"metrics: targets {targets.shape} and scores {scores.shape} must both be [N, C] with the same shape"
        )
    if not np.isfinite(scores).all():
        raise ValueError("metrics: scores contain NaN or inf; check the head's training (diverged loss?)")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("metrics: targets must be 0/1 (multi-hot)")
    return targets.astype(np.int64), scores


def _nan_mean(values: list[float]) -> float:
    kept = [value for value in values if not math.isnan(value)]
    return float(np.mean(kept)) if kept else math.nan


def multilabel_metrics(targets: np.ndarray, scores: np.ndarray) -> dict:
    """Macro mAP, per-class AP, micro AP and macro AUROC for targets [N, C] (0/1) and scores [N, C].

    Keys: map, per_class_ap (NaN where a class has no positive), micro_ap, macro_auroc (over classes with both
    positives and negatives), n_classes_scored (classes in map), n_classes_auroc (classes in macro_auroc).
    Any value that has no class to average over is NaN.
    """
    targets, scores = _as_scores(targets, scores)
    positives = targets.sum(axis=0)
    count = targets.shape[0]
    per_class_ap: list[float] = []
    per_class_auroc: list[float] = []
    for index in range(targets.shape[1]):
        column, column_scores = targets[:, index], scores[:, index]
        has_positive = positives[index] > 0
        per_class_ap.append(float(average_precision_score(column, column_scores)) if has_positive else math.nan)
        both = has_positive and positives[index] < count
        per_class_auroc.append(float(roc_auc_score(column, column_scores)) if both else math.nan)
    micro = float(average_precision_score(targets.ravel(), scores.ravel())) if positives.sum() > 0 else math.nan
    return {
        "map": _nan_mean(per_class_ap),
        "per_class_ap": per_class_ap,
        "micro_ap": micro,
        "macro_auroc": _nan_mean(per_class_auroc),
        "n_classes_scored": int((positives > 0).sum()),
        "n_classes_auroc": int(((positives > 0) & (positives < count)).sum()),
    }


def multiclass_metrics(targets: np.ndarray, scores: np.ndarray) -> dict:
    """Top-1 accuracy plus the multilabel_metrics keys, for targets [N] (indices) or [N, C] (one-hot).

    Ties in scores resolve to the lowest class index (numpy argmax).
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2:
        raise ValueError(f"metrics: scores must be [N, C], got {scores.shape}")
    count, num_classes = scores.shape
    if targets.ndim == 1:
        if targets.shape[0] != count:
            raise ValueError(f"metrics: {targets.shape[0]} targets for {count} score rows")
        if count and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(f"metrics: class indices must lie in 0..{num_classes - 1}")
        indices = targets.astype(np.int64)
        one_hot = np.zeros((count, num_classes), dtype=np.int64)
        one_hot[np.arange(count), indices] = 1
    else:
        one_hot, scores = _as_scores(targets, scores)
        if not (one_hot.sum(axis=1) == 1).all():
            raise ValueError("metrics: each one-hot target row must hold exactly one 1; use multilabel_metrics")
        indices = one_hot.argmax(axis=1)
    result = multilabel_metrics(one_hot, scores)
    result["accuracy"] = float((scores.argmax(axis=1) == indices).mean()) if count else math.nan
    return result


def pool_by_recording(recordings: np.ndarray, targets: np.ndarray, scores: np.ndarray,
                      reduce: str = "max") -> tuple[np.ndarray, ...]:
    """Window rows -> recording rows: (recording ids [R], targets [R, C], scores [R, C]), in first-seen order.

    A recording's score for a class is the max over its windows (the event is present if any window holds it), or
    with reduce="mean" their mean (as the score of a recording whose windows' scores are averaged); its target is the
    union of its windows' targets.
    """
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce={reduce!r}: choose max or mean")
    recordings = np.asarray(recordings)
    names, first, inverse = np.unique(recordings, return_index=True, return_inverse=True)
    order = np.argsort(first)  # first-seen order, not sorted ids
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    rows = rank[inverse]
    pooled_targets = np.zeros((len(names), targets.shape[1]), dtype=np.asarray(targets).dtype)
    np.maximum.at(pooled_targets, rows, np.asarray(targets))
    if reduce == "max":
        pooled_scores = np.full((len(names), scores.shape[1]), -np.inf)
        np.maximum.at(pooled_scores, rows, np.asarray(scores, dtype=np.float64))
    else:
        pooled_scores = np.zeros((len(names), scores.shape[1]))
        np.add.at(pooled_scores, rows, np.asarray(scores, dtype=np.float64))
        pooled_scores /= np.bincount(rows, minlength=len(names))[:, None]
    return names[order], pooled_targets, pooled_scores
