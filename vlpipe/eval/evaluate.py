"""`vlpipe eval RUN`: judge a pretraining run the way papers do, beyond its own training losses.

Two evaluations of the run's latest checkpoint, each optional, written together to `RUN/eval.json`
(atomically; a rerun replaces it) and read by `vlpipe report`:

- zero-shot retrieval (`--cache`): R@1/5/10 image -> text and text -> image on a captions cache's
  validation split, ranked by the alignment head (vlpipe/eval/retrieval.py), with chance levels;
- linear probe (`--probe-cache`): logistic regression on frozen pooled features (text, image,
  fused) of a labelled cache, train split -> val split, for the run's weights and for a randomly
  initialised model of the same architecture (vlpipe/eval/probe.py).

Both caches must have the run's geometry (tokenizer, text length, image and patch size): build
them with the pretraining cache's `tokenizer.json` and sizes, as for fine-tuning.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import field_validator, model_validator
from safetensors.torch import load_file

from vlpipe.cache.format import Manifest, load_manifest
from vlpipe.cache.reader import CacheDataset
from vlpipe.errors import VlpipeError
from vlpipe.eval.probe import FEATURES, fit_probe, pooled_features
from vlpipe.eval.retrieval import pair_scores, retrieval_metrics, same_caption
from vlpipe.model import ModelConfig, build_model
from vlpipe.model.vilbert import ViLBERT
from vlpipe.settings import Settings, setting
from vlpipe.train.classifier import pretrain_checkpoint
from vlpipe.train.compare import EVAL_FILE, chance_levels
from vlpipe.train.config import Device
from vlpipe.train.loop import precision_context
from vlpipe.train.metrics_log import json_number
from vlpipe.train.model_setup import GEOMETRY_KEYS, cache_geometry
from vlpipe.utils.atomic import write_json_atomic


class EvalConfig(Settings):
    """What `vlpipe eval RUN` evaluates and how (RUN itself is an argument, not a setting)."""

    cache: str | None = setting(None, "Captions cache for zero-shot retrieval (its --split is ranked).",
                                metavar="DIR")
    split: Literal["train", "val", "test"] = setting("val", "Split of --cache to rank.")
    max_samples: int = setting(
        1000, "Retrieval ranks N x N pairs, each a forward pass of the whole model: N = min(this, the split's "
        "size), spread evenly over the split. Cost grows as N^2: 1000 -> 1M pair forwards; the tiny demo model "
        "ranked ~500 pairs/s on one CPU core (1000: about half an hour; 300: 3 min); use a GPU for more.", ge=2)
    ks: tuple[int, ...] = setting((1, 5, 10), "The K of R@K.", flag="--k", metavar="K[,K...]", min_length=1)
    probe_cache: str | None = setting(None, "Labelled cache for the linear probe (train split -> val split).",
                                      metavar="DIR")
    probe_c: float = setting(1.0, "Inverse L2 strength of the probe's logistic regression.", gt=0,
                             allow_inf_nan=False)
    seed: int = setting(0, "Seeds the randomly initialised model the probe is compared with.")
    batch_size: int = setting(256, "Pairs (retrieval) or samples (probe features) per forward pass.", ge=1)
    device: Device = setting("auto", "auto (a GPU when there is one) | cpu | cuda | cuda:N.")
    precision: Literal["auto", "bf16", "fp32"] = setting("auto", "auto: bf16 autocast on GPU, fp32 on CPU.")

    @field_validator("ks")
    @classmethod
    def _positive(cls, ks: tuple[int, ...]) -> tuple[int, ...]:
        if any(k < 1 for k in ks):
            raise ValueError(f"must be >= 1, got {list(ks)}")
        return ks

    @model_validator(mode="after")
    def _something(self) -> EvalConfig:
        if self.cache is None and self.probe_cache is None:
            raise ValueError("give --cache (zero-shot retrieval), --probe-cache (linear probe) or both")
        return self


def load_run_model(run: str | Path) -> tuple[ViLBERT, Path]:
    """The pretraining run's model with the weights of its latest checkpoint, and that checkpoint."""
    checkpoint = pretrain_checkpoint(run)
    try:
        saved = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))["model"]
        model = build_model(ModelConfig.from_dict(saved))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VlpipeError(f"{checkpoint}/config.json has no model config ({exc})") from exc
    except VlpipeError as exc:
        raise VlpipeError(f"{checkpoint}/config.json: {exc}") from None
    weights = load_file(str(checkpoint / "model.safetensors"))
    mismatch = set(weights) ^ set(model.state_dict())
    if mismatch:
        raise VlpipeError(f"{checkpoint}/model.safetensors does not fit its config.json: "
                          f"{', '.join(sorted(mismatch)[:5])} differ; is {run} a pretraining run?")
    model.load_state_dict(weights, strict=True)
    return model, checkpoint


def check_geometry(model: ViLBERT, manifest: Manifest, flag: str, cache: str) -> None:
    """The cache must be tokenized and patchified as the run's own cache was."""
    c = model.config
    have = {"text.vocab_size": c.text.vocab_size, "text.max_len": c.text.max_len,
            "vision.image_size": c.vision.image_size, "vision.patch_size": c.vision.patch_size}
    geometry = cache_geometry(manifest)
    wrong = [f"{k} {have[k]} vs {geometry[k]}" for k in GEOMETRY_KEYS if have[k] != geometry[k]]
    if wrong:
        raise VlpipeError(f"{flag} {cache} does not fit the run's model ({', '.join(wrong)}); build it with the "
                          "pretraining cache's tokenizer.json, --image-size, --patch-size and --max-len")


def evaluate_run(run: str | Path, config: EvalConfig) -> dict[str, Any]:
    """Run the asked evaluations on the latest checkpoint of pretraining run `run`; returns what
    RUN/eval.json holds."""
    model, checkpoint = load_run_model(run)
    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else
                          "cpu" if config.device == "auto" else config.device)
    autocast, precision = precision_context(config.precision, device)
    model.to(device)
    result: dict[str, Any] = {"run": str(Path(run).resolve()), "checkpoint": checkpoint.name,
                              "device": str(device), "precision": precision, "settings": config.to_dict()}
    if config.cache is not None:
        result["retrieval"] = _retrieval(model, run, checkpoint, config.cache, config, device, autocast)
    if config.probe_cache is not None:
        result["probe"] = _probe(model, config.probe_cache, config, device, autocast)
    write_json_atomic(Path(run) / EVAL_FILE, result)
    return result


def _retrieval(model: ViLBERT, run: str | Path, checkpoint: Path, cache: str, config: EvalConfig,
               device: torch.device, autocast: Any) -> dict[str, Any]:
    tasks = _trained_tasks(checkpoint)
    if tasks is not None and "ap" not in tasks:
        raise VlpipeError(f"{run} was trained without alignment prediction (tasks {','.join(tasks)}), so its "
                          "alignment head ranks at random; evaluate it with --probe-cache only")
    manifest = load_manifest(cache)
    check_geometry(model, manifest, "--cache", cache)
    if manifest.splits.get(config.split, 0) < 2:
        raise VlpipeError(f"--cache {cache}: the {config.split} split has "
                          f"{manifest.splits.get(config.split, 0)} samples; retrieval needs at least 2")
    dataset = CacheDataset(cache, split=config.split)
    n = min(config.max_samples, len(dataset))
    picked = np.unique(np.linspace(0, len(dataset) - 1, n).round().astype(np.int64)).tolist()
    batch = {k: v.clone() for k, v in dataset.__getitems__(picked).items()}
    began = time.perf_counter()
    scores = pair_scores(model, batch["images"], batch["input_ids"], batch["lengths"],
                         batch_size=config.batch_size, device=device, autocast=autocast)
    metrics = retrieval_metrics(scores, same_caption(batch["input_ids"], batch["lengths"]), config.ks)
    return {"cache": str(Path(cache).resolve()), "split": config.split, "n": len(picked),
            "of": len(dataset), "seconds": round(time.perf_counter() - began, 2), **metrics}


def _trained_tasks(checkpoint: Path) -> list[str] | None:
    """The pretraining tasks recorded in the checkpoint's config.json (None when it does not say)."""
    try:
        tasks = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))["pretrain"]["tasks"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(t) for t in tasks] if isinstance(tasks, list) else None


def _probe(model: ViLBERT, cache: str, config: EvalConfig, device: torch.device, autocast: Any) -> dict[str, Any]:
    manifest = load_manifest(cache)
    check_geometry(model, manifest, "--probe-cache", cache)
    if manifest.labels is None:
        raise VlpipeError(f"--probe-cache {cache} has no labels; build it from a labelled dataset")
    if not manifest.splits.get("train") or not manifest.splits.get("val"):
        raise VlpipeError(f"--probe-cache {cache} needs a train and a val split, has {dict(manifest.splits)}")
    task, num_labels = manifest.labels["task"], int(manifest.labels["num_labels"])
    train, val = CacheDataset(cache, split="train"), CacheDataset(cache, split="val")
    torch.manual_seed(config.seed)
    fresh = build_model(model.config).to(device)
    out: dict[str, Any] = {"cache": str(Path(cache).resolve()), "task": task, "n_train": len(train),
                           "n_val": len(val), "chance": chance_levels(task, manifest.labels["counts"]["val"])}
    began = time.perf_counter()
    for name, which in (("pretrained", model), ("random_init", fresh)):
        kwargs = {"batch_size": config.batch_size, "device": device, "autocast": autocast}
        train_x, train_y = pooled_features(which, train, **kwargs)
        val_x, val_y = pooled_features(which, val, **kwargs)
        out[name] = {feature: {k: json_number(v) for k, v in fit_probe(
            task, num_labels, train_x[feature], train_y, val_x[feature], val_y, config.probe_c).items()}
            for feature in FEATURES}
    out["seconds"] = round(time.perf_counter() - began, 2)
    return out
