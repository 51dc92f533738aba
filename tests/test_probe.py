"""The linear probe: logistic regression on frozen features, scored with the fine-tuning metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlpipe.eval.probe import FEATURES, fit_probe, pooled_features
from vlpipe.model import build_model


def test_separable_features_score_perfectly_and_noise_scores_near_chance() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(400) % 2
    signal = rng.normal(size=(400, 8)) + 4 * y[:, None]
    metrics = fit_probe("binary", 2, signal[:200], y[:200], signal[200:], y[200:])
    assert metrics["accuracy"] == 1.0 and metrics["auroc"] == 1.0 and metrics["n"] == 200
    noise = rng.normal(size=(400, 8))
    metrics = fit_probe("binary", 2, noise[:200], y[:200], noise[200:], y[200:])
    assert abs(metrics["accuracy"] - 0.5) < 0.11  # 3 standard errors of 200 samples


def test_multiclass_with_a_class_missing_from_train_and_unlabeled_rows() -> None:
    rng = np.random.default_rng(1)
    y = np.arange(300) % 3
    x = rng.normal(size=(300, 3)) + 5 * np.eye(3)[y]
    train_y = np.where(y[:150] == 2, -1, y[:150])  # class 2 only unlabeled in train
    metrics = fit_probe("multiclass", 3, x[:150], train_y, x[150:], y[150:])
    assert metrics["top1"] == pytest.approx(2 / 3, abs=0.05)  # classes 0 and 1 right, class 2 never predicted
    assert metrics["top5"] == 1.0


def test_multilabel_probe_gives_f1() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=(300, 3)).astype(np.uint8)
    x = y.astype(float) * 3 + rng.normal(size=(300, 3))
    metrics = fit_probe("multilabel", 3, x[:150], y[:150], x[150:], y[150:])
    assert metrics["macro_f1"] > 0.9 and metrics["micro_f1"] > 0.9


class _Labelled:
    """Three batches' worth of samples, handed out in reused buffers like the cache reader's."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 16, 192), dtype=torch.uint8, generator=g)
        self.ids = torch.randint(5, 50, (n, 8), generator=g)
        self.labels = torch.arange(n) % 2
        self.buffer = torch.empty(0, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        self.buffer = self.labels[indices]
        return {"images": self.images[indices], "input_ids": self.ids[indices],
                "lengths": torch.full((len(indices),), 8), "labels": self.buffer}


def test_pooled_features_in_order_whatever_the_batch_size() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", {"vision.image_size": 32, "vision.patch_size": 8, "text.vocab_size": 50,
                                 "text.max_len": 8})
    data = _Labelled(10)
    one, labels = pooled_features(model, data, batch_size=10, device=torch.device("cpu"))
    many, labels_again = pooled_features(model, data, batch_size=3, device=torch.device("cpu"))
    assert set(one) == set(FEATURES) and one["fused"].shape == (10, 64)
    for name in FEATURES:
        np.testing.assert_allclose(one[name], many[name], rtol=1e-5, atol=1e-6)
    assert labels.tolist() == labels_again.tolist() == [0, 1] * 5
    np.testing.assert_allclose(one["fused"], one["text"] * one["image"], rtol=1e-5, atol=1e-6)
