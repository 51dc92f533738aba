"""Fine-tuning summaries (`summary.json`: mean ± std over seeds) and `vlpipe report`, which compares
runs (e.g. without vs with pretraining) from them.

Each metric is shown as mean ± standard deviation over the run's seeds, per split, as a table
(Markdown, and a rich table in the CLI) and as a bar chart with error bars (PNG). Only the
summaries are read, so a report can be redrawn at any time without touching the checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlpipe.cache.format import SPLITS
from vlpipe.errors import VlpipeError, shown
from vlpipe.train.metrics_log import json_number
from vlpipe.utils.atomic import atomic_open, atomic_path

SUMMARY_FILE = "summary.json"
# The splits a comparison shows, the held-out one first: test where the data has it, then val.
REPORTED_SPLITS = tuple(s for s in reversed(SPLITS) if s != "train")
# Metrics in the order a reader looks for them; `n`, `loss` and `threshold` are not comparisons.
METRIC_ORDER = ("accuracy", "auroc", "top1", "top5", "macro_f1_tuned", "micro_f1_tuned", "macro_f1", "micro_f1")


def summarize(results: dict[int, dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for one seed) of every metric per split, over
    the seeds' `result.json` contents; `settings` (init, fusion, ...) are recorded beside them."""
    first = next(iter(results.values()))
    mean: dict[str, dict[str, float | None]] = {}
    std: dict[str, dict[str, float | None]] = {}
    for split in first["metrics"]:
        mean[split], std[split] = {}, {}
        for name in first["metrics"][split]:
            values = np.array([_nan(r["metrics"][split].get(name)) for r in results.values()], dtype=np.float64)
            mean[split][name] = json_number(float(values.mean()))
            std[split][name] = json_number(float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    return {"task": first["task"], "metric": first["metric"], "init_loaded": first["init_loaded"], **settings,
            "seeds": list(results), "mean": mean, "std": std,
            "runs": {str(seed): r for seed, r in results.items()}}


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


@dataclass
class Report:
    labels: list[str]  # one per run: its directory name
    header: list[str]  # "split", "metric", then the labels
    rows: list[list[str]]  # "mean ± std" cells; "-" where a run lacks the metric
    markdown: Path
    png: Path


def load_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY_FILE
    if not path.exists():
        raise VlpipeError(f"{path} does not exist; is {run_dir} a finished `vlpipe train finetune` run?")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise VlpipeError(f"{path} is not valid JSON ({exc})") from exc
    missing = [k for k in ("mean", "std", "seeds") if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise VlpipeError(f"{path} is not a fine-tuning summary (no {', '.join(missing)})")
    problem = _summary_problem(summary)
    if problem:
        raise VlpipeError(f"{path}: {problem}")
    return summary


def _summary_problem(summary: dict[str, Any]) -> str | None:
    """What keeps `summary` from being tabulated and charted, if anything.

    Checked when the file is read, before the report folder is made, so a hand-edited or foreign
    summary.json is named with the exact entry at fault instead of failing halfway through writing.
    """
    if not isinstance(summary["seeds"], list):
        return f"'seeds' must be a list, got {shown(summary['seeds'], 40)}"
    for part in ("mean", "std"):
        splits = summary[part]
        if not isinstance(splits, dict):
            return f"{part!r} must be an object of splits (test, val), got {shown(splits, 40)}"
        for split, metrics in splits.items():
            if not isinstance(metrics, dict):
                return f"{part}.{split} must be an object of metrics, got {shown(metrics, 40)}"
            for name, value in metrics.items():
                if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                    return f"{part}.{split}.{name} must be a number or null, got {shown(value, 40)}"
    return None


def _cell(summary: dict[str, Any], split: str, metric: str) -> str:
    mean = summary["mean"].get(split, {}).get(metric)
    std = summary["std"].get(split, {}).get(metric)
    if mean is None:
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def _metrics(summaries: list[dict[str, Any]], split: str) -> list[str]:
    present = {m for s in summaries for m in s["mean"].get(split, {})}
    return [m for m in METRIC_ORDER if m in present]


def build_report(runs: list[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None) -> Report:
    """Read each run's summary.json; write `report.md` and `report.png` into `out`.

    `out` defaults to the first run's parent directory (where sibling runs such as
    `runs/hm-scratch` and `runs/hm-pretrained` live), so the report sits next to what it compares.
    """
    if not runs:
        raise VlpipeError("give at least one fine-tuning run directory")
    summaries = [load_summary(r) for r in runs]
    labels = [Path(r).resolve().name for r in runs]
    if len(set(labels)) != len(labels):  # runs with the same folder name in different places
        labels = [str(Path(r)) for r in runs]
    out_dir = Path(out) if out is not None else Path(runs[0]).resolve().parent
    if out_dir.exists() and not out_dir.is_dir():
        raise VlpipeError(f"--out {out_dir} is a file, not a folder")

    header = ["split", "metric", *labels]
    rows = [["", "init", *[str(s.get("init") or "none") for s in summaries]],
            ["", "tensors loaded", *[str(s.get("init_loaded", 0)) for s in summaries]],
            ["", "seeds", *[str(len(s["seeds"])) for s in summaries]]]
    for split in REPORTED_SPLITS:
        for metric in _metrics(summaries, split):
            rows.append([split, metric, *[_cell(s, split, metric) for s in summaries]])

    markdown, png = out_dir / "report.md", out_dir / "report.png"
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(markdown, "w", encoding="utf-8") as fh:
            fh.write("# Fine-tuning comparison\n\nEach cell: mean ± standard deviation over seeds.\n\n")
            fh.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
            fh.writelines("| " + " | ".join(row) + " |\n" for row in rows)
        _bar_chart(summaries, labels, png)
    except BaseException:
        if created:  # a folder this call made holds nothing else: leave no half-written report behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return Report(labels, header, rows, markdown, png)


def _bar_chart(summaries: list[dict[str, Any]], labels: list[str], path: Path) -> None:
    """Grouped bars, one group per metric of the test split (val when no run has test labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = "test" if all("test" in s["mean"] for s in summaries) else "val"
    metrics = _metrics(summaries, split)
    width = 0.8 / max(1, len(summaries))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(metrics) * max(1, len(summaries)) ** 0.5 + 2), 3.8))
    for i, (summary, label) in enumerate(zip(summaries, labels, strict=True)):
        means = [_number(summary["mean"].get(split, {}).get(m)) for m in metrics]
        stds = [_number(summary["std"].get(split, {}).get(m), 0.0) for m in metrics]
        xs = [j + (i - (len(summaries) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, means, width, yerr=stds, capsize=4, label=f"{label} ({len(summary['seeds'])} seeds)")
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{split} split: mean ± std over seeds")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _number(value: float | None, missing: float = math.nan) -> float:
    return missing if value is None else float(value)
