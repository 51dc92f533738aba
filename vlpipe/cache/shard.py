"""Build one cache shard from one source shard: decode, resize, store (patchify or JPEG), tokenize, write.

The source shard's rows come from vlpipe/ingest/. Each sample's split is decided here and only
here: the row's own (a labelled dataset's train/val/test), else a hash of its key with
--val-fraction.

Runs inside a worker process. Memory stays flat however big the shard: each image is decoded,
resized and appended to the shard's image file straight away (codec.ImageSink: patch rows, or a
JPEG of exactly those pixels), and only the captions and small metadata are held until the end.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.cache.codec import ImageSink, save_npy
from vlpipe.cache.config import BuildOptions
from vlpipe.cache.format import (
    DONE_FILE,
    LABELS_FILE,
    SPLITS,
    TEXT_FILES,
    TOKENIZER_FILE,
    LabelSpec,
    label_counts,
    shard_dir,
    shard_file_relpath,
    shard_files,
    split_of,
    token_dtype,
)
from vlpipe.imaging import ImageError, load_rgb, resize_center_crop
from vlpipe.ingest import Skip, SourceShard, iter_samples
from vlpipe.text import TextTokenizer
from vlpipe.utils.atomic import atomic_path, sha256_file, write_json_atomic

META_SCHEMA = pa.schema([
    ("key", pa.string()), ("caption", pa.string()), ("url", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("sha256", pa.string()), ("split", pa.string()),
])
SKIP_FIELDS = ("key", "source", "reason", "detail")
# PIL names the in-memory file with its address; drop it so rebuilds write identical skip records.
_ADDRESS = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")
PROGRESS_EVERY = 16  # images between progress reports: often enough for a smooth images/s


@dataclass(frozen=True)
class ShardTask:
    source: SourceShard
    name: str
    out: str
    options: BuildOptions
    labels: LabelSpec | None = None  # set for downstream datasets: the shard then writes labels.npy


_tokenizers: dict[str, TextTokenizer] = {}


def _tokenizer(path: Path, spec: str) -> TextTokenizer:
    """One tokenizer per worker process, loaded from the cache's own tokenizer.json.

    Keyed by content, not path: a Ray worker outlives builds, and a cache rebuilt in the same
    folder (--overwrite) may have another tokenizer.json there.
    """
    key = sha256_file(path)
    if key not in _tokenizers:
        _tokenizers[key] = TextTokenizer.load(path, spec=spec)
    return _tokenizers[key]


def read_done(out: str | Path, name: str) -> dict[str, Any] | None:
    """The shard's done record if the shard is complete on disk (all files, right sizes), else None."""
    path = shard_dir(out, name) / DONE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        for entry in record["files"].values():
            if (Path(out) / entry["path"]).stat().st_size != entry["bytes"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return record


def build_shard(task: ShardTask, report: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write the files of one cache shard and its done record; returns the record."""
    opts, out = task.options, Path(task.out)
    folder = shard_dir(out, task.name)
    # A leftover folder is from an interrupted run: its files cannot be trusted, start over.
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tokenizer = _tokenizer(out / TOKENIZER_FILE, opts.tokenizer)
    draft = 2 * opts.image_size if opts.jpeg_draft else None

    rows: dict[str, list[Any]] = {name: [] for name in META_SCHEMA.names}
    skips: list[Skip] = []
    labels: list[Any] = []
    pending = 0
    with ImageSink(folder, opts.codec, opts.image_size, opts.patch_size, opts.jpeg_quality) as sink:
        for item in iter_samples(task.source):
            if isinstance(item, Skip):
                skips.append(item)
                continue
            try:
                img = load_rgb(item.image, max_pixels=opts.max_pixels, draft_size=draft)
                pixels = resize_center_crop(img, opts.image_size)
            except ImageError as exc:
                skips.append(Skip(item.key, item.source, exc.reason, _ADDRESS.sub("image bytes", exc.detail)))
                continue
            sink.add(pixels)
            width, height = img.info["original_size"]
            # A hash of the key, not of the position, so rebuilds keep every sample in its split.
            for name, value in (("key", item.key), ("caption", item.caption), ("url", item.url),
                                ("width", width), ("height", height),
                                ("sha256", hashlib.sha256(item.image).hexdigest()),
                                ("split", item.split or split_of(item.key, opts.val_fraction))):
                rows[name].append(value)
            labels.append(item.label)
            pending += 1
            if report is not None and pending >= PROGRESS_EVERY:
                report(pending)
                pending = 0
    if report is not None and pending:
        report(pending)

    ids, lengths = tokenizer.encode_batch(rows["caption"], opts.max_len)
    save_npy(folder / TEXT_FILES["tokens"], ids.astype(token_dtype(tokenizer.vocab_size)))
    save_npy(folder / TEXT_FILES["lengths"], lengths.astype(np.uint16))
    with atomic_path(folder / TEXT_FILES["meta"]) as tmp:
        pq.write_table(pa.Table.from_pydict(rows, schema=META_SCHEMA), tmp)

    if task.labels is not None:
        save_npy(folder / LABELS_FILE, encode_labels(labels, task.labels))

    files = {}
    kinds = shard_files(opts.codec)
    for kind in (*kinds, "labels") if task.labels is not None else kinds:
        rel = shard_file_relpath(task.name, kind)
        files[kind] = {"path": rel, "bytes": (out / rel).stat().st_size, "sha256": sha256_file(out / rel)}
    record = {
        "name": task.name,
        "source": task.source.name,
        "num_samples": len(rows["key"]),
        "splits": {s: rows["split"].count(s) for s in SPLITS},
        "files": files,
        "skipped": [dict(zip(SKIP_FIELDS, s, strict=True)) for s in skips],
    }
    if task.labels is not None:
        counts, unlabeled = label_counts(encode_labels(labels, task.labels), rows["split"],
                                         task.labels.multilabel, len(task.labels.names))
        record["label_counts"], record["unlabeled"] = counts, unlabeled
    write_json_atomic(folder / DONE_FILE, record)
    return record


def encode_labels(values: list[Any], spec: LabelSpec) -> np.ndarray:
    """Class ids as int64 (n,), or label-id tuples as uint8 (n, num_labels) multi-hot rows."""
    if not spec.multilabel:
        return np.asarray(values, dtype=np.int64).reshape(len(values))
    hot = np.zeros((len(values), len(spec.names)), dtype=np.uint8)
    for row, ids in enumerate(values):
        hot[row, list(ids)] = 1
    return hot
