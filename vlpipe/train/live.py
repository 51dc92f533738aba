"""The rich live view of a run: a progress bar with the latest losses, accuracies and speed."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from vlpipe.train.masking import TASKS
from vlpipe.train.metrics_log import ACCURACY_NAME


def format_stats(record: dict[str, Any]) -> str:
    """One compact line: total loss, per-task loss/accuracy, samples/s and data-wait share."""
    parts = [f"loss {record['loss']:.3f}"]
    for task in TASKS:
        if f"{task}_loss" in record:
            parts.append(f"{task} {record[f'{task}_loss']:.3f}/{record[ACCURACY_NAME[task]]:.2f}")
    if "samples_per_s" in record:
        parts.append(f"{record['samples_per_s']:.0f} samples/s")
    if "data_wait" in record:
        parts.append(f"wait {100 * record['data_wait']:.1f}%")
    return "  ".join(parts)


class LiveView:
    """Shows progress when enabled and the console is a terminal; otherwise prints nothing.

    Validation results are printed as a small table above the bar, so they stay on screen.
    """

    def __init__(self, total_steps: int, start_step: int, enabled: bool, title: str = "pretrain") -> None:
        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self._progress: Progress | None = None
        if self.enabled:
            self._progress = Progress(
                TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=self.console,
            )
            self._task = self._progress.add_task(title, total=total_steps, completed=start_step, stats="")
            self._progress.start()

    def update(self, step: int, record: dict[str, Any] | None = None) -> None:
        if self._progress is None:
            return
        fields = {"stats": format_stats(record)} if record else {}
        self._progress.update(self._task, completed=step, **fields)

    def show_eval(self, step: int, record: dict[str, Any]) -> None:
        """Pretraining's per-task losses and accuracies as a table; any other metrics on one line."""
        if not self.enabled:
            return
        if not any(f"{task}_loss" in record for task in TASKS):
            self.console.print(f"step {step}: val " + "  ".join(f"{k} {v:.4f}" for k, v in record.items()
                                                                  if k != "n" and v is not None))
            return
        table = Table(title=f"validation @ step {step}", show_edge=False)
        for name in ("task", "loss", "accuracy"):
            table.add_column(name)
        for task in TASKS:
            if f"{task}_loss" in record:
                table.add_row(task, f"{record[f'{task}_loss']:.4f}", f"{record[ACCURACY_NAME[task]]:.4f}")
        self.console.print(table)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
