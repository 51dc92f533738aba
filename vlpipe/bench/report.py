"""Presenting a `bench_dataloader` result: one JSON object, or a rich table for people."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)


def render(report: dict[str, Any], console: Console) -> None:
    """The results table, then the ceiling, the page-cache state and the machine beneath it."""
    machine = report["machine"]
    settings = machine["settings"]
    table = Table(title=(f"vlpipe bench dataloader: batch {settings['batch_size']}, "
                         f"{settings['workers']} worker(s), {settings['rounds']} round(s) x {settings['seconds']} s"))
    table.add_column("pipeline", no_wrap=True)
    for header in ("workers", "samples/s", "min-max", "read MB/s", "CPU cores", "peak RSS MB", "PSS MB",
                   "x baseline", "% of ceiling", "% of copy bound", "% of np.take", "other load"):
        table.add_column(header, justify="right")
    for row in report["results"]:
        table.add_row(
            row["pipeline"], str(row["workers"]), f"[bold]{row['samples_per_s']:,.0f}[/bold]",
            f"{row['samples_per_s_min']:,.0f}-{row['samples_per_s_max']:,.0f}",
            f"{row['read_mb_per_s']:,.1f}", f"{row['cpu_cores']:.2f}", f"{row['peak_rss_mb']:,.0f}",
            "-" if row["pss_mb"] is None else f"{row['pss_mb']:,.0f}",
            f"{row['ratio_to_baseline']:.2f}", f"{100 * row['share_of_ceiling']:.1f}",
            f"{100 * row['share_of_copy_bound']:.1f}", f"{100 * row['share_of_np_take_ceiling']:.1f}",
            f"{row['other_load_cores']:.2f}",
        )
    console.print(table)
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
