"""How many threads a CPU training run gives torch and the loader, from the cores it may really use.

`os.cpu_count()` counts the machine's cores, not the ones this process may run on: under `taskset`,
a SLURM allocation or a container's CPU quota, a thread per machine core oversubscribes the few
cores the process has. So the count comes from joblib (which scikit-learn uses too), which takes the
smallest of the affinity mask, the cgroup CPU quota (v1 and v2) and `LOKY_MAX_CPU_COUNT`, and is
shared among the training processes of one machine (torchrun's `LOCAL_WORLD_SIZE`).

torch's threads wait for each other at the end of every operator, spinning; when one of them has
to share its core with anything else (the loader, another job), every operator waits for it. On 2
cores beside one busy process, 2 torch threads trained about 10-25x slower than 1; on the quietest
measurement 1 thread cost 25% (benchmarks/RESULTS.md, "Training on a busy CPU"). So one core, or
as many as the loader has gather threads, is left out of torch's threads: at most one core's share
of the speed on an idle machine against the collapse on a busy one. The loader default on the CPU
is `inline` (gathering in the training thread between steps): there the model step, not the
loader, is the bottleneck, and a gather thread beside torch gave no consistent gain. `threads`
stays the default on a GPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import NamedTuple

import torch


class CpuThreads(NamedTuple):
    """What a training process runs with: torch's intra-op threads and the loader's mode and threads."""

    torch_threads: int
    loader_mode: str
    loader_threads: int  # background gather threads (0 in inline mode)


def usable_cpus() -> int:
    """Cores this process may run on: affinity mask, cgroup CPU quota and LOKY_MAX_CPU_COUNT, at least 1."""
    from joblib import cpu_count

    return cpu_count()


def local_processes() -> int:
    """Training processes sharing this machine: torchrun's LOCAL_WORLD_SIZE, else 1."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def size_cpu_threads(cores: int, processes: int, loader_mode: str, workers: int, requested: int,
                     current: int) -> CpuThreads:
    """Split `cores` (usable by all `processes` of this machine together) between torch and the rest.

    `requested` > 0 is taken as it is (`--cpu-threads`). Otherwise torch gets this process's share of
    the cores less one core, or less the loader's gather threads where there are more (at least 1
    thread), and never more than `current` (torch's setting when the run starts: OMP_NUM_THREADS, or
    a caller's `torch.set_num_threads`), so a caller that chose fewer threads keeps its choice.
    """
    loader_threads = workers if loader_mode == "threads" else 0
    if requested > 0:
        return CpuThreads(requested, loader_mode, loader_threads)
    share = max(1, cores // max(1, processes))
    return CpuThreads(max(1, min(current, share - max(1, loader_threads))), loader_mode, loader_threads)


def loader_mode_for(mode: str, device_type: str) -> str:
    """The loader mode a run uses: `auto` resolved by device type, any other mode as given."""
    if mode != "auto":
        return mode
    return "inline" if device_type == "cpu" else "threads"


def threads_for(device_type: str, loader_mode: str, workers: int, requested: int) -> CpuThreads:
    """A training process's threads: on the CPU sized to the usable cores (`size_cpu_threads`); on a
    GPU the loader mode resolved and torch's thread setting left as it is."""
    mode = loader_mode_for(loader_mode, device_type)
    current = torch.get_num_threads()
    if device_type != "cpu":
        return CpuThreads(current, mode, workers if mode == "threads" else 0)
    return size_cpu_threads(usable_cpus(), local_processes(), mode, workers, requested, current)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count is process-wide: set it for a block, then give the caller its own back."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
