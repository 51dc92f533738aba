"""`verify_cache`: re-check every byte and invariant of a cache against its manifest.

Training reads the arrays blind (that is what makes it fast), so a flipped bit or a truncated
copy would otherwise surface as silently wrong pixels or an index error hours later. Problems are
reported as one line each, naming the file, in the order a person should fix them.

A JPEG cache's offsets are checked, and every image is decoded (in threads, the decoder releases
the GIL) unless `decode=False`: checksums prove the bytes are the ones written, decoding that they
are images of the right size, which also holds for a cache another tool wrote.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.cache.arrays import open_jpeg, open_npy
from vlpipe.cache.codec import bad_row, decode_jpeg
from vlpipe.cache.format import (
    MANIFEST,
    META_COLUMNS,
    MISSING_LABEL,
    SKIPPED_FILE,
    SPLITS,
    Manifest,
    ShardEntry,
    check_labels_section,
    label_counts,
    load_manifest,
)
from vlpipe.errors import VlpipeError
from vlpipe.text import TextTokenizer
from vlpipe.utils.atomic import sha256_file

CHUNK = 4096  # rows per pass over tokens/lengths, so verify's memory stays flat on any cache size


def verify_cache(cache_dir: str | os.PathLike[str], *, checksums: bool = True, decode: bool = True) -> list[str]:
    """All problems found (empty when the cache is sound). `checksums=False` skips the sha256 pass,
    `decode=False` the decoding of a JPEG cache's images."""
    root = Path(cache_dir)
    try:
        manifest = load_manifest(root)
    except VlpipeError as exc:
        return [str(exc)]
    try:
        check_labels_section(manifest.labels, str(root / MANIFEST))
    except VlpipeError as exc:
        return [str(exc)]
    problems: list[str] = []
    tok = root / manifest.text.tokenizer_file
    if not tok.is_file():
        problems.append(f"{tok}: missing")
    elif checksums and sha256_file(tok) != manifest.text.tokenizer_sha256:
        problems.append(f"{tok}: sha256 differs from the manifest (file modified or corrupt)")
    else:
        # Without checksums a damaged tokenizer.json would pass unseen; parsing it costs milliseconds.
        try:
            TextTokenizer.load(tok)
        except VlpipeError as exc:
            problems.append(str(exc))
    splits = dict.fromkeys(SPLITS, 0)
    counts: dict[str, list[int]] = {}
    unlabeled: Counter[str] = Counter()
    for shard in manifest.shards:
        problems += _check_shard(root, manifest, shard, (checksums, decode), splits, (counts, unlabeled))
    total = sum(s.num_samples for s in manifest.shards)
    if total != manifest.num_samples:
        problems.append(f"{root / 'manifest.json'}: num_samples {manifest.num_samples} but shards hold {total}")
    counted = {k: v for k, v in splits.items() if v}
    if not problems and counted != {k: v for k, v in manifest.splits.items() if v}:
        problems.append(f"{root / 'manifest.json'}: splits {manifest.splits} but meta.parquet files say {counted}")
    if not problems and manifest.labels is not None and (
            counts != manifest.labels.get("counts") or dict(unlabeled) != manifest.labels.get("unlabeled")):
        problems.append(f"{root / 'manifest.json'}: labels.counts/unlabeled differ from what labels.npy and "
                        f"meta.parquet hold ({counts}, unlabeled {dict(unlabeled)})")
    problems += _check_skipped(root, manifest)
    return problems


def check_cache(cache_dir: str | os.PathLike[str], *, checksums: bool = True, decode: bool = True) -> Manifest:
    """Raise VlpipeError with the first problem (one line); return the manifest when sound."""
    problems = verify_cache(cache_dir, checksums=checksums, decode=decode)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise VlpipeError(problems[0] + more)
    return load_manifest(cache_dir)


def _check_shard(root: Path, m: Manifest, shard: ShardEntry, passes: tuple[bool, bool], splits: dict[str, int],
                 tally: tuple[dict[str, list[int]], Counter[str]]) -> list[str]:
    n = shard.num_samples
    checksums, decode = passes
    problems = []
    for entry in shard.files.values():
        path = root / entry.path
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif (size := path.stat().st_size) != entry.bytes:
            how = "truncated" if size < entry.bytes else "longer than recorded"
            problems.append(f"{path}: {how} ({size} bytes, manifest says {entry.bytes})")
        elif checksums and sha256_file(path) != entry.sha256:
            problems.append(f"{path}: sha256 differs from the manifest (file modified or corrupt)")
    if problems:
        return problems  # the arrays below cannot be trusted (or even opened) once bytes are wrong

    img, t = m.image, m.text
    expected = {
        "tokens": {t.dtype: (n, t.max_len)},
        "lengths": {"uint16": (n,)},
    }
    if img.codec == "raw":
        expected["images"] = {"uint8": (n, img.num_patches, img.patch_dim)}
    try:
        arrays = {kind: open_npy(shard.path(root, kind), dtypes) for kind, dtypes in expected.items()}
        if img.codec == "jpeg":
            data, offsets = open_jpeg(shard.path(root, "jpeg"), shard.path(root, "jpeg_offsets"), n)
            if decode:
                problems += _check_jpegs(shard.path(root, "jpeg"), data, np.asarray(offsets), img.image_size)
    except VlpipeError as exc:
        return [str(exc)]
    problems += _check_tokens(shard.path(root, "tokens"), arrays["tokens"], arrays["lengths"], m)

    meta_path = shard.path(root, "meta")
    try:
        meta = pq.read_table(meta_path, columns=["split"])
        schema = pq.read_schema(meta_path)
    except (pa.ArrowException, OSError) as exc:
        return [*problems, f"{meta_path}: not a readable parquet file ({exc})"]
    missing = [c for c in META_COLUMNS if c not in schema.names]
    if missing:
        problems.append(f"{meta_path}: missing column(s) {', '.join(missing)}")
    if meta.num_rows != n:
        problems.append(f"{meta_path}: {meta.num_rows} rows, manifest says {n}")
    for split, count in Counter(meta.column("split").to_pylist()).items():
        if split not in splits:
            problems.append(f"{meta_path}: unknown split {split!r}")
        else:
            splits[split] += count
    if not problems:
        problems += _check_labels(root, m, shard, meta.column("split").to_pylist(), tally)
    return problems


def _check_labels(root: Path, m: Manifest, shard: ShardEntry, splits: list[str],
                  tally: tuple[dict[str, list[int]], Counter[str]]) -> list[str]:
    """labels.npy: present exactly when the manifest has labels; dtype, shape and value range."""
    has_file = "labels" in shard.files
    if m.labels is None:
        return [f"{shard.path(root, 'labels')}: labels.npy listed but the manifest has no labels"] if has_file else []
    if not has_file:
        return [f"{root / 'manifest.json'}: shard {shard.name} lists no labels.npy but the cache has labels"]
    path, n = shard.path(root, "labels"), shard.num_samples
    multilabel, num = m.labels["task"] == "multilabel", m.labels["num_labels"]
    try:
        values = np.asarray(open_npy(path, {"uint8": (n, num)} if multilabel else {"int64": (n,)}))
    except VlpipeError as exc:
        return [str(exc)]
    low = 0 if multilabel else MISSING_LABEL
    high = 1 if multilabel else num - 1
    bad = (values < low) | (values > high)
    if bad.any():
        row = int(np.argmax(bad.reshape(n, -1).any(axis=1)))
        return [f"{path}: row {row} has label value(s) outside {low}..{high}"]
    if not multilabel:
        unlabeled = (values == MISSING_LABEL) & (np.asarray(splits, dtype=object) != "test")
        if unlabeled.any():
            return [f"{path}: row {int(np.argmax(unlabeled))} is unlabeled ({MISSING_LABEL}) outside the test split"]
    counts, missing = label_counts(values, splits, multilabel, num)
    for split, row in counts.items():
        tally[0][split] = [a + b for a, b in zip(tally[0].get(split, [0] * num), row, strict=True)]
    tally[1].update(missing)
    return []


def _check_jpegs(path: Path, data: np.ndarray, bounds: np.ndarray, size: int) -> list[str]:
    """Every row decodes to a size x size image; the first that does not, as one problem."""
    def first_bad(rows: range) -> str | None:
        pixels = np.empty((size, size, 3), np.uint8)
        for row in rows:
            try:
                decode_jpeg(data[bounds[row] : bounds[row + 1]], pixels)
            except ValueError as exc:
                return str(bad_row(path, row, size, exc))
        return None

    n, workers = len(bounds) - 1, os.cpu_count() or 1
    step = max(1, -(-n // workers))
    with ThreadPoolExecutor(workers) as pool:
        found = [p for p in pool.map(first_bad, [range(a, min(a + step, n)) for a in range(0, n, step)]) if p]
    return found[:1]


def _check_tokens(path: Path, tokens: np.ndarray, lengths: np.ndarray, m: Manifest) -> list[str]:
    """Ids in range; each row is [CLS] ... [SEP] then only padding, exactly `length` real tokens."""
    t = m.text
    positions = np.arange(t.max_len)
    for start in range(0, tokens.shape[0], CHUNK):
        ids = np.asarray(tokens[start : start + CHUNK])
        lens = np.asarray(lengths[start : start + CHUNK]).astype(np.int64)
        if ids.size and int(ids.max()) >= t.vocab_size:
            row = start + int(np.argmax(ids.max(axis=1)))
            return [f"{path}: row {row} has token id {int(ids[row - start].max())} >= vocab_size {t.vocab_size}"]
        bad = (lens < 2) | (lens > t.max_len)
        if bad.any():
            row = start + int(np.argmax(bad))
            return [f"{path}: row {row} has length {int(lens[row - start])} outside 2..{t.max_len}"]
        rows = np.arange(len(lens))
        pad_ok = np.where(positions < lens[:, None], True, ids == t.pad_id).all(axis=1)
        framed = (ids[:, 0] == t.cls_id) & (ids[rows, lens - 1] == t.sep_id) & pad_ok
        if not framed.all():
            row = start + int(np.argmin(framed))
            return [f"{path}: row {row} is not [CLS] ... [SEP] followed by padding (lengths.npy disagrees)"]
    return []


def _check_skipped(root: Path, m: Manifest) -> list[str]:
    path = root / SKIPPED_FILE
    if not path.is_file():  # every build writes it, an empty table when nothing was skipped
        return [f"{path}: missing"]
    try:
        rows = pq.read_metadata(path).num_rows
    except (pa.ArrowException, OSError) as exc:
        return [f"{path}: not a readable parquet file ({exc})"]
    expected = sum(m.skipped.values())
    return [] if rows == expected else [f"{path}: {rows} rows, manifest counts {expected} skipped"]
