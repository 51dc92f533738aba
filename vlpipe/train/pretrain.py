"""Pretraining as a task of the training loop: `pretrain(config)` from a cache to a run directory.

What pretraining adds to the loop (vlpipe/train/loop.py): the model sized to the cache (with
optional BERT/ViT weights), the objective with all enabled heads (MLM, alignment prediction,
contrastive MIM), the masks and negatives of each micro-batch built on the device from hashes of
the sample index (`masking.prepare_batch`), the EMA teacher that gives MIM targets and follows the
student after every optimizer step, and validation with fixed masks and negatives.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlpipe.cache.format import load_manifest
from vlpipe.cache.reader import CacheDataset
from vlpipe.train.config import PretrainConfig
from vlpipe.train.distributed import init_distributed, shutdown
from vlpipe.train.loop import Cadence, Loop, LoopResult, StepInfo, precision_context
from vlpipe.train.masking import EVAL_STREAM, TaskSettings, TextSpecials, prepare_batch
from vlpipe.train.metrics_log import Accumulator
from vlpipe.train.model_setup import build_pretrain_model
from vlpipe.train.objective import EMATeacher, PretrainObjective

BATCH_KEYS = ("images", "input_ids", "lengths")


def pretrain(config: PretrainConfig, on_step: Callable[[StepInfo], None] | None = None) -> LoopResult:
    """Train according to `config`; returns the final validation metrics and where things were written."""
    info, device = init_distributed(config.device)
    try:
        task = PretrainTask(config, device)
        if task.val_set is None and info.is_main:  # it would otherwise train blind, silently
            print(f"warning: {config.cache} has no validation samples ({len(task.train_set)} train), so this run "
                  "reports no validation metrics; rebuild the cache with a larger --val-fraction (vlpipe "
                  "build-cache ... --val-fraction 0.1) or from more samples", file=sys.stderr)
        return Loop(config, task, info, device, Path(config.out), config.seed, on_step).run()
    finally:
        shutdown(info)


class PretrainTask:
    """MLM + alignment prediction + contrastive MIM on a captioned cache (see docs/training.md)."""

    section = "pretrain"
    title = "pretrain"
    batch_keys = BATCH_KEYS

    def __init__(self, config: PretrainConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        manifest = load_manifest(config.cache)
        t = manifest.text
        self.specials = TextSpecials(t.pad_id, t.cls_id, t.sep_id, t.mask_id, t.vocab_size)
        self.settings = TaskSettings(tuple(config.tasks), config.mlm_prob, config.mim_prob, config.seed)
        self.eval_settings = TaskSettings(tuple(config.tasks), config.mlm_prob, config.mim_prob, config.eval_seed)
        self.num_patches = manifest.image.num_patches
        self.train_set = CacheDataset(config.cache, split="train")
        self.val_set = CacheDataset(config.cache, split="val") if manifest.splits.get("val", 0) else None
        self.autocast, _ = precision_context(config.precision, device)
        torch.manual_seed(config.seed)
        self.model: nn.Module = build_pretrain_model(config, manifest).to(device)
        self.teacher = EMATeacher(self.model, config.ema_decay) if "mim" in config.tasks else None
        self.objective = PretrainObjective(self.model, config.weights(), config.mim_tau)
        # With a task switched off its head gets no gradient; DDP must be told to expect that.
        self.find_unused_parameters = set(config.tasks) != {"mlm", "ap", "mim"}

    def cadence(self, steps_per_epoch: int) -> Cadence:
        c = self.config
        total = c.steps if c.steps is not None else math.ceil(c.epochs * steps_per_epoch)  # type: ignore[operator]
        return Cadence(total, c.eval_every, c.ckpt_every)

    def inputs(self, batch: dict[str, torch.Tensor], micro: int) -> dict[str, torch.Tensor]:
        inputs = prepare_batch(batch, self.specials, self.settings, self.num_patches, stream=micro)
        if self.teacher is not None:
            inputs["mim_targets"] = self.teacher.targets(inputs["images"], inputs["mim_positions"])
        return inputs

    def after_step(self) -> None:
        if self.teacher is not None:
            self.teacher.update()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss per task, MLM accuracy, AP accuracy and MIM top-1 on the val split, with fixed masks.

        Masks and negatives come from `prepare_batch` with `stream=EVAL_STREAM` and `eval_seed`: a pure
        function of each sample's global index, identical in every run and epoch. Batches are
        consecutive val samples, so the AP donor (the next sample in the batch) is fixed too.
        """
        if self.val_set is None:
            return {}
        self.objective.eval()
        acc = Accumulator()
        n, size = len(self.val_set), self.config.eval_batch_size
        starts = list(range(0, n, size))
        if self.config.eval_max_batches > 0:
            starts = starts[: self.config.eval_max_batches]
        began, samples = time.perf_counter(), 0
        try:
            for start in starts:
                raw = self.val_set.__getitems__(list(range(start, min(n, start + size))))
                batch = {k: raw[k].to(self.device, non_blocking=True) for k in (*BATCH_KEYS, "index")}
                inputs = prepare_batch(batch, self.specials, self.eval_settings, self.num_patches, stream=EVAL_STREAM)
                with self.autocast():
                    if self.teacher is not None and "mim_positions" in inputs:
                        inputs["mim_targets"] = self.teacher.targets(inputs["images"], inputs["mim_positions"])
                    acc.add(self.objective(**inputs))
                samples += len(batch["index"])
        finally:
            self.objective.train()
        return {**acc.summary(), "samples": samples, "eval_seconds": time.perf_counter() - began}

    def after_eval(self, metrics: dict[str, float], epoch: int) -> bool:
        return False  # pretraining runs its steps; there is no early stopping

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher.module} if self.teacher is not None else {}

    def state_dict(self) -> dict[str, Any]:
        return {}  # everything pretraining keeps is the loop's (steps, sampler) or weights (teacher)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def config_record(self) -> dict[str, Any]:
        return {"pretrain": self.config.to_dict(), "model": self.model.config.to_dict()}
