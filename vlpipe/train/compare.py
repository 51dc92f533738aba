"""Fine-tuning summaries (`summary.json`: mean ± std over seeds) and `vlpipe report`, which compares
runs from them: fine-tuning without vs with pretraining, per fusion placement, and pretraining runs
by their `vlpipe eval` results (`eval.json`: zero-shot retrieval, linear probe).

Fine-tuning metrics are shown as mean ± standard deviation over the run's seeds, per split, with
the gap of each initialised run to the run from scratch with the same fusion placement (where the
co-attention layers sit in the text stream, read from the run's saved model config) and the
chance level of the split; runs are grouped early, middle, late fusion, as the seed's table was.
Tables go to Markdown (and a rich table in the CLI), bars with error bars to a PNG
(vlpipe/train/report_chart.py). Only the JSON files are read, so a report can be redrawn at any
time without touching the checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlpipe.cache.format import SPLITS
from vlpipe.errors import VlpipeError, shown
from vlpipe.settings import Settings, setting
from vlpipe.train.metrics_log import json_number
from vlpipe.utils.atomic import atomic_open

SUMMARY_FILE = "summary.json"
EVAL_FILE = "eval.json"  # written by `vlpipe eval` (vlpipe/eval/evaluate.py) into a pretraining run
FUSION_NAMES = ("early", "middle", "late")
# The splits a comparison shows, the held-out one first: test where the data has it, then val.
REPORTED_SPLITS = tuple(s for s in reversed(SPLITS) if s != "train")
# Metrics in the order a reader looks for them; `n`, `loss` and `threshold` are not comparisons.
METRIC_ORDER = ("accuracy", "auroc", "top1", "top5", "macro_f1_tuned", "micro_f1_tuned", "macro_f1", "micro_f1")


class ReportConfig(Settings):
    """The settings of `vlpipe report` (the runs themselves are its arguments)."""

    out: str | None = setting(None, "Folder for report.md and report.png.", shown_default="the first run's parent "
                              "folder", metavar="DIR")


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



# ---- fusion placement: where the co-attention layers sit in the text stream ----------------------


def fusion_variants(text_layers: int, count: int) -> dict[str, tuple[int, ...]]:
    """The seed's three placements of `count` co-attention layers in a text stream of `text_layers`
    layers, as `coattn.text_layers` values (co-attention layer i runs before text layer value i):
    early fusion joins the streams before the first text layers, late fusion after the last ones,
    middle fusion halfway. The tiny preset (2 text layers, 1 co-attention layer): [0], [1], [2]."""
    start = (text_layers - count + 1) // 2
    return {"early": tuple(range(count)), "middle": tuple(range(start, start + count)),
            "late": tuple(range(text_layers - count + 1, text_layers + 1))}


def placement(model: Any) -> str:
    """A run's fusion placement from its saved model config: `middle [1]` when it is one of the
    seed's variants, else the positions (`[6, 7, 8, 9, 10, 11]`); `?` without a readable config."""
    try:
        layers = int(model["text"]["layers"])
        positions = tuple(int(i) for i in model["coattn"]["text_layers"])
    except (KeyError, TypeError, ValueError):
        return "?"
    if not positions:
        return "none"
    name = next((n for n, v in fusion_variants(layers, len(positions)).items() if v == positions), None)
    return f"{name} {list(positions)}" if name else str(list(positions))


def _placement_order(label: str) -> int:
    """early, middle, late, then any other placement, then unknown: the order of the seed's table."""
    word = label.split(" ")[0]
    return FUSION_NAMES.index(word) if word in FUSION_NAMES else len(FUSION_NAMES) + (label == "?")


def chance_levels(task: str, counts: list[int]) -> dict[str, float]:
    """What a model that ignores its input scores on a split with these label counts (samples per
    class): the majority class's share for accuracy and top-1, the 5 largest shares for top-5, 0.5
    for AUROC. Nothing for multi-label F1, which for a constant guess depends on the threshold."""
    total = sum(counts)
    if task == "multilabel" or not total:
        return {}
    shares = sorted((c / total for c in counts), reverse=True)
    return {"accuracy": shares[0], "top1": shares[0], "top5": sum(shares[:5]), "auroc": 0.5}


# ---- reading runs --------------------------------------------------------------------------------


@dataclass
class RunEntry:
    """One run of a report: a fine-tuning run (its summary) or a pretraining run (its eval.json)."""

    path: Path
    label: str
    placement: str
    summary: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    chance: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> metric -> chance level


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_run(run: str | os.PathLike[str]) -> RunEntry:
    """A fine-tuning run (summary.json) or an evaluated pretraining run (eval.json), checked."""
    path = Path(run)
    if (path / SUMMARY_FILE).exists():
        summary = load_summary(path)
        config = _json(path / f"seed-{summary['seeds'][0]}" / "config.json") if summary["seeds"] else None
        config = config if isinstance(config, dict) else {}
        return RunEntry(path, path.resolve().name, placement(config.get("model")), summary=summary,
                        chance=_finetune_chance(config, summary.get("task")))
    if (path / EVAL_FILE).exists():
        evaluation = load_evaluation(path)
        config = _json(path / "config.json")
        return RunEntry(path, path.resolve().name, placement(config.get("model") if isinstance(config, dict) else None),
                        evaluation=evaluation)
    raise VlpipeError(f"{path}: no {SUMMARY_FILE} (a finished `vlpipe train finetune` run) and no {EVAL_FILE} "
                      "(a pretraining run evaluated with `vlpipe eval`)")


def _finetune_chance(config: dict[str, Any], task: Any) -> dict[str, dict[str, float]]:
    """Chance levels per split from the label counts of the cache the run was fine-tuned on, if it is still there."""
    from vlpipe.cache.format import load_manifest

    settings = config.get("finetune")
    cache = settings.get("cache") if isinstance(settings, dict) else None
    try:
        labels = load_manifest(cache).labels if isinstance(cache, str) else None
    except VlpipeError:
        return {}
    if not labels:
        return {}
    counts = labels.get("counts") or {}
    return {split: chance_levels(str(task or labels["task"]), list(c)) for split, c in counts.items()}


def load_evaluation(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """RUN/eval.json as `vlpipe eval` wrote it, or a one-line error naming what is wrong."""
    path = Path(run_dir) / EVAL_FILE
    data = _json(path)
    if not isinstance(data, dict):
        raise VlpipeError(f"{path} is not valid JSON or not an object; rerun `vlpipe eval {run_dir}`")
    for part, keys in (("retrieval", ("n", "chance")), ("probe", ("task", "pretrained", "random_init"))):
        if part in data and not (isinstance(data[part], dict) and all(k in data[part] for k in keys)):
            raise VlpipeError(f"{path}: {part!r} must be an object with {', '.join(keys)}; rerun `vlpipe eval`")
    return data


# ---- tables --------------------------------------------------------------------------------------

DIRECTION_NAMES = {"image_to_text": "image → text", "text_to_image": "text → image"}


@dataclass
class Table:
    title: str
    note: str  # how to read the cells, under the title
    header: list[str]
    rows: list[list[str]]


@dataclass
class Report:
    tables: list[Table]  # fine-tuning runs, then evaluated pretraining runs (each only when present)
    entries: list[RunEntry]  # in the order of the columns: grouped by fusion placement
    markdown: Path
    png: Path


def _chance_cell(values: list[float | None]) -> str:
    distinct = sorted({round(v, 3) for v in values if v is not None})
    return " / ".join(f"{v:.3f}" for v in distinct) or "-"


def _cell(summary: dict[str, Any], split: str, metric: str, scratch: dict[str, Any] | None = None) -> str:
    mean = summary["mean"].get(split, {}).get(metric)
    std = summary["std"].get(split, {}).get(metric)
    if mean is None:
        return "-"
    text = f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"
    base = scratch["mean"].get(split, {}).get(metric) if scratch is not None else None
    return f"{text} ({mean - base:+.3f})" if base is not None else text


def _metrics(summaries: list[dict[str, Any]], split: str) -> list[str]:
    present = {m for s in summaries for m in s["mean"].get(split, {})}
    return [m for m in METRIC_ORDER if m in present]


def scratch_of(entry: RunEntry, entries: list[RunEntry]) -> RunEntry | None:
    """The run from scratch an initialised run is compared with: the first one with its fusion placement."""
    if entry.summary is None or not entry.summary.get("init"):
        return None
    return next((e for e in entries if e.summary is not None and not e.summary.get("init")
                 and e.placement == entry.placement), None)


def finetune_table(entries: list[RunEntry]) -> Table:
    """Rows: settings, then every metric of test and val; columns: runs, then chance."""
    runs = [e for e in entries if e.summary is not None]
    summaries: list[dict[str, Any]] = [e.summary for e in runs if e.summary is not None]
    header = ["split", "metric", *[e.label for e in runs], "chance"]
    rows = [["", "init", *[str(s.get("init") or "none") for s in summaries], ""],
            ["", "tensors loaded", *[str(s.get("init_loaded", 0)) for s in summaries], ""],
            ["", "seeds", *[str(len(s["seeds"])) for s in summaries], ""],
            ["", "fusion", *[e.placement for e in runs], ""]]
    for split in REPORTED_SPLITS:
        for metric in _metrics(summaries, split):
            cells = []
            for e, summary in zip(runs, summaries, strict=True):
                scratch = scratch_of(e, runs)
                cells.append(_cell(summary, split, metric, scratch.summary if scratch else None))
            chance = _chance_cell([e.chance.get(split, {}).get(metric) for e in runs])
            rows.append([split, metric, *cells, chance])
    note = ("Each cell: mean ± standard deviation over seeds; (+x): the gap to the run from scratch with the "
            "same fusion placement; chance: what a model ignoring its input scores (majority class; AUROC 0.5).")
    return Table("fine-tuning: mean ± std over seeds", note, header, rows)


def eval_table(entries: list[RunEntry]) -> Table:
    """Rows: zero-shot retrieval R@K both ways, then the probe's metrics per feature set (trained
    weights and random init); columns: runs, then chance."""
    runs = [e for e in entries if e.evaluation is not None]
    evals: list[dict[str, Any]] = [e.evaluation for e in runs if e.evaluation is not None]
    header = ["evaluation", "measure", *[e.label for e in runs], "chance"]
    rows = [["", "checkpoint", *[str(v.get("checkpoint", "?")) for v in evals], ""],
            ["", "fusion", *[e.placement for e in runs], ""]]
    retrieval = [v.get("retrieval") for v in evals]
    if any(retrieval):
        rows.append(["retrieval", "samples", *[f"{r['n']} of {r.get('of', r['n'])} ({r.get('split', '?')})"
                                               if r else "-" for r in retrieval], ""])
        for direction, name in DIRECTION_NAMES.items():
            ks = sorted({k for r in retrieval if r for k in r.get(direction, {})}, key=lambda k: int(k[1:]))
            for k in ks:
                values = [r.get(direction, {}).get(k) if r else None for r in retrieval]
                chance = [r["chance"].get(direction, {}).get(k) if r else None for r in retrieval]
                rows.append([name, f"R@{k[1:]}", *[_number_cell(v) for v in values], _chance_cell(chance)])
    probes = [v.get("probe") for v in evals]
    if any(probes):
        rows.append(["probe", "task", *[f"{p['task']}, {p.get('n_train', '?')} -> {p.get('n_val', '?')}"
                                        if p else "-" for p in probes], ""])
        features = list(dict.fromkeys(f for p in probes if p for f in p["pretrained"]))
        for feature in features:
            present = {m for p in probes if p for m in p["pretrained"].get(feature, {})}
            for metric in (m for m in METRIC_ORDER if m in present):
                chance = [p.get("chance", {}).get(metric) if p else None for p in probes]
                for weights, word in (("pretrained", "trained"), ("random_init", "random init")):
                    values = [p[weights].get(feature, {}).get(metric) if p else None for p in probes]
                    rows.append([f"probe: {feature}", f"{metric}, {word}", *[_number_cell(v) for v in values],
                                 _chance_cell(chance)])
    note = ("R@K: share of queries whose own partner ranks in the top K by the alignment head (zero-shot); "
            "probe: logistic regression on frozen pooled features, train -> val split, with the run's weights "
            "and with a random init of the same architecture.")
    return Table("pretraining runs: zero-shot retrieval and linear probe", note, header, rows)


def _number_cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def run_tables(runs: list[str | os.PathLike[str]]) -> tuple[list[RunEntry], list[Table]]:
    """The runs read and checked, grouped by fusion placement (stable otherwise), and their tables."""
    if not runs:
        raise VlpipeError("give at least one fine-tuning run or evaluated pretraining run directory")
    entries = [read_run(r) for r in runs]
    if len({e.label for e in entries}) != len(entries):  # runs with the same folder name in different places
        for e in entries:
            e.label = str(e.path)
    entries.sort(key=lambda e: _placement_order(e.placement))
    tables = []
    if any(e.summary is not None for e in entries):
        tables.append(finetune_table(entries))
    if any(e.evaluation is not None for e in entries):
        tables.append(eval_table(entries))
    return entries, tables


def build_report(runs: list[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None) -> Report:
    """Read each run (summary.json or eval.json); write `report.md` and `report.png` into `out`.

    `out` defaults to the first run's parent directory (where sibling runs such as
    `runs/hm-scratch` and `runs/hm-pretrained` live), so the report sits next to what it compares.
    """
    entries, tables = run_tables(runs)
    out_dir = Path(out) if out is not None else Path(runs[0]).resolve().parent
    if out_dir.exists() and not out_dir.is_dir():
        raise VlpipeError(f"--out {out_dir} is a file, not a folder")
    markdown, png = out_dir / "report.md", out_dir / "report.png"
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(markdown, "w", encoding="utf-8") as fh:
            fh.write("# Run comparison\n")
            for table in tables:
                fh.write(f"\n## {table.title[0].upper()}{table.title[1:]}\n\n{table.note}\n\n")
                fh.write("| " + " | ".join(table.header) + " |\n|" + "---|" * len(table.header) + "\n")
                fh.writelines("| " + " | ".join(row) + " |\n" for row in table.rows)
        from vlpipe.train.report_chart import draw_report

        draw_report(entries, png)
    except BaseException:
        if created:  # a folder this call made holds nothing else: leave no half-written report behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return Report(tables, entries, markdown, png)
