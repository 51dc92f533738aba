"""Metric bookkeeping: device-side accumulation, `metrics.jsonl`, optional TensorBoard.

Losses and counts are summed on the device and read back only once per logging window, so the
GPU is not synchronized every step just to print a number.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vlpipe.errors import VlpipeError
from vlpipe.train.masking import TASKS

METRICS_FILE = "metrics.jsonl"
ACCURACY_NAME = {"mlm": "mlm_acc", "ap": "ap_acc", "mim": "mim_top1"}


class Accumulator:
    """Sums the per-step outputs of `PretrainObjective` over a window; `summary()` gives means."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, results: dict[str, torch.Tensor]) -> None:
        """Add one micro-batch's outputs; losses are weighted by their counts for exact means."""
        for task in TASKS:
            if f"{task}_loss" not in results:
                continue
            count = results[f"{task}_count"].detach().float()
            self._add(f"{task}_loss_sum", results[f"{task}_loss"].detach().float() * count)
            self._add(f"{task}_correct", results[f"{task}_correct"].detach().float())
            self._add(f"{task}_count", count)
        self._add("loss", results["loss"].detach().float())
        self.steps += 1

    def _add(self, name: str, value: torch.Tensor) -> None:
        self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()

    def summary(self, all_ranks: bool = False) -> dict[str, float]:
        """Mean loss per task, accuracy per task and mean total loss (one device sync).

        `all_ranks`: sum over the DDP process group first (every rank must call it), so the
        numbers describe the global batch rather than rank 0's shard.
        """
        if not self.sums:
            return {}
        names = list(self.sums)
        stacked = torch.stack([self.sums[n] for n in names])
        steps = self.steps
        if all_ranks and dist.is_available() and dist.is_initialized():
            dist.all_reduce(stacked)
            steps *= dist.get_world_size()
        sums = dict(zip(names, stacked.cpu().tolist(), strict=True))
        out = {"loss": sums["loss"] / max(1, steps)}
        for task in TASKS:
            if f"{task}_count" in sums:
                count = max(1.0, sums[f"{task}_count"])
                out[f"{task}_loss"] = sums[f"{task}_loss_sum"] / count
                out[ACCURACY_NAME[task]] = sums[f"{task}_correct"] / count
        return out

    def reset(self) -> None:
        self.sums.clear()
        self.steps = 0


class MetricsWriter:
    """Appends one JSON object per line to `RUN_DIR/metrics.jsonl` (and to TensorBoard if asked)."""

    def __init__(self, run_dir: str | os.PathLike[str], tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = _tensorboard_writer(Path(run_dir) / "tensorboard") if tensorboard else None

    def write(self, record: dict[str, Any]) -> None:
        # Line-buffered append + flush: a crash loses at most the line being written.
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in record.items():
                if isinstance(value, float | int) and name not in ("step", "epoch"):
                    self._tb.add_scalar(f"{record['split']}/{name}", value, record["step"])
            self._tb.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: on resume, the steps after the checkpoint are redone."""
        if not self.path.exists():
            return
        kept = [line for line in read_metrics(self.path) if line["step"] <= step]
        tmp = self.path.with_name(f".tmp-{self.path.name}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def json_number(value: float) -> float | None:
    """JSON has no NaN: an undefined metric (e.g. AUROC of a one-class split) is stored as null."""
    return value if math.isfinite(value) else None


def _tensorboard_writer(log_dir: Path) -> Any:
    """A SummaryWriter, or None with a note when the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("note: tensorboard is not installed; metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(log_dir))


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file; a torn last line (crash mid-write) is skipped.

    Any other bad line (not UTF-8, not JSON, not a record of numbers) is an error naming
    `file:line`: skipping it would silently drop a point from the plots, and on resume
    `MetricsWriter.truncate_after` would rewrite the file without it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VlpipeError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    lines = data.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()  # the file ends with a newline, as every complete write does
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both are ValueErrors
            if number == len(lines):
                break  # a torn last line: the process died while writing it
            reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"not valid JSON ({exc.msg})"
            raise VlpipeError(f"{path}:{number}: {reason}") from exc
        problem = _record_problem(record)
        if problem:
            raise VlpipeError(f"{path}:{number}: {problem}")
        records.append(record)
    return records


def _record_problem(record: Any) -> str | None:
    """What is wrong with one parsed line, if anything: what `MetricsWriter.write` writes is an object
    with a string `split`, an integer `step` and numbers (or null for an undefined metric)."""
    if not isinstance(record, dict):
        return f"expected a JSON object (a metrics record), got {type(record).__name__} {json.dumps(record)[:40]}"
    if not isinstance(record.get("split"), str):
        return f"'split' must be a string, got {json.dumps(record.get('split'))[:40]}"
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return f"'step' must be an integer, got {json.dumps(step)[:40]}"
    for name, value in record.items():
        if name != "split" and value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"{name!r} must be a number or null, got {json.dumps(value)[:40]}"
    return None
