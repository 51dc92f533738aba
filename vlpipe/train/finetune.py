"""Fine-tuning as a task of the training loop: `finetune(config)` trains one run per seed and summarises.

Each seed is a complete run of the training loop (vlpipe/train/loop.py) in `OUT/seed-S/`
(config.json, metrics.jsonl, plots/, checkpoints/, best.safetensors, result.json), so it gets
everything pretraining gets: DDP under torchrun, bf16, compile, exact resume, the NaN policy. What
fine-tuning adds: a classifier on the backbone (fresh, or from a pretraining run's weights), a loss
for binary, multiclass or multilabel labels, an evaluation after every epoch that keeps the best
weights, and early stopping. The best weights then give the final val and test metrics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from vlpipe.cache.format import Manifest, load_manifest
from vlpipe.cache.reader import CacheDataset
from vlpipe.errors import VlpipeError
from vlpipe.model import build_model
from vlpipe.train import checkpoint as ckpt
from vlpipe.train.classifier import (
    Classifier,
    label_weights,
    load_shared_weights,
    loss_terms,
    predict,
    pretrain_checkpoint,
)
from vlpipe.train.compare import SUMMARY_FILE, summarize
from vlpipe.train.config import FinetuneConfig
from vlpipe.train.distributed import DistInfo, barrier, init_distributed, shutdown
from vlpipe.train.loop import Cadence, Loop, LoopResult, StepInfo, precision_context
from vlpipe.train.metrics_log import json_number
from vlpipe.train.model_setup import model_config_for_finetune
from vlpipe.train.schedule import warmup_steps_for
from vlpipe.train.scores import best_threshold, classification_metrics
from vlpipe.utils.atomic import atomic_path, write_json_atomic

RESULT_FILE = "result.json"
BEST_FILE = "best.safetensors"
# Early-stopping metrics per task; the first is the default.
STOP_METRICS = {"binary": ("auroc", "accuracy"), "multiclass": ("top1", "top5"),
                "multilabel": ("macro_f1_tuned", "micro_f1_tuned", "macro_f1", "micro_f1")}
BATCH_KEYS = ("images", "input_ids", "lengths", "labels")


@dataclass
class FinetuneResult:
    out: Path
    summary: dict[str, Any]  # what summary.json holds (empty on every process but the main one)


def finetune(config: FinetuneConfig, on_step: Callable[[StepInfo], None] | None = None) -> FinetuneResult:
    """Train one run per seed into `out/seed-S/` and write `out/summary.json` (mean ± std over seeds).

    Under torchrun every process trains every seed on its share of the batches; the main process
    evaluates, keeps the best weights and writes the files.
    """
    out = Path(config.out)
    info, device = init_distributed(config.device)
    try:
        if info.is_main:
            _check_out(out)
        barrier(info)
        results = {}
        for seed in config.seeds:
            task = FinetuneTask(config, seed, device, info)
            run_dir = out / f"seed-{seed}"
            run = Loop(config, task, info, device, run_dir, seed, on_step).run()
            if info.is_main:
                results[seed] = task.finish(run)
            barrier(info)
    finally:
        shutdown(info)
    if not info.is_main:
        return FinetuneResult(out, {})
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


def resolve_task(config: FinetuneConfig, manifest: Manifest) -> tuple[str, int]:
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


class FinetuneObjective(nn.Module):
    """The classifier and its loss in one forward, so DDP and torch.compile see the whole step."""

    def __init__(self, model: Classifier, task: str, weights: Tensor | None) -> None:
        super().__init__()
        self.model, self.task, self.weights = model, task, weights

    def forward(self, images: Tensor, input_ids: Tensor, lengths: Tensor, labels: Tensor) -> dict[str, Tensor]:
        part, norm = loss_terms(self.task, self.model(images, input_ids, lengths), labels, self.weights)
        return {"loss": part / norm.clamp(min=1)}


class FinetuneTask:
    """A classifier on a labelled cache; after every epoch: validation, best weights, early stopping."""

    section = "finetune"
    batch_keys = BATCH_KEYS
    find_unused_parameters = False

    def __init__(self, config: FinetuneConfig, seed: int, device: torch.device, info: DistInfo) -> None:
        self.config, self.seed, self.device = config, seed, device
        self.title = f"finetune seed {seed}"
        manifest = load_manifest(config.cache)
        self.task, outputs = resolve_task(config, manifest)
        self.metric = config.metric or STOP_METRICS[self.task][0]
        if self.metric not in STOP_METRICS[self.task]:
            raise VlpipeError(f"--metric {self.metric} is not a {self.task} metric; use one of "
                              f"{', '.join(STOP_METRICS[self.task])}")
        self.train_set = CacheDataset(config.cache, split="train")
        if not self.train_set.has_labels:
            raise VlpipeError(f"{config.cache}: the shards have no labels.npy; rebuild the cache")
        if not manifest.splits.get("val"):
            raise VlpipeError(f"{config.cache} has no val split: early stopping and thresholds need one")
        self.val_set = CacheDataset(config.cache, split="val")
        self.test_set = CacheDataset(config.cache, split="test") if manifest.splits.get("test") else None
        init = pretrain_checkpoint(config.init) if config.init else None
        model_cfg = model_config_for_finetune(config, manifest, init)
        torch.manual_seed(seed)
        self.model = Classifier(build_model(model_cfg), outputs, config.fusion, config.head_dropout)
        self.init_loaded = load_shared_weights(self.model, init) if init is not None else 0
        # Only masked-image modelling uses the mask token: frozen here, so it takes no optimizer state
        # and DDP does not wait for a gradient that never comes.
        self.model.backbone.vision.mask_token.requires_grad_(False)
        self.model.to(device)
        self.weights = None
        if config.class_weighted:
            counts = manifest.labels["counts"]["train"]  # type: ignore[index]
            if self.task == "binary" and len(counts) != 2:
                raise VlpipeError("--class-weighted with --task binary needs exactly 2 label counts")
            self.weights = label_weights(self.task, counts, len(self.train_set), device)
        self.objective = FinetuneObjective(self.model, self.task, self.weights)
        self.autocast, _ = precision_context(config.precision, device)
        self.is_main = info.is_main
        self.best_file: Path = Path(config.out) / f"seed-{seed}" / BEST_FILE
        # Early stopping: everything a checkpoint must restore.
        self.state: dict[str, Any] = {"first": None, "best": None, "best_epoch": 0, "bad_epochs": 0}
        self.noise = 2 * math.sqrt(0.25 / max(1, len(self.val_set)))
        self.warmup_epochs = 0.0

    def cadence(self, steps_per_epoch: int) -> Cadence:
        total = self.config.epochs * steps_per_epoch
        self.warmup_epochs = warmup_steps_for(total, self.config.warmup) / steps_per_epoch
        return Cadence(total, steps_per_epoch, steps_per_epoch)

    def inputs(self, batch: dict[str, Tensor], micro: int) -> dict[str, Tensor]:
        return {k: batch[k] for k in BATCH_KEYS}

    def after_step(self) -> None:
        pass

    def evaluate(self) -> dict[str, float]:
        return self._split_metrics(self.val_set, None)[0]

    def after_eval(self, metrics: dict[str, float], epoch: int) -> bool:
        """Keep the best weights; stop after `patience` epochs without a better validation metric.

        Epochs without improvement are counted only once the model has left its starting level and
        warmup is over. Left means: the best value beats the first epoch's by more than two standard
        errors of a score on this validation split (2 * sqrt(0.25 / n)), the size of the noise a model
        still at chance shows from epoch to epoch. Counting from any first "improvement" stopped
        from-scratch runs at chance after a lucky epoch 2 (benchmarks/results/finetune_lr_sweep.json).
        """
        value = metrics[self.metric] if math.isfinite(metrics[self.metric]) else -math.inf
        s = self.state
        if s["first"] is None:
            s["first"] = value
        if s["best"] is None or value > s["best"]:
            s.update(best=value, best_epoch=epoch, bad_epochs=0)
            with atomic_path(self.best_file) as tmp:
                save_model(self.model, str(tmp))
        elif s["best"] - s["first"] > self.noise and epoch > self.warmup_epochs:
            s["bad_epochs"] += 1
        return bool(self.config.patience and s["bad_epochs"] >= self.config.patience)

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = {k: state[k] for k in self.state}

    def config_record(self) -> dict[str, Any]:
        return {"finetune": {**self.config.to_dict(), "seed": self.seed},
                "model": self.model.backbone.config.to_dict(), "task": self.task, "metric": self.metric,
                "init_loaded": self.init_loaded}

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

    def finish(self, run: LoopResult) -> dict[str, Any]:
        """Reload the best epoch's weights, score val (choosing the threshold) and test; write result.json."""
        load_model(self.model, str(self.best_file), device=str(self.device))
        val, threshold = self._split_metrics(self.val_set, None)
        metrics = {"val": val}
        if self.test_set is not None:
            test, _ = self._split_metrics(self.test_set, threshold if self.task == "multilabel" else None)
            if test["n"] > 0:  # Hateful Memes test files may carry no labels at all
                metrics["test"] = test
        result = {"seed": self.seed, "task": self.task, "metric": self.metric, "init_loaded": self.init_loaded,
                  "best_epoch": self.state["best_epoch"], "epochs_run": run.epochs, "stopped_early": run.stopped_early,
                  "steps": run.steps, "seconds": run.seconds,
                  "metrics": {s: {k: json_number(float(v)) for k, v in m.items()} for s, m in metrics.items()}}
        write_json_atomic(run.run_dir / RESULT_FILE, result)
        return result
