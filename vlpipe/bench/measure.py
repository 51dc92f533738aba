"""Timing one round of one pipeline: throughput, CPU use, peak RSS and how busy the rest of the host was.

CPU and memory are sampled for the whole process tree (this process plus its DataLoader or vlpipe
worker processes) by a light polling thread, because `getrusage` neither resets between pipelines
nor sees workers that are still alive. RSS is summed over the tree, so pages shared between a
parent and its forked workers count once per process: an upper bound, stated as such in the report.
The proportional set size (PSS, shared pages split between their users) is the fair total, but the
kernel walks every page to compute it (~40 ms per process), so it is read once, after the window.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import psutil
import torch

from vlpipe.bench.pipelines import Batch, Pipeline
from vlpipe.bench.system import busy_cpu_seconds

POLL_SECONDS = 0.1


@dataclass
class RoundResult:
    samples: int
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    # Sum of PSS over the process tree at the end of the window; None where the OS cannot tell.
    pss_bytes: int | None
    # CPU cores used by everything outside this process tree during the window (>= 0.15: contended).
    other_load_cores: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds


class BatchConsumer:
    """What every pipeline's batches go through: one copy into reusable buffers.

    This stands in for the trainer's pinned-memory staging copy, so each loader pays the same
    per-byte cost for what it delivers and none can win by handing over a lazy view. The copy is
    numpy's single-threaded memcpy, like a staging copy: torch's `copy_` splits a 9.6 MB batch over
    its intra-op threads, which on a busy 2-core machine spin-waits and measured 6x slower,
    turning the benchmark into a measure of OpenMP contention.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def __call__(self, batch: Batch) -> int:
        size = 0
        for name, tensor in batch.items():
            if not isinstance(tensor, torch.Tensor):
                continue  # bookkeeping such as webdataset's `__key__` list; a trainer ignores it too
            array = tensor.numpy()
            buf = self.buffers.get(name)
            if buf is None or buf.shape != array.shape or buf.dtype != array.dtype:
                buf = self.buffers[name] = np.empty_like(array)
            np.copyto(buf, array)
            size = len(array)
        return size


class TreeMonitor:
    """Polls CPU time and RSS of this process and all its descendants while a window is timed."""

    def __init__(self) -> None:
        self.root = psutil.Process()
        self.start_cpu: dict[int, float] = {}
        self.last_cpu: dict[int, float] = {}
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _processes(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return [self.root, *self.root.children(recursive=True)]
        return [self.root]

    def _poll(self) -> None:
        rss = 0
        for proc in self._processes():
            # A worker may exit between listing and reading; its last reading is kept.
            with contextlib.suppress(psutil.Error), proc.oneshot():
                times = proc.cpu_times()
                self.last_cpu[proc.pid] = times.user + times.system
                rss += proc.memory_info().rss
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._poll()

    def __enter__(self) -> TreeMonitor:
        self._poll()
        self.start_cpu = dict(self.last_cpu)
        self.start_busy = busy_cpu_seconds()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        self.busy = busy_cpu_seconds() - self.start_busy
        self.pss = _tree_pss(self._processes())

    @property
    def cpu_seconds(self) -> float:
        # Processes born inside the window (start 0) count all their time, which all falls in it.
        return sum(cpu - self.start_cpu.get(pid, 0.0) for pid, cpu in self.last_cpu.items())


def _tree_pss(processes: list[psutil.Process]) -> int | None:
    total = 0
    for proc in processes:
        try:
            with open(f"/proc/{proc.pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except FileNotFoundError:
            if proc is processes[0]:
                return None  # no smaps_rollup on this OS/kernel
        except OSError:
            continue  # a worker that exited meanwhile
    return total


def run_round(pipeline: Pipeline, seed: int, seconds: float,
              consumer: Callable[[Batch], int] | None = None) -> RoundResult:
    """Open a fresh iterator, pull the untimed warm-up batches, then consume for `seconds`.

    A cold row has no warm-up (its first batches, start-up included, are what a first epoch costs)
    and stops after `pipeline.max_batches`. `consumer` (batch -> samples in it) replaces the
    staging copy, e.g. to see what it costs.
    """
    consume = BatchConsumer() if consumer is None else consumer
    limit = pipeline.max_batches
    batches: Iterator[Batch] = pipeline.open(seed)
    with contextlib.closing(batches):  # type: ignore[type-var]
        for _ in range(pipeline.warmup_batches):
            consume(next(batches))
        samples = taken = 0
        with TreeMonitor() as monitor:
            start = time.perf_counter()
            deadline = start + seconds
            now = start
            while now < deadline and (limit is None or taken < limit):
                samples += consume(next(batches))
                taken += 1
                now = time.perf_counter()
            elapsed = now - start
    other = max(0.0, monitor.busy - monitor.cpu_seconds) / elapsed
    return RoundResult(samples, elapsed, monitor.cpu_seconds, monitor.peak_rss, monitor.pss, other)
