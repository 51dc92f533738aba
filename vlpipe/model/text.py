"""The text stream: BERT (post-LN), word ids in, one hidden vector per token out.

It is laid out like BERT (post-LN: x = LN(x + sublayer(x))) so that Hugging Face BERT checkpoints
load tensor for tensor (see importers.py); the image stream, by contrast, is a pre-LN ViT, and the
co-attention layer (layers.py) follows each stream's own convention on its side.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlpipe.model.config import TextConfig
from vlpipe.model.layers import MLP, SelfAttention, run_block


class TextEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position = nn.Embedding(cfg.max_len, cfg.hidden)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)[None]
        # Captions are single segments, so type 0 everywhere unless the caller says otherwise.
        x = x + (self.token_type.weight[0] if token_type_ids is None else self.token_type(token_type_ids))
        return self.drop(self.norm(x))


class BertLayer(nn.Module):
    """Post-LN block: x = LN(x + Attn(x)); x = LN(x + MLP(x))."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg.hidden, cfg.heads, cfg.attn_dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.hidden, cfg.intermediate, cfg.act, cfg.dropout)
        self.mlp_norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = self.attn_norm(x + self.drop(self.attn(x, mask)))
        return self.mlp_norm(x + self.mlp(x))


class TextStream(nn.Module):
    def __init__(self, cfg: TextConfig, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.cfg, self.grad_checkpointing = cfg, grad_checkpointing
        self.embeddings = TextEmbeddings(cfg)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.layers))

    def run(self, x: Tensor, mask: Tensor | None, start: int, end: int) -> Tensor:
        """Layers [start, end): the multimodal model interleaves these with co-attention."""
        for layer in self.layers[start:end]:
            x = run_block(layer, x, mask, checkpointing=self.grad_checkpointing)
        return x

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        """The text stream alone (what a BERT checkpoint computes): (B, L, H)."""
        return self.run(self.embeddings(input_ids, token_type_ids), attention_mask, 0, len(self.layers))
