"""The machine a benchmark ran on, and control of the page cache (warm files, or evict them for cold rows).

Loader figures mean little without the CPU, core count, memory and library versions next to them,
and "warm" or "cold" must be a fact of the run rather than an assumption: warm rows read every
file once beforehand; cold rows have their files evicted (posix_fadvise, no root needed), and the
share of pages still cached afterwards is measured (mincore) and reported, not assumed to be 0.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import shlex
import statistics
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from vlpipe.utils.cpus import usable_cpus  # the count training sizes its threads by

_BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")
_VERSIONED = ("vlpipe", "torch", "numpy", "pillow", "tokenizers", "webdataset", "pyarrow", "psutil")
_READ_CHUNK = 8 << 20


def evict_files(paths: Iterable[Path]) -> None:
    """Ask the kernel to drop these files' pages from the page cache: posix_fadvise(POSIX_FADV_DONTNEED).

    Unlike writing to /proc/sys/vm/drop_caches this needs no root and touches only the benchmark's
    own files. It is advice: pages some process still has mapped stay, which is why a cold run
    checks with `resident_share` afterwards instead of assuming.
    """
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages (a cache just built) cannot be dropped until written back
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_share(paths: Iterable[Path]) -> float:
    """The share of these files' pages that sit in the page cache now (mincore over a fresh map).

    Mapping a file reads none of it, so asking does not change the answer.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))
    resident = total = 0
    for path in paths:
        size = Path(path).stat().st_size
        if size == 0:
            continue
        pages = -(-size // mmap.PAGESIZE)
        vector = (ctypes.c_ubyte * pages)()
        mapped = np.memmap(path, dtype=np.uint8, mode="r")
        try:
            if libc.mincore(ctypes.c_void_p(mapped.ctypes.data), size, vector) != 0:
                raise OSError(ctypes.get_errno(), f"mincore failed on {path}")
        finally:
            del mapped
        resident += int((np.frombuffer(vector, np.uint8) & 1).sum())
        total += pages
    return resident / total if total else 0.0


def sequential_read_rate(paths: Iterable[Path]) -> tuple[float, float]:
    """Bytes/s of reading these files front to back straight after evicting them, and the share of
    their pages that were still cached when the read began (0 means the figure is the disk's).

    The yardstick for a cold cache, not a bound: one reader with one request in flight; a loader's
    threads keep several in flight and can read faster (119% of it on a 2-core VM's virtual disk).
    """
    files = [Path(p) for p in paths]
    evict_files(files)
    left = resident_share(files)
    total = 0
    start = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while chunk := fh.read(_READ_CHUNK):
                total += len(chunk)
    return total / (time.perf_counter() - start), left


def warm_files(paths: Iterable[Path]) -> tuple[bool, str]:
    """Read files once so they sit in the page cache; refuse when they cannot all fit."""
    files = [Path(p) for p in paths]
    total = sum(p.stat().st_size for p in files)
    available = psutil.virtual_memory().available
    if total > available // 2:
        return False, (f"data ({total / 1e9:.1f} GB) exceeds half the available memory "
                       f"({available / 1e9:.1f} GB): the page cache cannot hold it, figures are partly cold")
    for path in files:
        with open(path, "rb", buffering=0) as fh:
            while fh.read(_READ_CHUNK):
                pass
    return True, f"warm: {total / 1e6:.0f} MB read into the page cache before timing"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(package: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, OS and library versions: what a reader needs to compare figures."""
    import torch

    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "versions": {name: package_version(name) for name in _VERSIONED},
    }


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, every process) since boot."""
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in _BUSY_FIELDS)


class HostLoad:
    """CPU cores the rest of the machine used while a benchmark script ran.

    Everything busy minus this process and its reaped children (e.g. the ceiling's gatherers):
    on a shared machine a reader needs this beside every figure, to know what it was taken under.
    """

    def __init__(self) -> None:
        self.start_wall = time.perf_counter()
        self.start_busy = busy_cpu_seconds()
        self.start_own = self._own()

    @staticmethod
    def _own() -> float:
        times = psutil.Process().cpu_times()
        return times.user + times.system + times.children_user + times.children_system

    def other_cores(self) -> float:
        own = self._own() - self.start_own
        other = max(0.0, busy_cpu_seconds() - self.start_busy - own) / (time.perf_counter() - self.start_wall)
        # Clock-tick accounting over a short window can overshoot: nothing uses more than every core.
        return min(other, float(psutil.cpu_count() or 1))


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def script_record(script: str, argv: list[str], started: str, machine: dict[str, Any], host: HostLoad,
                  settings: dict[str, Any], rounds: dict[str, list[float]]) -> dict[str, Any]:
    """The JSON a benchmark script leaves in benchmarks/results: what ran, when, where, under what load.

    `machine` is machine_info() taken before the run (its load average describes the host, not the
    run); `rounds` maps each row to its per-round rates, summarized here as median, min and max.
    """
    return {
        "command": shlex.join(["python", script, *argv]),
        "started": started,
        "finished": utc_now(),
        "machine": machine,
        "other_load_cores": round(host.other_cores(), 2),
        "settings": settings,
        "results": {name: {"median": round(statistics.median(rates), 1), "min": round(min(rates), 1),
                           "max": round(max(rates), 1), "rounds": [round(r, 1) for r in rates]}
                    for name, rates in rounds.items()},
    }
