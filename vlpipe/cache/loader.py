"""Deliver cache batches to the training loop without DataLoader's per-batch process cost.

A torch DataLoader worker gathers a batch into a *new* shared-memory tensor and pickles a handle
to it through a queue: allocating, faulting in and mapping 9.6 MB per batch (batch 64 at 224 px)
caps it at ~3.5k samples/s on 2 cores, while the gather itself runs at ~20k/s in one process.
CacheLoader keeps the gather and drops the overhead: batches are gathered into a small ring of
preallocated buffers that are reused, by threads: the row reads release the GIL, and worker
processes writing into shared-memory slots measured slower than threads in every recorded run
(benchmarks/RESULTS.md).

The ring and the threads of `threads` mode belong to the loader and outlive an epoch: allocating
fresh buffers per epoch means faulting in ~50 MB of new pages, paid again at every `iter(loader)`;
measured on the 2-core machine with a 4000-sample cache (62 batches per epoch), per-epoch start-up
costs halved the delivered rate. `close()` (or leaving a `with` block, or garbage collection)
stops the threads.

In `threads` mode a batch is gathered in chunks of rows (`CHUNK_ROWS`) by a crew of background
threads, and the consuming thread takes the next batch's unclaimed chunks itself instead of
sleeping while it waits: on the 2-core machine one background thread plus the consumer delivered
~10% more than two threads gathering whole batches (three busy threads on two cores, and a
consumer idle in between), and the chunks it gathers are still in cache when it reads them.

A JPEG cache's rows are decoded by the same threads into the same ring slots (`decode="cpu"`), or
handed over still compressed (`decode="device"`): each slot then holds the batch's JPEGs side by
side plus their offsets, and `to_device` decodes them with one batched torchvision call on the
training device (nvJPEG on CUDA, vlpipe/cache/device_decode.py). The decode is a step of the
loader's hand-over rather than of the model: the training loop moves every batch through
`to_device` and gets the same uint8 (B, num_patches, patch_dim) images from either kind of cache.

Ownership rule: a delivered batch lives in a ring slot, not in fresh memory. Its tensors stay
valid until the batch after the next one is delivered, so the current and the previous batch may
be in use at once (enough for a `non_blocking` copy to the GPU to finish while the next step
starts), across epoch boundaries too. `.clone()` whatever must live longer.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vlpipe.cache.reader import CacheDataset, RowPlan
from vlpipe.cache.sampler import CacheSampler
from vlpipe.errors import VlpipeError

MODES = ("threads", "inline")
# Where a JPEG cache's rows are decoded: by the loader's threads, or on the training device.
DECODE = ("cpu", "device")
# Batches the consumer may hold besides the newest: the ownership rule above.
HELD_BATCHES = 1
# Rows per unit of work in `threads` mode: small enough that the consumer and the crew share a
# batch evenly, large enough that handing a chunk over (~10 us) is a small part of copying it
# (8 rows of 150 kB: ~100 us).
CHUNK_ROWS = 8

Batch = dict[str, torch.Tensor]


class CacheLoader:
    """Iterate batches of `dataset` in `sampler` order; see the module docstring for ownership.

    mode: "threads" (default) gathers with `workers` background threads, joined by the consuming
    thread whenever it waits for a batch; "inline" gathers in the caller's thread when asked (no
    prefetch). The threads start at the first `iter()` and serve every epoch until `close()`.
    `prefetch` batches are prepared ahead of the one being consumed.
    The sampler's position advances when a batch is *delivered*, so `state_dict()` taken in the
    loop body resumes right after the batch being trained on. Consecutive indices inside one
    shard (e.g. `shuffle=False`) come as zero-copy views of the memory map unless `pin_memory`
    asks for page-locked copies. `decode` says where a JPEG cache's rows are decoded (see the
    module docstring; a raw cache ignores it).
    """

    def __init__(
        self,
        dataset: CacheDataset,
        batch_size: int = 64,
        sampler: CacheSampler | None = None,
        mode: str = "threads",
        workers: int = 2,
        pin_memory: bool = False,
        drop_last: bool = True,
        prefetch: int = 2,
        decode: str = "cpu",
    ) -> None:
        if mode not in MODES:
            raise VlpipeError(f"unknown loader mode {mode!r}; choose one of {', '.join(MODES)}")
        if decode not in DECODE:
            raise VlpipeError(f"unknown decode {decode!r}; choose one of {', '.join(DECODE)}")
        if batch_size < 1:
            raise VlpipeError(f"batch_size must be >= 1, got {batch_size}")
        if mode == "threads" and workers < 1:
            raise VlpipeError(f"mode {mode!r} needs workers >= 1, got {workers}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.sampler = sampler if sampler is not None else CacheSampler(len(dataset), shuffle=False)
        self.mode = mode
        self.workers = int(workers)
        self.drop_last = bool(drop_last)
        self.prefetch = max(int(prefetch), 0)
        if pin_memory and not torch.cuda.is_available():
            warnings.warn("pin_memory=True ignored: CUDA is not available", stacklevel=2)
            pin_memory = False
        self.pin_memory = bool(pin_memory)
        # Compressed rows in the ring, decoded by `to_device`.
        self.encoded = decode == "device" and dataset.jpeg is not None
        ahead = max(self.prefetch, 1) if mode == "threads" else 0
        self._ahead = ahead
        # Batch k of an epoch fills slot (first + k) % len(ring); `first` continues after the
        # newest delivered batch, so a new epoch never overwrites the two the consumer may hold.
        self._ring_size = ahead + HELD_BATCHES + 1
        self._ring: list[Batch] = []
        self._last_turn = -1
        self._crew: _Crew | None = None

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state: which batches the training loop has received so far."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def close(self) -> None:
        """Stop the threads (`threads` mode) and free the ring; iterating starts them again."""
        if self._crew is not None:
            self._crew.close()
            self._crew = None
        self._ring = []

    def __enter__(self) -> CacheLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Batch]:
        plan = self.sampler.batches(self.batch_size, drop_last=self.drop_last)
        first = self._last_turn + 1
        produced = self._inline(plan, first) if self.mode == "inline" else self._threaded(plan, first)
        return self._deliver(plan, first, produced)

    def _deliver(self, plan: list[np.ndarray], first: int, produced: Iterator[Batch]) -> Iterator[Batch]:
        # Advancing right before the yield counts a batch once the loop body has it; closing this
        # generator (break, exception, garbage collection) closes `produced`, which settles the crew.
        with contextlib.closing(produced):  # type: ignore[type-var]
            for k, (indices, batch) in enumerate(zip(plan, produced, strict=False)):
                self.sampler.advance(len(indices))
                self._last_turn = first + k
                yield batch

    def to_device(self, batch: Batch, keys: tuple[str, ...], device: torch.device) -> Batch:
        """`batch[k]` for `keys` on `device` (non-blocking from pinned memory), with a compressed batch's
        images decoded there: the same uint8 `images` whichever way the loader delivers them."""
        moved = {k: batch[k].to(device, non_blocking=True) for k in keys if k in batch}
        if "images" in keys and "jpeg" in batch:
            from vlpipe.cache.device_decode import decode_batch  # torchvision only where it decodes

            moved["images"] = decode_batch(self.dataset, batch, device)
        return moved

    def _ring_slots(self) -> list[Batch]:
        """The loader's ring, allocated on first use."""
        if not self._ring:
            self._ring = [self.dataset.new_batch(self.batch_size, pin_memory=self.pin_memory, encoded=self.encoded)
                          for _ in range(self._ring_size)]
        return self._ring

    def _inline(self, plan: list[np.ndarray], first: int) -> Iterator[Batch]:
        ring = self._ring_slots()
        for k, indices in enumerate(plan):
            yield self.dataset.gather(indices, out=ring[(first + k) % len(ring)], views=not self.pin_memory)

    def _threaded(self, plan: list[np.ndarray], first: int) -> Iterator[Batch]:
        ring = self._ring_slots()
        if self._crew is None:
            self._crew = _Crew(self.dataset, self.workers)
        crew = self._crew
        jobs: dict[int, _Job] = {}
        submitted = 0
        try:
            for k in range(len(plan)):
                # Batch j reuses the slot of batch j - len(ring), which is at least two behind
                # the batch the consumer holds after this step: the ownership rule.
                while submitted < len(plan) and submitted <= k + self._ahead:
                    jobs[submitted] = self._start(crew, plan[submitted], ring[(first + submitted) % len(ring)])
                    submitted += 1
                job = jobs.pop(k)
                crew.wait(job)
                yield job.batch
        except GeneratorExit:
            # Left early: chunks still queued or being copied would land in slots the next
            # epoch reuses; drop the queued ones and let the running ones finish.
            crew.cancel()
            raise
        except BaseException:
            self.close()
            raise

    def _start(self, crew: _Crew, indices: np.ndarray, slot: Batch) -> _Job:
        """Write a batch's small arrays now and queue its image rows for the crew."""
        plan = self.dataset.plan(indices)
        if plan.run and not self.pin_memory and self.dataset.jpeg is None:
            # Consecutive samples of one shard of a raw cache: a view of the map, nothing to copy.
            return _Job(plan, self.dataset.gather(plan, out=slot, views=True), remaining=0)
        b = len(plan.glob)
        # A fresh dict: the caller may replace its entries (e.g. with device tensors).
        job = _Job(plan, self.dataset.batch_view(slot, b), remaining=-(-b // CHUNK_ROWS))
        self.dataset.fill_small(plan, job.batch)
        crew.submit(job)
        return job


def decode_where(setting: str, device: torch.device) -> str:
    """The loader's `decode` for a training setting: auto is the GPU when training on CUDA, else the CPU."""
    if setting == "auto":
        return "device" if device.type == "cuda" else "cpu"
    return setting


@dataclass(eq=False)
class _Job:
    """One batch being gathered: its plan, its slot, and how many row chunks are still to copy."""

    plan: RowPlan
    batch: Batch
    remaining: int
    error: BaseException | None = None


class _CrewState:
    """What the crew's threads share with the consumer; holds no reference to the loader."""

    def __init__(self, dataset: CacheDataset) -> None:
        self.dataset = dataset
        self.cv = threading.Condition()
        self.queue: deque[tuple[_Job, int, int]] = deque()
        self.running = 0
        self.closed = False

    def run(self, item: tuple[_Job, int, int]) -> None:
        """Copy one chunk (the caller has counted it in `running`) and report it done."""
        job, lo, hi = item
        error = None
        try:
            self.dataset.fill_rows(job.plan, job.batch, lo, hi)
        except BaseException as exc:  # handed to the consumer, raised where it waits
            error = exc
        with self.cv:
            self.running -= 1
            job.remaining -= 1
            if error is not None and job.error is None:
                job.error = error
            self.cv.notify_all()


class _Crew:
    """`workers` threads copying image rows chunk by chunk, in batch order."""

    def __init__(self, dataset: CacheDataset, workers: int) -> None:
        self.state = _CrewState(dataset)
        self.threads = [threading.Thread(target=_crew_main, args=(self.state,), name=f"vlpipe-gather-{i}",
                                         daemon=True) for i in range(workers)]
        for thread in self.threads:
            thread.start()
        # Stops the threads when the loader is dropped without close().
        self._finalizer = weakref.finalize(self, _stop_crew, self.state, self.threads)

    def submit(self, job: _Job) -> None:
        b = len(job.plan.glob)
        with self.state.cv:
            self.state.queue.extend((job, lo, min(lo + CHUNK_ROWS, b)) for lo in range(0, b, CHUNK_ROWS))
            self.state.cv.notify_all()

    def wait(self, job: _Job) -> None:
        """Return once `job` is complete, copying its unclaimed chunks in this thread meanwhile."""
        state = self.state
        while True:
            with state.cv:
                if job.remaining == 0:
                    break
                if not (state.queue and state.queue[0][0] is job):
                    state.cv.wait()  # the rest of this batch is being copied by the crew
                    continue
                item = state.queue.popleft()
                state.running += 1
            state.run(item)
        if job.error is not None:
            raise job.error

    def cancel(self) -> None:
        """Forget queued chunks and wait for the ones being copied."""
        with self.state.cv:
            self.state.queue.clear()
            while self.state.running:
                self.state.cv.wait()

    def close(self) -> None:
        self._finalizer()


def _crew_main(state: _CrewState) -> None:
    while True:
        with state.cv:
            while not state.queue and not state.closed:
                state.cv.wait()
            if state.closed:
                return
            item = state.queue.popleft()
            state.running += 1
        state.run(item)


def _stop_crew(state: _CrewState, threads: list[threading.Thread]) -> None:
    with state.cv:
        state.closed = True
        state.queue.clear()
        state.cv.notify_all()
    for thread in threads:
        if thread is not threading.current_thread():
            thread.join()
