"""Open a cache's shard files the one checked way: the size the manifest records, the dtype and shape it promises.

The reader, `cache verify` and `cache info` all open .npy files through `open_npy`, so a damaged
or foreign file is refused with the same one-line message naming it, wherever it is met, instead
of numpy's parser error or silently wrong rows. Nothing here imports torch: verify and info stay
quick to start.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

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
