"""Score one split of a downstream classification task: the numbers a pretraining run is judged by.

Hateful Memes accuracy/AUROC, MM-IMDB macro-F1 and Food-101 top-1 come from scikit-learn's
reference implementations; this module only decides what goes in:

- scores are probabilities (after sigmoid/softmax) wherever a threshold is involved; AUROC and
  top-k only need an order, so logits work there too;
- a score equal to the threshold counts as negative (`p > t`), as in MMBT's MM-IMDB evaluation;
- AUROC gives tied scores their average rank, so a constant model scores exactly 0.5; it is NaN
  when a split has one class only (undefined: older scikit-learn raises there, newer warns);
- F1 of a class with no positives and no predicted positives is 0 (`zero_division=0`);
- top-k breaks ties *against* the true class, so a model that scores every class equally gets
  no credit unless k covers all classes. scikit-learn's `top_k_accuracy_score` instead ranks tied
  classes by index, which would credit a constant model for whichever labels have high ids, so
  top-k is counted here, in one line;
- samples labelled -1 (unlabeled test rows, docs/cache-format.md) are left out of every metric;
  a split with no sample left scores NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from vlpipe.cache.format import MISSING_LABEL

THRESHOLD_GRID = np.round(np.linspace(0.01, 0.99, 99), 2)
_NAN = float("nan")


def _as_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy array, list or torch tensor (any device, any float dtype)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu() if x.is_floating_point() else x.detach().cpu()
        return x.numpy()
    return np.asarray(x)


def _binary(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    positive = labels == 1
    if not len(labels):
        return {"accuracy": _NAN, "auroc": _NAN}
    accuracy = float(accuracy_score(positive, scores > threshold))
    one_class = positive.all() or not positive.any()
    return {"accuracy": accuracy, "auroc": _NAN if one_class else float(roc_auc_score(positive, scores))}


def _topk(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose true class is among the k highest scores (ties count against it)."""
    if not len(labels):
        return _NAN
    true_score = scores[np.arange(len(labels)), labels]
    # Classes scoring at least as high as the true one, the true class itself excluded.
    ahead = np.sum(scores >= true_score[:, None], axis=1) - 1
    return float(np.mean(ahead < k))


def _f1(probs: np.ndarray, targets: np.ndarray, threshold: float | np.floating, average: str) -> float:
    """Macro- or micro-F1 of multi-hot predictions `probs > threshold` against `targets` (n, C)."""
    if not len(targets):
        return _NAN
    pred = probs > threshold
    if targets.shape[1] == 1:
        # scikit-learn reads one column as a binary task and would average in the negative class.
        return float(f1_score(targets[:, 0], pred[:, 0], zero_division=0))
    return float(f1_score(targets, pred, average=average, zero_division=0))


def best_threshold(probs: Any, targets: Any, average: str = "macro") -> tuple[float, float]:
    """The one threshold (0.01 steps) maximizing macro- or micro-F1, and that F1.

    Meant for the validation split; the test split is then scored at the threshold found here,
    never at its own best one. Among equal F1s the threshold nearest 0.5 wins, so a flat
    optimum does not drift to an extreme.
    """
    if average not in ("macro", "micro"):
        raise ValueError(f"average must be 'macro' or 'micro', not {average!r}")
    p, t = _as_numpy(probs).astype(np.float64), _as_numpy(targets).astype(bool)
    if not len(t):
        return 0.5, _NAN
    # (f1, -distance from 0.5, threshold), compared as tuples: the nearest to 0.5 wins a tie.
    candidates = [(_f1(p, t, th, average), -abs(float(th) - 0.5), float(th)) for th in THRESHOLD_GRID]
    f1, _, threshold = max(candidates)
    return threshold, f1


def classification_metrics(task: str, scores: Any, labels: Any, threshold: float = 0.5) -> dict[str, float]:
    """Every metric of `task` for one split, as a flat dict (plus `n`, the samples scored).

    binary: `scores` (n,) probability of the positive class, labels (n,) in {0, 1, -1};
    multiclass: `scores` (n, C), labels (n,) class ids or -1; multilabel: `scores` (n, C)
    probabilities, labels (n, C) multi-hot, F1 at `threshold` (0.5, or the validation-best one).
    """
    s, y = _as_numpy(scores).astype(np.float64), _as_numpy(labels)
    if task == "multilabel":
        if s.shape != y.shape or s.ndim != 2:
            raise ValueError(f"multilabel scores {s.shape} and labels {y.shape} must both be (n, num_labels)")
        t = y.astype(bool)
        return {"n": float(len(y)), "threshold": float(threshold),
                "macro_f1": _f1(s, t, threshold, "macro"), "micro_f1": _f1(s, t, threshold, "micro")}
    keep = y.reshape(-1) != MISSING_LABEL
    s, y = s[keep], y.reshape(-1)[keep].astype(np.int64)
    if task == "binary":
        s = s[:, -1] if s.ndim == 2 else s  # (n,) or (n, 2) softmax: the positive class's probability
        return {"n": float(len(y)), **_binary(s, y, threshold)}
    if task == "multiclass":
        if s.ndim != 2:
            raise ValueError(f"multiclass scores must be (n, num_classes), got {s.shape}")
        return {"n": float(len(y)), "top1": _topk(s, y, 1), "top5": _topk(s, y, 5)}
    raise ValueError(f"unknown task {task!r}: expected binary, multiclass or multilabel")
