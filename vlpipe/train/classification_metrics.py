"""Downstream classification metrics, exact and dependency-free (numpy; torch tensors accepted).

The numbers this module produces are the ones a pretraining comparison is judged by (Hateful
Memes accuracy/AUROC, MM-IMDB macro-F1, Food-101 top-1), so each follows the usual reference
definition, checked against scikit-learn in the tests:

- scores are probabilities (after sigmoid/softmax) wherever a threshold is involved; AUROC and
  top-k only need an order, so logits work there too;
- a score equal to the threshold counts as negative (`p > t`), as in MMBT's MM-IMDB evaluation;
- AUROC gives tied scores their average rank (a tie between a positive and a negative counts
  one half), so a constant model scores exactly 0.5; it is NaN when a split has one class only;
- F1 of a class with no positives and no predicted positives is 0, as scikit-learn's default;
- top-k breaks ties *against* the true class: a model that scores every class equally gets no
  credit unless k covers all classes;
- samples labelled -1 (unlabeled test rows, docs/cache-format.md) are left out of every metric.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MISSING_LABEL = -1
THRESHOLD_GRID = np.round(np.linspace(0.01, 0.99, 99), 2)


def as_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy array, list or torch tensor (any device, any float dtype)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu() if x.is_floating_point() else x.detach().cpu()
        return x.numpy()
    return np.asarray(x)


def binary_accuracy(probs: Any, labels: Any, threshold: float = 0.5) -> float:
    p, y = as_numpy(probs).astype(np.float64).reshape(-1), as_numpy(labels).reshape(-1)
    return float(np.mean((p > threshold) == (y == 1))) if len(y) else float("nan")


def binary_auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve via the Mann-Whitney statistic with midranks for ties."""
    s, y = as_numpy(scores).astype(np.float64).reshape(-1), as_numpy(labels).reshape(-1) == 1
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # Rank (1-based) of each distinct score, averaged over its ties.
    ends = np.cumsum(counts)
    midranks = ends - (counts - 1) / 2.0
    rank_sum = float(midranks[inverse][y].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def _f1_counts(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives and false negatives per class (last axis)."""
    tp = np.sum(pred & target, axis=-2)
    fp = np.sum(pred & ~target, axis=-2)
    fn = np.sum(~pred & target, axis=-2)
    return tp, fp, fn


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def multilabel_f1(probs: Any, targets: Any, threshold: float = 0.5) -> dict[str, float]:
    """Macro-F1 (mean over classes) and micro-F1 (pooled counts) of multi-hot predictions `p > t`."""
    p, t = as_numpy(probs).astype(np.float64), as_numpy(targets).astype(bool)
    tp, fp, fn = _f1_counts(p > threshold, t)
    return {"macro_f1": float(_f1(tp, fp, fn).mean()),
            "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum()))}


def best_threshold(probs: Any, targets: Any, average: str = "macro") -> tuple[float, float]:
    """The one threshold (0.01 steps) maximizing macro- or micro-F1, and that F1.

    Meant for the validation split; the test split is then scored at the threshold found here,
    never at its own best one. Among equal F1s the threshold nearest 0.5 wins, so a flat
    optimum does not drift to an extreme.
    """
    if average not in ("macro", "micro"):
        raise ValueError(f"average must be 'macro' or 'micro', not {average!r}")
    p, t = as_numpy(probs).astype(np.float64), as_numpy(targets).astype(bool)
    best = (-1.0, -1.0, 0.5)  # (f1, -distance from 0.5, threshold): compared as a tuple
    # A few thresholds at a time: (T, n, C) booleans stay small whatever the split size.
    for start in range(0, len(THRESHOLD_GRID), 8):
        grid = THRESHOLD_GRID[start : start + 8]
        tp, fp, fn = _f1_counts(p[None] > grid[:, None, None], t[None])
        f1 = _f1(tp, fp, fn).mean(axis=-1) if average == "macro" else _f1(tp.sum(-1), fp.sum(-1), fn.sum(-1))
        for threshold, value in zip(grid, f1, strict=True):
            candidate = (float(value), -abs(float(threshold) - 0.5), float(threshold))
            best = max(best, candidate)
    return best[2], best[0]


def topk_accuracy(scores: Any, labels: Any, k: int) -> float:
    """Share of samples whose true class is among the k highest scores (ties count against it)."""
    s, y = as_numpy(scores).astype(np.float64), as_numpy(labels).astype(np.int64).reshape(-1)
    if not len(y):
        return float("nan")
    true_score = s[np.arange(len(y)), y]
    # Classes scoring at least as high as the true one, the true class itself excluded.
    ahead = np.sum(s >= true_score[:, None], axis=1) - 1
    return float(np.mean(ahead < k))


def classification_metrics(task: str, scores: Any, labels: Any, threshold: float = 0.5) -> dict[str, float]:
    """Every metric of `task` for one split, as a flat dict (plus `n`, the samples scored).

    binary: `scores` (n,) probability of the positive class, labels (n,) in {0, 1, -1};
    multiclass: `scores` (n, C), labels (n,) class ids or -1; multilabel: `scores` (n, C)
    probabilities, labels (n, C) multi-hot, F1 at `threshold` (0.5, or the validation-best one).
    """
    s, y = as_numpy(scores), as_numpy(labels)
    if task == "multilabel":
        if s.shape != y.shape or s.ndim != 2:
            raise ValueError(f"multilabel scores {s.shape} and labels {y.shape} must both be (n, num_labels)")
        return {"n": float(len(y)), "threshold": float(threshold), **multilabel_f1(s, y, threshold)}
    keep = y.reshape(-1) != MISSING_LABEL
    s, y = s[keep], y.reshape(-1)[keep]
    if task == "binary":
        s = s.reshape(len(y), -1)[:, -1]  # (n,) or (n, 2) softmax: the positive class's probability
        return {"n": float(len(y)), "accuracy": binary_accuracy(s, y, threshold), "auroc": binary_auroc(s, y)}
    if task == "multiclass":
        if s.ndim != 2:
            raise ValueError(f"multiclass scores must be (n, num_classes), got {s.shape}")
        return {"n": float(len(y)), "top1": topk_accuracy(s, y, 1), "top5": topk_accuracy(s, y, 5)}
    raise ValueError(f"unknown task {task!r}: expected binary, multiclass or multilabel")
