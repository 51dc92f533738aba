"""Learning-rate schedule: linear warmup then cosine decay, counted in optimizer steps.

The schedule is a pure function of the optimizer step, so its whole "state" is that step number
(saved in the checkpoint JSON) and there is nothing to pickle. Counting optimizer steps, not
micro-batches, is the point: with gradient accumulation the old system counted micro-batches for
the total but optimizer steps for the warmup, and warmup silently grew to 30% of training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WarmupCosine:
    """lr(step) for `total_steps` optimizer steps, the first `warmup_steps` rising linearly."""

    base_lr: float
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, {self.total_steps}], got {self.warmup_steps}")

    def lr(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based: the update that makes step+1)."""
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        floor = self.base_lr * self.min_lr_ratio
        return floor + (self.base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the learning rate of every parameter group for `step`; returns it."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


def warmup_steps_for(total_steps: int, warmup: float) -> int:
    """`warmup` < 1 is a fraction of the optimizer steps, >= 1 an absolute number of them."""
    steps = round(warmup * total_steps) if warmup < 1 else int(warmup)
    return min(total_steps, max(0, steps))
