"""Which model a run trains: the preset sized to the cache, imported weights, a pretraining run's config.

The cache dictates part of the architecture (vocabulary, text length, patch grid, pixel
statistics); the rest comes from the preset and `--model` overrides, or, for fine-tuning from a
pretraining run, from that run's own saved model config, which must then fit the cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from vlpipe.cache.format import Manifest
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
from vlpipe.model.config import apply_overrides
from vlpipe.train.config import FinetuneConfig, PretrainConfig

# The model options a pretraining run must share with the cache it is fine-tuned on.
GEOMETRY_KEYS = ("text.vocab_size", "text.max_len", "vision.image_size", "vision.patch_size")


def cache_geometry(manifest: Manifest) -> dict[str, Any]:
    """Model options dictated by the cache: vocabulary, sequence length, patch grid, pixel statistics."""
    return {
        "text.vocab_size": manifest.text.vocab_size,
        "text.max_len": manifest.text.max_len,
        "vision.image_size": manifest.image.image_size,
        "vision.patch_size": manifest.image.patch_size,
        "vision.pixel_mean": tuple(manifest.image.mean),
        "vision.pixel_std": tuple(manifest.image.std),
    }


def model_config_for(config: PretrainConfig, manifest: Manifest, text: Checkpoint | None = None,
                     vision: Checkpoint | None = None) -> ModelConfig:
    """The preset sized to the cache, reshaped like the pretrained weights if any are imported."""
    geometry = cache_geometry(manifest)
    cfg = make_config(config.preset, {**config.model_overrides, **geometry})
    if text is not None:
        cfg = text_config_from(text, cfg)
    if vision is not None:
        cfg = vision_config_from(vision, cfg)
        if cfg.vision.patch_size != geometry["vision.patch_size"]:
            raise VlpipeError(
                f"{config.vision_init} has {cfg.vision.patch_size}px patches but the cache {config.cache} "
                f"has {geometry['vision.patch_size']}px; rebuild the cache with --patch-size {cfg.vision.patch_size}"
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


def model_config_for_finetune(config: FinetuneConfig, manifest: Manifest, checkpoint: Path | None) -> ModelConfig:
    """From scratch: the preset sized to the cache. From a pretraining `checkpoint`: that run's own model
    config, whose geometry must match the cache (same tokenizer vocabulary, text length, image and patch size)."""
    geometry = cache_geometry(manifest)
    if checkpoint is None:
        return make_config(config.preset, {**config.model_overrides, **geometry})
    try:
        saved = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))["model"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VlpipeError(f"{checkpoint}/config.json has no model config ({exc})") from exc
    if not isinstance(saved, dict):
        raise VlpipeError(f"{checkpoint}/config.json: 'model' must be an object, got {type(saved).__name__}")
    try:
        cfg = ModelConfig.from_dict(saved)
    except VlpipeError as exc:
        raise VlpipeError(f"{checkpoint}/config.json: {exc}") from None
    have = {"text.vocab_size": cfg.text.vocab_size, "text.max_len": cfg.text.max_len,
            "vision.image_size": cfg.vision.image_size, "vision.patch_size": cfg.vision.patch_size}
    wrong = [f"{k} {have[k]} vs {geometry[k]}" for k in GEOMETRY_KEYS if have[k] != geometry[k]]
    if wrong:
        raise VlpipeError(f"--init {config.init} does not fit the cache {config.cache} ({', '.join(wrong)}); "
                          "build the cache with the pretraining cache's tokenizer and sizes")
    return apply_overrides(cfg, config.model_overrides)
