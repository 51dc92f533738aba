"""`vlpipe bench ...`: a thin shell over `vlpipe.bench`."""

from __future__ import annotations

from typing import Any

import click

from vlpipe.bench.config import DataloaderSettings
from vlpipe.cli.options import cli_options
from vlpipe.settings import load_settings


@click.group()
def bench() -> None:
    """Measure vlpipe's loader against JPEG-decoding loaders on this machine."""


@bench.command(short_help="vlpipe's reader vs the JPEG-decoding loaders, interleaved.")
@cli_options(DataloaderSettings)
def dataloader(config_file: str | None, **flags: Any) -> None:
    """Samples/s, bytes, CPU and memory of vlpipe's reader vs torchvision-style, seed-recipe and webdataset loaders.

    All pipelines and the random-gather memory ceiling run interleaved in one process, so the
    ratios are fair on a noisy machine; absolute figures want a quiet one.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vlpipe.bench.dataloader import COLD_RESIDENT_WARNING, bench_dataloader
    from vlpipe.bench.table import render, to_json

    settings = load_settings(DataloaderSettings, config_file, flags, table="bench")

    # Progress goes to stderr so that `--json > out.json` stays one clean JSON object.
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("preparing baseline JPEGs", total=None)

        def on_step(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        report = bench_dataloader(
            settings.cache, source=settings.source, batch_size=settings.batch_size, workers=settings.workers,
            seconds=settings.seconds, rounds=settings.rounds, cold=settings.cold, modes=settings.modes,
            baselines=settings.baselines, max_source_samples=settings.max_source_samples, progress=on_step,
            jpeg_cache=settings.jpeg_cache,
        )
    if settings.as_json:
        click.echo(to_json(report))
    else:
        out = Console()
        # Piped into a file, rich would wrap the table at 80 columns; a log wants it whole.
        render(report, out if out.is_terminal else Console(width=170))
    if any((row["cached_share_after_evict"] or 0) > COLD_RESIDENT_WARNING for row in report["results"]):
        err.print(f"[yellow]warning:[/yellow] {report['machine']['page_cache_note']}")
