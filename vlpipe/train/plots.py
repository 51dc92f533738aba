"""PNG plots of a run, drawn from `metrics.jsonl` alone (so `vlpipe plot RUN_DIR` works any time)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vlpipe.errors import VlpipeError
from vlpipe.train.masking import TASKS
from vlpipe.train.metrics_log import ACCURACY_NAME, METRICS_FILE, read_metrics
from vlpipe.utils.atomic import atomic_path

PLOTS_DIR = "plots"


def plot_run(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Write `plots/<task>.png` (loss and accuracy, train and val), `plots/loss.png` and, for a
    fine-tuning run, `plots/metrics.png`; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    metrics = run / METRICS_FILE
    if not metrics.exists():
        raise VlpipeError(f"{metrics} does not exist; is {run} a training run directory?")
    records = read_metrics(metrics)
    if not records:
        raise VlpipeError(f"{metrics} has no records yet")
    out_dir = run / PLOTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)

    def series(split: str, name: str) -> tuple[list[int], list[float]]:
        rows = [r for r in records if r.get("split") == split and name in r]
        return [r["step"] for r in rows], [r[name] for r in rows]

    written = []
    panels = [("total", "loss", None)] + [(t, f"{t}_loss", ACCURACY_NAME[t]) for t in TASKS]
    for title, loss_name, acc_name in panels:
        if not any(loss_name in r for r in records):
            continue
        ncols = 2 if acc_name else 1
        fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.6), squeeze=False)
        for ax, name, label in ((axes[0][0], loss_name, "loss"), (axes[0][-1], acc_name, "accuracy")):
            if name is None or (label == "accuracy" and ncols == 1):
                continue
            for split, style in (("train", "-"), ("val", "o-")):
                steps, values = series(split, name)
                if steps:
                    ax.plot(steps, values, style, label=split, markersize=4)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(name)
            ax.set_title(f"{title} {label}")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = out_dir / ("loss.png" if title == "total" else f"{title}.png")
        _save(fig, path, plt)
        written.append(path)
    written += _plot_classification(records, out_dir, plt)
    return written


# Fine-tuning runs log these per split (vlpipe/train/finetune.py); pretraining runs never do.
CLASSIFICATION_METRICS = ("accuracy", "auroc", "top1", "top5", "macro_f1", "micro_f1", "macro_f1_tuned")


def _plot_classification(records: list[dict], out_dir: Path, plt: Any) -> list[Path]:
    """`plots/metrics.png`: each validation metric of a fine-tuning run over optimizer steps."""
    names = [n for n in CLASSIFICATION_METRICS if any(r.get("split") == "val" and n in r for r in records)]
    if not names:
        return []
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name in names:
        rows = [r for r in records if r.get("split") == "val" and r.get(name) is not None]
        ax.plot([r["step"] for r in rows], [r[name] for r in rows], "o-", label=f"val {name}", markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_title("validation metrics")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out_dir / "metrics.png"
    _save(fig, path, plt)
    return [path]


def _save(fig: Any, path: Path, plt: Any) -> None:
    """Crash-safe (a temporary name, then a rename; no temporary left if saving fails); frees the figure."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
