"""What a person watching a run sees: a live bar on a terminal, plain progress lines in a log.

On a terminal: step/total, elapsed, ETA and the latest losses in one line that fits the terminal's
width (80 columns keep the bar, the step count, the ETA and the main loss; secondary fields are
dropped first). When the output is a file or a batch job's log, a plain line every
`LOG_EVERY_SECONDS` instead, so a long run is never silent for minutes.
"""

from __future__ import annotations

import time
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

LOG_EVERY_SECONDS = 30.0
# What the bar, step count, elapsed and remaining time take at most, beside the title.
_FIXED_COLUMNS = 48


def format_stats(record: dict[str, Any], width: int = 1000) -> str:
    """The latest training window in at most `width` characters: the total loss always, then each
    task's loss/accuracy, samples/s and the data-wait share while they fit."""
    parts = [f"loss {record['loss']:.3f}"]
    extra = [f"{task} {record[f'{task}_loss']:.3f}/{record[ACCURACY_NAME[task]]:.2f}"
             for task in TASKS if f"{task}_loss" in record]
    if "samples_per_s" in record:
        extra.append(f"{record['samples_per_s']:.0f} samples/s")
    if "data_wait" in record:
        extra.append(f"wait {100 * record['data_wait']:.1f}%")
    for part in extra:
        if len("  ".join([*parts, part])) > width:
            break
        parts.append(part)
    return "  ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class LiveView:
    """A rich bar on a terminal, a plain line every `every` seconds elsewhere; nothing when disabled.

    Validation results are printed above the bar (or as a line), so they stay on screen.
    """

    def __init__(self, total_steps: int, start_step: int, enabled: bool, title: str = "pretrain",
                 every: float = LOG_EVERY_SECONDS) -> None:
        self.console = Console(stderr=True)
        self.enabled = enabled
        self.total, self.start, self.title, self.every = total_steps, start_step, title, every
        self.began = self.last_line = time.monotonic()
        self.stats: dict[str, Any] = {}
        self._progress: Progress | None = None
        if enabled and self.console.is_terminal:
            width = max(10, self.console.width - len(title) - _FIXED_COLUMNS)
            self.width = width
            self._progress = Progress(
                TextColumn(f"[bold]{title}"), BarColumn(bar_width=12), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=self.console,
            )
            self._task = self._progress.add_task(title, total=total_steps, completed=start_step, stats="")
            self._progress.start()

    def update(self, step: int, record: dict[str, Any] | None = None) -> None:
        if record:
            self.stats = record
        if self._progress is not None:
            fields = {"stats": format_stats(record, self.width)} if record else {}
            self._progress.update(self._task, completed=step, **fields)
        elif self.enabled and time.monotonic() - self.last_line >= self.every:
            self.last_line = time.monotonic()
            self.console.print(self.line(step), soft_wrap=True, highlight=False)

    def line(self, step: int) -> str:
        """`pretrain step 120/1000 (12%) 0m40s, ETA 4m53s  loss 3.210 ...`: one plain progress line."""
        elapsed = time.monotonic() - self.began
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done > 0 else 0.0
        text = (f"{self.title} step {step}/{self.total} ({100 * step / max(1, self.total):.0f}%) "
                f"{_duration(elapsed)}, ETA {_duration(eta)}")
        return f"{text}  {format_stats(self.stats)}" if self.stats else text

    def show_eval(self, step: int, record: dict[str, Any]) -> None:
        """Pretraining's per-task losses and accuracies as a table; any other metrics on one line."""
        if not self.enabled:
            return
        if self._progress is None or not any(f"{task}_loss" in record for task in TASKS):
            self.console.print(f"step {step}: val " + "  ".join(f"{k} {v:.4f}" for k, v in record.items()
                                                                  if k != "n" and v is not None),
                               soft_wrap=True, highlight=False)
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
