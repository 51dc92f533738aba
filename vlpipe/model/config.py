"""Model configuration as plain dataclasses, the three presets, and how overrides are routed.

A config is data: `ModelConfig.to_dict()` is JSON-ready and `ModelConfig.from_dict()` rebuilds it,
so a training run can save the exact architecture next to its weights and rebuild it from there.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from vlpipe.errors import VlpipeError
from vlpipe.utils.typecheck import coerce, describe, matches

# OpenAI CLIP statistics, the cache's default too (see docs/cache-format.md).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VisionConfig:
    """The ViT image stream: pre-LN blocks over uint8 patches from the cache."""

    image_size: int = 224
    patch_size: int = 16
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    mlp_hidden: int = 3072
    dropout: float = 0.1
    attn_dropout: float = 0.1
    norm_eps: float = 1e-6  # timm's ViTs; open_clip uses 1e-5 (the importer sets it)
    act: str = "gelu"
    pre_norm: bool = False  # a LayerNorm before the first block (open_clip's ln_pre)
    pixel_mean: tuple[float, float, float] = CLIP_MEAN
    pixel_std: tuple[float, float, float] = CLIP_STD

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * 3


@dataclass
class TextConfig:
    """The BERT text stream (post-LN, so Hugging Face BERT checkpoints load unchanged)."""

    vocab_size: int = 30522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_len: int = 512  # number of position embeddings
    type_vocab_size: int = 2
    dropout: float = 0.1
    attn_dropout: float = 0.1
    norm_eps: float = 1e-12
    act: str = "gelu"


@dataclass
class CoAttentionConfig:
    """Where and how wide the bi-directional cross-attention layers are (ViLBERT's "connection" layers).

    Co-attention layer `i` runs after text layers `[.., text_layers[i])` and image layers
    `[.., image_layers[i])` have run, exactly like `t_biattention_id` / `v_biattention_id` in
    vilbert-multi-task; the remaining layers of each stream run after the last one.
    """

    text_layers: tuple[int, ...] = (6, 7, 8, 9, 10, 11)
    image_layers: tuple[int, ...] = (6, 7, 8, 9, 10, 11)
    hidden: int = 768
    heads: int = 12
    text_intermediate: int = 3072
    image_intermediate: int = 3072
    dropout: float = 0.1
    attn_dropout: float = 0.1


@dataclass
class HeadsConfig:
    """The pretraining heads: MLM (tied), alignment (one logit per pair) and MIM projection."""

    align: str = "product"  # "product" (ViLBERT) or "concat"
    mim_dim: int = 256
    dropout: float = 0.1


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    coattn: CoAttentionConfig = field(default_factory=CoAttentionConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    grad_checkpointing: bool = False  # recompute block activations in backward: less memory, ~30% slower

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return apply_overrides(cls(), d)

    def validate(self) -> None:
        """Catch the mistakes that would otherwise surface as a shape error deep in a forward pass."""
        v, t, c = self.vision, self.text, self.coattn
        for section in _SECTIONS:
            _check_ranges(section, getattr(self, section))
        if v.image_size % v.patch_size:
            raise VlpipeError(f"image_size {v.image_size} is not a multiple of patch_size {v.patch_size}")
        for name, hidden, heads in (("vision", v.hidden, v.heads), ("text", t.hidden, t.heads),
                                    ("coattn", c.hidden, c.heads)):
            if hidden % heads:
                raise VlpipeError(f"{name} hidden size {hidden} is not divisible by its {heads} heads")
        if len(c.text_layers) != len(c.image_layers):
            raise VlpipeError(f"coattn.text_layers {c.text_layers} and coattn.image_layers "
                              f"{c.image_layers} must have the same length (one pair per co-attention layer)")
        for name, ids, n in (("text", c.text_layers, t.layers), ("image", c.image_layers, v.layers)):
            if list(ids) != sorted(ids) or any(i < 0 or i > n for i in ids):
                raise VlpipeError(f"coattn.{name}_layers {ids} must be increasing and within 0..{n}")
        if self.heads.align not in ("product", "concat"):
            raise VlpipeError(f"heads.align must be 'product' or 'concat', not {self.heads.align!r}")
        for name, cfg in (("vision", v), ("text", t)):
            if cfg.act not in ACTIVATIONS:
                raise VlpipeError(f"{name}.act {cfg.act!r} is not one of {sorted(ACTIVATIONS)}")


ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")

_SECTIONS = {"vision": VisionConfig, "text": TextConfig, "coattn": CoAttentionConfig, "heads": HeadsConfig}

PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to train in seconds on 2 CPU cores; every code path of the big models is exercised.
    "tiny": {
        "vision": {"image_size": 64, "patch_size": 8, "hidden": 64, "layers": 2, "heads": 2, "mlp_hidden": 128},
        "text": {"vocab_size": 1024, "hidden": 64, "layers": 2, "heads": 2, "intermediate": 128, "max_len": 64},
        "coattn": {"text_layers": (1,), "image_layers": (1,), "hidden": 64, "heads": 2,
                   "text_intermediate": 128, "image_intermediate": 128},
        "heads": {"mim_dim": 32},
    },
    # What the thesis trained: ViT-B/16 + BERT-base, co-attention interleaved with the last 6 layers of both.
    "base": {},
    # vilbert-multi-task's layout: text 12 x 768; vision 6 x 1024 (8 heads); 6 co-attention layers
    # (1024 wide, 8 heads) before each vision layer and before text layers 6..11.
    "vilbert": {
        "vision": {"hidden": 1024, "layers": 6, "heads": 8, "mlp_hidden": 1024},
        "coattn": {"text_layers": (6, 7, 8, 9, 10, 11), "image_layers": (0, 1, 2, 3, 4, 5),
                   "hidden": 1024, "heads": 8, "text_intermediate": 3072, "image_intermediate": 1024},
    },
}

# Flat keys that are unambiguous; "dropout" and "attn_dropout" go to every section that has them.
_FLAT = {"vocab_size": "text", "max_len": "text", "type_vocab_size": "text",
         "image_size": "vision", "patch_size": "vision", "pixel_mean": "vision", "pixel_std": "vision",
         "align": "heads", "mim_dim": "heads"}
_EVERYWHERE = ("dropout", "attn_dropout")


# Sizes that must be >= 1 and counts that may be 0, per section; everything named "*dropout" is a
# probability in [0, 1). Checked in `ModelConfig.validate`, so a negative size is named before it
# surfaces as a confusing layer-index or shape error.
_POSITIVE = ("image_size", "patch_size", "hidden", "heads", "mlp_hidden", "vocab_size", "intermediate",
             "max_len", "type_vocab_size", "text_intermediate", "image_intermediate", "mim_dim")
_NON_NEGATIVE = ("layers",)


def _check_ranges(section: str, obj: Any) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in _POSITIVE and value < 1:
            raise VlpipeError(f"model option {section}.{f.name} must be >= 1, got {value}")
        if f.name in _NON_NEGATIVE and value < 0:
            raise VlpipeError(f"model option {section}.{f.name} must be >= 0, got {value}")
        if f.name.endswith("dropout") and not 0 <= value < 1:
            raise VlpipeError(f"model option {section}.{f.name} must be in [0, 1), got {value}")
        if f.name == "norm_eps" and not value > 0:
            raise VlpipeError(f"model option {section}.{f.name} must be > 0, got {value}")


def _typed(value: Any, expected: Any, given: str) -> Any:
    """`value` checked against the option's annotation and converted to its type, or a one-line error.

    Overrides come from `--model KEY=VALUE` (where anything that is not a number is text) and from
    JSON, so `text_layers=abc` must be refused here, naming the option as the user wrote it.
    """
    if not matches(value, expected):
        raise VlpipeError(f"model option {given} must be {describe(expected)}, got {value!r}")
    return coerce(value, expected)


def _set(section_obj: Any, section: str, key: str, value: Any, given: str | None = None) -> None:
    names = {f.name for f in dataclasses.fields(section_obj)}
    if key not in names:
        raise VlpipeError(f"unknown model option {section}.{key}; valid: {', '.join(sorted(names))}")
    expected = typing.get_type_hints(type(section_obj))[key]
    setattr(section_obj, key, _typed(value, expected, given or f"{section}.{key}"))


def apply_overrides(cfg: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    """Return a copy of `cfg` with overrides applied.

    Accepted forms: nested dicts (`text={"layers": 4}`), section-prefixed flat keys
    (`text_layers=4`, `vision_hidden=384`, `coattn_heads=8`), unambiguous flat keys (`vocab_size`,
    `image_size`, `patch_size`, `max_len`, `pixel_mean`, `pixel_std`, `align`, `mim_dim`), and
    `dropout` / `attn_dropout`, which set every section's value at once.
    """
    cfg = _copy(cfg)
    for key, value in overrides.items():
        if key in _SECTIONS:
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = dataclasses.asdict(value)
            if not isinstance(value, dict):
                raise VlpipeError(f"model option {key} must be a table/object of {key} settings, got {value!r}")
            for sub_key, sub_value in value.items():
                _set(getattr(cfg, key), key, sub_key, sub_value)
        elif key == "grad_checkpointing":
            cfg.grad_checkpointing = _typed(value, bool, key)
        elif key in _FLAT:
            _set(getattr(cfg, _FLAT[key]), _FLAT[key], key, value, given=key)
        elif key in _EVERYWHERE:
            for section in _SECTIONS:
                if hasattr(getattr(cfg, section), key):
                    setattr(getattr(cfg, section), key, _typed(value, float, key))
        elif "_" in key and key.split("_", 1)[0] in _SECTIONS:
            section, sub_key = key.split("_", 1)
            _set(getattr(cfg, section), section, sub_key, value, given=key)
        else:
            raise VlpipeError(f"unknown model option {key!r}; use a section prefix "
                              f"({', '.join(s + '_' for s in _SECTIONS)}) or one of "
                              f"{', '.join(sorted([*_FLAT, *_EVERYWHERE, 'grad_checkpointing']))}")
    cfg.validate()
    return cfg


def _copy(cfg: ModelConfig) -> ModelConfig:
    return ModelConfig(**{name: dataclasses.replace(getattr(cfg, name)) for name in _SECTIONS},
                       grad_checkpointing=cfg.grad_checkpointing)


def make_config(preset: str = "base", **overrides: Any) -> ModelConfig:
    """A preset's config with `overrides` applied (the same keys `build_model` accepts)."""
    if preset not in PRESETS:
        raise VlpipeError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = apply_overrides(ModelConfig(), PRESETS[preset])
    return apply_overrides(cfg, overrides)
