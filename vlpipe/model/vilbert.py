"""The two-stream model assembled: ViT + BERT joined by co-attention, with its heads, and `build_model`.

One forward pass serves every pretraining task: the heads (heads.py) are small modules the trainer
applies to the outputs it needs (MLM on text tokens, alignment on the pooled pair, MIM on image tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from vlpipe.model.config import ModelConfig, apply_overrides, make_config
from vlpipe.model.heads import AlignHead, MIMHead, MLMHead, Pooler
from vlpipe.model.layers import CoAttentionLayer, init_weights, run_block
from vlpipe.model.text import TextStream
from vlpipe.model.vit import ViT


@dataclass
class ModelOutput:
    text: Tensor  # (B, L, Ht)
    image: Tensor  # (B, 1 + P, Hv), index 0 = CLS
    pooled_text: Tensor  # (B, Ht)
    pooled_image: Tensor  # (B, Hv)


class ViLBERT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        v, t, c = config.vision, config.text, config.coattn
        self.vision = ViT(v, config.grad_checkpointing)
        self.text = TextStream(t, config.grad_checkpointing)
        self.coattn = nn.ModuleList(CoAttentionLayer(t, v, c) for _ in c.text_layers)
        self.text_pooler = Pooler(t.hidden)
        self.image_pooler = Pooler(v.hidden)
        self.mlm = MLMHead(t.hidden, t.vocab_size, t.act, t.norm_eps)
        self.align_head = AlignHead(t.hidden, v.hidden, config.heads.align, config.heads.dropout)
        self.mim_head = MIMHead(v.hidden, config.heads.mim_dim)
        self.apply(init_weights)
        for p in (self.vision.cls_token, self.vision.mask_token, self.vision.pos_embed):
            nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None,
                patch_mask: Tensor | None = None, token_type_ids: Tensor | None = None) -> ModelOutput:
        """images uint8 (B, P, p*p*3); input_ids (B, L); attention_mask bool (B, L), True = real token."""
        mask = None if attention_mask is None else attention_mask.bool()
        t = self.text.embeddings(input_ids, token_type_ids)
        v = self.vision.embed(images, patch_mask)
        t_at = v_at = 0
        for layer, t_end, v_end in zip(self.coattn, self.config.coattn.text_layers,
                                       self.config.coattn.image_layers, strict=True):
            t, v = self.text.run(t, mask, t_at, t_end), self.vision.run(v, v_at, v_end)
            t, v = run_block(layer, t, v, mask, checkpointing=self.config.grad_checkpointing)
            t_at, v_at = t_end, v_end
        t = self.text.run(t, mask, t_at, len(self.text.layers))
        v = self.vision.norm(self.vision.run(v, v_at, len(self.vision.blocks)))
        return ModelOutput(text=t, image=v, pooled_text=self.text_pooler(t[:, 0]),
                           pooled_image=self.image_pooler(v[:, 0]))

    def mlm_head(self, text: Tensor) -> Tensor:
        """(B, L, Ht) -> (B, L, V) logits, decoded with the word embedding matrix (tied weights)."""
        return self.mlm(text, self.text.embeddings.word.weight)

    def encode_image(self, images: Tensor, patch_mask: Tensor | None = None) -> Tensor:
        """The image stream alone, no co-attention: (B, 1 + P, Hv). Targets for MIM come from here."""
        return self.vision(images, patch_mask)


def build_model(preset: str | ModelConfig = "base", overrides: Mapping[str, Any] | None = None) -> ViLBERT:
    """The one way to build a model: a preset name (`tiny`, `base`, `vilbert`) or a saved `ModelConfig`,
    plus dotted-key overrides such as `{"text.vocab_size": 8000, "vision.image_size": 64}` (config.py)."""
    if isinstance(preset, ModelConfig):
        return ViLBERT(apply_overrides(preset, overrides or {}))
    return ViLBERT(make_config(preset, overrides))
