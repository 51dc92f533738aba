"""The run config: one flat dataclass, loadable from JSON or TOML, overridable by flags.

Flat on purpose (nanoGPT style): every field is one CLI flag or one key in the file, and the whole
thing is saved as `RUN_DIR/config.json`, so any run can be reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlpipe.cache.loader import MODES
from vlpipe.errors import VlpipeError
from vlpipe.train.tasks import TASKS
from vlpipe.utils.typecheck import describe, matches

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass
class PretrainConfig:
    """Everything a pretraining run depends on. See docs/training.md for the meaning of each field."""

    cache: str = ""
    out: str = ""
    preset: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"text": {"layers": 4}}
    text_init: str | None = None  # PATH to BERT weights or "minilm"
    vision_init: str | None = None  # PATH to ViT weights
    tasks: tuple[str, ...] = TASKS
    task_weights: dict[str, float] = field(default_factory=lambda: {"mlm": 1.0, "ap": 1.0, "mim": 1.0})
    mlm_prob: float = 0.15
    mim_prob: float = 0.15
    mim_tau: float = 0.1  # InfoNCE temperature
    ema_decay: float = 0.996  # EMA teacher momentum per optimizer step
    steps: int | None = None  # optimizer steps; exclusive with epochs
    epochs: float | None = None
    batch_size: int = 64  # per process and micro-batch; global = batch_size * grad_accum * world_size
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup: float = 0.05  # < 1: fraction of optimizer steps; >= 1: number of optimizer steps
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    eval_seed: int = 1234  # fixes the eval masks and negatives
    eval_every: int = 0  # optimizer steps between evaluations; 0 = only at the end
    eval_batch_size: int = 64
    eval_max_batches: int = 0  # 0 = the whole val split
    ckpt_every: int = 0  # optimizer steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: bool = False
    workers: int = 2
    loader_mode: str = "threads"
    live: bool = True  # rich live view (rank 0, only when the console is a terminal)
    tensorboard: bool = False
    plots: bool = True

    def validate(self) -> None:
        """Reject contradictory or impossible settings with a message naming the field.

        Types are checked first, so a config built in Python with a wrong type gets the same
        one-line message as a config file instead of a `TypeError` from a comparison below.
        """
        check_types(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "config")
        if not self.cache:
            raise VlpipeError("config: 'cache' (the cache directory) is required")
        if not self.out:
            raise VlpipeError("config: 'out' (the run directory) is required")
        if (self.steps is None) == (self.epochs is None):
            raise VlpipeError("config: give exactly one of 'steps' or 'epochs'")
        if self.steps is not None and self.steps < 1:
            raise VlpipeError(f"config: steps must be >= 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise VlpipeError(f"config: epochs must be > 0, got {self.epochs}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise VlpipeError(f"config: tasks must be a non-empty subset of {','.join(TASKS)}, got {self.tasks}")
        for name in ("batch_size", "grad_accum", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise VlpipeError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("mlm_prob", "mim_prob"):
            if not 0 < getattr(self, name) < 1:
                raise VlpipeError(f"config: {name} must be in (0, 1), got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise VlpipeError(f"config: ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("mim_tau", "lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise VlpipeError(f"config: {name} must be a finite number > 0, got {getattr(self, name)}")
        unknown = sorted(set(self.task_weights) - set(TASKS))
        if unknown:
            raise VlpipeError(f"config: task_weights has unknown task(s) {', '.join(unknown)}; "
                              f"tasks are {', '.join(TASKS)}")
        for task, weight in self.task_weights.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise VlpipeError(f"config: task_weights {task} must be a number >= 0, got {weight}")
        for name in ("eval_every", "eval_max_batches", "ckpt_every"):
            if getattr(self, name) < 0:
                raise VlpipeError(f"config: {name} must be >= 0 (0 = {ZERO_MEANS[name]}), got {getattr(self, name)}")
        check_common(self)

    def weights(self) -> dict[str, float]:
        """Loss weight of each enabled task (missing weights default to 1)."""
        return {t: float(self.task_weights.get(t, 1.0)) for t in self.tasks}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> PretrainConfig:
        """Build from plain values, rejecting unknown keys (a typo must not be silently ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise VlpipeError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        values = dict(values)
        if isinstance(values.get("tasks"), str):
            values["tasks"] = tuple(t.strip() for t in values["tasks"].split(",") if t.strip())
        check_types(cls, values, source)
        for name in ("tasks", "betas"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


# What 0 means for the settings where 0 is allowed as "off" (quoted in their error messages).
ZERO_MEANS = {"eval_every": "only at the end", "eval_max_batches": "the whole val split",
              "ckpt_every": "only at the end"}
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class _OptimConfig(typing.Protocol):
    """The settings pretraining and fine-tuning share and validate the same way."""

    lr: float
    min_lr_ratio: float
    warmup: float
    weight_decay: float
    betas: tuple[float, float]
    grad_clip: float
    precision: str
    device: str
    keep_checkpoints: int
    workers: int
    loader_mode: str


def check_common(config: _OptimConfig) -> None:
    """Range checks shared by `PretrainConfig` and `FinetuneConfig` (optimizer, schedule, device, loader).

    Each of these would otherwise be accepted and either misbehave silently (a negative warmup or
    clip norm) or fail deep inside torch with a message that does not name the setting.
    """
    if not 0 <= config.min_lr_ratio <= 1:
        raise VlpipeError(f"config: min_lr_ratio must be in [0, 1], got {config.min_lr_ratio}")
    for name in ("warmup", "weight_decay", "grad_clip"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise VlpipeError(f"config: {name} must be >= 0, got {value}")
    if len(config.betas) != 2 or not all(0 <= b < 1 for b in config.betas):
        raise VlpipeError(f"config: betas must be two numbers in [0, 1), got {list(config.betas)}")
    if config.precision not in ("auto", "bf16", "fp32"):
        raise VlpipeError(f"config: precision must be auto, bf16 or fp32, got {config.precision!r}")
    check_device(config.device)
    for name in ("keep_checkpoints", "workers"):
        if getattr(config, name) < 0:
            raise VlpipeError(f"config: {name} must be >= 0, got {getattr(config, name)}")
    if config.loader_mode not in MODES:
        raise VlpipeError(f"config: loader_mode must be one of {', '.join(MODES)}, got {config.loader_mode!r}")


def check_device(spec: str) -> None:
    """A device spec torch will accept and this machine has, checked before any model is built."""
    if not DEVICE_PATTERN.fullmatch(spec):
        raise VlpipeError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")
    if spec.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise VlpipeError(f"--device {spec}: CUDA is not available on this machine; use cpu or auto")
        index = int(spec.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise VlpipeError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def check_types(cls: type, values: dict[str, Any], source: str) -> None:
    """Check plain values (from JSON/TOML or flags) against `cls`'s dataclass field annotations.

    Config files are typed by whoever wrote them, so `"batch_size": "8"` must be caught here, where
    the file and the key are known, rather than as a `TypeError` deep in validation or training.
    Lists are accepted for tuple fields (JSON and TOML have no tuples); an int is accepted where a
    float is expected, but a bool never counts as a number.
    """
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        expected = hints.get(name)
        if expected is not None and not matches(value, expected):
            shown = repr(value)
            if len(shown) > 60:
                shown = shown[:57] + "..."
            raise VlpipeError(f"{source}: {name} must be {describe(expected)}, got {shown}")


def read_config_file(path: str | os.PathLike[str], table: str = "pretrain") -> dict[str, Any]:
    """Plain values from a `.json` or `.toml` file (a `[pretrain]`/`[table]` TOML table is accepted too)."""
    path = Path(path)
    if not path.is_file():
        raise VlpipeError(f"config file {path} does not exist")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            data = data.get(table, data)
        elif path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise VlpipeError(f"config file {path}: use a .json or .toml file")
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise VlpipeError(f"config file {path} is not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise VlpipeError(f"config file {path} must contain a table/object of settings")
    return data


def load_config(file: str | os.PathLike[str] | None = None, **overrides: Any) -> PretrainConfig:
    """File values first, then every override that is not None (so unset CLI flags keep the file's value)."""
    values = read_config_file(file) if file is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    # `--steps` on the command line replaces `epochs` from the file and vice versa.
    for name, other in (("steps", "epochs"), ("epochs", "steps")):
        if name in given:
            values.pop(other, None)
    values.update(given)
    config = PretrainConfig.from_dict(values, source=str(file) if file else "config")
    config.validate()
    return config
