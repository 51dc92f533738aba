"""Linear probing: how much of a labelled task a model's frozen features already hold.

The model runs once over each split with dropout off, and three feature sets are kept per sample:
`text` (the pooled text vector), `image` (the pooled image vector), both after the co-attention
layers, and `fused` (the pair vector the alignment head reads: their element-wise product, or their
concatenation for a `concat` head). A logistic regression (scikit-learn, standardised features,
L2, lbfgs: deterministic) is fit on the train split and scored on the validation split with the
fine-tuning metrics (vlpipe/train/scores.py). The same probe on a freshly initialised model of the
same architecture is the baseline a pretrained model must beat: random features of a wide enough
model are not useless, so "above chance" alone would flatter pretraining.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vlpipe.cache.format import MISSING_LABEL
from vlpipe.model.vilbert import ViLBERT
from vlpipe.train.scores import classification_metrics

FEATURES = ("text", "image", "fused")


@torch.no_grad()
def pooled_features(model: ViLBERT, dataset: Any, *, batch_size: int, device: torch.device,
                    autocast: Callable[[], Any] = contextlib.nullcontext) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The `FEATURES` of every sample of `dataset` (a labelled `CacheDataset`), in order, and its labels."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in FEATURES}
    labels = []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = dataset.__getitems__(list(range(start, min(len(dataset), start + batch_size))))
            ids, lengths = batch["input_ids"].to(device), batch["lengths"].to(device)
            mask = torch.arange(ids.shape[1], device=device)[None, :] < lengths[:, None]
            with autocast():
                out = model(batch["images"].to(device), ids, mask)
                fused = model.align_head.join(out.pooled_text, out.pooled_image)
            for name, value in zip(FEATURES, (out.pooled_text, out.pooled_image, fused), strict=True):
                parts[name].append(value.float().cpu().numpy())
            labels.append(batch["labels"].numpy().copy())  # the dataset may hand out reused buffers
    finally:
        model.train(was_training)
    return {name: np.concatenate(p) for name, p in parts.items()}, np.concatenate(labels)


def fit_probe(task: str, num_labels: int, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
              val_y: np.ndarray, c: float = 1.0) -> dict[str, float]:
    """Fit a logistic regression on (train_x, train_y) and score it on (val_x, val_y) with the task's metrics.

    binary / multiclass: one multinomial model; multilabel: one binary model per label. Unlabeled
    rows (-1) are left out of fitting, as they are of scoring.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    regression = LogisticRegression(C=c, max_iter=2000)
    if task == "multilabel":
        probe = make_pipeline(StandardScaler(), OneVsRestClassifier(regression))
        probe.fit(train_x, train_y.astype(np.int64))
        return classification_metrics(task, probe.predict_proba(val_x), val_y)
    keep = train_y != MISSING_LABEL
    probe = make_pipeline(StandardScaler(), regression)
    probe.fit(train_x[keep], train_y[keep])
    probs = probe.predict_proba(val_x)
    # Classes absent from the train split get no column from scikit-learn; they score zero.
    full = np.zeros((len(val_x), num_labels))
    full[:, probe.classes_] = probs
    return classification_metrics(task, full[:, 1] if task == "binary" else full, val_y)
