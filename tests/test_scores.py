"""Downstream scores: hand-computed values, scikit-learn's on fixed predictions, and what goes in.

The library computes the metrics, so comparing with it on random data alone would prove little:
these tests pin what this module decides (which column is the positive class, `p > t`, unlabeled
rows, one-class splits, ties in top-k and in the threshold search) and values worked out by hand.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score, top_k_accuracy_score

from vlpipe.train.scores import THRESHOLD_GRID, best_threshold, classification_metrics

RNG = np.random.default_rng(1234)


def binary(p, y, threshold: float = 0.5) -> dict[str, float]:
    return classification_metrics("binary", p, y, threshold)


def multilabel(p, y, threshold: float = 0.5) -> dict[str, float]:
    return classification_metrics("multilabel", p, y, threshold)


def top(k: int, scores, y) -> float:
    return classification_metrics("multiclass", scores, y)[f"top{k}"]


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_binary_matches_sklearn_with_and_without_ties(decimals):
    y = RNG.integers(0, 2, size=300)
    p = np.clip(0.3 * y + RNG.uniform(0, 0.7, size=300), 0, 1)
    if decimals is not None:
        p = np.round(p, decimals)  # decimals=0: only two distinct scores, almost everything tied
    out = binary(p, y)
    assert out["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert out["accuracy"] == pytest.approx(np.mean((p > 0.5) == y))


def test_auroc_by_hand():
    y = np.array([0, 1, 1, 0, 1])
    assert binary(np.full(5, 0.3), y)["auroc"] == 0.5  # constant model: every pair tied
    assert binary([0.1, 0.9, 0.8, 0.2, 0.7], y)["auroc"] == 1.0
    assert binary([0.9, 0.1, 0.2, 0.8, 0.3], y)["auroc"] == 0.0
    # Pairs (positive, negative): (0.2, 0.2) tied = 1/2, the other three ordered: 3.5 / 4.
    assert binary([0.2, 0.2, 0.9, 0.1], [0, 1, 1, 0])["auroc"] == 0.875


def test_one_class_and_unlabeled_splits():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # undefined is NaN here, not a library warning (or error)
        one_class = binary([0.2, 0.7, 0.9], [1, 1, -1])
    assert one_class["n"] == 2 and one_class["accuracy"] == 0.5 and math.isnan(one_class["auroc"])
    assert math.isnan(binary([0.2, 0.4], [0, 0])["auroc"])
    unlabeled = binary(np.array([[0.8, 0.2], [0.4, 0.6]]), [-1, -1])  # e.g. a test split without labels
    assert unlabeled["n"] == 0 and math.isnan(unlabeled["accuracy"]) and math.isnan(unlabeled["auroc"])
    assert math.isnan(top(1, np.zeros((2, 3)), [-1, -1]))
    empty = multilabel(np.zeros((0, 3)), np.zeros((0, 3)))
    assert math.isnan(empty["macro_f1"]) and math.isnan(empty["micro_f1"])


def test_binary_threshold_is_strict():
    # 0.5 exactly is negative: 2 of 4 right at 0.5, all 4 right just below it.
    assert binary([0.5, 0.5, 0.9, 0.1], [1, 1, 1, 0])["accuracy"] == 0.5
    assert binary([0.5, 0.5, 0.9, 0.1], [1, 1, 1, 0], threshold=0.49)["accuracy"] == 1.0


def test_multilabel_f1_by_hand():
    y = np.array([[1, 0], [0, 1], [1, 1]])
    p = np.array([[0.9, 0.6], [0.8, 0.7], [0.1, 0.6]])  # predicted: [1, 1], [1, 1], [0, 1]
    # class 0: tp 1, fp 1, fn 1 -> 2/4; class 1: tp 2, fp 1, fn 0 -> 4/5; pooled: tp 3, fp 2, fn 1 -> 6/9.
    out = multilabel(p, y)
    assert out["macro_f1"] == pytest.approx((0.5 + 0.8) / 2) and out["micro_f1"] == pytest.approx(6 / 9)
    # One label column is still a per-label F1, not scikit-learn's binary task averaged over both values.
    assert multilabel(p[:, :1], y[:, :1]) == {"n": 3.0, "threshold": 0.5, "macro_f1": 0.5, "micro_f1": 0.5}
    assert multilabel(np.zeros((4, 1)), np.zeros((4, 1)))["macro_f1"] == 0.0


def test_multilabel_f1_matches_sklearn_including_empty_class():
    y = (RNG.uniform(size=(200, 6)) < [0.5, 0.3, 0.1, 0.05, 0.4, 0.0]).astype(np.uint8)  # class 5: no positives
    p = np.clip(0.35 * y + RNG.uniform(0, 0.65, size=y.shape), 0, 1)
    p[:, 5] = RNG.uniform(0, 0.45, size=200)  # ... and never predicted: F1 0, counted in the macro mean
    for t in (0.5, 0.3, 0.62):
        got = multilabel(p, y, t)
        per_class = f1_score(y, p > t, average=None, zero_division=0)
        assert per_class[5] == 0 and got["macro_f1"] == pytest.approx(per_class.mean())
        assert got["micro_f1"] == pytest.approx(f1_score(y, p > t, average="micro", zero_division=0))


def test_multilabel_all_equal_scores_and_exact_threshold():
    y = np.array([[1, 0], [0, 1], [1, 1]])
    out = multilabel(torch.full((3, 2), 0.5), torch.tensor(y))
    assert (out["macro_f1"], out["micro_f1"]) == (0.0, 0.0)  # p == t is negative
    assert multilabel(np.full((3, 2), 0.5), y, threshold=0.49)["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 2))


@pytest.mark.parametrize("average", ["macro", "micro"])
def test_best_threshold_is_the_grid_argmax(average):
    rng = np.random.default_rng(7)
    y = (rng.uniform(size=(150, 5)) < 0.3).astype(np.uint8)
    # Under-confident model: positives score 0.15-0.45, so at 0.5 nothing is predicted at all.
    p = 0.15 * y + rng.uniform(0, 0.3, size=y.shape)
    threshold, value = best_threshold(p, y, average=average)
    reference = [f1_score(y, p > t, average=average, zero_division=0) for t in THRESHOLD_GRID]
    assert value == pytest.approx(max(reference))
    assert threshold == THRESHOLD_GRID[int(np.argmax(reference))]
    assert threshold < 0.5 and value > multilabel(p, y)[f"{average}_f1"]


def test_best_threshold_flat_optimum_stays_near_half():
    # Scores 0.1 / 0.9 separate the labels perfectly for every threshold from 0.10 to 0.89.
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    assert best_threshold(np.where(y == 1, 0.9, 0.1), y) == (0.5, 1.0)
    # Perfect only from 0.70 to 0.79: the nearest of those to 0.5.
    assert best_threshold(np.where(y == 1, 0.8, 0.7), y, "micro") == (0.7, 1.0)
    with pytest.raises(ValueError, match="average must be"):
        best_threshold(np.zeros((2, 2)), y[:2], "weighted")


def test_topk_matches_sklearn():
    y = RNG.integers(0, 12, size=400)
    logits = RNG.normal(size=(400, 12))
    logits[np.arange(400), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for k in (1, 5):
        expected = top_k_accuracy_score(y, probs, k=k, labels=np.arange(12))
        assert top(k, probs, y) == pytest.approx(expected)
        assert top(k, logits, y) == pytest.approx(expected)  # only the order matters


def test_topk_ties_count_against_the_true_class():
    scores = np.zeros((4, 6))
    assert top(1, scores, [0, 1, 2, 5]) == 0.0  # scikit-learn would credit label 5, the highest id
    assert top(5, scores, [0, 1, 2, 5]) == 0.0
    assert top(5, np.zeros((4, 5)), [0, 1, 2, 4]) == 1.0  # k covers every class
    assert top(1, [[0.5, 0.5, 0.1], [0.2, 0.7, 0.7]], [0, 1]) == 0.0


def test_classification_metrics_per_task_and_unlabeled_rows():
    p = np.array([0.9, 0.2, 0.7, 0.4, 0.6])
    out = binary(torch.tensor(p, dtype=torch.bfloat16), torch.tensor([1, 0, -1, 1, 0]))
    assert out["n"] == 4 and out["accuracy"] == 0.5 and out["auroc"] == pytest.approx(0.75)
    two_column = binary(np.stack([1 - p, p], 1), [1, 0, -1, 1, 0])
    assert two_column["auroc"] == pytest.approx(0.75)  # the last column is the positive class

    scores = RNG.uniform(size=(30, 7))
    y = RNG.integers(0, 7, size=30)
    y[:3] = -1
    out = classification_metrics("multiclass", scores, y)
    assert out["n"] == 27
    assert out["top1"] == pytest.approx(np.mean(scores[3:].argmax(1) == y[3:]))
    assert out["top5"] == pytest.approx(top_k_accuracy_score(y[3:], scores[3:], k=5, labels=np.arange(7)))

    hot = (scores > 0.6).astype(np.uint8)
    out = multilabel(scores, hot, threshold=0.6)
    assert out["macro_f1"] == 1.0 and out["threshold"] == 0.6
    with pytest.raises(ValueError, match="unknown task"):
        classification_metrics("regression", scores, y)
    with pytest.raises(ValueError, match="must both be"):
        multilabel(scores, y)
