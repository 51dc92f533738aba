"""The model's settings, each declared once (vlpipe/settings.py), the three presets, and overrides.

A config is data: `ModelConfig.to_dict()` is JSON-ready and `ModelConfig.from_dict()` rebuilds it,
so a training run saves the exact architecture next to its weights and rebuilds it from there.
Overrides have one spelling, a dotted key per setting (`text.layers=4`, `coattn.text_layers=[1,2]`),
on the command line (`--model`), in config files and in Python (`make_config("tiny", {...})`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationError, model_validator

from vlpipe.errors import VlpipeError
from vlpipe.imaging import CLIP_MEAN, CLIP_STD
from vlpipe.settings import Settings, explain, setting, validating

Activation = Literal["gelu", "gelu_tanh", "quick_gelu"]
# How a head joins the pooled text and image vectors: ViLBERT's element-wise product, or concatenation.
FUSIONS = ("product", "concat")
Dropout = dict(ge=0, lt=1)  # torch's dropout accepts p = 1, which zeroes everything


class VisionConfig(Settings):
    """The ViT image stream: pre-LN blocks over uint8 patches from the cache."""

    image_size: int = setting(224, "Image side in pixels (the cache's).", ge=1)
    patch_size: int = setting(16, "Patch side in pixels (the cache's).", ge=1)
    hidden: int = setting(768, "Width of the image stream.", ge=1)
    layers: int = setting(12, "Transformer blocks.", ge=0)
    heads: int = setting(12, "Attention heads per block.", ge=1)
    mlp_hidden: int = setting(3072, "Hidden width of each block's MLP.", ge=1)
    dropout: float = setting(0.1, "Dropout after attention and MLP.", **Dropout)
    attn_dropout: float = setting(0.1, "Dropout on attention weights.", **Dropout)
    norm_eps: float = setting(1e-6, "LayerNorm epsilon (timm's ViTs; open_clip's 1e-5 is set on import).", gt=0)
    act: Activation = setting("gelu", "MLP activation.")
    pre_norm: bool = setting(False, "A LayerNorm before the first block (open_clip's ln_pre).")
    pixel_mean: tuple[float, float, float] = setting(CLIP_MEAN, "Per-channel mean the model normalizes with.")
    pixel_std: tuple[float, float, float] = setting(CLIP_STD, "Per-channel std the model normalizes with.")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * 3


class TextConfig(Settings):
    """The BERT text stream (post-LN, so Hugging Face BERT checkpoints load unchanged)."""

    vocab_size: int = setting(30522, "Token ids (the cache's tokenizer).", ge=1)
    hidden: int = setting(768, "Width of the text stream.", ge=1)
    layers: int = setting(12, "Transformer layers.", ge=0)
    heads: int = setting(12, "Attention heads per layer.", ge=1)
    intermediate: int = setting(3072, "Hidden width of each layer's MLP.", ge=1)
    max_len: int = setting(512, "Position embeddings (at least the cache's text length).", ge=1)
    type_vocab_size: int = setting(2, "Token type embeddings (BERT's segments).", ge=1)
    dropout: float = setting(0.1, "Dropout after embeddings, attention and MLP.", **Dropout)
    attn_dropout: float = setting(0.1, "Dropout on attention weights.", **Dropout)
    norm_eps: float = setting(1e-12, "LayerNorm epsilon (BERT's).", gt=0)
    act: Activation = setting("gelu", "MLP activation.")


class CoAttentionConfig(Settings):
    """Where and how wide the bi-directional cross-attention layers are (ViLBERT's "connection" layers).

    Co-attention layer `i` runs after text layers `[.., text_layers[i])` and image layers
    `[.., image_layers[i])` have run, exactly like `t_biattention_id` / `v_biattention_id` in
    vilbert-multi-task; the remaining layers of each stream run after the last one.
    """

    text_layers: tuple[int, ...] = setting((6, 7, 8, 9, 10, 11), "Text layer before which each co-attention "
                                           "layer runs (early fusion: small numbers; late: large).")
    image_layers: tuple[int, ...] = setting((6, 7, 8, 9, 10, 11), "Image layer before which each co-attention "
                                            "layer runs; one per text_layers entry.")
    hidden: int = setting(768, "Width of the cross-attention.", ge=1)
    heads: int = setting(12, "Cross-attention heads.", ge=1)
    text_intermediate: int = setting(3072, "MLP width on the text side.", ge=1)
    image_intermediate: int = setting(3072, "MLP width on the image side.", ge=1)
    dropout: float = setting(0.1, "Dropout after attention and MLP.", **Dropout)
    attn_dropout: float = setting(0.1, "Dropout on attention weights.", **Dropout)


class HeadsConfig(Settings):
    """The pretraining heads: MLM (tied), alignment (one logit per pair) and MIM projection."""

    align: Literal[FUSIONS] = setting("product",  # type: ignore[valid-type] "How the alignment head joins pooled text and "
                                                  "image: ViLBERT's element-wise product, or concatenation.")
    mim_dim: int = setting(256, "Width of the space where masked patches meet their targets.", ge=1)
    dropout: float = setting(0.1, "Dropout before the alignment classifier.", **Dropout)


SECTIONS: dict[str, type[Settings]] = {"vision": VisionConfig, "text": TextConfig, "coattn": CoAttentionConfig,
                                       "heads": HeadsConfig}


class ModelConfig(Settings):
    vision: VisionConfig = setting(factory=VisionConfig, help="The image stream.")
    text: TextConfig = setting(factory=TextConfig, help="The text stream.")
    coattn: CoAttentionConfig = setting(factory=CoAttentionConfig, help="The co-attention layers.")
    heads: HeadsConfig = setting(factory=HeadsConfig, help="The pretraining heads.")
    grad_checkpointing: bool = setting(False, "Recompute block activations in backward: less memory, ~30% slower.")

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        """Catch the mistakes that would otherwise surface as a shape error deep in a forward pass."""
        v, t, c = self.vision, self.text, self.coattn
        if v.image_size % v.patch_size:
            raise ValueError(f"image_size {v.image_size} is not a multiple of patch_size {v.patch_size}")
        for name, hidden, heads in (("vision", v.hidden, v.heads), ("text", t.hidden, t.heads),
                                    ("coattn", c.hidden, c.heads)):
            if hidden % heads:
                raise ValueError(f"{name} hidden size {hidden} is not divisible by its {heads} heads")
        if len(c.text_layers) != len(c.image_layers):
            raise ValueError(f"coattn.text_layers {list(c.text_layers)} and coattn.image_layers "
                             f"{list(c.image_layers)} must have the same length (one pair per co-attention layer)")
        for name, ids, n in (("text", c.text_layers, t.layers), ("image", c.image_layers, v.layers)):
            if list(ids) != sorted(ids) or any(i < 0 or i > n for i in ids):
                raise ValueError(f"coattn.{name}_layers {list(ids)} must be increasing and within 0..{n}")
        return self

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """A config saved by `to_dict()` (nested sections), e.g. a run's config.json.

        Runs saved before vlpipe 0.2 carry `vision.proj_dim` (open_clip's image projection, which
        the model no longer builds): it is dropped, so `finetune --init` still takes those runs.
        """
        values = dict(values)
        if isinstance(values.get("vision"), dict):
            values["vision"] = {k: v for k, v in values["vision"].items() if k != "proj_dim"}
        return _validated(values)


PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to train in seconds on 2 CPU cores; every code path of the big models is exercised.
    "tiny": {
        "vision.image_size": 64, "vision.patch_size": 8, "vision.hidden": 64, "vision.layers": 2,
        "vision.heads": 2, "vision.mlp_hidden": 128,
        "text.vocab_size": 1024, "text.hidden": 64, "text.layers": 2, "text.heads": 2, "text.intermediate": 128,
        "text.max_len": 64,
        "coattn.text_layers": (1,), "coattn.image_layers": (1,), "coattn.hidden": 64, "coattn.heads": 2,
        "coattn.text_intermediate": 128, "coattn.image_intermediate": 128,
        "heads.mim_dim": 32,
    },
    # What the thesis trained: ViT-B/16 + BERT-base, co-attention interleaved with the last 6 layers of both.
    "base": {},
    # vilbert-multi-task's layout: text 12 x 768; vision 6 x 1024 (8 heads); 6 co-attention layers
    # (1024 wide, 8 heads) before each vision layer and before text layers 6..11.
    "vilbert": {
        "vision.hidden": 1024, "vision.layers": 6, "vision.heads": 8, "vision.mlp_hidden": 1024,
        "coattn.text_layers": (6, 7, 8, 9, 10, 11), "coattn.image_layers": (0, 1, 2, 3, 4, 5),
        "coattn.hidden": 1024, "coattn.heads": 8, "coattn.text_intermediate": 3072,
        "coattn.image_intermediate": 1024,
    },
}

# Flat spellings of earlier versions, refused with their dotted form.
OLD_FLAT_KEYS = {"vocab_size": "text", "max_len": "text", "type_vocab_size": "text", "image_size": "vision",
                 "patch_size": "vision", "pixel_mean": "vision", "pixel_std": "vision", "align": "heads",
                 "mim_dim": "heads"}


def check_override_keys(overrides: Mapping[str, Any]) -> None:
    """Every key is a dotted model option (`text.layers`) with a value of its type and range; older
    spellings are refused with the right one. Checks across options (co-attention placement within
    the layers) need the whole config and happen when it is built.

    Raises ValueError (settings validation turns it into a one-line error naming the flag or file).
    """
    for key, value in overrides.items():
        problem = _key_problem(key)
        if problem:
            raise ValueError(problem)
        section, dot, name = key.partition(".")
        checked, values, prefix = (SECTIONS[section], {name: value}, f"{section}.") if dot else (ModelConfig, {key: value}, "")
        try:
            with validating():
                checked.model_validate(values)
        except ValidationError as exc:
            raise ValueError(explain(exc, checked, "model option", prefix=prefix).removeprefix("model option: ")) from None


def _key_problem(key: str) -> str | None:
    """Why `key` is not a model option (None when it is one)."""
    section, dot, name = key.partition(".")
    if dot and section in SECTIONS:
        if name not in SECTIONS[section].model_fields:
            return f"unknown model option {key}; valid: " + ", ".join(f"{section}.{n}" for n in SECTIONS[section].model_fields)
        return None
    return None if key == "grad_checkpointing" else f"unknown model option {key!r}; {_hint(key)}"


def every_dropout(p: float, kinds: tuple[str, ...] = ("dropout", "attn_dropout")) -> dict[str, float]:
    """Overrides that set each section's dropout of these kinds to `p` (e.g. 0 for a learning test)."""
    return {f"{s}.{kind}": p for s, c in SECTIONS.items() for kind in kinds if kind in c.model_fields}


def _hint(key: str) -> str:
    """The dotted spelling of an option written the old ways (`text_layers`, `vocab_size`, `dropout`)."""
    section, _, name = key.partition("_")
    if section in SECTIONS and name in SECTIONS[section].model_fields:
        return f"write it as {section}.{name}"
    if key in OLD_FLAT_KEYS:
        return f"write it as {OLD_FLAT_KEYS[key]}.{key}"
    if key in ("dropout", "attn_dropout"):
        return "set each section's own: " + ", ".join(f"{s}.{key}" for s, c in SECTIONS.items() if key in c.model_fields)
    return "options are dotted: " + ", ".join(f"{s}.NAME" for s in SECTIONS) + " or grad_checkpointing"


def apply_overrides(cfg: ModelConfig, overrides: Mapping[str, Any]) -> ModelConfig:
    """A copy of `cfg` with dotted-key `overrides` applied and the result validated."""
    for key in overrides:
        problem = _key_problem(key)
        if problem:
            raise VlpipeError(problem)
    values = cfg.model_dump()
    for key, value in overrides.items():
        section, dot, name = key.partition(".")
        if dot:
            values[section][name] = value
        else:
            values[key] = value
    return _validated(values)


def _validated(values: dict[str, Any]) -> ModelConfig:
    try:
        with validating():
            return ModelConfig.model_validate(values)
    except ValidationError as exc:
        raise VlpipeError(explain(exc, ModelConfig, "model option", dotted=True)) from None


def make_config(preset: str = "base", overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    """A preset's config with dotted-key `overrides` applied (the keys `build_model` accepts)."""
    if preset not in PRESETS:
        raise VlpipeError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return apply_overrides(apply_overrides(ModelConfig(), PRESETS[preset]), overrides or {})
