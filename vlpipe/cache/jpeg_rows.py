"""A JPEG cache's rows: each image's bytes found through its shard's offsets, then decoded or handed on.

The reader (vlpipe/cache/reader.py) opens the files; this module does what is particular to JPEG
rows, for the two ways a batch can leave the loader:

- decoded by the loader's threads into the batch's (B, num_patches, patch_dim) rows, exactly where
  a raw cache's rows are copied: simplejpeg decodes with the GIL released into a buffer of the
  thread's own, which is then cut into patches (vlpipe/cache/codec.py says why simplejpeg);
- handed over compressed: the batch's JPEGs side by side in one flat uint8 array plus B + 1
  offsets, for one batched decode on the training device (vlpipe/cache/device_decode.py).

Bytes come straight from the memory map when the cache stays mapped, else with one pread per
row (into the thread's buffer, or straight into the hand-over array), which maps nothing, so RSS
stays flat however large the cache is.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlpipe.cache.codec import bad_row, decode_jpeg
from vlpipe.errors import VlpipeError
from vlpipe.imaging import patchify

if TYPE_CHECKING:
    from vlpipe.cache.reader import RowPlan


class JpegRows:
    """The JPEG rows of every shard: `data[s]` the byte array, `offsets[s]` its n + 1 row boundaries."""

    def __init__(self, paths: list[Path], data: list[np.ndarray], offsets: list[np.ndarray], fds: list[int],
                 starts: np.ndarray, image_size: int, patch_size: int, resident: bool) -> None:
        self.paths, self.data, self.offsets = paths, data, offsets
        self.fds, self.starts = fds, starts
        self.image_size, self.patch_size, self.resident = image_size, patch_size, resident
        # The largest row: the pread buffer of each thread, and a hand-over batch's worst case.
        self.max_row = max((int(np.diff(o).max()) for o in offsets), default=0)
        self._local = threading.local()

    def spans(self, shards: list[int], rows: list[int]) -> list[tuple[int, int]]:
        """(start, end) of each row's JPEG in its shard's byte array."""
        offsets = self.offsets
        return [(int(offsets[s][r]), int(offsets[s][r + 1])) for s, r in zip(shards, rows, strict=True)]

    def decode(self, plan: RowPlan, images: np.ndarray, lo: int, hi: int) -> None:
        """Decode the rows `plan.order[lo:hi]` into the same rows of `images` (B, P, D)."""
        pixels, scratch = self._buffers()
        for j in plan.order[lo:hi]:
            shard, (start, end) = plan.shards[j], plan.spans[j]
            if self.resident:
                data = self.data[shard][start:end]
            else:
                data = scratch[: end - start]
                self._pread(shard, plan.rows[j], start, data)
            try:
                decode_jpeg(data, pixels)
            except ValueError as exc:
                raise self.bad_row(shard, plan.rows[j], exc) from None
            images[j] = patchify(pixels, self.patch_size)

    def copy(self, plan: RowPlan, data: np.ndarray, bounds: np.ndarray, lo: int, hi: int) -> None:
        """Copy the compressed rows `plan.order[lo:hi]` to `data[bounds[j]:bounds[j + 1]]` (hand-over)."""
        for j in plan.order[lo:hi]:
            shard, (start, end) = plan.shards[j], plan.spans[j]
            dest = data[bounds[j] : bounds[j + 1]]
            if self.resident:
                dest[...] = self.data[shard][start:end]
            else:
                self._pread(shard, plan.rows[j], start, dest)

    def bad_row(self, shard: int, row: int, exc: BaseException) -> VlpipeError:
        return bad_row(self.paths[shard], row, self.image_size, exc)

    def _buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """This thread's decoded-image buffer and pread buffer, made once per thread."""
        local = self._local
        if not hasattr(local, "pixels"):
            local.pixels = np.empty((self.image_size, self.image_size, 3), np.uint8)
            local.scratch = np.empty(0 if self.resident else self.max_row, np.uint8)
        return local.pixels, local.scratch

    def _pread(self, shard: int, row: int, start: int, dest: np.ndarray) -> None:
        """Copy one row's bytes from the page cache into `dest` (no mapping, GIL released)."""
        if os.preadv(self.fds[shard], [memoryview(dest)], int(self.starts[shard]) + start) != dest.nbytes:
            raise VlpipeError(f"{self.paths[shard]}: short read at row {row}; the file changed after it was opened")
