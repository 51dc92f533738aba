"""The random-gather ceiling: how fast this machine can copy random cache rows at all.

A loader over the cache can never beat gathering random 150 kB image rows from the page-cached
memmap into a reused batch buffer, so that rate (measured in the same run, next to the loaders)
is the honest yardstick for "how close to the hardware" vlpipe gets. It is measured in one
process and in N processes at once (aggregate), because a 2-core machine may or may not have
the memory bandwidth to feed a second core.

The N-process variant forks on Linux (instant start, no `if __name__ == "__main__"` needed in
the caller's script; the children only run numpy copies) and spawns elsewhere, where this module's
numpy-only imports keep the fresh interpreters quick to start.

Two gather methods, because "the ceiling" depends on how the rows are copied:
- `rows` (the ceiling): one row-slice memcpy per sample, sorted by index. The fastest way found here
  (2x `np.take`), so nothing that reads the cache beats it: the yardstick for vlpipe's share.
- `take`: `np.take(shard, rows, axis=0, out=...)`, the gather the project's anchor figures
  (`benchmarks/results/anchors/loader-baselines-2core.md`, "random 150,528-B row gather") were
  measured with (46k/s on one process there). Reported beside the ceiling for reading a figure
  against those anchors; it is not an upper bound (vlpipe's own gather beats it), so a share of it
  is never a share of the ceiling.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import sys
import time
from dataclasses import dataclass

import numpy as np

# How long a gatherer may take to start before the measurement is abandoned.
START_TIMEOUT_S = 120.0
METHODS = ("rows", "take")


@dataclass
class CeilingResult:
    processes: int
    samples_per_s: float
    consumer_copy: bool = False
    method: str = "rows"


class RowGatherer:
    """Random rows of several shard memmaps gathered into one reused (batch, ...) buffer.

    With `consumer_copy`, every gathered batch is also copied once into a second reused buffer,
    as the benchmark's consumer copies every pipeline's batches (the staging-copy stand-in): that
    rate bounds what any loader can deliver through the benchmark's consumer on this machine.
    `method` is `rows` or `take` (see the module docstring).
    """

    def __init__(self, image_files: list[str], batch_size: int, seed: int, consumer_copy: bool = False,
                 method: str = "rows"):
        if method not in METHODS:
            raise ValueError(f"unknown gather method {method!r}; choose from {', '.join(METHODS)}")
        self.method = method
        self.shards = [np.load(path, mmap_mode="r") for path in image_files]
        sizes = [len(shard) for shard in self.shards]
        self.offsets = np.cumsum([0, *sizes])
        self.total = int(self.offsets[-1])
        self.buffer = np.empty((batch_size, *self.shards[0].shape[1:]), dtype=self.shards[0].dtype)
        self.staging = np.empty_like(self.buffer) if consumer_copy else None
        self.rng = np.random.default_rng(seed)

    def gather(self) -> np.ndarray:
        """Fill the buffer with random rows; returns their global indices, in buffer order."""
        indices = np.sort(self.rng.integers(0, self.total, len(self.buffer)))
        shard_ids = np.searchsorted(self.offsets, indices, side="right") - 1
        rows = indices - self.offsets[shard_ids]
        if self.method == "take":
            # Sorted indices put each shard's rows in one contiguous run of slots: one np.take each.
            bounds = np.searchsorted(shard_ids, np.arange(len(self.shards) + 1))
            for shard_id, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
                if hi > lo:
                    np.take(self.shards[shard_id], rows[lo:hi], axis=0, out=self.buffer[lo:hi])
        else:
            # One row-slice assignment (a plain memcpy) per sample: measured 2x faster here than
            # np.take(..., out=) or fancy indexing over a memmap, and the ceiling must be the fastest way.
            for slot, (shard_id, row) in enumerate(zip(shard_ids.tolist(), rows.tolist(), strict=True)):
                self.buffer[slot] = self.shards[shard_id][row]
        if self.staging is not None:
            np.copyto(self.staging, self.buffer)
        return indices

    def run(self, seconds: float) -> float:
        """Samples per second over a window of `seconds` (after one untimed batch)."""
        self.gather()
        batches = 0
        start = time.perf_counter()
        while (now := time.perf_counter()) - start < seconds or batches == 0:
            self.gather()
            batches += 1
        return batches * len(self.buffer) / (now - start)


def _gather_worker(image_files: list[str], batch_size: int, seconds: float, seed: int, consumer_copy: bool,
                   method: str, barrier: mp.synchronize.Barrier, results: mp.Queue) -> None:
    gatherer = RowGatherer(image_files, batch_size, seed, consumer_copy, method)
    gatherer.gather()
    # All processes start timing together so their windows overlap and contend as they would.
    barrier.wait()
    results.put(gatherer.run(seconds))


def measure_ceiling(image_files: list[str], batch_size: int, seconds: float, processes: int,
                    seed: int = 0, consumer_copy: bool = False, method: str = "rows") -> CeilingResult:
    """Aggregate random-gather samples/s of `processes` gatherers running at the same time."""
    if processes == 1:
        rate = RowGatherer(image_files, batch_size, seed, consumer_copy, method).run(seconds)
        return CeilingResult(1, rate, consumer_copy, method)
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    barrier = ctx.Barrier(processes)
    results: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_gather_worker, daemon=True,
                         args=(image_files, batch_size, seconds, seed + i, consumer_copy, method, barrier, results))
             for i in range(processes)]
    for proc in procs:
        proc.start()
    try:
        rates = _collect(results, procs, START_TIMEOUT_S + seconds)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
    return CeilingResult(processes, float(sum(rates)), consumer_copy, method)


def _collect(results: mp.Queue, procs: list, timeout: float) -> list[float]:
    """One rate per gatherer; fails fast (instead of waiting out the timeout) if one dies."""
    rates: list[float] = []
    deadline = time.monotonic() + timeout
    while len(rates) < len(procs):
        try:
            rates.append(results.get(timeout=0.5))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"random-gather ceiling: a gatherer process failed (exit codes {dead})") from None
    return rates
