"""The small modules that turn the streams' outputs into predictions: poolers, the pretraining heads
(MLM, alignment, MIM) and the fusion of a pooled text and image vector that every pair head shares.

The trainer applies each head to the outputs it needs (MLM on text tokens, alignment on the pooled
pair, MIM on image tokens); fine-tuning's classifier head (vlpipe/train/classifier.py) builds on
the same `Fusion` as the alignment head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlpipe.errors import VlpipeError
from vlpipe.model.config import FUSIONS
from vlpipe.model.layers import activation


class Pooler(nn.Module):
    """BERT's pooler: tanh(Linear(first token)). Used for both streams (the text one loads from BERT)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, first_token: Tensor) -> Tensor:
        return torch.tanh(self.dense(first_token))


class MLMHead(nn.Module):
    """BERT's MLM transform (dense, act, LN); the decoder reuses the word embedding matrix.

    The tied weight is passed in at call time instead of being registered twice, so the state dict
    holds each tensor once and safetensors can save it as is.
    """

    def __init__(self, dim: int, vocab_size: int, act: str, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.act = activation(act)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: Tensor, word_embeddings: Tensor) -> Tensor:
        return F.linear(self.norm(self.act(self.dense(x))), word_embeddings, self.bias)


class Fusion(nn.Module):
    """Joins a pooled text vector and a pooled image vector into one `out_dim`-wide vector.

    "product" is ViLBERT's: element-wise product, the image side projected to the text width first
    when the two streams differ in width; "concat": both vectors side by side. A pair head subclasses
    this and adds its own layers on top of `join`, rather than holding a Fusion as a child, so the
    projection keeps the state-dict name `<head>.image_proj` that saved checkpoints use.
    """

    def __init__(self, text_dim: int, image_dim: int, fusion: str) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise VlpipeError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        self.fusion = fusion
        project = fusion == "product" and image_dim != text_dim
        self.image_proj: nn.Module = nn.Linear(image_dim, text_dim) if project else nn.Identity()
        self.out_dim = text_dim if fusion == "product" else text_dim + image_dim

    def join(self, pooled_text: Tensor, pooled_image: Tensor) -> Tensor:
        image = self.image_proj(pooled_image)
        return pooled_text * image if self.fusion == "product" else torch.cat([pooled_text, image], dim=-1)


class AlignHead(Fusion):
    """One logit per (caption, image) pair: do they belong together?

    On the fused vector: a single Linear for "product" (ViLBERT's), a small MLP for "concat", which
    has no multiplicative interaction of its own.
    """

    def __init__(self, text_dim: int, image_dim: int, fusion: str, dropout: float) -> None:
        super().__init__(text_dim, image_dim, fusion)
        self.drop = nn.Dropout(dropout)
        if fusion == "product":
            self.classifier = nn.Sequential(nn.Linear(self.out_dim, 1))
        else:
            self.classifier = nn.Sequential(nn.Linear(self.out_dim, text_dim), nn.GELU(), nn.Linear(text_dim, 1))

    def forward(self, pooled_text: Tensor, pooled_image: Tensor) -> Tensor:
        return self.classifier(self.drop(self.join(pooled_text, pooled_image))).squeeze(-1)


class MIMHead(nn.Module):
    """Projects image tokens into the space where masked patches are contrasted with their targets."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
