"""The settings of a training run, each declared once (type, default, range, help; vlpipe/settings.py).

`RunSettings` holds what pretraining and fine-tuning share (optimizer, schedule, precision, device,
loader, checkpoints, logging); `PretrainConfig` and `FinetuneConfig` add their own. Flat on purpose
(nanoGPT style): every setting is one flag and one key in a config file, and the whole config is
saved as `RUN_DIR/config.json`, so any run can be reproduced from its folder alone. Settings marked
`fixed` decide what a run trains: a resumed run must keep them (checkpoint.check_same_recipe).
"""

from __future__ import annotations

import copy
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, field_validator, model_validator
from pydantic.fields import FieldInfo

from vlpipe.cache.format import LABEL_TASKS
from vlpipe.cache.loader import DECODE, MODES
from vlpipe.model.config import FUSIONS, check_override_keys
from vlpipe.settings import Settings, load_settings, setting
from vlpipe.train.masking import TASKS

# Fine-tuning's default learning rates (FinetuneConfig.lr): measured for the tiny preset from
# scratch (benchmarks/sweep_finetune_lr.py), the usual BERT/ViLBERT fine-tuning value otherwise.
SCRATCH_TINY_LR = 2e-3
PRETRAINED_LR = 1e-4
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
PRESET_NAMES = Literal["tiny", "base", "vilbert"]


def check_device(spec: str) -> str:
    """A device spec torch will accept and this machine has, checked before any model is built."""
    if not DEVICE_PATTERN.fullmatch(spec):
        raise ValueError("expected auto, cpu, cuda or cuda:N")
    if spec.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("CUDA is not available on this machine; use cpu or auto")
        index = int(spec.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    return spec


# A device setting (`--device`): checked like this wherever it is declared.
Device = Annotated[str, AfterValidator(check_device)]


class RunSettings(Settings):
    """What every training run has: data, model size, optimization, hardware, checkpoints, logging."""

    cache: str = setting(help="Cache directory from `vlpipe build-cache`.", min_length=1)
    out: str = setting(help="Run directory: checkpoints/, metrics.jsonl, plots/, config.json.", min_length=1)
    preset: PRESET_NAMES = setting("tiny", "Model size. tiny: seconds on a CPU; base: ViT-B/16 + BERT-base; "
                                   "vilbert: ViLBERT's layout.", fixed=True)
    model_overrides: dict[str, Any] = setting(
        factory=dict, help="Model options as dotted keys, e.g. --model text.layers=4,vision.hidden=384 or "
        "--model coattn.text_layers=[1,2,3] (see docs/model.md).", flag="--model", metavar="KEY=VALUE", fixed=True)
    batch_size: int = setting(64, "Samples per micro-batch per process; global batch = this x --grad-accum x "
                              "processes.", ge=1, fixed=True)
    grad_accum: int = setting(1, "Micro-batches per optimizer step.", ge=1, fixed=True)
    lr: float = setting(1e-4, "Peak AdamW learning rate.", gt=0, allow_inf_nan=False, fixed=True)
    min_lr_ratio: float = setting(0.1, "Final lr as a fraction of --lr (cosine decay after warmup).",
                                  ge=0, le=1, fixed=True)
    warmup: float = setting(0.05, "Linear warmup: < 1 a fraction of the optimizer steps, >= 1 a number of them.",
                            ge=0, allow_inf_nan=False, fixed=True)
    weight_decay: float = setting(0.01, "AdamW decay on matrices (not on biases and norms).",
                                  ge=0, allow_inf_nan=False, fixed=True)
    betas: tuple[float, float] = setting((0.9, 0.999), "AdamW betas, two numbers in [0, 1).", fixed=True)
    grad_clip: float = setting(1.0, "Max global gradient norm, 0 = off (the norm is always computed, so "
                               "non-finite gradients stop the run).", ge=0, allow_inf_nan=False, fixed=True)
    precision: Literal["auto", "bf16", "fp32"] = setting("auto", "auto: bf16 autocast on GPU, fp32 on CPU.",
                                                         fixed=True)
    compile: bool = setting(False, "torch.compile the training step.")
    device: Device = setting("auto", "auto | cpu | cuda | cuda:N (under torchrun: auto picks this process's GPU).")
    eval_batch_size: int = setting(64, "Validation batch size.", ge=1)
    log_every: int = setting(10, "Log training metrics every N optimizer steps.", ge=1)
    ckpt_minutes: float = setting(10.0, "Also checkpoint when this many minutes have passed since the last "
                                  "checkpoint (checked at each logging step); 0 = only by steps.", ge=0,
                                  allow_inf_nan=False)
    keep_checkpoints: int = setting(2, "Checkpoints kept on disk (the newest); 0 = all.", ge=0)
    resume: bool = setting(False, "Continue the run in --out from its latest checkpoint (same settings), exactly.",
                           negatable=False)
    verify_cache: Literal["auto", "always", "never"] = setting(
        "auto", "Check the cache's files against the sha256 sums of its manifest before training: auto = the "
        "files changed since they last matched (remembered in ~/.cache/vlpipe/verified), always, or never.")
    workers: int = setting(2, "Loader threads (threads mode).", ge=0)
    loader_mode: Literal[("auto", *MODES)] = setting(  # type: ignore[valid-type]
        "auto", "How the loader gathers batches. auto: inline on the CPU (the model step needs every core), "
        "threads on a GPU.")
    cpu_threads: int = setting(0, "torch threads when training on the CPU; 0 = this process's share of the cores it "
                               "may use (affinity, cgroup quota) less one core or the loader's threads, never more "
                               "than torch's own setting (OMP_NUM_THREADS).", ge=0)
    jpeg_decode: Literal[("auto", *DECODE)] = setting(  # type: ignore[valid-type]
        "auto", "Where the images of a JPEG cache (build-cache --codec jpeg) are decoded. cpu: by the loader's "
        "threads; device: one batched torchvision decode on the training device (nvJPEG on CUDA); auto: device "
        "when training on CUDA, else cpu. Raw caches ignore it.")
    live: bool = setting(True, "Rich live view on a terminal.")
    tensorboard: bool = setting(False, "Also log to RUN_DIR/tensorboard (if the package is installed).")
    plots: bool = setting(True, "Draw loss and accuracy plots into RUN_DIR/plots/ at the end.")

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"must be two numbers in [0, 1), got {list(betas)}")
        return betas

    @field_validator("model_overrides")
    @classmethod
    def _model_keys(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        check_override_keys(overrides)
        return overrides


def redefault(name: str, value: Any) -> Any:
    """A `RunSettings` setting with another default (fine-tuning trains on smaller data)."""
    info: FieldInfo = copy.copy(RunSettings.model_fields[name])
    info.default = value
    return info


class PretrainConfig(RunSettings):
    """Everything a pretraining run depends on. See docs/training.md for the meaning of each setting."""

    replaces = (("steps", "epochs"), ("epochs", "steps"))

    tasks: tuple[Literal[TASKS], ...] = setting(  # type: ignore[valid-type]
        TASKS, "Tasks: mlm (masked words), ap (alignment prediction), mim (contrastive masked patches).",
        min_length=1, fixed=True)
    task_weights: dict[str, float] = setting(factory=lambda: dict.fromkeys(TASKS, 1.0),
                                             help="Loss weight per task, e.g. mim=0.5.", fixed=True)
    mlm_prob: float = setting(0.15, "Share of real tokens masked for MLM.", gt=0, lt=1, fixed=True)
    mim_prob: float = setting(0.15, "Share of patches masked for MIM.", gt=0, lt=1, fixed=True)
    mim_tau: float = setting(0.1, "InfoNCE temperature of MIM.", gt=0, allow_inf_nan=False, fixed=True)
    ema_decay: float = setting(0.996, "EMA teacher momentum per optimizer step.", ge=0, lt=1, fixed=True)
    steps: int | None = setting(None, "Optimizer steps to train (exclusive with --epochs).", ge=1, fixed=True)
    epochs: float | None = setting(None, "Epochs over the train split, fractions allowed (exclusive with --steps).",
                                   gt=0, allow_inf_nan=False, fixed=True)
    seed: int = setting(0, "Seeds the weights' initialisation, the data order and the training masks.", fixed=True)
    eval_seed: int = setting(1234, "Fixes the validation masks and negatives.", fixed=True)
    eval_every: int = setting(0, "Evaluate every N optimizer steps; 0 = only at the end.", ge=0)
    eval_max_batches: int = setting(0, "Validation batches per evaluation; 0 = the whole val split.", ge=0)
    ckpt_every: int = setting(0, "Checkpoint every N optimizer steps; 0 = only at the end.", ge=0)
    text_init: str | None = setting(None, "Initialise the text stream from BERT weights (a file/folder, or minilm, "
                                    "which needs the cache built with --tokenizer bert-uncased).",
                                    metavar="PATH|minilm")
    vision_init: str | None = setting(None, "Initialise the image stream from a timm/open_clip ViT.",
                                      metavar="PATH")

    @field_validator("tasks", mode="before")
    @classmethod
    def _comma_list(cls, tasks: Any) -> Any:
        """A config file may write the tasks as on the command line: "mlm,ap"."""
        return tuple(t.strip() for t in tasks.split(",") if t.strip()) if isinstance(tasks, str) else tasks

    @field_validator("task_weights")
    @classmethod
    def _task_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)}; tasks are {', '.join(TASKS)}")
        bad = {t: w for t, w in weights.items() if not (w >= 0 and w != float("inf"))}
        if bad:
            raise ValueError(f"must be numbers >= 0, got {bad}")
        return weights

    @model_validator(mode="after")
    def _length(self) -> PretrainConfig:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of 'steps' or 'epochs'")
        return self

    def weights(self) -> dict[str, float]:
        """Loss weight of each enabled task (missing weights default to 1)."""
        return {t: float(self.task_weights.get(t, 1.0)) for t in self.tasks}


class FinetuneConfig(RunSettings):
    """Everything a fine-tuning run depends on (saved in each seed's config.json)."""

    out: str = setting(help="Run directory: one seed-S/ sub-run per seed and summary.json (mean ± std over "
                            "seeds).", min_length=1)
    init: str | None = setting(None, "Start from a `vlpipe train pretrain` run's latest checkpoint (every shared "
                               "weight; the pretraining heads are dropped, the classifier starts fresh) and use its "
                               "model config; none = from scratch.", metavar="PRETRAIN_RUN|none", fixed=True)
    task: Literal[LABEL_TASKS] | None = setting(  # type: ignore[valid-type]
        None, "Loss and metrics.", shown_default="the cache manifest's labels.task", fixed=True)
    fusion: Literal[FUSIONS] = setting(  # type: ignore[valid-type]
        "product", "How the head joins pooled text and image: product (ViLBERT) or concatenation.", fixed=True)
    metric: str | None = setting(None, "Validation metric for early stopping and the best checkpoint: auroc or "
                                 "accuracy (binary), top1/top5 (multiclass), macro_f1_tuned/micro_f1_tuned/"
                                 "macro_f1 (multilabel).", shown_default="auroc / top1 / macro_f1_tuned", fixed=True)
    epochs: int = setting(10, "Maximum epochs over the train split.", ge=1, fixed=True)
    patience: int = setting(3, "Stop after this many epochs without a better validation metric; 0 = never.",
                            ge=0, fixed=True)
    seeds: tuple[int, ...] = setting((0,), "Seeds, one sub-run each: --seed 0 --seed 1 or --seed 0,1,2.",
                                     flag="--seed", metavar="S[,S...]", min_length=1)
    class_weighted: bool = setting(False, "Weight the loss by the train split's label counts (imbalanced data).",
                                   fixed=True)
    head_dropout: float = setting(0.1, "Dropout in the classifier head.", ge=0, lt=1, fixed=True)
    lr: float | None = setting(None, "Peak AdamW learning rate.", gt=0, allow_inf_nan=False, fixed=True,
                               shown_default="2e-3 from scratch with --preset tiny (a measured sweep, "
                                             "docs/training.md), else 1e-4")
    batch_size: int = redefault("batch_size", 32)
    min_lr_ratio: float = redefault("min_lr_ratio", 0.0)
    warmup: float = redefault("warmup", 0.1)
    keep_checkpoints: int = redefault("keep_checkpoints", 1)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"must be distinct, got {list(seeds)}")
        return seeds

    @field_validator("init", mode="before")
    @classmethod
    def _none_word(cls, init: Any) -> Any:
        return None if isinstance(init, str) and init.lower() == "none" else init

    @model_validator(mode="before")
    @classmethod
    def _default_lr(cls, values: Any) -> Any:
        """The tiny model trained from scratch wants a larger step than pretrained weights do: on the
        sweep's from-scratch task 2e-3 reached 0.86-0.91 val accuracy where 1e-4 stayed at chance."""
        if isinstance(values, dict) and values.get("lr") is None:
            init = values.get("init")
            scratch = init is None or (isinstance(init, str) and init.lower() == "none")
            values = {**values, "lr": SCRATCH_TINY_LR if scratch and values.get("preset", "tiny") == "tiny"
                      else PRETRAINED_LR}
        return values



def load_config(file: str | None = None, **flags: Any) -> PretrainConfig:
    """Pretraining settings from a file (or a `[pretrain]` TOML table), then every flag that is not None."""
    return load_settings(PretrainConfig, file, flags, table="pretrain")


def load_finetune_config(file: str | None = None, **flags: Any) -> FinetuneConfig:
    """Fine-tuning settings from a file (or a `[finetune]` TOML table), then every flag that is not None."""
    return load_settings(FinetuneConfig, file, flags, table="finetune")
