"""Fine-tuning on a labelled cache: `finetune(config)` trains one run per seed and summarises them.

Each seed is a complete run in `OUT/seed-S/` (config.json, metrics.jsonl, plots/, checkpoints/,
best.safetensors, result.json) built from the pretrain trainer's parts: the warmup-cosine schedule
in optimizer steps, AdamW, bf16/fp32 autocast, torch.compile, safetensors checkpoints with exact
resume, metrics.jsonl, plots and the live view. Training goes epoch by epoch; after each one the
val split is scored, the best weights are kept, and the run stops when the validation metric has
not improved for `patience` epochs. The best weights then give the final val and test metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from vlpipe.cache.format import Manifest, load_manifest
from vlpipe.cache.reader import CacheDataset
from vlpipe.cache.sampler import CacheSampler
from vlpipe.errors import VlpipeError
from vlpipe.model import ModelConfig, build_model, make_config
from vlpipe.train import checkpoint as ckpt
from vlpipe.train.classifier import (
    FUSIONS,
    TASKS,
    Classifier,
    label_weights,
    load_shared_weights,
    loss_terms,
    predict,
    pretrain_checkpoint,
)
from vlpipe.train.config import check_common, check_types, read_config_file
from vlpipe.train.distributed import resolve_device
from vlpipe.train.live import LiveView
from vlpipe.train.metrics import MetricsWriter
from vlpipe.train.model_setup import cache_geometry, make_loader, make_optimizer, precision_context
from vlpipe.train.report import SUMMARY_FILE, json_number, summarize
from vlpipe.train.schedule import WarmupCosine, warmup_steps_for
from vlpipe.train.scores import best_threshold, classification_metrics
from vlpipe.utils.atomic import atomic_path, write_json_atomic

RESULT_FILE = "result.json"
BEST_FILE = "best.safetensors"
# Early-stopping metrics per task; the first is the default.
STOP_METRICS = {"binary": ("auroc", "accuracy"), "multiclass": ("top1", "top5"),
                "multilabel": ("macro_f1_tuned", "micro_f1_tuned", "macro_f1", "micro_f1")}
GEOMETRY_KEYS = ("vocab_size", "max_len", "image_size", "patch_size")


# FinetuneConfig fields (and the run's seed) that decide what a seed run trains: a resume must keep
# them (checkpoint.check_same_recipe). `seeds` may grow: a resume with more seeds adds runs.
RESUME_FIXED = ("init", "preset", "model_overrides", "task", "fusion", "metric", "epochs", "patience", "class_weighted",
                "batch_size", "grad_accum", "lr", "min_lr_ratio", "warmup", "weight_decay", "betas", "grad_clip",
                "head_dropout", "precision", "seed")


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (saved in each seed's config.json)."""

    cache: str = ""
    out: str = ""
    init: str | None = None  # a pretrain run directory; None = from scratch
    preset: str = "tiny"  # from scratch only; with `init` the pretrain run's model config is used
    model_overrides: dict[str, Any] = field(default_factory=dict)
    task: str | None = None  # binary | multiclass | multilabel; None = the cache's labels.task
    fusion: str = "product"
    metric: str | None = None  # early-stopping metric; None = auroc / top1 / macro_f1_tuned
    epochs: int = 10
    patience: int = 3  # epochs without improvement before stopping; 0 = never stop early
    seeds: tuple[int, ...] = (0,)
    class_weighted: bool = False
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr_ratio: float = 0.0
    warmup: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    head_dropout: float = 0.1
    precision: str = "auto"
    compile: bool = False
    device: str = "auto"
    eval_batch_size: int = 64
    log_every: int = 10
    keep_checkpoints: int = 1
    resume: bool = False
    workers: int = 2
    loader_mode: str = "threads"
    live: bool = True
    tensorboard: bool = False
    plots: bool = True

    def validate(self) -> None:
        """Reject impossible settings with a one-line message naming the field, before any work starts.

        Types are checked first (a config built in Python can hold anything), then ranges; the
        optimizer, schedule, device and loader settings are checked as for pretraining.
        """
        check_types(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "config")
        if not self.cache or not self.out:
            raise VlpipeError("config: 'cache' and 'out' are required")
        if self.task is not None and self.task not in TASKS:
            raise VlpipeError(f"config: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.fusion not in FUSIONS:
            raise VlpipeError(f"config: fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise VlpipeError(f"config: seeds must be distinct and at least one, got {list(self.seeds)}")
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise VlpipeError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise VlpipeError(f"config: patience must be >= 0 (0 = never stop early), got {self.patience}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise VlpipeError(f"config: lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.head_dropout < 1:  # torch's dropout accepts p = 1, which zeroes the head's input
            raise VlpipeError(f"config: head_dropout must be in [0, 1), got {self.head_dropout}")
        check_common(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_finetune_config(file: str | os.PathLike[str] | None = None, **overrides: Any) -> FinetuneConfig:
    """File values (a `[finetune]` TOML table or plain keys), then every override that is not None."""
    values = read_config_file(file, table="finetune") if file is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise VlpipeError(f"{file or 'config'}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    if str(values.get("init") or "").lower() == "none":
        values["init"] = None
    check_types(FinetuneConfig, values, str(file or "config"))
    for name in ("seeds", "betas"):
        if name in values:
            values[name] = tuple(values[name])
    config = FinetuneConfig(**values)
    config.validate()
    return config


@dataclass
class FinetuneResult:
    out: Path
    summary: dict[str, Any]  # what summary.json holds


def finetune(config: FinetuneConfig, on_step: Callable[[int, int], None] | None = None) -> FinetuneResult:
    """Train one run per seed into `out/seed-S/` and write `out/summary.json` (mean ± std over seeds).

    `on_step(seed, step)` is called after every optimizer step (tests use it to simulate a crash).
    """
    config.validate()
    out = Path(config.out)
    _check_out(out)
    results = {}
    for seed in config.seeds:
        results[seed] = _SeedRun(config, seed, on_step).run()
    summary = summarize(results, init=config.init, fusion=config.fusion, class_weighted=config.class_weighted)
    write_json_atomic(out / SUMMARY_FILE, summary)
    return FinetuneResult(out, summary)


def _check_out(out: Path) -> None:
    """Refuse an --out that holds anything but a fine-tuning run's own files (seed-S/, summary.json).

    Seed runs and the summary would be written beside someone else's files, or inside a pretraining
    run's folder, mixing two layouts; the seed folders themselves are checked by start_run_dir.
    """
    def own(p: Path) -> bool:
        return p.name == SUMMARY_FILE or (p.is_dir() and re.fullmatch(r"seed-\d+", p.name) is not None)

    ckpt.refuse_foreign_folder(out, own, "a vlpipe fine-tuning run")


def _resolve_task(config: FinetuneConfig, manifest: Manifest) -> tuple[str, int]:
    """The task and the number of logits, checked against what the cache's labels can mean."""
    labels = manifest.labels
    if not labels:
        raise VlpipeError(f"{config.cache} has no labels; build it from a labelled dataset "
                          "(see docs/cache-format.md, 'Labels')")
    stored, num = labels["task"], int(labels["num_labels"])
    task = config.task or stored
    single = {"binary", "multiclass"}
    if task != stored and not (task in single and stored in single and num == 2):
        raise VlpipeError(f"--task {task} does not fit {config.cache}, whose labels are {stored} "
                          f"({num} labels)")
    return task, 1 if task == "binary" else num


def model_config_for_finetune(config: FinetuneConfig, manifest: Manifest) -> tuple[ModelConfig, Path | None]:
    """From scratch: the preset sized to the cache. With `init`: the pretrain run's own model config,
    whose geometry must match the cache (same tokenizer vocabulary, text length, image and patch size)."""
    geometry = cache_geometry(manifest)
    if not config.init:
        return make_config(config.preset, **{**config.model_overrides, **geometry}), None
    checkpoint = pretrain_checkpoint(config.init)
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
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise VlpipeError(f"{checkpoint}/config.json: not a valid model config ({exc})") from None
    have = {"vocab_size": cfg.text.vocab_size, "max_len": cfg.text.max_len,
            "image_size": cfg.vision.image_size, "patch_size": cfg.vision.patch_size}
    wrong = [f"{k} {have[k]} vs {geometry[k]}" for k in GEOMETRY_KEYS if have[k] != geometry[k]]
    if wrong:
        raise VlpipeError(f"--init {config.init} does not fit the cache {config.cache} ({', '.join(wrong)}); "
                          "build the cache with the pretraining cache's tokenizer and sizes")
    if config.model_overrides:
        from vlpipe.model.config import apply_overrides

        cfg = apply_overrides(cfg, config.model_overrides)
    return cfg, checkpoint


class _SeedRun:
    def __init__(self, config: FinetuneConfig, seed: int, on_step: Callable[[int, int], None] | None) -> None:
        self.config, self.seed, self.on_step = config, seed, on_step
        self.run_dir = Path(config.out) / f"seed-{seed}"
        self.device = resolve_device(config.device)
        self.manifest = load_manifest(config.cache)
        self.task, outputs = _resolve_task(config, self.manifest)
        self.metric = config.metric or STOP_METRICS[self.task][0]
        if self.metric not in STOP_METRICS[self.task]:
            raise VlpipeError(f"--metric {self.metric} is not a {self.task} metric; use one of "
                              f"{', '.join(STOP_METRICS[self.task])}")
        self.train_set = CacheDataset(config.cache, split="train")
        if not self.train_set.has_labels:
            raise VlpipeError(f"{config.cache}: the shards have no labels.npy; rebuild the cache")
        self.val_set = CacheDataset(config.cache, split="val") if self.manifest.splits.get("val") else None
        self.test_set = CacheDataset(config.cache, split="test") if self.manifest.splits.get("test") else None
        if self.val_set is None:
            raise VlpipeError(f"{config.cache} has no val split: early stopping and thresholds need one")

        model_cfg, self.init_checkpoint = model_config_for_finetune(config, self.manifest)
        torch.manual_seed(seed)
        self.model = Classifier(build_model(model_cfg), outputs, config.fusion, config.head_dropout)
        self.init_loaded = load_shared_weights(self.model, self.init_checkpoint) if self.init_checkpoint else 0
        self.model.to(self.device)
        self.weights = None
        if config.class_weighted:
            counts = self.manifest.labels["counts"]["train"]  # type: ignore[index]
            if self.task == "binary" and len(counts) != 2:
                raise VlpipeError("--class-weighted with --task binary needs exactly 2 label counts")
            self.weights = label_weights(self.task, counts, len(self.train_set), self.device)
        self.runner: Any = torch.compile(self.model) if config.compile else self.model
        self.optimizer = make_optimizer(self.model, config, self.device)
        self.autocast, self.precision = precision_context(config.precision, self.device)
        self.sampler = CacheSampler(len(self.train_set), shuffle=True, seed=seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // config.batch_size // config.grad_accum
        if self.steps_per_epoch < 1:
            raise VlpipeError(f"{config.cache}: {len(self.train_set)} training samples are too few for "
                              f"batch_size {config.batch_size} x grad_accum {config.grad_accum}")
        self.total_steps = config.epochs * self.steps_per_epoch
        self.schedule = WarmupCosine(config.lr, self.total_steps, warmup_steps_for(self.total_steps, config.warmup),
                                     config.min_lr_ratio)
        self.loader = make_loader(self.train_set, self.sampler, config, self.device)
        # Counters and early-stopping state: everything a checkpoint must restore.
        self.state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "stopped": False,
                                      "total_steps": self.total_steps}
        self.step = 0
        self.last_checkpoint: Path | None = None

    def _full_config(self) -> dict[str, Any]:
        return {"finetune": {**self.config.to_dict(), "seed": self.seed}, "model": self.model.backbone.config.to_dict(),
                "task": self.task, "metric": self.metric, "init_loaded": self.init_loaded,
                "precision": self.precision, "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch}

    def _start(self) -> None:
        existing = ckpt.start_run_dir(self.run_dir, self.config.resume)
        if existing is None:
            return
        state = ckpt.load_checkpoint(existing, model=self.model, teacher=None, optimizer=self.optimizer,
                                     device=self.device)
        if state.get("total_steps") != self.total_steps:
            raise VlpipeError(f"{existing} was made for {state.get('total_steps')} steps but this run has "
                              f"{self.total_steps}; keep --epochs/--batch-size as they were to resume")
        ckpt.check_same_recipe(existing, "finetune", {**self.config.to_dict(), "seed": self.seed}, RESUME_FIXED)
        try:
            self.step = state["step"]
            self.state = {k: state[k] for k in self.state}
        except KeyError as exc:
            raise VlpipeError(f"{existing}/state.json: not a valid checkpoint (missing {exc})") from None
        self.last_checkpoint = existing

    def run(self) -> dict[str, Any]:
        began = time.perf_counter()
        self._start()
        write_json_atomic(self.run_dir / "config.json", self._full_config())
        self.metrics = MetricsWriter(self.run_dir, self.config.tensorboard)
        self.metrics.truncate_after(self.step)
        live = LiveView(self.total_steps, self.step, self.config.live, title=f"finetune seed {self.seed}")
        try:
            while self.state["epoch"] < self.config.epochs and not self.state["stopped"]:
                self._train_epoch(live, began)
                self._end_epoch(live, began)
        finally:
            self.loader.close()  # worker processes of `processes` mode serve every epoch until here
            live.close()
            self.metrics.close()
        result = self._final(began)
        if self.config.plots:
            from vlpipe.train.plots import plot_run

            plot_run(self.run_dir)
        return result

    def _train_epoch(self, live: LiveView, began: float) -> None:
        self.model.train()
        self.sampler.set_epoch(self.state["epoch"])
        window_loss = torch.zeros((), device=self.device)  # a non-finite gradient norm is added in as NaN
        window_micro, window_start = 0, time.perf_counter()
        batches = iter(self.loader)
        try:
            for _ in range(self.steps_per_epoch):
                for _ in range(self.config.grad_accum):
                    batch = next(batches)
                    y = batch["labels"].to(self.device, non_blocking=True)
                    with self.autocast():
                        logits = self.runner(*(batch[k].to(self.device, non_blocking=True)
                                               for k in ("images", "input_ids", "lengths")))
                    part, norm = loss_terms(self.task, logits, y, self.weights)
                    loss = part / norm.clamp(min=1)
                    (loss / self.config.grad_accum).backward()
                    window_loss += loss.detach()
                    window_micro += 1
                self.schedule.apply(self.optimizer, self.step)
                max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm, foreach=True)
                window_loss += torch.where(torch.isfinite(grad_norm), 0.0, float("nan"))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.on_step is not None:
                    self.on_step(self.seed, self.step)
                if self.step % self.config.log_every == 0 or self.step % self.steps_per_epoch == 0:
                    mean = float(window_loss) / max(1, window_micro)
                    if not math.isfinite(mean):
                        kept = self.last_checkpoint or "none"
                        raise VlpipeError(f"{self.run_dir}: the training loss or gradients became NaN/inf by step {self.step}; "
                                          f"stopped (last good checkpoint: {kept}). Lower --lr or check the data")
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    record = {"loss": mean, "samples_per_s": window_micro * self.config.batch_size / elapsed}
                    self._record("train", record, began)
                    live.update(self.step, record)
                    window_loss.zero_()
                    window_micro, window_start = 0, time.perf_counter()
                else:
                    live.update(self.step)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def _split_metrics(self, dataset: CacheDataset, threshold: float | None) -> tuple[dict[str, float], float]:
        """Metrics of one split; multilabel F1 also at a tuned threshold (val: its own best; test: val's)."""
        scores, labels, loss = predict(self.model, dataset, self.task, batch_size=self.config.eval_batch_size,
                                       device=self.device, weights=self.weights, autocast=self.autocast)
        out = {"loss": loss, **classification_metrics(self.task, scores, labels)}
        if self.task == "multilabel":
            if threshold is None:
                threshold, _ = best_threshold(scores, labels, "macro")
            tuned = classification_metrics(self.task, scores, labels, threshold)
            out.update(macro_f1_tuned=tuned["macro_f1"], micro_f1_tuned=tuned["micro_f1"], threshold=threshold)
        return out, out.get("threshold", 0.5)

    def _end_epoch(self, live: LiveView, began: float) -> None:
        assert self.val_set is not None
        val, _ = self._split_metrics(self.val_set, None)
        self.state["epoch"] += 1
        self._record("val", val, began)
        if live.enabled:
            live.console.print(f"epoch {self.state['epoch']}: val " +
                               "  ".join(f"{k} {v:.4f}" for k, v in val.items() if k != "n"))
        value = val[self.metric] if math.isfinite(val[self.metric]) else -math.inf
        if self.state["best"] is None or value > self.state["best"]:
            self.state.update(best=value, best_epoch=self.state["epoch"], bad_epochs=0)
            with atomic_path(self.run_dir / BEST_FILE) as tmp:
                save_model(self.model, str(tmp))
        else:
            self.state["bad_epochs"] += 1
            if self.config.patience and self.state["bad_epochs"] >= self.config.patience:
                self.state["stopped"] = True
        self.last_checkpoint = ckpt.save_checkpoint(
            self.run_dir, self.step, model=self.model, teacher=None, optimizer=self.optimizer,
            state=dict(self.state), config=self._full_config(), keep_last=self.config.keep_checkpoints)

    def _final(self, began: float) -> dict[str, Any]:
        """Reload the best epoch's weights and score val (choosing the threshold) and test."""
        load_model(self.model, str(self.run_dir / BEST_FILE), device=str(self.device))
        assert self.val_set is not None
        val, threshold = self._split_metrics(self.val_set, None)
        metrics = {"val": val}
        if self.test_set is not None:
            test, _ = self._split_metrics(self.test_set, threshold if self.task == "multilabel" else None)
            if test["n"] > 0:  # Hateful Memes test files may carry no labels at all
                metrics["test"] = test
        result = {"seed": self.seed, "task": self.task, "metric": self.metric, "init_loaded": self.init_loaded,
                  "best_epoch": self.state["best_epoch"], "epochs_run": self.state["epoch"],
                  "stopped_early": self.state["stopped"], "steps": self.step, "seconds": time.perf_counter() - began,
                  "metrics": {s: {k: json_number(float(v)) for k, v in m.items()} for s, m in metrics.items()}}
        write_json_atomic(self.run_dir / RESULT_FILE, result)
        return result

    def _record(self, split: str, values: dict[str, float], began: float) -> None:
        lr = self.schedule.lr(max(0, self.step - 1))
        self.metrics.write({"split": split, "step": self.step, "epoch": self.state["epoch"], "lr": lr,
                            "time": time.perf_counter() - began,
                            **{k: json_number(float(v)) for k, v in values.items()}})
