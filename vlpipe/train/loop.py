"""The one training loop, for pretraining and fine-tuning alike: `Loop(settings, task, ...).run()`.

The loop owns everything that is not the task: device, CPU threads and DDP, precision and compile, AdamW and
the warmup-cosine schedule, exact resume from safetensors checkpoints, the NaN policy, the
evaluation and checkpoint cadence, and logging (metrics.jsonl, the live view, plots). A `Task`
says what is trained and how: the model, the objective whose forward returns the loss, the inputs
of a micro-batch, evaluation, early stopping and any state of its own. Two small task objects
exist: `train/pretrain.py` and `train/finetune.py`.

Each micro-batch: the task builds its inputs on the device, one forward of the (DDP-wrapped,
compiled) objective gives the loss, backward; every `grad_accum` micro-batches the optimizer
steps and the schedule advances by one. Host syncs are batched at logging, evaluation and
checkpoint boundaries.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from vlpipe.cache.integrity import check_files
from vlpipe.cache.loader import CacheLoader, decode_where
from vlpipe.cache.reader import CacheDataset
from vlpipe.cache.sampler import CacheSampler
from vlpipe.errors import VlpipeError
from vlpipe.train import checkpoint as ckpt
from vlpipe.train.config import RunSettings
from vlpipe.train.distributed import DistInfo, any_of, any_true, barrier
from vlpipe.train.live import LiveView
from vlpipe.train.metrics_log import Accumulator, MetricsWriter, json_number
from vlpipe.train.schedule import WarmupCosine, warmup_steps_for
from vlpipe.train.signals import Interrupted, signals_caught
from vlpipe.utils.atomic import write_json_atomic
from vlpipe.utils.cpus import threads_for, torch_threads


class Cadence(NamedTuple):
    """How long a run is and how often it evaluates and checkpoints, in optimizer steps (0 = only at
    the end). Both always happen at the last step."""

    total_steps: int
    eval_every: int
    ckpt_every: int


class Task(Protocol):
    """What differs between pretraining and fine-tuning; everything else is the loop's."""

    section: str  # the key of the run settings in config.json: "pretrain" or "finetune"
    title: str  # shown in the live view
    model: nn.Module  # optimized, and checkpointed as model.safetensors
    objective: nn.Module  # model + losses; DDP and torch.compile wrap it; forward(**inputs) -> {"loss": ...}
    train_set: CacheDataset
    batch_keys: tuple[str, ...]  # what the objective reads from a cache batch
    find_unused_parameters: bool  # DDP: some parameters get no gradient (a task switched off)

    def cadence(self, steps_per_epoch: int) -> Cadence: ...

    def inputs(self, batch: dict[str, torch.Tensor], micro: int) -> dict[str, torch.Tensor]:
        """The objective's inputs for one micro-batch (runs under autocast); `micro` counts every
        micro-batch of the run, so masks drawn from it are the same after a resume."""

    def after_step(self) -> None:
        """After each optimizer step (the EMA teacher follows the student here)."""

    def evaluate(self) -> dict[str, float]:
        """Validation metrics (the main process only; the model is left in training mode)."""

    def after_eval(self, metrics: dict[str, float], epoch: int) -> bool:
        """Bookkeeping after an evaluation (best weights, early stopping); True stops the run."""

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """Modules saved beside the model in every checkpoint, by file stem (e.g. the teacher)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def config_record(self) -> dict[str, Any]:
        """What config.json holds besides the loop's own fields (the run settings, the model config)."""


@dataclass
class StepInfo:
    """Handed to the optional `on_step` hook after every optimizer step (tests, custom logging)."""

    step: int
    indices: list[torch.Tensor]  # global sample indices of this step's micro-batches, this rank
    model: nn.Module
    rank: int
    run_dir: Path


@dataclass
class LoopResult:
    run_dir: Path
    steps: int  # the step the run ended at
    start_step: int  # the step this process started from (> 0 after a resume)
    epochs: int  # epochs completed
    val: dict[str, float] = field(default_factory=dict)  # the last evaluation (empty without a val split)
    train: dict[str, float] = field(default_factory=dict)  # the last logged training window
    checkpoint: Path | None = None
    seconds: float = 0.0
    stopped_early: bool = False


def precision_context(precision: str, device: torch.device) -> tuple[Callable[[], Any], str]:
    """The autocast context factory for `precision` (auto: bf16 on GPU, fp32 on CPU) and its name."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), "bf16"
    return contextlib.nullcontext, "fp32"


def make_optimizer(model: nn.Module, settings: RunSettings, device: torch.device) -> torch.optim.AdamW:
    """AdamW without weight decay on biases, norms and other 1-d tensors (as BERT and ViT do).

    The fused CUDA kernel updates all parameters in a few launches instead of several per tensor.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=tuple(settings.betas), fused=device.type == "cuda")


class Loop:
    def __init__(self, settings: RunSettings, task: Task, info: DistInfo, device: torch.device, run_dir: Path,
                 seed: int, on_step: Callable[[StepInfo], None] | None = None) -> None:
        self.settings, self.task, self.info, self.device = settings, task, info, device
        self.run_dir, self.on_step = run_dir, on_step
        if info.is_main:  # a damaged cache must not train silently (vlpipe/cache/integrity.py)
            check_files(settings.cache, settings.verify_cache, quiet=not settings.live)
        barrier(info)
        self.runner: nn.Module = task.objective
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.runner = DistributedDataParallel(task.objective, device_ids=[device] if device.type == "cuda" else None,
                                                  find_unused_parameters=task.find_unused_parameters)
        if settings.compile:
            self.runner = torch.compile(self.runner)
        self.optimizer = make_optimizer(task.model, settings, device)
        self.autocast, self.precision = precision_context(settings.precision, device)

        self.sampler = CacheSampler(len(task.train_set), shuffle=True, seed=seed, rank=info.rank,
                                    world_size=info.world_size, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // settings.batch_size // settings.grad_accum
        if self.steps_per_epoch < 1:
            raise VlpipeError(
                f"{settings.cache}: {len(task.train_set)} training samples are too few for batch_size "
                f"{settings.batch_size} x grad_accum {settings.grad_accum} x {info.world_size} processes")
        self.cadence = task.cadence(self.steps_per_epoch)
        total = self.cadence.total_steps
        self.schedule = WarmupCosine(settings.lr, total, warmup_steps_for(total, settings.warmup),
                                     settings.min_lr_ratio)
        # On the CPU torch's threads and the loader's share the usable cores (vlpipe/utils/cpus.py).
        self.threads = threads_for(device.type, settings.loader_mode, settings.workers, settings.cpu_threads)
        # Pinned buffers on GPU, so host-to-device copies overlap compute. A JPEG cache's images are
        # decoded where --jpeg-decode says (auto: on the GPU when training on CUDA).
        self.loader = CacheLoader(task.train_set, batch_size=settings.batch_size, sampler=self.sampler,
                                  mode=self.threads.loader_mode, workers=settings.workers,
                                  pin_memory=device.type == "cuda", drop_last=True,
                                  decode=decode_where(settings.jpeg_decode, device))
        self.metrics = MetricsWriter(run_dir, settings.tensorboard) if info.is_main else None
        self.step = 0
        self.micro = 0  # micro-batches over the whole run: the random stream of the task's masks
        self.epoch = 0  # the epoch the next batch comes from
        self.stopped = False
        self.last_checkpoint: Path | None = None
        self.last_save = time.monotonic()
        self.bad = torch.zeros((), dtype=torch.bool, device=device)  # loss, gradients went non-finite
        self._batches: Iterator[dict[str, torch.Tensor]] | None = None

    # -- set-up and checkpoints ----------------------------------------------------------------

    def _full_config(self) -> dict[str, Any]:
        return {**self.task.config_record(), "world_size": self.info.world_size, "precision": self.precision,
                "total_steps": self.cadence.total_steps, "steps_per_epoch": self.steps_per_epoch,
                "threads": self.threads._asdict()}

    def _start(self) -> None:
        existing = ckpt.start_run_dir(self.run_dir, self.settings.resume, self.info.is_main)
        if existing is None:
            if self.settings.resume and self.info.is_main:
                print(f"no checkpoint in {self.run_dir}: starting fresh")
            return
        state = ckpt.load_checkpoint(existing, model=self.task.model, extra=self.task.checkpoint_modules(),
                                     optimizer=self.optimizer, device=self.device)
        if state.get("total_steps") != self.cadence.total_steps:
            raise VlpipeError(f"{existing} was made for {state.get('total_steps')} steps but this run has "
                              f"{self.cadence.total_steps}; keep --steps/--epochs/--batch-size as they were to resume")
        section = self.task.section
        ckpt.check_same_recipe(existing, section, self.task.config_record()[section], type(self.settings).fixed_settings())
        try:
            self.step, self.micro, self.epoch = state["step"], state["micro"], state["epoch"]
            self.stopped = bool(state["stopped"])
            self.sampler.load_state_dict(state["sampler"])
            self.task.load_state_dict(state["task"])
        except (KeyError, TypeError, ValueError) as exc:
            raise VlpipeError(f"{existing}/state.json: not a valid checkpoint (missing or bad {exc})") from None
        self.last_checkpoint = existing
        if self.info.is_main:
            print(f"resuming {self.run_dir} from step {self.step} of {self.cadence.total_steps}")
        if self.metrics is not None:
            self.metrics.truncate_after(self.step)

    def _save(self) -> None:
        """Rank 0 writes a checkpoint, unless the loss, gradients or weights went bad since the last one."""
        # Weights can go non-finite without a non-finite loss (an overflowing backward), so they are
        # checked too: a checkpoint must never hold NaNs.
        norms = torch._foreach_norm([p.detach() for p in self.task.model.parameters()])
        weights_bad = not bool(torch.isfinite(torch.stack(norms)).all())
        if any_true(bool(self.bad.item()) or weights_bad, self.info, self.device):
            self._fail_nan()
        if self.info.is_main:
            state = {"micro": self.micro, "epoch": self.epoch, "sampler": self.sampler.state_dict(),
                     "total_steps": self.cadence.total_steps, "stopped": self.stopped,
                     "task": self.task.state_dict()}
            self.last_checkpoint = ckpt.save_checkpoint(
                self.run_dir, self.step, model=self.task.model, extra=self.task.checkpoint_modules(),
                optimizer=self.optimizer, state=state, config=self._full_config(),
                keep_last=self.settings.keep_checkpoints)
        self.last_save = time.monotonic()
        barrier(self.info)

    def _fail_nan(self) -> None:
        kept = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written"
        raise VlpipeError(f"{self.run_dir}: the training loss, gradients or weights became NaN/inf by step "
                          f"{self.step}; stopped, {kept}. Lower --lr, raise --warmup or check the data")

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> LoopResult:
        with torch_threads(self.threads.torch_threads):
            return self._run()

    def _run(self) -> LoopResult:
        began = time.perf_counter()
        self._start()
        start_step = self.step
        if self.info.is_main:
            write_json_atomic(self.run_dir / "config.json", self._full_config())
        live = LiveView(self.cadence.total_steps, self.step, self.settings.live and self.info.is_main,
                        title=self.task.title)
        try:
            with signals_caught() as caught:
                val, last_train = self._train(live, began, caught)
            if val is None:  # a finished run resumed: its final numbers, already in metrics.jsonl
                val = self._evaluate(live, began, record=False)
        finally:
            self._close_batches()
            self.loader.close()  # the gather threads serve every epoch until here
            live.close()
            if self.metrics is not None:
                self.metrics.close()
        if self.info.is_main and self.settings.plots:
            from vlpipe.train.plots import plot_run

            plot_run(self.run_dir)
        return LoopResult(self.run_dir, self.step, start_step, self.epoch, val, last_train, self.last_checkpoint,
                          time.perf_counter() - began, self.stopped)

    def _train(self, live: LiveView, began: float, caught: list[int]) -> tuple[dict[str, float] | None, dict[str, float]]:
        """Optimizer steps until the end, an early stop or a signal; returns the last evaluation and
        the last logged training window."""
        total, every_eval, every_ckpt = self.cadence
        window = Accumulator()
        val: dict[str, float] | None = None
        last_train: dict[str, float] = {}
        self.task.objective.train()
        window_start, data_wait, window_samples = time.perf_counter(), 0.0, 0
        while self.step < total and not self.stopped:
            indices: list[torch.Tensor] = []
            for _ in range(self.settings.grad_accum):
                wait_start = time.perf_counter()
                batch = self._next_batch()
                data_wait += time.perf_counter() - wait_start
                indices.append(batch["index"].clone())  # the loader reuses its buffers
                window.add(self._micro_step(batch, last=len(indices) == self.settings.grad_accum))
                window_samples += len(batch["index"]) * self.info.world_size
            self._optimizer_step()
            if self.on_step is not None:
                self.on_step(StepInfo(self.step, indices, self.task.model, self.info.rank, self.run_dir))
            at_end = self.step == total
            interrupt = time_due = False
            if self.step % self.settings.log_every == 0 or at_end:
                # One collective for everything the ranks must agree on at a logging step.
                overdue = self.settings.ckpt_minutes > 0 and \
                    time.monotonic() - self.last_save >= 60 * self.settings.ckpt_minutes
                bad, interrupt, time_due = any_of([bool(self.bad.item()), bool(caught), self.info.is_main and overdue],
                                                  self.info, self.device)
                if bad:
                    self._fail_nan()
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                last_train = {**window.summary(all_ranks=True), "samples_per_s": window_samples / elapsed,
                              "data_wait": data_wait / elapsed}
                self._record("train", last_train, began)
                live.update(self.step, last_train)
                window.reset()
                window_start, data_wait, window_samples = time.perf_counter(), 0.0, 0
            else:
                live.update(self.step)
                interrupt = bool(caught) and not self.info.enabled  # one process: stop at this step
            if interrupt and not at_end:  # at the end the run finishes as usual
                self._save()
                raise Interrupted(f"interrupted at step {self.step} of {total}; saved {self.last_checkpoint}",
                                  caught[0] if caught else signal.SIGINT)
            if at_end or (every_eval and self.step % every_eval == 0):
                val = self._evaluate(live, began)
                self.stopped = any_true(self.info.is_main and self.task.after_eval(val, self.epoch),
                                        self.info, self.device)
            if at_end or self.stopped or time_due or (every_ckpt and self.step % every_ckpt == 0):
                self._save()
        return val, last_train

    def _next_batch(self) -> dict[str, torch.Tensor]:
        """The next micro-batch; an epoch ends after exactly `steps_per_epoch * grad_accum` of them."""
        if self.sampler.epoch != self.epoch:
            self.sampler.set_epoch(self.epoch)
            self._close_batches()
        if self._batches is None:
            self._batches = iter(self.loader)
        try:
            batch = next(self._batches)
        except StopIteration:  # cannot happen with the counts above unless the loader misbehaves
            raise VlpipeError("the training loader ended an epoch early") from None
        return self.loader.to_device(batch, (*self.task.batch_keys, "index"), self.device)

    def _close_batches(self) -> None:
        """Stop the loader's prefetch of an epoch that is left before its last batch."""
        if self._batches is not None:
            close = getattr(self._batches, "close", None)
            if close is not None:
                close()
            self._batches = None

    def _micro_step(self, batch: dict[str, torch.Tensor], last: bool) -> dict[str, torch.Tensor]:
        sync = contextlib.nullcontext() if last or not self.info.enabled else self.runner.no_sync()  # type: ignore[operator]
        with sync:
            with self.autocast():
                results = self.runner(**self.task.inputs(batch, self.micro))
            (results["loss"] / self.settings.grad_accum).backward()
        self.micro += 1
        self.bad |= ~torch.isfinite(results["loss"].detach())
        return results

    def _optimizer_step(self) -> None:
        self.schedule.apply(self.optimizer, self.step)
        # max_norm=inf still computes the norm: a non-finite gradient marks the run bad like a NaN loss.
        max_norm = self.settings.grad_clip if self.settings.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.task.model.parameters(), max_norm, foreach=True)
        self.bad |= ~torch.isfinite(grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.task.after_step()
        self.step += 1
        if self.step % self.steps_per_epoch == 0:
            self.epoch += 1

    def _evaluate(self, live: LiveView, began: float, record: bool = True) -> dict[str, float]:
        """Rank 0 evaluates; the other ranks wait at the barrier."""
        result: dict[str, float] = {}
        if self.info.is_main:
            result = self.task.evaluate()
            if result and record:
                self._record("val", result, began)
                live.show_eval(self.step, result)
        barrier(self.info)
        return result

    def _record(self, split: str, values: dict[str, float], began: float) -> None:
        if self.metrics is not None:
            lr = self.schedule.lr(max(0, self.step - 1))
            self.metrics.write({"split": split, "step": self.step, "epoch": self.epoch, "lr": lr,
                                "time": time.perf_counter() - began,
                                **{k: json_number(float(v)) for k, v in values.items()}})
