"""`vlpipe fetch cc|tsv|report`: a thin click shell over `vlpipe.fetch`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from vlpipe.cli.options import cli_options
from vlpipe.fetch.config import CcCommand, ReportCommand, TsvCommand
from vlpipe.fetch.tally import fetch_report, format_report
from vlpipe.settings import load_settings


@click.group()
def fetch() -> None:
    """Download image-text pairs with img2dataset; keep only correct images, explain every drop.

    Output: img2dataset webdataset shards (NNNNN.tar with KEY.jpg/.txt/.json) that `vlpipe
    build-cache` reads, plus vlpipe_* drop records. Rerun the same command to resume.
    """


@fetch.command("cc", short_help="Fetch Conceptual Captions (e.g. --subset 200k).")
@cli_options(CcCommand)
def cc(config_file: str | None, **flags: Any) -> None:
    """Fetch Conceptual Captions 3M, for example `vlpipe fetch cc --subset 200k`."""
    from vlpipe.fetch.pipeline import fetch_cc

    # Checked before a multi-GB list download, not after it.
    settings = load_settings(CcCommand, config_file, flags, table="fetch")
    subset, train = settings.fetch.subset, settings.split == "train"
    out = settings.out or str(Path("cache/raw") / (f"cc-{subset}" if train else f"cc-val-{subset}"))
    report = fetch_cc(out, split=settings.split, tsv=settings.tsv, download_dir=settings.download_dir,
                      config=settings.fetch)
    click.echo(format_report(report))


@fetch.command("tsv", short_help="Fetch any caption/URL list: a TSV path or URL.")
@click.argument("source")
@cli_options(TsvCommand)
def tsv(source: str, config_file: str | None, **flags: Any) -> None:
    """Fetch any caption/URL list (CC12M, SBU, your own): a TSV path or http(s) URL.

    Headerless 2-column files (caption/url in either order) or files with a header naming
    `caption` and `url` columns.
    """
    from vlpipe.fetch.pipeline import fetch_tsv

    settings = load_settings(TsvCommand, config_file, flags, table="fetch")
    report = fetch_tsv(source, settings.out, download_dir=settings.download_dir, config=settings.fetch)
    click.echo(format_report(report))


@fetch.command("report", short_help="Kept, dropped by reason, bytes and speed of a fetch.")
@click.argument("directory", type=click.Path(path_type=Path))
@cli_options(ReportCommand)
def report(directory: Path, config_file: str | None, **flags: Any) -> None:
    """Attempted, kept, dropped by reason, bytes, images/s and duration of a fetch."""
    settings = load_settings(ReportCommand, config_file, flags)
    result = fetch_report(directory)
    click.echo(json.dumps(result, indent=2) if settings.as_json else format_report(result))
