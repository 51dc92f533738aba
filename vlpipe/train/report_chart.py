"""The PNG of `vlpipe report`: one panel per kind of result, bars beside their chance level.

Fine-tuning: one group of bars per metric of the test split (val when a run has no labelled
test), mean with a standard-deviation error bar per run, the gap to the run from scratch written
over each initialised run's bar. Zero-shot retrieval: R@K both ways per run. Linear probe: the
probe's main metric per feature set, the run's weights beside a random init (hatched). A dashed
line marks chance wherever it is known.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vlpipe.train.compare import DIRECTION_NAMES, METRIC_ORDER, RunEntry, scratch_of
from vlpipe.utils.atomic import atomic_path


def draw_report(entries: list[RunEntry], path: Path) -> None:
    """Draw the panels that `entries` have results for into `path` (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finetuned = [e for e in entries if e.summary is not None]
    evaluated = [e for e in entries if e.evaluation is not None]
    panels = [(draw, runs) for draw, runs in ((_finetune, finetuned),
                                              (_retrieval, [e for e in evaluated if e.evaluation.get("retrieval")]),
                                              (_probe, [e for e in evaluated if e.evaluation.get("probe")])) if runs]
    widths = [max(4.0, 1.4 * _groups(draw, runs) * max(1, len(runs)) ** 0.5 + 2) for draw, runs in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), 5.0), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (draw, runs) in zip(axes[0], panels, strict=True):
        draw(ax, runs)
        ax.set_ylim(0, 1.12)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _groups(draw: Any, runs: list[RunEntry]) -> int:
    if draw is _finetune:
        return len(_finetune_metrics(runs, _finetune_split(runs)))
    if draw is _retrieval:
        return 6
    return 3


def _finetune_split(runs: list[RunEntry]) -> str:
    return "test" if all("test" in e.summary["mean"] for e in runs if e.summary) else "val"


def _finetune_metrics(runs: list[RunEntry], split: str) -> list[str]:
    present = {m for e in runs if e.summary for m in e.summary["mean"].get(split, {})}
    return [m for m in METRIC_ORDER if m in present]


def _bars(ax: Any, groups: list[str], series: list[tuple[str, list[float], list[float], dict[str, Any]]],
          chance: list[float | None]) -> list[list[float]]:
    """Grouped bars (one series per run or per run and weights) with a chance dash per group;
    returns each series' bar positions."""
    width = 0.8 / max(1, len(series))
    positions = []
    for i, (label, means, errors, style) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(xs, means, width, yerr=errors if any(errors) else None, capsize=3, label=label, **style)
        positions.append(xs)
    for j, level in enumerate(chance):
        if level is not None:
            ax.hlines(level, j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=1,
                      label="chance" if j == next(k for k, c in enumerate(chance) if c is not None) else None)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    return positions


def _finetune(ax: Any, runs: list[RunEntry]) -> None:
    split = _finetune_split(runs)
    metrics = _finetune_metrics(runs, split)
    series = []
    for e in runs:
        summary = e.summary or {}
        means = [_num(summary["mean"].get(split, {}).get(m)) for m in metrics]
        stds = [_num(summary["std"].get(split, {}).get(m), 0.0) for m in metrics]
        series.append((f"{e.label} ({len(summary['seeds'])} seeds, {e.placement})", means, stds, {}))
    chance = [next((e.chance.get(split, {}).get(m) for e in runs if e.chance.get(split, {}).get(m) is not None),
                   None) for m in metrics]
    positions = _bars(ax, metrics, series, chance)
    for e, xs, (_, means, stds, _) in zip(runs, positions, series, strict=True):
        scratch = scratch_of(e, runs)
        if scratch is None or scratch.summary is None:
            continue
        for x, metric, mean, std in zip(xs, metrics, means, stds, strict=True):
            base = _num(scratch.summary["mean"].get(split, {}).get(metric))
            if not math.isnan(mean) and not math.isnan(base):
                ax.annotate(f"{mean - base:+.3f}", (x, mean + std + 0.01), ha="center", fontsize=7)
    ax.set_title(f"fine-tuning, {split} split: mean ± std over seeds", fontsize=9)


def _retrieval(ax: Any, runs: list[RunEntry]) -> None:
    results = [(e.evaluation or {})["retrieval"] for e in runs]
    first = results[0]
    keys = [(d, k) for d in DIRECTION_NAMES for k in first.get(d, {})]
    groups = [f"{DIRECTION_NAMES[d].replace(' → ', '→')}\nR@{k[1:]}" for d, k in keys]
    series = [(e.label, [_num(r.get(d, {}).get(k)) for d, k in keys], [0.0] * len(keys), {})
              for e, r in zip(runs, results, strict=True)]
    _bars(ax, groups, series, [first["chance"].get(d, {}).get(k) for d, k in keys])
    ax.set_title(f"zero-shot retrieval, {first.get('n', '?')} samples", fontsize=9)


def _probe(ax: Any, runs: list[RunEntry]) -> None:
    probes = [(e.evaluation or {})["probe"] for e in runs]
    first = probes[0]
    features = list(first["pretrained"])
    present = {m for f in features for m in first["pretrained"][f]}
    metric = next((m for m in METRIC_ORDER if m in present), "accuracy")
    series = []
    for e, probe in zip(runs, probes, strict=True):
        for weights, word, style in (("pretrained", "trained", {}), ("random_init", "random init", {"hatch": "//"})):
            series.append((f"{e.label}, {word}", [_num(probe[weights].get(f, {}).get(metric)) for f in features],
                           [0.0] * len(features), style))
    _bars(ax, features, series, [first.get("chance", {}).get(metric)] * len(features))
    ax.set_title(f"linear probe: val {metric}", fontsize=9)


def _num(value: float | None, missing: float = math.nan) -> float:
    return missing if value is None else float(value)
