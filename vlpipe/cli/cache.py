"""`vlpipe build-cache` and `vlpipe cache verify|info|merge`: a thin shell over `vlpipe.cache`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vlpipe.cache.config import BuildSettings, InfoSettings, VerifySettings
from vlpipe.cli.options import cli_options
from vlpipe.settings import load_settings

DEFAULT_ROOT = Path("cache")


@click.command("build-cache")
@click.argument("src", type=click.Path(path_type=str))
@cli_options(BuildSettings)
def build_cache(src: str, config_file: str | None, **flags: Any) -> None:
    """Tokenize and patchify SRC once into a memory-mapped cache (docs/cache-format.md).

    SRC is an img2dataset output folder (webdataset .tar, parquet or files layout, e.g. from
    `vlpipe fetch`), a folder of images with one captions file (.jsonl, .csv or .tsv), or a
    labelled downstream dataset (Hateful Memes, MM-IMDB, UPMC Food-101 folder, or a generic
    labelled .jsonl/.csv file): its labels go to labels.npy and its own train/val/test splits are
    kept. Rerunning the same command resumes an interrupted build: finished shards are kept.
    On several machines: --distributor ray, or --part I/N per machine then `vlpipe cache merge`
    (docs/scale-out.md).
    """
    from vlpipe.cache.writer import build_cache as build

    settings = load_settings(BuildSettings, config_file, flags, table="build-cache")
    target = settings.out or str(DEFAULT_ROOT / (Path(src).resolve().stem or "cache"))
    build(src, target, processes=settings.processes, overwrite=settings.overwrite, distributor=settings.distributor,
          ray_address=settings.ray_address, part=settings.part, **settings.options.model_dump())


@click.group()
def cache() -> None:
    """Inspect a cache built by `vlpipe build-cache`, or merge the parts of one built with --part."""


@cache.command(short_help="Re-check sizes, sha256, shapes, dtypes and token ids of a cache.")
@click.argument("cache_dir", metavar="DIR", type=click.Path(path_type=str))
@cli_options(VerifySettings)
def verify(cache_dir: str, config_file: str | None, **flags: Any) -> None:
    """Re-check sizes, sha256, shapes, dtypes, token ids and counts against the manifest; decode
    every image of a JPEG cache.

    Exit 0 when sound; otherwise print the first problem (naming the file) and exit 1.
    """
    from vlpipe.cache.verify import check_cache

    settings = load_settings(VerifySettings, config_file, flags)
    manifest = check_cache(cache_dir, checksums=settings.checksums, decode=settings.decode)
    click.echo(f"{cache_dir}: ok ({manifest.num_samples} samples in {len(manifest.shards)} shards)")


@cache.command(short_help="Summary table of a cache; --grid draws a contact sheet.")
@click.argument("cache_dir", metavar="DIR", type=click.Path(path_type=str))
@cli_options(InfoSettings)
def info(cache_dir: str, config_file: str | None, **flags: Any) -> None:
    """Summary table of a cache; with --grid, a contact sheet to eyeball images against captions."""
    from rich.console import Console
    from rich.table import Table

    from vlpipe.cache.info import cache_info, contact_sheet

    settings = load_settings(InfoSettings, config_file, flags)  # before the table: a bad option prints only its error
    table = Table(title=str(cache_dir), show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for field, value in cache_info(cache_dir):
        table.add_row(field, value)
    Console().print(table)
    if settings.grid is not None:
        sheet = contact_sheet(cache_dir, settings.grid, n=settings.n, seed=settings.seed)
        click.echo(f"contact sheet written to {sheet}")


@cache.command(short_help="Write the manifest of a cache built in parts (build-cache --part I/N).")
@click.argument("cache_dir", metavar="DIR", type=click.Path(path_type=str))
def merge(cache_dir: str) -> None:
    """Check that every part of DIR is built, all with the same source, options and tokenizer, and
    write the manifest: DIR becomes the cache a one-machine build writes, byte for byte."""
    from vlpipe.cache.merge import merge_parts

    merge_parts(cache_dir)
