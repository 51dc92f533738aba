"""Presenting a `bench_dataloader` result: one JSON object, or rich tables for people.

The tables fit 80 columns whatever the figures: every figure is at most `FIGURE_WIDTH` characters
(49,979 / 1.2M), and the columns are split over three tables (speed, cost, bytes). A figure that grows with the machine's
speed must never widen the table, because a terminal crops what does not fit. The JSON keeps every
figure exact, and the fields no table shows (per-round rates, peak RSS).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from vlpipe.bench import BASELINE

FIGURE_WIDTH = 7
_THOUSANDS = "kMGTPEZY"


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)


def figure(value: float, decimals: int = 0) -> str:
    """`value` in at most FIGURE_WIDTH characters: fewer decimals first, then k/M/G... suffixes."""
    for places in range(decimals, -1, -1):
        text = f"{value:,.{places}f}"
        if len(text) <= FIGURE_WIDTH:
            return text
    for power, suffix in enumerate(_THOUSANDS, start=1):
        scaled = value / 1000**power
        if abs(scaled) < 999.95:
            return f"{scaled:.1f}{suffix}"
    return f"{value:.1e}"


def _ratio(value: float) -> str:
    return figure(value, 2 if value < 10 else 1)


def _percent(value: float | None) -> str:
    """A share as a percentage, or "-" where the run has no such bound (no raw cache, a warm row)."""
    return "-" if value is None else figure(100 * value, 1)


def render(report: dict[str, Any], console: Console) -> None:
    """The speed table and the cost table, then the ceilings, the page-cache state and the machine."""
    machine = report["machine"]
    settings = machine["settings"]
    speed = {
        "samples\n/s": lambda r: figure(r["samples_per_s"]),
        "x\nbaseline": lambda r: _ratio(r["ratio_to_baseline"]),
        "% of\nceiling": lambda r: _percent(r["share_of_ceiling"]),
        "% of copy\nbound": lambda r: _percent(r["share_of_copy_bound"]),
        "% of\nnp.take": lambda r: _percent(r["share_of_np_take_ceiling"]),
        "other\nload": lambda r: figure(r["other_load_cores"], 2),
    }
    cost = {
        "workers": lambda r: str(r["workers"]),
        "min /s": lambda r: figure(r["samples_per_s_min"]),
        "max /s": lambda r: figure(r["samples_per_s_max"]),
        "CPU\ncores": lambda r: figure(r["cpu_cores"], 2),
        "PSS MB": lambda r: "-" if r["pss_mb"] is None else figure(r["pss_mb"]),
    }
    size = {
        "read\nB/sample": lambda r: figure(r["read_bytes_per_sample"]),
        "stored\nB/sample": lambda r: figure(r["stored_bytes_per_sample"]),
        "read\nMB/s": lambda r: figure(r["read_mb_per_s"]),
        "% of\ndisk": lambda r: _percent(r["share_of_disk_read"]),
    }
    console.print(_table(f"bench dataloader: batch {settings['batch_size']}, {settings['workers']} worker(s), "
                         f"median of {settings['rounds']} x {settings['seconds']} s", speed, report["results"],
                         bold="samples\n/s"))
    console.print(_table("range over rounds, and what it cost", cost, report["results"]))
    console.print(_table("bytes per sample: read, and stored on disk", size, report["results"]))
    console.print(f"x baseline: samples/s over {BASELINE}'s, the like-for-like JPEG loader (it delivers uint8 "
                  "pixels + token ids, as vlpipe does).")
    if report["ceiling_samples_per_s"] is not None:
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
    disk = machine.get("disk_sequential_read")
    if disk:
        console.print(f"disk sequential read (cold, same run): {disk['mb_per_s']:,.0f} MB/s [{disk['min']:,.0f}-"
                      f"{disk['max']:,.0f}] over {disk['bytes'] / 1e6:,.0f} MB; % of disk = a cold row's read MB/s "
                      "over it")
    for name, reason in machine.get("skipped", {}).items():
        console.print(f"[yellow]{name} not run:[/yellow] {reason}")
    console.print(f"page cache: {machine['page_cache_note']}")
    console.print(f"baseline JPEGs: {machine['data']['jpeg_source']}")
    console.print(f"machine: {machine['cpu']}, {machine['usable_cpus']} usable CPU(s), "
                  f"{machine['memory_gb']} GB RAM, {machine['os']}, load {machine['load_average_1m']}")
    if any(row["other_load_cores"] >= 0.15 for row in report["results"]):
        console.print("[yellow]other processes used >= 0.15 cores during some runs: "
                      "treat those figures as lower bounds[/yellow]")
    console.print("PSS (proportional set size, end of window) splits shared pages fairly over the process tree; "
                  "read MB/s = samples/s x bytes read per sample from files; stored = the data's bytes on disk per "
                  "sample. Per-round rates and peak RSS: --json.")


def _table(title: str, columns: dict[str, Callable[[dict[str, Any]], str]], results: list[dict[str, Any]],
           bold: str | None = None) -> Table:
    # No edges and single spaces between columns: 7 columns of 7-character figures fit 80 columns.
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column("pipeline", no_wrap=True)
    cells = [[cell(row) for cell in columns.values()] for row in results]
    for i, header in enumerate(columns):
        # Headers may wrap at their line breaks, figures may not: a cut-off number reads as another number.
        width = max([len(c[i]) for c in cells] + [len(line) for line in header.split("\n")])
        table.add_column(header, justify="right", no_wrap=True, min_width=width)
    for row, texts in zip(results, cells, strict=True):
        table.add_row(row["pipeline"], *(f"[bold]{text}[/bold]" if header == bold else text
                                         for header, text in zip(columns, texts, strict=True)))
    return table
