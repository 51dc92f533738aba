"""The text stream (BERT, post-LN) and the co-attention layers that join it to the image stream.

The text stream is laid out like BERT (post-LN: x = LN(x + sublayer(x))) so that Hugging Face
BERT checkpoints load tensor for tensor (see importers.py); the image stream is a pre-LN ViT.
Co-attention therefore follows each stream's own convention on its side.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlpipe.model.config import CoAttentionConfig, TextConfig, VisionConfig
from vlpipe.model.layers import MLP, CrossAttention, SelfAttention, run_block


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
