"""The lean vision-language model: ViT on uint8 patches + BERT + ViLBERT co-attention.

    from vlpipe.model import build_model
    model = build_model("tiny", {"text.vocab_size": 8000, "vision.image_size": 64, "vision.patch_size": 8})
    out = model(images_u8, input_ids, attention_mask)

See docs/model.md for the architecture, the presets and importing pretrained weights.
"""

from vlpipe.model.config import (
    PRESETS,
    CoAttentionConfig,
    HeadsConfig,
    ModelConfig,
    TextConfig,
    VisionConfig,
    make_config,
)
from vlpipe.model.importers import (
    Checkpoint,
    load_text_weights,
    load_vision_weights,
    read_checkpoint,
    text_config_from,
    vision_config_from,
)
from vlpipe.model.vilbert import ModelOutput, ViLBERT, build_model

__all__ = [
    "PRESETS",
    "Checkpoint",
    "CoAttentionConfig",
    "HeadsConfig",
    "ModelConfig",
    "ModelOutput",
    "TextConfig",
    "ViLBERT",
    "VisionConfig",
    "build_model",
    "load_text_weights",
    "load_vision_weights",
    "make_config",
    "read_checkpoint",
    "text_config_from",
    "vision_config_from",
]
