"""The layers the streams are built from: attention (all of it lives here), the MLP, activations,
and ViLBERT's co-attention layer that joins the two streams.

Self-attention uses one fused qkv Linear (one matmul instead of three); cross-attention needs
queries from one stream and keys/values from the other, so it has a q Linear and a fused kv Linear.
Both end in `F.scaled_dot_product_attention`, which picks flash / memory-efficient kernels on GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from vlpipe.model.config import CoAttentionConfig, TextConfig, VisionConfig


def activation(name: str) -> nn.Module:
    """BERT and timm use exact (erf) GELU; some checkpoints use the tanh approximation or CLIP's QuickGELU."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"unknown activation {name!r}")


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def attend(q: Tensor, k: Tensor, v: Tensor, heads: int, key_mask: Tensor | None, dropout_p: float) -> Tensor:
    """Multi-head attention of (B, Lq, D) queries over (B, Lk, D) keys/values -> (B, Lq, D).

    `key_mask` (B, Lk) bool, True = a real token: padding keys get no attention weight, so padded
    positions cannot change any real position's output. Every query keeps at least one real key
    ([CLS] is always real), so no softmax row is fully masked.
    """
    b, lq, d = q.shape
    lk = k.shape[1]
    q = q.view(b, lq, heads, d // heads).transpose(1, 2)
    k = k.view(b, lk, heads, d // heads).transpose(1, 2)
    v = v.view(b, lk, heads, d // heads).transpose(1, 2)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(b, lq, d)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, attn_dropout: float) -> None:
        super().__init__()
        self.heads, self.attn_dropout = heads, attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        p = self.attn_dropout if self.training else 0.0
        return self.proj(attend(q, k, v, self.heads, key_mask, p))


class CrossAttention(nn.Module):
    """Queries from `x` (width `dim`), keys/values from `context` (width `context_dim`), `inner` wide inside."""

    def __init__(self, dim: int, context_dim: int, inner: int, heads: int, attn_dropout: float) -> None:
        super().__init__()
        self.heads, self.attn_dropout = heads, attn_dropout
        self.q = nn.Linear(dim, inner)
        self.kv = nn.Linear(context_dim, 2 * inner)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        k, v = self.kv(context).chunk(2, dim=-1)
        p = self.attn_dropout if self.training else 0.0
        return self.proj(attend(self.q(x), k, v, self.heads, context_mask, p))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class CoAttentionLayer(nn.Module):
    """ViLBERT's connection layer: text attends to image and image attends to text, simultaneously.

    Both cross-attentions read the inputs of this layer (neither sees the other's update), then each
    stream runs its own feed-forward. Text side post-LN like BERT; image side pre-LN like the ViT,
    so text queries read the *normalised* image tokens, while text tokens are normalised already.
    Text padding is masked as keys for the image queries; image tokens are all real.
    """

    def __init__(self, text: TextConfig, vision: VisionConfig, cfg: CoAttentionConfig) -> None:
        super().__init__()
        self.text_cross = CrossAttention(text.hidden, vision.hidden, cfg.hidden, cfg.heads, cfg.attn_dropout)
        self.text_norm1 = nn.LayerNorm(text.hidden, eps=text.norm_eps)
        self.text_mlp = MLP(text.hidden, cfg.text_intermediate, text.act, cfg.dropout)
        self.text_norm2 = nn.LayerNorm(text.hidden, eps=text.norm_eps)
        self.image_norm1 = nn.LayerNorm(vision.hidden, eps=vision.norm_eps)
        self.image_cross = CrossAttention(vision.hidden, text.hidden, cfg.hidden, cfg.heads, cfg.attn_dropout)
        self.image_norm2 = nn.LayerNorm(vision.hidden, eps=vision.norm_eps)
        self.image_mlp = MLP(vision.hidden, cfg.image_intermediate, vision.act, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, t: Tensor, v: Tensor, text_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        v_normed = self.image_norm1(v)
        t_new = self.text_norm1(t + self.drop(self.text_cross(t, v_normed)))
        v_new = v + self.drop(self.image_cross(v_normed, t, text_mask))
        t_new = self.text_norm2(t_new + self.text_mlp(t_new))
        v_new = v_new + self.image_mlp(self.image_norm2(v_new))
        return t_new, v_new


def init_weights(module: nn.Module) -> None:
    """BERT/ViT initialisation: N(0, 0.02) weights, zero biases, identity LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def run_block(block: nn.Module, *args: Tensor | None, checkpointing: bool = False) -> Tensor:
    """Call `block`, optionally under activation checkpointing (recompute in backward to save memory)."""
    if checkpointing and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
    return block(*args)
