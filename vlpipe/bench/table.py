"""Presenting a `bench_dataloader` result: one JSON object, or a rich table for people."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)


def render(report: dict[str, Any], console: Console) -> None:
    """The results table, then the ceiling, the page-cache state and the machine beneath it."""
    machine = report["machine"]
    settings = machine["settings"]
    title = (f"vlpipe bench dataloader: batch {settings['batch_size']}, {settings['workers']} worker(s), "
             f"{settings['rounds']} round(s) x {settings['seconds']} s")
    # Two tables that fit 100 columns rather than one of ~180: a terminal crops what does not fit.
    speed = {
        "workers": lambda r: str(r["workers"]),
        "samples/s": lambda r: f"{r['samples_per_s']:,.0f}",
        "min-max": lambda r: f"{r['samples_per_s_min']:,.0f}-{r['samples_per_s_max']:,.0f}",
        "x\nbaseline": lambda r: f"{r['ratio_to_baseline']:.2f}",
        "% of\nceiling": lambda r: f"{100 * r['share_of_ceiling']:.1f}",
        "% of\ncopy bound": lambda r: f"{100 * r['share_of_copy_bound']:.1f}",
        "% of\nnp.take": lambda r: f"{100 * r['share_of_np_take_ceiling']:.1f}",
    }
    cost = {
        "read MB/s": lambda r: f"{r['read_mb_per_s']:,.0f}",
        "CPU\ncores": lambda r: f"{r['cpu_cores']:.2f}",
        "peak\nRSS MB": lambda r: f"{r['peak_rss_mb']:,.0f}",
        "PSS MB": lambda r: "-" if r["pss_mb"] is None else f"{r['pss_mb']:,.0f}",
        "other\nload": lambda r: f"{r['other_load_cores']:.2f}",
    }
    console.print(_table(title, speed, report["results"], bold="samples/s"))
    console.print(_table("what it cost", cost, report["results"]))
    ceilings = ", ".join(f"{name.replace('_', ' ')}: {c['samples_per_s']:,.0f}/s"
                         for name, c in machine["ceiling"].items())
    console.print(f"random-gather ceiling {report['ceiling_samples_per_s']:,.0f} samples/s ({ceilings})")
    bounds = machine.get("ceiling_with_consumer_copy", {})
    if bounds:
        console.print("copy bound (the same gathers + the consumer's copy, the most any row can reach): "
                      + ", ".join(f"{name.replace('_', ' ')}: {c['samples_per_s']:,.0f}/s" for name, c in bounds.items()))
    takes = machine.get("np_take_ceiling", {})
    if takes:
        console.print("np.take gathers (the anchor figures' method; a reference, not a bound): "
                      + ", ".join(f"{name.replace('_', ' ')}: {c['samples_per_s']:,.0f}/s" for name, c in takes.items()))
    console.print(f"page cache: {machine['page_cache_note']}")
    console.print(f"baseline JPEGs: {machine['data']['jpeg_source']}")
    console.print(f"machine: {machine['cpu']}, {machine['usable_cpus']} usable CPU(s), "
                  f"{machine['memory_gb']} GB RAM, {machine['os']}, load {machine['load_average_1m']}")
    if any(row["other_load_cores"] >= 0.15 for row in report["results"]):
        console.print("[yellow]other processes used >= 0.15 cores during some runs: "
                      "treat those figures as lower bounds[/yellow]")
    console.print("peak RSS is summed over the benchmark process and its workers (shared pages count once per "
                  "process); PSS (end of window) splits shared pages fairly. "
                  "read MB/s = samples/s x bytes read per sample from files.")


def _table(title: str, columns: dict[str, Callable[[dict[str, Any]], str]], results: list[dict[str, Any]],
           bold: str | None = None) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column("pipeline", no_wrap=True)
    cells = [[cell(row) for cell in columns.values()] for row in results]
    for i, header in enumerate(columns):
        # Headers may wrap, figures may not: a cut-off number reads as another number.
        table.add_column(header, justify="right", overflow="fold", min_width=max(len(c[i]) for c in cells))
    for row, texts in zip(results, cells, strict=True):
        table.add_row(row["pipeline"], *(f"[bold]{text}[/bold]" if header == bold else text
                                         for header, text in zip(columns, texts, strict=True)))
    return table
