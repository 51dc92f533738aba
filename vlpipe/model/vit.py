"""The image stream: a pre-LN ViT that reads uint8 patches straight from the cache.

Images arrive as (B, P, p*p*3) uint8, each patch flattened (patch_row, patch_col, channel) as in
docs/cache-format.md. Pixel normalisation is folded into the patch-embedding Linear, so the
host never makes a float copy of the batch: uint8 is 4x less to read, pin and transfer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlpipe.model.config import VisionConfig
from vlpipe.model.layers import MLP, SelfAttention, run_block


class PatchEmbed(nn.Module):
    """`Linear((x / 255 - mean) / std)` computed as one Linear on the raw uint8 values.

    (x/255 - m)/s @ W.T + b  ==  x @ (W / (255 s)).T + (b - W @ (m / s)), so the effective weight
    and bias are derived on the fly from the learned W, b; gradients flow to W and b as usual.
    uint8 values are integers <= 255, exact in bf16, so autocast loses nothing on the input.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(cfg.patch_dim, cfg.hidden)
        # Channel is the fastest-moving index of a flattened patch, so tile (r, g, b) p*p times.
        pixels = cfg.patch_size * cfg.patch_size
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).repeat(pixels), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).repeat(pixels), persistent=False)

    def forward(self, patches: Tensor) -> Tensor:
        weight = self.proj.weight / (255.0 * self.pixel_std)
        bias = self.proj.bias - self.proj.weight @ (self.pixel_mean / self.pixel_std)
        return F.linear(patches.to(weight.dtype), weight, bias)


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.attn = SelfAttention(cfg.hidden, cfg.heads, cfg.attn_dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.hidden, cfg.mlp_hidden, cfg.act, cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


def resample_pos_embed(pos: Tensor, grid: int) -> Tensor:
    """(1, 1 + g*g, D) position embeddings -> (1, 1 + grid*grid, D), bicubic over the 2-D grid.

    Antialiased bicubic, as timm resamples, so a timm checkpoint behaves the same at a new size.

    The CLS position is kept as is; only the patch positions live on a spatial grid.
    """
    old = math.isqrt(pos.shape[1] - 1)
    if old == grid:
        return pos
    cls, patches = pos[:, :1], pos[:, 1:]
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False, antialias=True)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)
    return torch.cat([cls, patches], dim=1)


class ViT(nn.Module):
    def __init__(self, cfg: VisionConfig, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.cfg, self.grad_checkpointing = cfg, grad_checkpointing
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden))
        # Masked-image modelling replaces chosen patch embeddings with this learned token.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.num_patches, cfg.hidden))
        self.drop = nn.Dropout(cfg.dropout)
        # CLIP-trained ViTs normalise the embeddings before the first block (open_clip's ln_pre).
        self.norm_pre = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)

    def embed(self, images: Tensor, patch_mask: Tensor | None = None) -> Tensor:
        """uint8 (B, P, p*p*3) -> (B, 1 + P, D) tokens ready for the first block.

        The mask token goes in before the position embeddings are added, so a masked patch still
        says where it is, and the model has to infer what it looked like.
        """
        x = self.patch_embed(images)
        if patch_mask is not None:
            x = torch.where(patch_mask[..., None], self.mask_token.to(x.dtype), x)
        cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        # Another image size than the one trained on: interpolate the grid of position embeddings.
        x = x + resample_pos_embed(self.pos_embed, math.isqrt(x.shape[1] - 1))
        return self.norm_pre(self.drop(x))

    def run(self, x: Tensor, start: int, end: int) -> Tensor:
        """Blocks [start, end): the multimodal model interleaves these with co-attention."""
        for block in self.blocks[start:end]:
            x = run_block(block, x, checkpointing=self.grad_checkpointing)
        return x

    def forward(self, images: Tensor, patch_mask: Tensor | None = None) -> Tensor:
        """The image stream alone: (B, 1 + P, D) final-normalised tokens, index 0 = CLS."""
        return self.norm(self.run(self.embed(images, patch_mask), 0, len(self.blocks)))
