"""Deliver cache batches to the training loop without DataLoader's per-batch process cost.

A torch DataLoader worker gathers a batch into a *new* shared-memory tensor and pickles a handle
to it through a queue: allocating, faulting in and mapping 9.6 MB per batch (batch 64 at 224 px)
caps it at ~3.5k samples/s on 2 cores, while the gather itself runs at ~20k/s in one process.
CacheLoader keeps the gather and drops the overhead: batches are gathered into a small ring of
preallocated buffers that are reused, by threads (the row reads release the GIL) or by worker
processes that write into shared-memory ring slots and only send batch numbers back.

The ring, the threads of `threads` mode and the worker processes of `processes` mode belong to
the loader and outlive an epoch: allocating fresh buffers per epoch means faulting in ~50 MB of new
pages, and forking workers per epoch costs tens of milliseconds, both paid again at every
`iter(loader)`. Measured on the 2-core machine with a 4000-sample cache (62 batches per epoch),
that per-epoch cost halved the delivered rate. `close()` (or leaving a `with` block, or garbage collection) stops the workers.

In `threads` mode a batch is gathered in chunks of rows (`CHUNK_ROWS`) by a crew of background
threads, and the consuming thread takes the next batch's unclaimed chunks itself instead of
sleeping while it waits: on the 2-core machine one background thread plus the consumer delivered
~10% more than two threads gathering whole batches (three busy threads on two cores, and a
consumer idle in between), and the chunks it gathers are still in cache when it reads them.

Ownership rule: a delivered batch lives in a ring slot, not in fresh memory. Its tensors stay
valid until the batch after the next one is delivered, so the current and the previous batch may
be in use at once (enough for a `non_blocking` copy to the GPU to finish while the next step
starts), across epoch boundaries too. `.clone()` whatever must live longer.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import traceback
import warnings
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as tmp

from vlpipe.cache.reader import CacheDataset, RowPlan
from vlpipe.cache.sampler import CacheSampler
from vlpipe.errors import VlpipeError

MODES = ("threads", "inline", "processes")
# Batches the consumer may hold besides the newest: the ownership rule above.
HELD_BATCHES = 1
# How often a waiting consumer checks that worker processes are still alive (seconds).
_POLL_S = 1.0
# Rows per unit of work in `threads` mode: small enough that the consumer and the crew share a
# batch evenly, large enough that handing a chunk over (~10 us) is a small part of copying it
# (8 rows of 150 kB: ~100 us).
CHUNK_ROWS = 8

Batch = dict[str, torch.Tensor]


class CacheLoader:
    """Iterate batches of `dataset` in `sampler` order; see the module docstring for ownership.

    mode: "threads" (default) gathers with `workers` background threads, joined by the consuming
    thread whenever it waits for a batch; "inline" gathers in the caller's thread when asked (no
    prefetch); "processes" uses `workers` forked processes writing into shared-memory slots. The
    threads and processes start at the first `iter()` and serve every epoch until `close()`.
    `prefetch` batches are prepared ahead of the one being consumed (in `processes` mode at least
    one per worker, since each process gathers whole batches).
    The sampler's position advances when a batch is *delivered*, so `state_dict()` taken in the
    loop body resumes right after the batch being trained on. Consecutive indices inside one
    shard (e.g. `shuffle=False`) come as zero-copy views of the memory map unless `pin_memory`
    asks for page-locked copies.
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
    ) -> None:
        if mode not in MODES:
            raise VlpipeError(f"unknown loader mode {mode!r}; choose one of {', '.join(MODES)}")
        if batch_size < 1:
            raise VlpipeError(f"batch_size must be >= 1, got {batch_size}")
        if mode != "inline" and workers < 1:
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
        ahead = {"inline": 0, "threads": max(self.prefetch, 1), "processes": max(self.prefetch, self.workers)}[mode]
        self._ahead = ahead
        # Batch k of an epoch fills slot (first + k) % len(ring); `first` continues after the
        # newest delivered batch, so a new epoch never overwrites the two the consumer may hold.
        self._ring_size = ahead + HELD_BATCHES + 1
        self._ring: list[Batch] = []
        self._pinned: list[Batch] = []
        self._last_turn = -1
        self._pool: _ProcessPool | None = None
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
        """Stop the worker processes (`processes` mode) and free the ring; iterating restarts them."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._crew is not None:
            self._crew.close()
            self._crew = None
        self._ring, self._pinned = [], []

    def __enter__(self) -> CacheLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Batch]:
        plan = self.sampler.batches(self.batch_size, drop_last=self.drop_last)
        first = self._last_turn + 1
        if self.mode == "inline":
            produced = self._inline(plan, first)
        elif self.mode == "threads":
            produced = self._threaded(plan, first)
        else:
            produced = self._processes(plan, first)
        return self._deliver(plan, first, produced)

    def _deliver(self, plan: list[np.ndarray], first: int, produced: Iterator[Batch]) -> Iterator[Batch]:
        # Advancing right before the yield counts a batch once the loop body has it; closing this
        # generator (break, exception, garbage collection) closes `produced`, which stops workers.
        with contextlib.closing(produced):  # type: ignore[type-var]
            for k, (indices, batch) in enumerate(zip(plan, produced, strict=False)):
                self.sampler.advance(len(indices))
                self._last_turn = first + k
                yield batch

    def _ring_slots(self) -> list[Batch]:
        """The loader's ring, allocated on first use (shared memory in `processes` mode)."""
        if not self._ring:
            self._ring = [self.dataset.new_batch(self.batch_size, pin_memory=self.pin_memory and self.mode != "processes")
                          for _ in range(self._ring_size)]
            if self.mode == "processes":
                self._ring = [{k: v.share_memory_() for k, v in slot.items()} for slot in self._ring]
                if self.pin_memory:
                    # Page-locked memory cannot be shared with the workers; copy into it here.
                    self._pinned = [self.dataset.new_batch(self.batch_size, pin_memory=True)
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
        views = not self.pin_memory
        plan = self.dataset.plan(indices)
        if plan.run and views:
            # Consecutive samples of one shard: a view of the map, nothing to copy.
            return _Job(plan, self.dataset.gather(plan, out=slot, views=True), remaining=0)
        b = len(plan.glob)
        # A fresh dict either way: the caller may replace its entries (e.g. with device tensors).
        batch = dict(slot) if b == self.batch_size else {key: t[:b] for key, t in slot.items()}
        job = _Job(plan, batch, remaining=-(-b // CHUNK_ROWS))
        self.dataset.fill_small(plan, job.batch)
        crew.submit(job)
        return job

    def _processes(self, plan: list[np.ndarray], first: int) -> Iterator[Batch]:
        ring = self._ring_slots()  # allocated before the workers fork, so they share it
        if self._pool is None:
            self._pool = _ProcessPool(self.dataset, ring, self.workers)
        pool = self._pool
        submitted = 0
        try:
            for k in range(len(plan)):
                while submitted < len(plan) and submitted <= k + self._ahead:
                    turn = first + submitted
                    pool.submit(turn, turn % len(ring), plan[submitted])
                    submitted += 1
                pool.wait(first + k)
                slot = ring[(first + k) % len(ring)]
                b = len(plan[k])
                if not self._pinned:
                    yield {key: t[:b] for key, t in slot.items()}
                else:
                    target = self._pinned[(first + k) % len(ring)]
                    yield {key: target[key][:b].copy_(t[:b]) for key, t in slot.items()}
        except GeneratorExit:
            # Left early: batches still being gathered would land in slots the next epoch
            # reuses, so let them finish first.
            if not pool.drain():
                self.close()
            raise
        except BaseException:
            self.close()  # after a failure the workers are not trusted again
            raise


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
            self.dataset.fill_images(job.plan, job.batch["images"].numpy(), lo, hi)
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


class _ProcessPool:
    """Forked gather workers writing into shared ring slots; only batch numbers travel back."""

    def __init__(self, dataset: CacheDataset, slots: list[Batch], workers: int) -> None:
        ctx = tmp.get_context("fork" if os.name == "posix" else "spawn")
        self.tasks, self.results = ctx.Queue(), ctx.Queue()
        self.procs = [ctx.Process(target=_worker_main, args=(dataset, slots, self.tasks, self.results),
                                  name=f"vlpipe-gather-{i}", daemon=True) for i in range(workers)]
        for proc in self.procs:
            proc.start()
        self.outstanding: set[int] = set()
        self.done: dict[int, tuple[str, str] | None] = {}
        # Stops the workers when the loader is dropped without close() (not at a fixed point).
        self._finalizer = weakref.finalize(self, _stop, self.procs, self.tasks, self.results)

    def submit(self, turn: int, slot: int, indices: np.ndarray) -> None:
        self.outstanding.add(turn)
        self.tasks.put((turn, slot, indices))

    def wait(self, turn: int) -> None:
        """Block until batch `turn` is in its slot; a worker's error is raised here."""
        while turn not in self.done:
            try:
                number, error = self.results.get(timeout=_POLL_S)
            except queue.Empty:
                dead = [p for p in self.procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"CacheLoader worker {dead[0].name} died (exit code "
                                       f"{dead[0].exitcode})") from None
                continue
            if number == -1:
                _raise_worker_error(error, "while starting")
            self.outstanding.discard(number)
            self.done[number] = error
        error = self.done.pop(turn)
        if error is not None:
            _raise_worker_error(error, f"on batch {turn}")

    def drain(self) -> bool:
        """Wait out batches submitted but never consumed; False if a worker failed meanwhile."""
        try:
            for turn in sorted(self.outstanding):
                self.wait(turn)
        except (RuntimeError, VlpipeError):
            return False
        self.done.clear()
        return True

    def close(self) -> None:
        self._finalizer()


def _stop(procs: list[Any], tasks: Any, results: Any) -> None:
    for _ in procs:
        with contextlib.suppress(OSError, ValueError):
            tasks.put(None)
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()
            proc.join()
    for q in (tasks, results):
        q.cancel_join_thread()
        q.close()


def _raise_worker_error(error: tuple[str, str], where: str) -> None:
    kind, text = error
    if kind == "user":
        raise VlpipeError(text)
    raise RuntimeError(f"CacheLoader worker failed {where}:\n{text}")


def _worker_main(dataset: CacheDataset, slots: list[Batch], tasks: Any, results: Any) -> None:
    """Gather batches into shared slots; only (batch number, error) goes back.

    An error travels as text: a VlpipeError's one-line message, anything else's traceback.
    Batch number -1 reports a worker that could not start.
    """
    torch.set_num_threads(1)
    number = -1
    try:
        # Fresh mappings instead of the parent's: see CacheDataset.reopen for the RSS reason.
        dataset.reopen()
        while (task := tasks.get()) is not None:
            number, slot, indices = task
            dataset.gather(indices, out=slots[slot], views=False)
            results.put((number, None))
    except VlpipeError as exc:
        results.put((number, ("user", str(exc))))
    except BaseException:
        results.put((number, ("bug", traceback.format_exc())))
