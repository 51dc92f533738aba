"""The fine-tuning model: the two-stream backbone plus a fresh classification head, its loss and
its predictions, and loading a pretraining run's shared weights into it.

The pretraining heads (MLM, alignment, MIM) are removed from the backbone: they are neither
trained nor saved during fine-tuning, so "every shared weight" is exactly the backbone's state dict.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from vlpipe.errors import VlpipeError
from vlpipe.model.heads import Fusion
from vlpipe.model.vilbert import ViLBERT
from vlpipe.train import checkpoint as ckpt

PRETRAIN_HEADS = ("mlm", "align_head", "mim_head")


class ClassifierHead(Fusion):
    """Logits from the pooled text and image vectors: the pair fusion shared with the alignment head
    (product or concat, see `vlpipe.model.heads.Fusion`), then a two-layer MLP (as ViLBERT's
    downstream heads), whose hidden layer lets a product head learn interactions beyond a single
    bilinear form.
    """

    def __init__(self, text_dim: int, image_dim: int, num_outputs: int, fusion: str, dropout: float) -> None:
        super().__init__(text_dim, image_dim, fusion)
        self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.out_dim, 2 * text_dim), nn.GELU(),
                                 nn.LayerNorm(2 * text_dim), nn.Dropout(dropout), nn.Linear(2 * text_dim, num_outputs))

    def forward(self, pooled_text: Tensor, pooled_image: Tensor) -> Tensor:
        return self.mlp(self.join(pooled_text, pooled_image))


class Classifier(nn.Module):
    """Backbone (pretraining heads removed) + `ClassifierHead`; `forward` returns (B, outputs) logits."""

    def __init__(self, backbone: ViLBERT, num_outputs: int, fusion: str, dropout: float) -> None:
        super().__init__()
        for name in PRETRAIN_HEADS:
            delattr(backbone, name)
        self.backbone = backbone
        t, v = backbone.config.text.hidden, backbone.config.vision.hidden
        self.head = ClassifierHead(t, v, num_outputs, fusion, dropout)

    def forward(self, images: Tensor, input_ids: Tensor, lengths: Tensor) -> Tensor:
        mask = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]
        out = self.backbone(images, input_ids, mask)
        return self.head(out.pooled_text, out.pooled_image)


def pretrain_checkpoint(run_dir: str | os.PathLike[str]) -> Path:
    """The latest checkpoint of a pretraining run, or a clear error."""
    path = ckpt.latest_checkpoint(run_dir)
    if path is None or not (path / "model.safetensors").exists():
        raise VlpipeError(f"--init {run_dir}: no checkpoint found (expected {run_dir}/checkpoints/latest.json)")
    return path


def load_shared_weights(model: Classifier, checkpoint: str | os.PathLike[str]) -> int:
    """Copy every backbone tensor from a pretraining checkpoint; returns how many were loaded.

    The pretraining heads in the file are ignored and the classification head is left as it is
    (fresh). A backbone tensor missing from the file or shaped differently is an error: a silently
    half-initialised model would make the with/without-pretraining comparison meaningless.
    """
    file = Path(checkpoint) / "model.safetensors"
    saved = load_file(str(file))
    own = model.backbone.state_dict()
    missing = sorted(k for k in own if k not in saved)
    wrong = sorted(k for k in own if k in saved and saved[k].shape != own[k].shape)
    if missing or wrong:
        raise VlpipeError(f"{file} does not fit the model: missing {missing[:5]}, differently shaped {wrong[:5]}")
    model.backbone.load_state_dict({k: saved[k] for k in own}, strict=True)
    return len(own)


def label_weights(task: str, counts: list[int], total: int, device: torch.device) -> Tensor:
    """Class weights from the train split's label counts (manifest `labels.counts.train`).

    binary: `pos_weight` = negatives / positives; multilabel: the same per label; multiclass:
    `total / (classes * count)` per class (balanced weighting). Absent classes get weight 1.
    """
    c = torch.tensor(counts, dtype=torch.float32)
    if task == "binary":
        w = ((c[0] / c[1]) if c[1] > 0 else torch.tensor(1.0)).reshape(1)
    elif task == "multilabel":
        w = torch.where(c > 0, (total - c) / c.clamp(min=1), torch.ones_like(c))
    else:
        w = torch.where(c > 0, total / (len(counts) * c.clamp(min=1)), torch.ones_like(c))
    return w.to(device)


def loss_terms(task: str, logits: Tensor, labels: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """(sum of per-sample losses, normaliser): loss = sum / normaliser.

    Returned as two parts so evaluation can add them over batches for an exact mean. Samples
    labelled -1 (unlabeled) count for nothing; multi-hot uint8 labels become float targets.
    """
    logits = logits.float()
    if task == "multilabel":
        per = F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=weights, reduction="none")
        return per.mean(-1).sum(), torch.tensor(float(len(labels)), device=logits.device)
    valid = labels >= 0
    target = labels.clamp(min=0)
    if task == "binary":
        per = F.binary_cross_entropy_with_logits(logits.squeeze(-1), target.float(), pos_weight=weights,
                                                 reduction="none")
        return (per * valid).sum(), valid.sum().float()
    per = F.cross_entropy(logits, target, weight=weights, reduction="none")
    # torch's weighted mean divides by the weights of the samples, not their number.
    norm = (weights[target] * valid).sum() if weights is not None else valid.sum().float()
    return (per * valid).sum(), norm


def scores_of(task: str, logits: Tensor) -> Tensor:
    """Probabilities: sigmoid of the one logit (binary), softmax (multiclass), per-label sigmoid."""
    if task == "binary":
        return torch.sigmoid(logits.float().squeeze(-1))
    if task == "multiclass":
        return torch.softmax(logits.float(), dim=-1)
    return torch.sigmoid(logits.float())


@torch.no_grad()
def predict(model: nn.Module, dataset: Any, task: str, *, batch_size: int, device: torch.device,
            weights: Tensor | None = None,
            autocast: Callable[[], Any] = contextlib.nullcontext) -> tuple[np.ndarray, np.ndarray, float]:
    """Scores and labels of every sample of `dataset` (in order) and the mean loss, dropout off."""
    was_training = model.training
    model.eval()
    scores, labels = [], []
    loss_sum = torch.zeros((), device=device)
    norm = torch.zeros((), device=device)
    try:
        n = len(dataset)
        for start in range(0, n, batch_size):
            raw = dataset.__getitems__(list(range(start, min(n, start + batch_size))))
            y = raw["labels"].to(device)
            with autocast():
                logits = model(raw["images"].to(device), raw["input_ids"].to(device), raw["lengths"].to(device))
            part, count = loss_terms(task, logits, y, weights)
            loss_sum += part
            norm += count
            scores.append(scores_of(task, logits).cpu())
            labels.append(y.cpu().clone())  # the dataset may hand out reused buffers
    finally:
        model.train(was_training)
    loss = float(loss_sum / norm) if float(norm) > 0 else float("nan")
    return torch.cat(scores).numpy(), torch.cat(labels).numpy(), loss
