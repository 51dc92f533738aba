"""The one row type every input reader yields, the checks every row passes, and the shard containers.

Every layout (img2dataset tar/parquet/files, a captions table, a labelled downstream dataset) is
read into `Row`s: a reader fills in what its files say and nothing more. `checked` then applies
the same rules to every row (one sample per key, an image, a caption), reading the image file of
rows that name one, and returns the row with its image bytes or the `Skip` that says why it is
left out. A bad *sample* is a Skip, recorded in skipped.parquet; a bad *file* (missing, empty,
corrupt, malformed) raises VlpipeError naming it, because silently dropping thousands of samples
would go unnoticed.

`SourceShard`s are the unit of parallel work and of resumption (one source shard becomes one cache
shard). They travel to worker processes, so they stay small and picklable: a path to read, or rows
that name their image files rather than hold the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from vlpipe.cache.format import LabelSpec

# The split names datasets use, mapped to the cache's.
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test"}
# Layouts whose shards list their rows (captions tables, labelled datasets) rather than a file to read.
ROWS_LAYOUT = "rows"


class Row(NamedTuple):
    """One sample as its reader found it; what the layout does not have stays None."""

    key: str
    source: str = ""  # the source shard's name, recorded with every skip
    image: bytes | None = None  # the encoded image, for layouts that hold the bytes
    image_path: str | None = None  # or the image file to read, for layouts that name one
    caption: str | None = None
    url: str | None = None
    # Labelled datasets: the label as the file gives it (a name, an int, a list of names), then the
    # class id or tuple of label ids once vlpipe/ingest/labels.py has mapped it.
    label: Any = None
    # train, val or test as the dataset assigns it; None: a hash of the key decides (--val-fraction),
    # in the one place that decides splits, vlpipe/cache/shard.py.
    split: str | None = None
    where: str = ""  # "file:line" (or file and id) of a labelled row, for error messages
    problem: tuple[str, str] | None = None  # (reason, detail) when known bad before its image is read


class Skip(NamedTuple):
    """A sample left out of the cache; recorded in skipped.parquet."""

    key: str
    source: str
    reason: str
    detail: str


@dataclass(frozen=True)
class SourceShard:
    """One unit of work; small and picklable so it can be sent to a worker process."""

    name: str  # shown in the manifest as the shard's `source`
    layout: str  # webdataset | parquet | files: read from `path`; rows: listed in `rows`
    path: str
    rows: tuple[Row, ...] = ()


@dataclass(frozen=True)
class Source:
    root: Path
    layout: str  # recorded as the manifest's provenance.source_format
    shards: list[SourceShard]
    labels: LabelSpec | None = None


def checked(row: Row, seen: set[str]) -> Row | Skip:
    """`row` with its image bytes, or the Skip that says which part of it is missing.

    `seen` holds the keys already taken from this shard. A named image file that cannot be read
    is skipped before its key counts as taken, so a later row with that key may still be cached.
    """
    if row.problem is not None:
        return Skip(row.key, row.source, *row.problem)
    image = row.image
    if row.image_path is not None:
        try:
            image = Path(row.image_path).read_bytes()
        except OSError as exc:
            return Skip(row.key, row.source, "missing_image", f"{row.image_path}: {exc.strerror or exc}")
    if row.key in seen:
        return Skip(row.key, row.source, "duplicate_key", "key already seen earlier in this shard")
    seen.add(row.key)
    if image is None:
        return Skip(row.key, row.source, "missing_image", "no image file for this key")
    if row.caption is None or not str(row.caption).strip():
        return Skip(row.key, row.source, "missing_caption", "no caption (or an empty one)")
    return row._replace(image=bytes(image), image_path=None, caption=str(row.caption),
                        url=None if row.url is None else str(row.url))


def row_shards(prefix: str, path: str, rows: list[Row], shard_size: int) -> list[SourceShard]:
    """`rows` cut into shards of `shard_size` named `prefix[start:end]`, each row tagged with its shard."""
    shards = []
    for start in range(0, len(rows), shard_size):
        chunk = rows[start : start + shard_size]
        name = f"{prefix}[{start}:{start + len(chunk)}]"
        shards.append(SourceShard(name, ROWS_LAYOUT, path, tuple(r._replace(source=name) for r in chunk)))
    return shards


def text_of(value: Any) -> str | None:
    """A string, or MM-IMDB's list of plot outlines joined (truncation to max_len keeps the first)."""
    if value is None:
        return None
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)
