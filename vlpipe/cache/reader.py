"""Zero-copy, batched reads of a cache: memory-mapped arrays in, torch tensors out.

Every shard's arrays are opened with `np.load(mmap_mode="r")`, so opening a cache reads only
headers. Indices are grouped by shard with numpy (searchsorted over shard offsets). A batch of
consecutive samples inside one shard is not copied at all: its image tensor is a view of the
memory map. Any other batch is copied into its output rows, one row at a time, in one of two ways
chosen when the cache is opened:

- A cache whose arrays fit in `resident_limit` (default: min(4 GiB, RAM/8)) *stays mapped*: rows
  are copied straight out of the maps (a memcpy that releases the GIL, no system call), and the
  tokens and lengths of all samples sit in one small in-memory array, so a batch takes them with
  one numpy call. After an epoch every page is mapped and nothing faults again. Measured on the
  2-core machine: 0.73 ms per random batch of 64 at 224 px against 1.05 ms with pread.
- A larger cache is copied with `os.preadv` from the page cache, one syscall per row, in file
  order within a batch (rows sorted by shard and position, each written to its own output row,
  so the batch is still in sampler order): a batch's reads then move forward through each file.

Why not keep every cache mapped: every page a process reads through a mapping is entered in its
page tables and charged to its RSS (the data is shared page cache, but RSS and the kernel's OOM
score cannot tell), so an epoch over a 30 GB cache would grow every reader's RSS, and every forked
worker's separately, to 30 GB; trimming the maps with MADV_DONTNEED keeps RSS bounded but makes
every later read fault its pages in again, which measured slower than pread (35k vs 61k rows/s on
one thread). pread goes page cache -> output with one copy and maps nothing, so RSS stays flat
however large the cache is. The limit bounds what a reader ever maps.

A JPEG cache (vlpipe/cache/codec.py) is read the same two ways, its rows then decoded into the
same output rows, or handed over still compressed for a decode on the GPU (vlpipe/cache/jpeg_rows.py).
"""

from __future__ import annotations

import mmap
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlpipe.cache.arrays import check_size, ensure_fd_limit, open_jpeg, open_npy, split_index
from vlpipe.cache.format import Manifest, load_manifest
from vlpipe.cache.jpeg_rows import JpegRows
from vlpipe.errors import VlpipeError

ARRAY_KINDS = ("tokens", "lengths")
# The most cache bytes a reader keeps mapped (see the module docstring). A cache that fits stays
# mapped whole; in a larger one, reads that go through the maps (zero-copy image views, token and
# length rows) drop their pages past this many bytes (MADV_DONTNEED: the page cache keeps the
# data, only this process's page tables forget it).
MAX_DEFAULT_RESIDENT_LIMIT = 4 << 30


def default_resident_limit() -> int:
    """min(4 GiB, RAM / 8): a cache that size kept mapped is a small share of any machine's memory."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every OS names these
        return 256 << 20
    return int(min(MAX_DEFAULT_RESIDENT_LIMIT, ram // 8))

_PAGE = mmap.PAGESIZE


def _readonly_tensor(arr: np.ndarray) -> torch.Tensor:
    """A tensor sharing `arr`'s read-only memory (callers must not write to it)."""
    return torch.from_numpy(arr)


@dataclass
class RowPlan:
    """A batch located in the shards: global sample numbers and each row's (shard, row)."""

    glob: np.ndarray
    shards: list[int]
    rows: list[int]
    # Consecutive samples inside one shard: copied in one piece, or handed out as a view.
    run: bool
    # Positions in the order their rows are read: sorted by shard and row unless the cache stays
    # mapped, so that a pread batch moves forward through each file. Chunk lo..hi is order[lo:hi].
    order: list[int]
    # JPEG caches: each row's (start, end) in its shard's byte array.
    spans: list[tuple[int, int]]


class CacheDataset:
    """Map-style dataset over one split of a cache; `__getitems__` returns a batch dict.

    Batches hold `images` uint8 (B, num_patches, patch_dim), `input_ids` int64 (B, max_len),
    `lengths` int64 (B,), `index` int64 (B,) (global sample numbers) and `labels` when the cache
    has them. Images are not normalized: the model does that on the device. A JPEG cache gives
    the same batches; gathered into a `new_batch(encoded=True)` it gives `jpeg` and `jpeg_offsets`
    (the compressed rows, see `fill_small`) instead of `images`.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        split: str | None = "train",
        resident_limit: int | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest: Manifest = load_manifest(self.cache_dir)
        self.split = split
        # 0 means no limit: every cache stays mapped.
        self.resident_limit = default_resident_limit() if resident_limit is None else int(resident_limit)
        m = self.manifest
        self._offsets = np.asarray([*m.shard_offsets(), m.num_samples], dtype=np.int64)
        with_labels = ["labels" in s.files for s in m.shards]
        if any(with_labels) and not all(with_labels):
            raise VlpipeError(f"{self.cache_dir}: only some shards have labels; rebuild the cache")
        self.has_labels = bool(with_labels) and all(with_labels)
        self._kinds = (*ARRAY_KINDS, "labels") if self.has_labels else ARRAY_KINDS
        self.codec = m.image.codec
        # One descriptor per map, plus one per shard's image file for pread.
        ensure_fd_limit(len(m.shards) * (len(self._kinds) + len(m.image.files) + 1))
        self._arrays: list[dict[str, np.memmap]] = []
        self._image_fds: list[int] = []
        self.jpeg: JpegRows | None = None
        self._open_arrays()
        # Positions in the split -> global sample numbers; None means the identity (all samples).
        self._global: np.ndarray | None = None if split is None else split_index(self.cache_dir, m, split)
        self._gathered = 0
        self._release_lock = threading.Lock()
        # torch warns once per process that a tensor over read-only memory must not be written;
        # our views are documented as read-only, so take that one warning here, silently.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            probe = np.zeros(1, dtype=np.uint8)
            probe.flags.writeable = False
            _readonly_tensor(probe)

    # -- opening ---------------------------------------------------------------------------

    def _open_arrays(self) -> None:
        m = self.manifest
        img, txt = m.image, m.text
        arrays = []
        for shard in m.shards:
            n = shard.num_samples
            for entry in shard.files.values():
                check_size(self.cache_dir / entry.path, entry.bytes)
            if self.codec == "jpeg":
                data, offsets = open_jpeg(shard.path(self.cache_dir, "jpeg"), shard.path(self.cache_dir, "jpeg_offsets"), n)
                opened = {"jpeg": data, "jpeg_offsets": offsets}
            else:
                opened = {"images": open_npy(shard.path(self.cache_dir, "images"),
                                             {"uint8": (n, img.num_patches, img.patch_dim)})}
            opened |= {
                "tokens": open_npy(shard.path(self.cache_dir, "tokens"), {txt.dtype: (n, txt.max_len)}),
                "lengths": open_npy(shard.path(self.cache_dir, "lengths"), {"uint16": (n,)}),
            }
            if self.has_labels:
                # Class ids or multi-hot rows, whichever the file holds: the reader needs no labels
                # section to hand them out (verify checks them against it).
                opened["labels"] = open_npy(shard.path(self.cache_dir, "labels"), {"int64": (n,), "uint8": (n, None)})
            arrays.append(opened)
        self._arrays = arrays
        # Plain ndarray views of the same maps for per-row reads: np.memmap's indexing runs
        # Python code (~5 us) on every access.
        self._plain = [{kind: arr.view(np.ndarray) for kind, arr in opened.items()} for opened in arrays]
        kind = "jpeg" if self.codec == "jpeg" else "images"
        self._image_fds = [os.open(shard.path(self.cache_dir, kind), os.O_RDONLY) for shard in m.shards]
        self._image_starts = np.asarray([a[kind].offset for a in arrays], dtype=np.int64)
        self._image_row = img.num_patches * img.patch_dim
        mapped_bytes = sum(arr.offset + arr.nbytes for opened in arrays for arr in opened.values())  # whole files
        self.resident = self.resident_limit <= 0 or mapped_bytes <= self.resident_limit
        if self.codec == "jpeg":
            self.jpeg = JpegRows([s.path(self.cache_dir, "jpeg") for s in m.shards], [p["jpeg"] for p in self._plain],
                                 [p["jpeg_offsets"] for p in self._plain], self._image_fds, self._image_starts,
                                 img.image_size, img.patch_size, self.resident)
        # Resident caches: the per-sample rows of every shard in one array indexed by global sample
        # number (tokens are ~0.1% of the image bytes), so a batch takes them in one numpy call.
        self._small: dict[str, np.ndarray] = {}
        if self.resident:
            self._small = {kind: np.concatenate([opened[kind] for opened in arrays]) for kind in self._kinds}

    def close(self) -> None:
        """Close the pread descriptors (the maps close when their arrays are released)."""
        for fd in self._image_fds:
            os.close(fd)
        self._image_fds = []

    def __del__(self) -> None:
        if getattr(self, "_image_fds", None):
            self.close()

    # -- conveniences ----------------------------------------------------------------------

    def __len__(self) -> int:
        return self.manifest.num_samples if self._global is None else len(self._global)

    @property
    def pad_id(self) -> int:
        return self.manifest.text.pad_id

    @property
    def max_len(self) -> int:
        return self.manifest.text.max_len

    @property
    def num_patches(self) -> int:
        return self.manifest.image.num_patches

    @property
    def patch_dim(self) -> int:
        return self.manifest.image.patch_dim

    def global_indices(self, indices: Any) -> np.ndarray:
        """Global sample numbers of dataset positions (raises IndexError when out of range)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            bad = idx[(idx < 0) | (idx >= n)][0]
            raise IndexError(f"index {bad} out of range for a dataset of {n} samples")
        return idx if self._global is None else self._global[idx]

    def _locate(self, indices: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        glob = self.global_indices(indices)
        shard = np.searchsorted(self._offsets, glob, side="right") - 1
        return glob, shard, glob - self._offsets[shard]

    # -- batches ---------------------------------------------------------------------------

    def new_batch(self, batch_size: int, pin_memory: bool = False, encoded: bool = False) -> dict[str, torch.Tensor]:
        """Empty output tensors for `gather(out=...)`, optionally in pinned (page-locked) memory.

        `encoded` (JPEG caches): room for a batch's compressed rows instead of `images`: `jpeg`
        uint8, sized for B of the cache's largest row, and `jpeg_offsets` int64 (B + 1,).
        """
        shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            "images": ((batch_size, self.num_patches, self.patch_dim), np.dtype(np.uint8)),
            "input_ids": ((batch_size, self.max_len), np.dtype(np.int64)),
            "lengths": ((batch_size,), np.dtype(np.int64)),
            "index": ((batch_size,), np.dtype(np.int64)),
        }
        if encoded:
            if self.jpeg is None:
                raise VlpipeError(f"{self.cache_dir}: a raw cache has no compressed rows to hand over")
            del shapes["images"]
            shapes["jpeg"] = ((batch_size * self.jpeg.max_row,), np.dtype(np.uint8))
            shapes["jpeg_offsets"] = ((batch_size + 1,), np.dtype(np.int64))
        if self.has_labels:
            labels = self._arrays[0]["labels"]
            shapes["labels"] = ((batch_size, *labels.shape[1:]), labels.dtype)
        if pin_memory:
            return {k: torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dt)).dtype, pin_memory=True)
                    for k, (shape, dt) in shapes.items()}
        # numpy asks the kernel for transparent huge pages on large buffers (madvise), torch does
        # not: a 9.6 MB batch on 4 kB pages takes ~2400 TLB entries, and gathering into it measured
        # ~5% slower on the 2-core machine.
        return {k: torch.from_numpy(np.empty(shape, dt)) for k, (shape, dt) in shapes.items()}

    @staticmethod
    def batch_view(out: dict[str, torch.Tensor], b: int) -> dict[str, torch.Tensor]:
        """The first `b` rows of a `new_batch` output (a fresh dict: callers may replace entries)."""
        if b == len(out["index"]):
            return dict(out)
        return {k: v if k == "jpeg" else v[: b + 1] if k == "jpeg_offsets" else v[:b] for k, v in out.items()}

    def gather(
        self,
        indices: Any,
        out: dict[str, torch.Tensor] | None = None,
        views: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Read a batch (`indices`, or their `plan()`); the result uses the first B rows of `out` when given.

        With `views`, a run of consecutive samples inside one shard of a raw cache returns its
        images as a read-only view of the memory map instead of copying them.
        """
        plan = indices if isinstance(indices, RowPlan) else self.plan(indices)
        b = len(plan.glob)
        batch = self.batch_view(self.new_batch(b) if out is None else out, b)
        self.fill_small(plan, batch)
        if plan.run and views and self.jpeg is None:
            start = plan.rows[0]
            batch["images"] = _readonly_tensor(self._arrays[plan.shards[0]]["images"][start : start + b])
            self._count(b * self._image_row)
        else:
            self.fill_rows(plan, batch, 0, b)
        return batch

    def plan(self, indices: Any) -> RowPlan:
        """Where a batch's rows are; `fill_small` and `fill_rows` then copy them."""
        glob, shard, local = self._locate(indices)
        run = len(glob) > 0 and bool(shard[0] == shard[-1]) and bool(np.all(np.diff(local) == 1))
        shards, rows = shard.tolist(), local.tolist()
        order = list(range(len(rows))) if self.resident or run else np.lexsort((local, shard)).tolist()
        spans = self.jpeg.spans(shards, rows) if self.jpeg is not None else []
        return RowPlan(glob, shards, rows, run, order, spans)

    def fill_small(self, plan: RowPlan, batch: dict[str, torch.Tensor]) -> None:
        """Write everything but the image rows (index, tokens, lengths, labels) for all rows of `plan`,
        and in an encoded batch where each row's JPEG goes: `jpeg_offsets` in sampler order."""
        batch["index"].numpy()[: len(plan.glob)] = plan.glob
        if "jpeg_offsets" in batch:
            bounds = batch["jpeg_offsets"].numpy()
            bounds[0] = 0
            np.cumsum([end - start for start, end in plan.spans], out=bounds[1 : len(plan.spans) + 1])
        small = [(batch[key].numpy(), kind) for key, kind in
                 (("input_ids", "tokens"), ("lengths", "lengths"), ("labels", "labels")) if key in batch]
        if self.resident:
            for dst, kind in small:
                dst[: len(plan.glob)] = self._small[kind][plan.glob]
            return
        # One pass over the rows, whatever shards they are in: a random batch of 64 from a
        # 200-shard cache touches ~55 shards, and a numpy call per shard and array cost more
        # than the copies (measured 1.8 vs 1.05 ms per batch against 4 shards).
        plain = self._plain
        for i, (s, row) in enumerate(zip(plan.shards, plan.rows, strict=True)):
            for dst, kind in small:
                dst[i] = plain[s][kind][row]
        self._count(len(plan.glob) * _PAGE)

    def fill_rows(self, plan: RowPlan, batch: dict[str, torch.Tensor], lo: int, hi: int) -> None:
        """Fill the image rows `plan.order[lo:hi]` of `batch`: copied (raw), decoded (JPEG), or in an
        encoded batch copied still compressed (after `fill_small`, which places them).

        Threads may fill disjoint ranges of one batch at once: the copies and decodes release the GIL.
        """
        if self.jpeg is not None:
            if "jpeg" in batch:
                self.jpeg.copy(plan, batch["jpeg"].numpy(), batch["jpeg_offsets"].numpy(), lo, hi)
            else:
                self.jpeg.decode(plan, batch["images"].numpy(), lo, hi)
            return
        images = batch["images"].numpy()
        if plan.run and lo < hi:
            s, start = plan.shards[0], plan.rows[lo]
            if self.resident:
                images[lo:hi] = self._plain[s]["images"][start : start + hi - lo]
            else:
                self._pread(s, start, memoryview(images[lo:hi]).cast("B"))
            return
        plain = self._plain
        if self.resident:
            for i, s, row in zip(range(lo, hi), plan.shards[lo:hi], plan.rows[lo:hi], strict=True):
                images[i] = plain[s]["images"][row]
            return
        for i in plan.order[lo:hi]:
            self._pread(plan.shards[i], plan.rows[i], memoryview(images[i]).cast("B"))

    def bad_jpeg(self, glob: int, exc: BaseException) -> VlpipeError:
        """The one-line error naming the shard file and row of global sample `glob`, whose JPEG is bad."""
        assert self.jpeg is not None
        shard = int(np.searchsorted(self._offsets, glob, side="right")) - 1
        return self.jpeg.bad_row(shard, int(glob - self._offsets[shard]), exc)

    def _pread(self, shard: int, row: int, dest: memoryview) -> None:
        """Copy whole image rows from the page cache into `dest` (no mapping, GIL released)."""
        got = os.preadv(self._image_fds[shard], [dest], int(self._image_starts[shard]) + row * self._image_row)
        if got != dest.nbytes:
            self._short_read(shard, row)

    def _short_read(self, shard: int, row: int) -> None:
        path = self.manifest.shards[shard].path(self.cache_dir, "images")
        raise VlpipeError(f"{path}: short read at row {row}; the file changed after it was opened")

    def _count(self, nbytes: int) -> None:
        if self.resident:
            return  # the whole cache may stay mapped: nothing to trim
        self._gathered += nbytes
        if self._gathered >= self.resident_limit > 0 and self._release_lock.acquire(blocking=False):
            try:
                self._gathered = 0
                self.release_pages()
            finally:
                self._release_lock.release()

    def release_pages(self) -> None:
        """Unmap the cache pages this process has touched; the data stays in the page cache."""
        for arrays in self._arrays:
            for arr in arrays.values():
                arr._mmap.madvise(mmap.MADV_DONTNEED)

    def __getitems__(self, indices: Any) -> dict[str, torch.Tensor]:
        """A batch in a fresh output (images may be a read-only view of the map, see `gather`)."""
        return self.gather(indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """One sample, without the batch dimension (for inspection; train with batches)."""
        return {k: v[0] for k, v in self.gather([index]).items()}
