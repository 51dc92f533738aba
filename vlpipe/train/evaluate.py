"""Validation with fixed masks and negatives, so numbers are comparable across runs and epochs.

Masks and negatives come from `tasks.prepare_batch` with `stream=EVAL_STREAM` and the run's
`eval_seed`: a pure function of each sample's global index. Batches are consecutive val samples
in a fixed batch size, so the AP donor (the next sample in the batch) is fixed too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from vlpipe.train.metrics import Accumulator
from vlpipe.train.objective import EMATeacher, PretrainObjective
from vlpipe.train.tasks import EVAL_STREAM, TaskSettings, TextSpecials, prepare_batch

BATCH_KEYS = ("images", "input_ids", "lengths", "index")


@torch.no_grad()
def evaluate(
    objective: PretrainObjective,
    teacher: EMATeacher | None,
    dataset: object,
    *,
    specials: TextSpecials,
    settings: TaskSettings,
    num_patches: int,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
    max_batches: int = 0,
) -> dict[str, float]:
    """Loss per task, MLM accuracy, AP accuracy and MIM top-1 on `dataset` (a `CacheDataset`).

    The objective is put in eval mode (no dropout) and restored afterwards.
    """
    was_training = objective.training
    objective.eval()
    acc = Accumulator()
    n = len(dataset)  # type: ignore[arg-type]
    starts = list(range(0, n, batch_size))
    if max_batches > 0:
        starts = starts[:max_batches]
    began = time.perf_counter()
    samples = 0
    try:
        for start in starts:
            raw = dataset.__getitems__(list(range(start, min(n, start + batch_size))))  # type: ignore[attr-defined]
            batch = {k: raw[k].to(device, non_blocking=True) for k in BATCH_KEYS}
            inputs = prepare_batch(batch, specials, settings, num_patches, stream=EVAL_STREAM)
            with autocast():
                if teacher is not None and "mim_positions" in inputs:
                    inputs["mim_targets"] = teacher.targets(inputs["images"], inputs["mim_positions"])
                acc.add(objective(**inputs))
            samples += len(batch["index"])
    finally:
        objective.train(was_training)
    summary = acc.summary()
    summary["samples"] = samples
    summary["eval_seconds"] = time.perf_counter() - began
    return summary
