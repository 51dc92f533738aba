"""`vlpipe fetch cc|tsv|report`: a thin click shell over `vlpipe.fetch`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vlpipe.fetch.normalize import VerifyConfig
from vlpipe.fetch.safety import UrlPolicy
from vlpipe.fetch.tally import fetch_report, format_report
from vlpipe.fetch.url_lists import DEFAULT_DOWNLOAD_DIR

_VERIFY = VerifyConfig()
_POLICY = UrlPolicy()


def _fetch_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by `fetch cc` and `fetch tsv`; names match FetchConfig and its parts."""
    options = [
        click.option("--subset", default="all", show_default=True,
                     help="How many rows of the list: 5000, 200k, 1m or all."),
        click.option("--sample", is_flag=True,
                     help="Take a seeded random sample of --subset rows instead of the first ones."),
        click.option("--seed", default=0, show_default=True, help="Seed for --sample."),
        click.option("--shard-size", default=1000, show_default=True,
                     help="Samples per shard (each worker pays ~10 s to import img2dataset: keep it large)."),
        click.option("--processes", default=os.cpu_count() or 1, show_default="all CPUs",
                     help="img2dataset download processes."),
        click.option("--threads", default=64, show_default=True, help="Download threads per process."),
        click.option("--timeout", default=10.0, show_default=True,
                     help="Seconds per socket operation (connect, each read)."),
        click.option("--deadline", default=_POLICY.deadline_s, show_default=True,
                     help="Seconds for a whole response; defeats servers that trickle bytes."),
        click.option("--retries", default=0, show_default=True, help="Retries per failed image."),
        click.option("--distributor", type=click.Choice(["multiprocessing", "ray"]),
                     default="multiprocessing", show_default=True,
                     help="img2dataset's engine; ray runs on the cluster of $RAY_ADDRESS, else on a local Ray "
                          "with --processes CPUs (docs/scale-out.md)."),
        click.option("--min-side", default=_VERIFY.min_side, show_default=True,
                     help="Drop images whose shorter side is smaller (too_small)."),
        click.option("--max-aspect", default=_VERIFY.max_aspect, show_default=True,
                     help="Drop images with a longer/shorter side ratio above this (bad_aspect)."),
        click.option("--max-pixels", default=_VERIFY.max_pixels, show_default=True,
                     help="Drop images with more pixels, checked before decoding (too_large)."),
        click.option("--max-bytes", default=_POLICY.max_bytes, show_default=True,
                     help="Stop downloading a response after this many bytes (too_large)."),
        click.option("--shorter-side", default=_VERIFY.shorter_side, show_default=True,
                     help="Kept images are stored with their shorter side at most this (0 = original size)."),
        click.option("--allow-private-network", is_flag=True,
                     help="Allow URLs on loopback/private/link-local hosts (tests, intranets)."),
        click.option("--download-dir", type=click.Path(path_type=Path), default=DEFAULT_DOWNLOAD_DIR,
                     show_default=True, help="Where downloaded caption/URL lists are kept."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def _config(opts: dict[str, Any]) -> Any:
    from vlpipe.fetch.download import DownloadConfig
    from vlpipe.fetch.pipeline import FetchConfig

    return FetchConfig(
        subset=opts["subset"], sample=opts["sample"], seed=opts["seed"], shard_size=opts["shard_size"],
        verify=VerifyConfig(min_side=opts["min_side"], max_aspect=opts["max_aspect"],
                            max_pixels=opts["max_pixels"], shorter_side=opts["shorter_side"]),
        policy=UrlPolicy(allow_private_network=opts["allow_private_network"], deadline_s=opts["deadline"],
                         max_bytes=opts["max_bytes"]),
        download=DownloadConfig(processes=opts["processes"], threads=opts["threads"], timeout=opts["timeout"],
                                retries=opts["retries"], distributor=opts["distributor"]),
    )  # fmt: skip


@click.group()
def fetch() -> None:
    """Download image-text pairs with img2dataset; keep only correct images, explain every drop.

    Output: img2dataset webdataset shards (NNNNN.tar with KEY.jpg/.txt/.json) that `vlpipe
    build-cache` reads, plus vlpipe_* drop records. Rerun the same command to resume.
    """


@fetch.command("cc", short_help="Fetch Conceptual Captions (e.g. --subset 200k).")
@click.option("--split", type=click.Choice(["train", "validation"]), default="train", show_default=True,
              help="Which Conceptual Captions file.")  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: cache/raw/cc-SUBSET, or cc-val-SUBSET for validation].")  # fmt: skip
@click.option(
    "--tsv", default=None, help="Use this CC-format TSV (path or http(s) URL) instead of the official one."
)
@_fetch_options
def cc(split: str, out: Path | None, tsv: str | None, **opts: Any) -> None:
    """Fetch Conceptual Captions 3M, for example `vlpipe fetch cc --subset 200k`."""
    from vlpipe.fetch.pipeline import fetch_cc

    if out is None:
        out = Path("cache/raw") / (f"cc-{opts['subset']}" if split == "train" else f"cc-val-{opts['subset']}")
    report = fetch_cc(out, split=split, tsv=tsv, download_dir=opts["download_dir"], config=_config(opts))
    click.echo(format_report(report))


@fetch.command("tsv", short_help="Fetch any caption/URL list: a TSV path or URL.")
@click.argument("source")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@_fetch_options
def tsv(source: str, out: Path, **opts: Any) -> None:
    """Fetch any caption/URL list (CC12M, SBU, your own): a TSV path or http(s) URL.

    Headerless 2-column files (caption/url in either order) or files with a header naming
    `caption` and `url` columns.
    """
    from vlpipe.fetch.pipeline import fetch_tsv

    report = fetch_tsv(source, out, download_dir=opts["download_dir"], config=_config(opts))
    click.echo(format_report(report))


@fetch.command("report", short_help="Kept, dropped by reason, bytes and speed of a fetch.")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report(directory: Path, as_json: bool) -> None:
    """Attempted, kept, dropped by reason, bytes, images/s and duration of a fetch."""
    result = fetch_report(directory)
    click.echo(json.dumps(result, indent=2) if as_json else format_report(result))
