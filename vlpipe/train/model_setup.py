"""Building what the loop trains: the model sized to the cache, its optimizer, its loader."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from vlpipe.cache.format import Manifest
from vlpipe.cache.loader import CacheLoader
from vlpipe.cache.reader import CacheDataset
from vlpipe.cache.sampler import CacheSampler
from vlpipe.errors import VlpipeError
from vlpipe.model import (
    Checkpoint,
    ModelConfig,
    build_model,
    load_text_weights,
    load_vision_weights,
    make_config,
    read_checkpoint,
    text_config_from,
    vision_config_from,
)
from vlpipe.train.config import PretrainConfig


class OptimSettings(Protocol):
    """What the optimizer and loader need from a run config (pretraining and fine-tuning alike)."""

    lr: float
    betas: tuple[float, float]
    weight_decay: float
    batch_size: int
    loader_mode: str
    workers: int


def precision_context(precision: str, device: torch.device) -> tuple[Callable[[], Any], str]:
    """The autocast context factory for `precision` (auto: bf16 on GPU, fp32 on CPU) and its name."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), "bf16"
    return contextlib.nullcontext, "fp32"


def cache_geometry(manifest: Manifest) -> dict[str, Any]:
    """Model settings dictated by the cache: vocabulary, sequence length, patch grid, pixel statistics."""
    return {
        "vocab_size": manifest.text.vocab_size,
        "max_len": manifest.text.max_len,
        "image_size": manifest.image.image_size,
        "patch_size": manifest.image.patch_size,
        "pixel_mean": tuple(manifest.image.mean),
        "pixel_std": tuple(manifest.image.std),
    }


def model_config_for(config: PretrainConfig, manifest: Manifest, text: Checkpoint | None = None,
                     vision: Checkpoint | None = None) -> ModelConfig:
    """The preset sized to the cache, reshaped like the pretrained weights if any are imported."""
    geometry = cache_geometry(manifest)
    cfg = make_config(config.preset, **{**config.model_overrides, **geometry})
    if text is not None:
        cfg = text_config_from(text, cfg)
    if vision is not None:
        cfg = vision_config_from(vision, cfg)
        if cfg.vision.patch_size != geometry["patch_size"]:
            raise VlpipeError(
                f"{config.vision_init} has {cfg.vision.patch_size}px patches but the cache {config.cache} "
                f"has {geometry['patch_size']}px; rebuild the cache with --patch-size {cfg.vision.patch_size}"
            )
    return cfg


def build_pretrain_model(config: PretrainConfig, manifest: Manifest) -> nn.Module:
    """Build the model for a run and load pretrained text/vision weights when asked (each file read once)."""
    text = read_checkpoint(config.text_init) if config.text_init else None
    vision = read_checkpoint(config.vision_init) if config.vision_init else None
    model = build_model(model_config_for(config, manifest, text, vision))
    if text is not None:
        load_text_weights(model, text)
    if vision is not None:
        load_vision_weights(model, vision)
    return model


def make_optimizer(model: nn.Module, config: OptimSettings, device: torch.device) -> torch.optim.AdamW:
    """AdamW without weight decay on biases, norms and other 1-d tensors (as BERT and ViT do).

    The fused CUDA kernel updates all parameters in a few launches instead of several per tensor.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), fused=device.type == "cuda")


def make_loader(dataset: CacheDataset, sampler: CacheSampler, config: OptimSettings,
                device: torch.device) -> CacheLoader:
    """Ring-buffer loader; pinned memory on GPU so host-to-device copies overlap compute."""
    return CacheLoader(dataset, batch_size=config.batch_size, sampler=sampler, mode=config.loader_mode,
                       workers=config.workers, pin_memory=device.type == "cuda", drop_last=True)
