"""The downstream metrics agree with scikit-learn (a test-only reference) on fixed predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score, top_k_accuracy_score

from vlpipe.train.classification_metrics import (
    THRESHOLD_GRID,
    best_threshold,
    binary_accuracy,
    binary_auroc,
    classification_metrics,
    multilabel_f1,
    topk_accuracy,
)

RNG = np.random.default_rng(1234)


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_binary_matches_sklearn_with_and_without_ties(decimals):
    y = RNG.integers(0, 2, size=300)
    p = np.clip(0.3 * y + RNG.uniform(0, 0.7, size=300), 0, 1)
    if decimals is not None:
        p = np.round(p, decimals)  # decimals=0: only two distinct scores, almost everything tied
    assert binary_auroc(p, y) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert binary_accuracy(p, y) == pytest.approx(accuracy_score(y, p > 0.5))


def test_auroc_edge_cases():
    y = np.array([0, 1, 1, 0, 1])
    assert binary_auroc(np.full(5, 0.3), y) == 0.5 == roc_auc_score(y, np.full(5, 0.3))
    assert binary_auroc([0.1, 0.9, 0.8, 0.2, 0.7], y) == 1.0
    assert binary_auroc([0.9, 0.1, 0.2, 0.8, 0.3], y) == 0.0
    assert np.isnan(binary_auroc([0.2, 0.4], [1, 1]))  # one class only: undefined, not a number


def test_multilabel_f1_matches_sklearn_including_empty_class():
    y = (RNG.uniform(size=(200, 6)) < [0.5, 0.3, 0.1, 0.05, 0.4, 0.0]).astype(np.uint8)  # class 5: no positives
    p = np.clip(0.35 * y + RNG.uniform(0, 0.65, size=y.shape), 0, 1)
    p[:, 5] = RNG.uniform(0, 0.45, size=200)  # ... and never predicted
    for t in (0.5, 0.3, 0.62):
        got = multilabel_f1(p, y, t)
        pred = p > t
        assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
        assert got["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))


def test_multilabel_all_equal_scores_and_exact_threshold():
    y = np.array([[1, 0], [0, 1], [1, 1]])
    assert multilabel_f1(np.full((3, 2), 0.5), y) == {"macro_f1": 0.0, "micro_f1": 0.0}  # p == t is negative
    assert multilabel_f1(np.full((3, 2), 0.5), y, threshold=0.49)["micro_f1"] == pytest.approx(
        f1_score(y, np.ones_like(y), average="micro"))


@pytest.mark.parametrize("average", ["macro", "micro"])
def test_best_threshold_is_the_grid_argmax(average):
    rng = np.random.default_rng(7)
    y = (rng.uniform(size=(150, 5)) < 0.3).astype(np.uint8)
    # Under-confident model: positives score 0.15-0.45, so at 0.5 nothing is predicted at all.
    p = 0.15 * y + rng.uniform(0, 0.3, size=y.shape)
    threshold, value = best_threshold(p, y, average=average)
    reference = [f1_score(y, p > t, average=average, zero_division=0) for t in THRESHOLD_GRID]
    assert value == pytest.approx(max(reference))
    assert f1_score(y, p > threshold, average=average, zero_division=0) == pytest.approx(value)
    assert threshold < 0.5 and value > multilabel_f1(p, y)[f"{average}_f1"]


def test_topk_matches_sklearn():
    y = RNG.integers(0, 12, size=400)
    logits = RNG.normal(size=(400, 12))
    logits[np.arange(400), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for k in (1, 5):
        expected = top_k_accuracy_score(y, probs, k=k, labels=np.arange(12))
        assert topk_accuracy(probs, y, k) == pytest.approx(expected)
        assert topk_accuracy(logits, y, k) == pytest.approx(expected)  # only the order matters


def test_topk_ties_count_against_the_true_class():
    scores = np.zeros((4, 6))
    assert topk_accuracy(scores, [0, 1, 2, 5], 1) == 0.0
    assert topk_accuracy(scores, [0, 1, 2, 5], 5) == 0.0
    assert topk_accuracy(scores, [0, 1, 2, 5], 6) == 1.0
    assert topk_accuracy([[0.5, 0.5, 0.1]], [0], 2) == 1.0


def test_classification_metrics_per_task_and_unlabeled_rows():
    p = np.array([0.9, 0.2, 0.7, 0.4, 0.6])
    out = classification_metrics("binary", torch.tensor(p, dtype=torch.bfloat16), torch.tensor([1, 0, -1, 1, 0]))
    assert out["n"] == 4 and out["accuracy"] == 0.5 and out["auroc"] == pytest.approx(0.75)
    two_column = classification_metrics("binary", np.stack([1 - p, p], 1), [1, 0, -1, 1, 0])
    assert two_column["auroc"] == pytest.approx(0.75)

    scores = RNG.uniform(size=(30, 7))
    y = RNG.integers(0, 7, size=30)
    y[:3] = -1
    out = classification_metrics("multiclass", scores, y)
    assert out["n"] == 27
    assert out["top1"] == pytest.approx(accuracy_score(y[3:], scores[3:].argmax(1)))
    assert out["top5"] == pytest.approx(top_k_accuracy_score(y[3:], scores[3:], k=5, labels=np.arange(7)))

    hot = (scores > 0.6).astype(np.uint8)
    out = classification_metrics("multilabel", scores, hot, threshold=0.6)
    assert out["macro_f1"] == 1.0 and out["threshold"] == 0.6
    with pytest.raises(ValueError, match="unknown task"):
        classification_metrics("regression", scores, y)
