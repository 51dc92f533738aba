"""CPU training threads are sized from the cores the process may use, not the machine's core count."""

import json
import os
import subprocess
import sys

import pytest

from vlpipe.utils.cpus import loader_mode_for, size_cpu_threads, threads_for


@pytest.mark.parametrize(("cores", "processes", "mode", "workers", "current", "expected"), [
    (2, 1, "inline", 2, 2, (1, "inline", 0)),  # the 2-core machine: one core left beside torch
    (16, 1, "inline", 2, 16, (15, "inline", 0)),
    (16, 1, "threads", 3, 16, (13, "threads", 3)),  # the gather threads get their own cores
    (16, 2, "inline", 2, 16, (7, "inline", 0)),  # two torchrun processes share the machine
    (1, 1, "threads", 2, 1, (1, "threads", 2)),  # never fewer than one thread
    (64, 1, "inline", 2, 4, (4, "inline", 0)),  # OMP_NUM_THREADS=4 (or the caller's choice) is kept
    (2, 4, "inline", 2, 2, (1, "inline", 0)),  # more processes than cores
])
def test_torch_threads_are_the_process_share_less_the_loader(cores, processes, mode, workers, current, expected):
    assert tuple(size_cpu_threads(cores, processes, mode, workers, requested=0, current=current)) == expected


def test_an_explicit_thread_count_is_taken_as_it_is():
    assert size_cpu_threads(2, 1, "threads", 2, requested=3, current=1) == (3, "threads", 2)


def test_auto_loader_mode_is_inline_on_the_cpu_and_threads_on_a_gpu():
    assert loader_mode_for("auto", "cpu") == "inline"
    assert loader_mode_for("auto", "cuda") == "threads"
    assert loader_mode_for("threads", "cpu") == "threads"


def _sized_in_a_process(cpus: set[int], env: dict[str, str]) -> dict:
    """`threads_for` in a fresh process restricted to `cpus` by a real affinity mask."""
    code = ("import json, os, torch; from vlpipe.utils.cpus import threads_for, usable_cpus; "
            "print(json.dumps({'usable': usable_cpus(), 'machine': os.cpu_count(), 'torch_default': "
            "torch.get_num_threads(), 'sized': threads_for('cpu', 'auto', 2, 0)._asdict()}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**{k: v for k, v in os.environ.items() if k != "LOKY_MAX_CPU_COUNT"}, **env},
                          preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_a_process_pinned_to_one_core_trains_with_one_thread_whatever_torch_was_told():
    one = {min(os.sched_getaffinity(0))}
    # torch alone would start 2 threads on the one core it may use.
    seen = _sized_in_a_process(one, {"OMP_NUM_THREADS": "2"})
    assert seen["usable"] == 1 and seen["torch_default"] == 2
    assert seen["sized"] == {"torch_threads": 1, "loader_mode": "inline", "loader_threads": 0}


def test_the_cuda_side_leaves_torch_threads_alone():
    import torch

    sized = threads_for("cuda", "auto", 3, 0)
    assert sized == (torch.get_num_threads(), "threads", 3)
