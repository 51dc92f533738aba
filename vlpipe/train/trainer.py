"""The pretraining loop: `pretrain(config)` from a cache to a run directory.

One process per device (torchrun for more than one). Each micro-batch: tasks are built on the
device (`tasks.prepare_batch`), the EMA teacher gives MIM targets, one student forward computes all
losses; every `grad_accum` micro-batches the optimizer steps, the schedule advances by one, and
the teacher follows. All host syncs are batched at logging, evaluation and checkpoint boundaries.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlpipe.cache.format import load_manifest
from vlpipe.cache.reader import CacheDataset
from vlpipe.cache.sampler import CacheSampler
from vlpipe.errors import VlpipeError
from vlpipe.train import checkpoint as ckpt
from vlpipe.train.config import PretrainConfig
from vlpipe.train.distributed import DistInfo, any_true, barrier, init_distributed, shutdown
from vlpipe.train.evaluate import BATCH_KEYS, evaluate
from vlpipe.train.live import LiveView
from vlpipe.train.metrics import Accumulator, MetricsWriter
from vlpipe.train.model_setup import build_pretrain_model, make_loader, make_optimizer, precision_context
from vlpipe.train.objective import EMATeacher, PretrainObjective
from vlpipe.train.schedule import WarmupCosine, warmup_steps_for
from vlpipe.train.tasks import TaskSettings, TextSpecials, prepare_batch
from vlpipe.utils.atomic import write_json_atomic

# PretrainConfig fields that decide what a run trains: a resume must keep them (checkpoint.check_same_recipe).
RESUME_FIXED = ("preset", "model_overrides", "tasks", "task_weights", "mlm_prob", "mim_prob", "mim_tau", "ema_decay",
                "steps", "epochs", "batch_size", "grad_accum", "lr", "min_lr_ratio", "warmup", "weight_decay",
                "betas", "grad_clip", "precision", "seed", "eval_seed")


@dataclass
class StepInfo:
    """Handed to the optional `on_step` hook after every optimizer step (tests, custom logging)."""

    step: int
    indices: list[torch.Tensor]  # global sample indices of this step's micro-batches, this rank
    model: nn.Module
    rank: int


@dataclass
class PretrainResult:
    run_dir: Path
    steps: int
    val: dict[str, float] = field(default_factory=dict)  # final validation metrics (empty without a val split)
    train: dict[str, float] = field(default_factory=dict)  # last logged training window
    checkpoint: Path | None = None
    seconds: float = 0.0


def pretrain(config: PretrainConfig, on_step: Callable[[StepInfo], None] | None = None) -> PretrainResult:
    """Train according to `config`; returns the final validation metrics and where things were written."""
    config.validate()
    info, device = init_distributed(config.device)
    try:
        return _Run(config, info, device, on_step).run()
    finally:
        shutdown(info)


class _Run:
    def __init__(self, config: PretrainConfig, info: DistInfo, device: torch.device,
                 on_step: Callable[[StepInfo], None] | None) -> None:
        self.config, self.info, self.device, self.on_step = config, info, device, on_step
        self.run_dir = Path(config.out)
        manifest = load_manifest(config.cache)
        self.manifest = manifest
        t = manifest.text
        self.specials = TextSpecials(t.pad_id, t.cls_id, t.sep_id, t.mask_id, t.vocab_size)
        self.settings = TaskSettings(tuple(config.tasks), config.mlm_prob, config.mim_prob, config.seed)
        self.eval_settings = TaskSettings(tuple(config.tasks), config.mlm_prob, config.mim_prob, config.eval_seed)
        self.num_patches = manifest.image.num_patches
        self.train_set = CacheDataset(config.cache, split="train")
        val_count = manifest.splits.get("val", 0)
        self.val_set = CacheDataset(config.cache, split="val") if val_count else None

        torch.manual_seed(config.seed)
        self.model = build_pretrain_model(config, manifest).to(device)
        self.teacher = EMATeacher(self.model, config.ema_decay) if "mim" in config.tasks else None
        self.objective = PretrainObjective(self.model, config.weights(), config.mim_tau)
        self.runner: nn.Module = self.objective
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # With a task switched off its head gets no gradient; DDP must be told to expect that.
            self.runner = DistributedDataParallel(
                self.objective, device_ids=[device] if device.type == "cuda" else None,
                find_unused_parameters=set(config.tasks) != {"mlm", "ap", "mim"},
            )
        if config.compile:
            self.runner = torch.compile(self.runner)
        self.optimizer = make_optimizer(self.model, config, device)
        self.autocast, self.precision = precision_context(config.precision, device)

        self.sampler = CacheSampler(len(self.train_set), shuffle=True, seed=config.seed, rank=info.rank,
                                    world_size=info.world_size, drop_last=True)
        micro_per_epoch = len(self.sampler) // config.batch_size
        self.steps_per_epoch = micro_per_epoch // config.grad_accum
        if self.steps_per_epoch < 1:
            raise VlpipeError(
                f"{config.cache}: {len(self.train_set)} training samples are too few for batch_size "
                f"{config.batch_size} x grad_accum {config.grad_accum} x {info.world_size} processes"
            )
        self.total_steps = config.steps or math.ceil(config.epochs * self.steps_per_epoch)  # type: ignore[operator]
        self.schedule = WarmupCosine(config.lr, self.total_steps, warmup_steps_for(self.total_steps, config.warmup),
                                     config.min_lr_ratio)
        self.loader = make_loader(self.train_set, self.sampler, config, device)
        self.metrics = MetricsWriter(self.run_dir, config.tensorboard) if info.is_main else None
        self.step = 0
        self.micro = 0  # micro-batches done over the whole run: the random stream of the task masks
        self.epoch = 0
        self.last_checkpoint: Path | None = None
        self.bad_loss = torch.zeros((), dtype=torch.bool, device=device)
        self._batches: Iterator[dict[str, torch.Tensor]] | None = None

    # -- setup ---------------------------------------------------------------------------------

    def _full_config(self) -> dict[str, Any]:
        return {"pretrain": self.config.to_dict(), "model": self.model.config.to_dict(),
                "world_size": self.info.world_size, "precision": self.precision,
                "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch}

    def _start(self) -> None:
        existing = ckpt.start_run_dir(self.run_dir, self.config.resume, self.info.is_main)
        if existing is None:
            return
        state = ckpt.load_checkpoint(existing, model=self.model, teacher=self.teacher.module if self.teacher else None,
                                     optimizer=self.optimizer, device=self.device)
        if state.get("total_steps") != self.total_steps:
            raise VlpipeError(f"{existing} was made for {state.get('total_steps')} steps but this run has "
                              f"{self.total_steps}; keep --steps/--epochs/--batch-size as they were to resume")
        ckpt.check_same_recipe(existing, "pretrain", self.config.to_dict(), RESUME_FIXED)
        try:
            self.step, self.micro, self.epoch = state["step"], state["micro"], state["epoch"]
            self.sampler.load_state_dict(state["sampler"])
        except (KeyError, TypeError, ValueError) as exc:
            raise VlpipeError(f"{existing}/state.json: not a valid checkpoint (missing or bad {exc})") from None
        self.last_checkpoint = existing
        if self.metrics is not None:
            self.metrics.truncate_after(self.step)

    def _save(self) -> None:
        """Rank 0 writes a checkpoint, unless the loss went bad since the last one."""
        # Weights can go non-finite without a non-finite loss (an overflowing backward), so they are
        # checked too: a checkpoint must never hold NaNs.
        norms = torch._foreach_norm([p.detach() for p in self.model.parameters()])
        weights_bad = not bool(torch.isfinite(torch.stack(norms)).all())
        if any_true(bool(self.bad_loss.item()) or weights_bad, self.info, self.device):
            self._fail_nan()
        if self.info.is_main:
            state = {"micro": self.micro, "epoch": self.epoch, "sampler": self.sampler.state_dict(),
                     "total_steps": self.total_steps}
            self.last_checkpoint = ckpt.save_checkpoint(
                self.run_dir, self.step, model=self.model, teacher=self.teacher.module if self.teacher else None,
                optimizer=self.optimizer, state=state, config=self._full_config(),
                keep_last=self.config.keep_checkpoints,
            )
        barrier(self.info)

    def _fail_nan(self) -> None:
        kept = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written"
        raise VlpipeError(f"the training loss, gradients or weights became NaN/inf by step {self.step}; "
                          f"stopped, {kept}. "
                          "Lower --lr, raise warmup or check the data")

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> PretrainResult:
        began = time.perf_counter()
        self._start()
        if self.info.is_main:
            write_json_atomic(self.run_dir / "config.json", self._full_config())
        live = LiveView(self.total_steps, self.step, self.config.live and self.info.is_main)
        window = Accumulator()
        last_train: dict[str, float] = {}
        try:
            self.objective.train()
            window_start, data_wait, window_samples = time.perf_counter(), 0.0, 0
            while self.step < self.total_steps:
                indices: list[torch.Tensor] = []
                for _ in range(self.config.grad_accum):
                    wait_start = time.perf_counter()
                    batch = self._next_batch()
                    data_wait += time.perf_counter() - wait_start
                    indices.append(batch["index"].clone())  # the loader reuses its buffers
                    window.add(self._micro_step(batch, last=len(indices) == self.config.grad_accum))
                    window_samples += len(batch["index"]) * self.info.world_size
                self._optimizer_step()
                if self.on_step is not None:
                    self.on_step(StepInfo(self.step, indices, self.model, self.info.rank))
                if self.step % self.config.log_every == 0 or self.step == self.total_steps:
                    if any_true(bool(self.bad_loss.item()), self.info, self.device):
                        self._fail_nan()
                    elapsed = time.perf_counter() - window_start
                    last_train = {**window.summary(all_ranks=True), "samples_per_s": window_samples / max(elapsed, 1e-9),
                                  "data_wait": data_wait / max(elapsed, 1e-9)}
                    self._record("train", last_train, began)
                    live.update(self.step, last_train)
                    window.reset()
                    window_start, data_wait, window_samples = time.perf_counter(), 0.0, 0
                else:
                    live.update(self.step)
                if self.config.eval_every and self.step % self.config.eval_every == 0 and self.step < self.total_steps:
                    self._evaluate(live, began)
                if self.config.ckpt_every and self.step % self.config.ckpt_every == 0 and self.step < self.total_steps:
                    self._save()
            val = self._evaluate(live, began)
            self._save()
        finally:
            self._close_batches()
            self.loader.close()  # worker processes of `processes` mode serve every epoch until here
            live.close()
            if self.metrics is not None:
                self.metrics.close()
        if self.info.is_main and self.config.plots:
            from vlpipe.train.plots import plot_run

            plot_run(self.run_dir)
        return PretrainResult(self.run_dir, self.step, val, last_train, self.last_checkpoint,
                              time.perf_counter() - began)

    def _next_batch(self) -> dict[str, torch.Tensor]:
        """The next micro-batch; an epoch ends after exactly `steps_per_epoch * grad_accum` of them."""
        per_epoch = self.steps_per_epoch * self.config.grad_accum * self.config.batch_size
        if self.sampler.epoch != self.epoch or self.sampler.position >= per_epoch:
            if self.sampler.position >= per_epoch:
                self.epoch += 1
            self.sampler.set_epoch(self.epoch)
            self._close_batches()
        if self._batches is None:
            self._batches = iter(self.loader)
        try:
            batch = next(self._batches)
        except StopIteration:  # cannot happen with the counts above unless the loader misbehaves
            raise VlpipeError("the training loader ended an epoch early") from None
        return {k: batch[k].to(self.device, non_blocking=True) for k in BATCH_KEYS}

    def _close_batches(self) -> None:
        """Stop the loader's prefetch threads of an epoch that is left before its last batch."""
        if self._batches is not None:
            close = getattr(self._batches, "close", None)
            if close is not None:
                close()
            self._batches = None

    def _micro_step(self, batch: dict[str, torch.Tensor], last: bool) -> dict[str, torch.Tensor]:
        inputs = prepare_batch(batch, self.specials, self.settings, self.num_patches, stream=self.micro)
        self.micro += 1
        sync = contextlib.nullcontext() if last or not self.info.enabled else self.runner.no_sync()  # type: ignore[operator]
        with sync:
            with self.autocast():
                if self.teacher is not None:
                    inputs["mim_targets"] = self.teacher.targets(inputs["images"], inputs["mim_positions"])
                results = self.runner(**inputs)
            (results["loss"] / self.config.grad_accum).backward()
        self.bad_loss |= ~torch.isfinite(results["loss"].detach())
        return results

    def _optimizer_step(self) -> None:
        self.schedule.apply(self.optimizer, self.step)
        # max_norm=inf still computes the norm: a non-finite gradient marks the run bad like a NaN loss.
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm, foreach=True)
        self.bad_loss |= ~torch.isfinite(grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.teacher is not None:
            self.teacher.update()
        self.step += 1

    def _evaluate(self, live: LiveView, began: float) -> dict[str, float]:
        """Rank 0 evaluates the whole val split; the other ranks wait at the barrier."""
        result: dict[str, float] = {}
        if self.info.is_main and self.val_set is not None:
            result = evaluate(
                self.objective, self.teacher, self.val_set, specials=self.specials, settings=self.eval_settings,
                num_patches=self.num_patches, batch_size=self.config.eval_batch_size, device=self.device,
                autocast=self.autocast, max_batches=self.config.eval_max_batches,
            )
            self._record("val", result, began)
            live.show_eval(self.step, result)
        barrier(self.info)
        return result

    def _record(self, split: str, values: dict[str, float], began: float) -> None:
        if self.metrics is not None:
            lr = self.schedule.lr(max(0, self.step - 1))
            self.metrics.write({"split": split, "step": self.step, "epoch": self.epoch, "lr": lr,
                                "time": time.perf_counter() - began, **values})
