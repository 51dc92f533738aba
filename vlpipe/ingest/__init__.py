"""Readers of other people's dataset layouts, for `build-cache`: every layout in, one `Row` type out.

`open_source` finds what SRC is and lists its source shards (nothing is decoded yet):

- img2dataset output in any of its layouts (vlpipe/ingest/img2dataset.py);
- a captions table naming image files (vlpipe/ingest/captions.py);
- a labelled downstream dataset: Hateful Memes, MM-IMDB, UPMC Food-101 or a generic labelled
  table (one module each), whose labels vlpipe/ingest/labels.py maps to ids.

`iter_samples` then yields each shard's rows, checked (vlpipe/ingest/rows.py), in the worker that
builds the shard; `iter_captions` reads the captions alone, to train a tokenizer first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from vlpipe.errors import VlpipeError
from vlpipe.ingest import captions, food101, generic, hateful_memes, img2dataset, labels, mmimdb
from vlpipe.ingest.rows import Row, Skip, Source, SourceShard, checked, row_shards
from vlpipe.ingest.tables import TABLE_EXTENSIONS

__all__ = ["FORMATS", "Row", "Skip", "Source", "SourceShard", "detect_format", "iter_captions", "iter_samples",
           "open_source"]

# The labelled layouts (`--format`); anything else is read as unlabelled captioned images.
FORMATS = ("hateful-memes", "mmimdb", "food101", "generic")


def detect_format(root: Path) -> str | None:
    """The labelled layout of folder `root`, or None when it looks like none of them."""
    if not root.is_dir():
        return None
    for name, module in (("hateful-memes", hateful_memes), ("mmimdb", mmimdb), ("food101", food101)):
        if module.detect(root):
            return name
    return None


def open_source(
    src: str | os.PathLike[str],
    *,
    format: str = "auto",
    shard_size: int = 1000,
    image_column: str | None = None,
    caption_column: str | None = None,
    label_column: str | None = None,
    multi_label: bool = False,
    split_column: str | None = None,
) -> Source:
    """Detect the layout of `src` and list its shards.

    `format` "auto" reads img2dataset output or a captions file, unless `src` is laid out as one
    of the labelled datasets or `label_column`/`multi_label` make it a generic labelled table.
    """
    root = Path(src).expanduser().resolve()
    if not root.exists():
        raise VlpipeError(f"{src}: no such file or directory")
    if format == "auto":
        format = detect_format(root) or ("generic" if label_column or multi_label else "")
    if format:
        return _open_labelled(root, format, shard_size, image_column, caption_column, label_column, multi_label,
                              split_column)
    if root.is_file():
        if root.suffix.lower() in TABLE_EXTENSIONS:
            return captions.open_captions(root, shard_size, image_column, caption_column)
        if root.suffix.lower() == ".tar":
            return img2dataset.open_tar(root)
        raise VlpipeError(f"{src}: expected a folder, a .tar shard or a captions file (.jsonl, .csv, .tsv)")
    found = img2dataset.open_folder(root)
    if found is not None:
        return found
    tables = sorted(p for p in root.iterdir() if p.suffix.lower() in TABLE_EXTENSIONS)
    if len(tables) == 1:
        return captions.open_captions(tables[0], shard_size, image_column, caption_column)
    if len(tables) > 1:
        names = ", ".join(p.name for p in tables)
        raise VlpipeError(f"{src}: several captions files ({names}); pass the one to use as SRC")
    raise VlpipeError(
        f"{src}: no input found: expected img2dataset shards (NNNNN.tar, NNNNN.parquet with image "
        "bytes, or NNNNN/ folders) or a captions file (.jsonl, .csv, .tsv) naming image paths"
    )


def _open_labelled(root: Path, format: str, shard_size: int, image_column: str | None, caption_column: str | None,
                   label_column: str | None, multi_label: bool, split_column: str | None) -> Source:
    if format != "generic" and (label_column or multi_label or split_column):
        raise VlpipeError("--label-column, --multi-label and --split-column apply to --format generic only")
    names = None
    if format == "hateful-memes":
        rows, task, names = hateful_memes.read_rows(root), hateful_memes.TASK, hateful_memes.NAMES
    elif format == "mmimdb":
        rows, task = mmimdb.read_rows(root), mmimdb.TASK
    elif format == "food101":
        rows, task = food101.read_rows(root), food101.TASK
    elif format == "generic":
        rows = generic.read_rows(root, image_column, caption_column, label_column, split_column, multi_label)
        task = "multilabel" if multi_label else None
    else:
        raise VlpipeError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    if not rows:
        raise VlpipeError(f"{root}: the {format} dataset lists no samples")
    spec, rows = labels.label_rows(rows, task, names, root)
    base = root if root.is_dir() else root.parent
    return Source(base, format, row_shards(format, str(base), rows, shard_size), labels=spec)


def iter_samples(shard: SourceShard) -> Iterator[Row | Skip]:
    """The shard's rows in a fixed order (so rebuilds are byte-identical), each with its image
    bytes, or the Skip that says why it is left out."""
    seen: set[str] = set()
    rows = img2dataset.read_rows(shard) if shard.layout in img2dataset.LAYOUTS else shard.rows
    for row in rows:
        yield checked(row, seen)


def iter_captions(shard: SourceShard) -> Iterator[str]:
    """Captions only, read cheaply (no image bytes) to train a tokenizer before the real pass."""
    if shard.layout in img2dataset.LAYOUTS:
        yield from img2dataset.read_captions(shard)
    else:
        yield from (row.caption for row in shard.rows if row.caption)
