"""Classification metrics without scikit-learn: ROC AUC, balanced accuracy, F1.

Scores are probabilities: ``(n,)`` for the positive class of a binary task, or ``(n, C)`` for C
classes (binary (n, 2) uses column 1). AUC of a multi-class task is the macro one-vs-rest mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["balanced_accuracy", "classification_metrics", "f1_score", "roc_auc"]


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Binary ROC AUC (Mann–Whitney U with average ranks for ties); NaN if one class is absent."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def balanced_accuracy(
    labels: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray
) -> float:
    """Mean per-class recall over the classes present in ``labels``."""
    y, p = np.asarray(labels).ravel(), np.asarray(preds).ravel()
    recalls = [float(np.mean(p[y == c] == c)) for c in np.unique(y)]
    return float(np.mean(recalls)) if recalls else math.nan


def f1_score(
    labels: Sequence[int] | np.ndarray,
    preds: Sequence[int] | np.ndarray,
    *,
    average: str = "binary",
    positive: int = 1,
) -> float:
    """F1 of the positive class (``"binary"``) or the unweighted mean over classes (``"macro"``)."""
    y, p = np.asarray(labels).ravel(), np.asarray(preds).ravel()

    def f1_of(c: int) -> float:
        tp = float(np.sum((p == c) & (y == c)))
        fp = float(np.sum((p == c) & (y != c)))
        fn = float(np.sum((p != c) & (y == c)))
        return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)

    if average == "binary":
        return f1_of(positive)
    if average == "macro":
        classes = np.union1d(np.unique(y), np.unique(p))
        return float(np.mean([f1_of(int(c)) for c in classes]))
    raise ValueError(f"average must be 'binary' or 'macro', got {average!r}")


def classification_metrics(
    labels: Sequence[int] | np.ndarray, probs: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """AUC, balanced accuracy, F1 and accuracy of bag predictions.

    ``probs`` is ``(n,)`` positive-class probabilities or ``(n, C)`` class probabilities.
    """
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim == 1 or p.shape[1] == 2:
        pos = p if p.ndim == 1 else p[:, 1]
        pred = (pos >= threshold).astype(int)
        auc = roc_auc(y, pos)
        f1 = f1_score(y, pred)
    else:
        pred = p.argmax(1)
        aucs = [roc_auc(y == c, p[:, c]) for c in range(p.shape[1])]
        aucs = [a for a in aucs if not math.isnan(a)]
        auc = float(np.mean(aucs)) if aucs else math.nan
        f1 = f1_score(y, pred, average="macro")
    return {
        "auc": auc,
        "balanced_accuracy": balanced_accuracy(y, pred),
        "f1": f1,
        "accuracy": float(np.mean(pred == y)) if len(y) else math.nan,
    }
