"""Open a cache's shard files the one checked way: the size the manifest records, the dtype and shape it promises.

The reader, `cache verify` and `cache info` all open .npy files through `open_npy` (and a JPEG
shard's pair through `open_jpeg`), so a damaged or foreign file is refused with the same one-line
message naming it, wherever it is met, instead of numpy's parser error or silently wrong rows.
Nothing here imports torch: verify and info stay quick to start.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlpipe.cache.format import Manifest
from vlpipe.errors import VlpipeError, one_line


def check_size(path: Path, expected: int) -> None:
    """A shard file has the size the manifest records: the cheap tell of a truncated or swapped copy."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise VlpipeError(f"{path}: file is missing; the cache is damaged (run `vlpipe cache verify`)") from None
    if size != expected:
        raise VlpipeError(
            f"{path}: {size} bytes but the manifest records {expected} (truncated or modified; "
            "run `vlpipe cache verify` and rebuild the cache)"
        )


def open_npy(path: Path, expected: Mapping[str, tuple[int | None, ...]]) -> np.memmap:
    """`path` memory-mapped (never unpickled), refused unless its dtype is one of `expected`'s keys
    and its shape is that dtype's shape (None: any length on that axis)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise VlpipeError(f"{path}: not a readable .npy file ({one_line(exc)})") from None
    if not isinstance(arr, np.memmap):
        raise VlpipeError(f"{path}: could not be memory-mapped")
    shape = expected.get(arr.dtype.name)
    fits = shape is not None and len(shape) == arr.ndim and all(
        want in (None, got) for want, got in zip(shape, arr.shape, strict=True))
    if not fits:
        wanted = " or ".join(f"{dtype}[{', '.join('any' if n is None else str(n) for n in dims)}]"
                             for dtype, dims in expected.items())
        raise VlpipeError(f"{path}: array is {arr.dtype.name}{list(arr.shape)}, expected {wanted}")
    return arr


def open_jpeg(data_path: Path, offsets_path: Path, n: int) -> tuple[np.memmap, np.memmap]:
    """A JPEG shard's byte array and its n + 1 offsets, refused unless every row is a non-empty range
    of the byte array: bad offsets would otherwise read another row's bytes, or past the end."""
    data = open_npy(data_path, {"uint8": (None,)})
    offsets = open_npy(offsets_path, {"int64": (n + 1,)})
    bounds = np.asarray(offsets)
    if bounds[0] != 0 or bounds[-1] != len(data):
        raise VlpipeError(f"{offsets_path}: offsets run from {bounds[0]} to {bounds[-1]}, expected 0 to "
                          f"{len(data)} (the length of {data_path.name})")
    empty = np.diff(bounds) <= 0
    if empty.any():
        row = int(np.argmax(empty))
        raise VlpipeError(f"{offsets_path}: row {row} has no bytes (offset {bounds[row]} to {bounds[row + 1]})")
    return data, offsets


def ensure_fd_limit(needed: int) -> None:
    """Each memory map keeps its own file descriptor; a cache of thousands of shards needs many."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 256
    if want <= soft:
        return
    if hard != resource.RLIM_INFINITY and want > hard:
        raise VlpipeError(
            f"opening this cache maps {needed} files but the open-file limit is {hard}; "
            "raise it (ulimit -n) or rebuild with fewer, larger shards"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def split_index(cache_dir: Path, manifest: Manifest, split: str) -> np.ndarray:
    """Global sample numbers of one split, in order, from the meta.parquet files' `split` column;
    refused unless the count matches the manifest's."""
    if split not in manifest.splits:
        names = ", ".join(f"{k} ({v})" for k, v in manifest.splits.items()) or "none"
        raise VlpipeError(f"{cache_dir}: no split {split!r} in this cache (it has: {names})")
    parts = []
    for shard, offset in zip(manifest.shards, manifest.shard_offsets(), strict=True):
        path = shard.path(cache_dir, "meta")
        try:
            column = pq.read_table(path, columns=["split"]).column("split")
        except (pa.ArrowException, OSError, KeyError) as exc:
            raise VlpipeError(f"{path}: cannot read the 'split' column ({exc})") from None
        if len(column) != shard.num_samples:
            raise VlpipeError(f"{path}: {len(column)} rows but the manifest says {shard.num_samples}")
        mask = pc.fill_null(pc.equal(column, split), False).to_numpy(zero_copy_only=False)
        parts.append(np.flatnonzero(mask).astype(np.int64) + offset)
    index = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if len(index) != manifest.splits[split]:
        raise VlpipeError(
            f"{cache_dir}: meta.parquet files list {len(index)} {split!r} samples but the "
            f"manifest says {manifest.splits[split]}; the cache is inconsistent"
        )
    return index
