"""`vlpipe bench ...`: a thin shell over `vlpipe.bench`."""

from __future__ import annotations

import click

from vlpipe.bench import BASELINE, BASELINES, VLPIPE_MODES
from vlpipe.bench.jpeg_files import DEFAULT_MAX_SOURCE_SAMPLES


@click.group()
def bench() -> None:
    """Measure vlpipe's loader against JPEG-decoding loaders on this machine."""


@bench.command(short_help="vlpipe's reader vs the JPEG-decoding loaders, interleaved.")
@click.option("--cache", required=True, type=click.Path(file_okay=False, path_type=str),
              help="vlpipe cache directory (from `vlpipe build-cache`).")
@click.option("--source", type=click.Path(file_okay=False, path_type=str), default=None,
              help="img2dataset webdataset folder the cache was built from: the baselines read its real "
                   "JPEGs. Without it, the cache's images are re-encoded as JPEG q95 (an approximation).")
@click.option("--batch-size", default=64, show_default=True, help="Samples per batch for every pipeline.")
@click.option("--workers", type=int, default=None,
              help="Worker processes for the baselines (equal cores); vlpipe's threads mode starts one "
                   "thread fewer, as its consuming thread gathers too. "
                   "0 loads everything in the calling process (baselines with num_workers=0, vlpipe "
                   "inline mode only). Default: all usable CPUs.")
@click.option("--seconds", default=5.0, show_default=True, help="Timed seconds per pipeline per round.")
@click.option("--rounds", default=3, show_default=True,
              help="Interleaved rounds (A B C A B C ...); rows report the median and min-max.")
@click.option("--modes", default=",".join(VLPIPE_MODES), show_default=True,
              help="Comma-separated vlpipe reader modes to measure.")
@click.option("--baselines", default=",".join(BASELINES), show_default=True,
              help=f"Comma-separated JPEG-decoding loaders to measure; must include {BASELINE}, the like-for-like "
                   "one every ratio is taken against.")
@click.option("--max-source-samples", default=DEFAULT_MAX_SOURCE_SAMPLES, show_default=True,
              help="At most this many JPEGs are extracted/re-encoded for the baselines.")
@click.option("--cold", is_flag=True,
              help="Drop the page cache before every timed run (needs root; says so when it cannot).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def dataloader(cache: str, source: str | None, batch_size: int, workers: int | None, seconds: float,
               rounds: int, modes: str, baselines: str, max_source_samples: int, cold: bool, as_json: bool) -> None:
    """Samples/s, MB/s, CPU and memory of vlpipe's reader vs torchvision-style, seed-recipe and webdataset loaders.

    All pipelines and the random-gather memory ceiling run interleaved in one process, so the
    ratios are fair on a noisy machine; absolute figures want a quiet one.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vlpipe.bench.dataloader import bench_dataloader
    from vlpipe.bench.table import render, to_json

    # Progress goes to stderr so that `--json > out.json` stays one clean JSON object.
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("preparing baseline JPEGs", total=None)

        def on_step(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        report = bench_dataloader(
            cache, source=source, batch_size=batch_size, workers=workers, seconds=seconds, rounds=rounds,
            cold=cold, modes=_names(modes), baselines=_names(baselines),
            max_source_samples=max_source_samples, progress=on_step,
        )
    if as_json:
        click.echo(to_json(report))
    else:
        out = Console()
        # Piped into a file, rich would wrap the table at 80 columns; a log wants it whole.
        render(report, out if out.is_terminal else Console(width=170))
    if cold and report["machine"]["page_cache"] != "cold":
        err.print(f"[yellow]warning:[/yellow] {report['machine']['page_cache_note']}")


def _names(option: str) -> list[str]:
    return [name.strip() for name in option.split(",") if name.strip()]
