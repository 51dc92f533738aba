"""CPU training speed by thread layout, on an idle CPU and beside a process that keeps one core busy.

    vlpipe demo                                                   # makes cache/demo/cache
    python benchmarks/bench_cpu_threads.py --cache cache/demo/cache --json benchmarks/results/cpu_threads.json

Each run is a real `vlpipe train pretrain` process on the CPU (tiny preset, the demo's batch and lr)
with one thread layout: torch's intra-op threads (`--cpu-threads`) and the loader's mode and gather
threads. `before` is what the loop did before it sized threads: the `threads` loader with 2
workers beside torch's default thread count; `after` is the defaults (`--loader-mode auto`,
`--cpu-threads 0`). The condition `hog` starts a single-threaded busy loop (`while True: pass`, a
separate process, not pinned) before the run and stops it after. Rounds interleave every layout
and both conditions, the order rotated each round, so a slow phase of a shared machine spreads
over all of them.

Per run: optimizer steps/s over the logging windows after the first (start-up excluded; evaluation
is not in any window), the process's wall and CPU seconds, and the 1-minute load average before it
started (other processes of the machine). Prints one line per run and a median table; `--json`
keeps every run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vlpipe.train.metrics_log import read_metrics
from vlpipe.utils.cpus import usable_cpus

HOG = "while True: pass"


def layouts(default_threads: int) -> dict[str, list[str]]:
    """Thread layouts by name, as `vlpipe train pretrain` flags."""
    return {
        "before": ["--loader-mode", "threads", "--workers", "2", "--cpu-threads", str(default_threads)],
        "after": [],
        "inline-torch1": ["--loader-mode", "inline", "--cpu-threads", "1"],
        "inline-torch2": ["--loader-mode", "inline", "--cpu-threads", "2"],
        "threads1-torch1": ["--loader-mode", "threads", "--workers", "1", "--cpu-threads", "1"],
    }


def run_once(cache: str, flags: list[str], steps: int, window: int, hog: bool, tmp: Path) -> dict:
    out = tmp / f"run-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "vlpipe.cli.main", "train", "pretrain", "--cache", cache, "--out", str(out),
               "--steps", str(steps), "--log-every", str(window), "--batch-size", "64", "--lr", "2e-3",
               "--device", "cpu", "--eval-max-batches", "1", "--no-live", "--no-plots", *flags]
    load = os.getloadavg()[0]
    hog_proc = subprocess.Popen([sys.executable, "-c", HOG]) if hog else None
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the hog is not reaped yet: not counted
    finally:
        if hog_proc is not None:
            hog_proc.kill()
            hog_proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stderr[-2000:]}")
    windows = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    first, last = windows[0], windows[-1]
    rates = [(b["step"] - a["step"]) / (b["time"] - a["time"]) for a, b in itertools.pairwise(windows)]
    threads = json.loads((out / "config.json").read_text())["threads"]
    # The best window is the closest this run came to an uncontended machine.
    return {"steps_per_s": (last["step"] - first["step"]) / (last["time"] - first["time"]),
            "best_window_steps_per_s": max(rates), "wall_s": wall,
            "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "load_1m_before": load, "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="a cache directory, e.g. the demo's cache/demo/cache")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--window", type=int, default=20, help="optimizer steps per logging window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layouts", default="", help="comma-separated subset of the layouts (default: all)")
    parser.add_argument("--json", help="write every run and the medians here")
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    chosen = layouts(default_threads)
    if args.layouts:
        chosen = {name: chosen[name] for name in args.layouts.split(",")}
    names = list(chosen)
    runs = []
    with tempfile.TemporaryDirectory(prefix="vlpipe-cpu-threads-") as tmp:
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[: round_ % len(names)]
            for hog in (round_ % 2 == 1, round_ % 2 == 0):
                for name in order:
                    run = {"round": round_, "layout": name, "condition": "hog" if hog else "idle",
                           **run_once(args.cache, chosen[name], args.steps, args.window, hog, Path(tmp))}
                    runs.append(run)
                    t = run["threads"]
                    print(f"round {round_} {run['condition']:4} {name:16} {run['steps_per_s']:6.2f} steps/s "
                          f"(best window {run['best_window_steps_per_s']:6.2f}) "
                          f"wall {run['wall_s']:5.1f} s cpu {run['cpu_s']:5.1f} s load {run['load_1m_before']:.1f} "
                          f"(torch {t['torch_threads']}, {t['loader_mode']} x{t['loader_threads']})", flush=True)
    medians = {f"{name}/{cond}": statistics.median(r["steps_per_s"] for r in runs
                                                     if r["layout"] == name and r["condition"] == cond)
               for name in names for cond in ("idle", "hog")}
    for key, value in medians.items():
        print(f"{key:24} {value:6.2f} steps/s (median of {args.rounds})")
    if args.json:
        report = {"machine": {"usable_cpus": usable_cpus(), "os_cpu_count": os.cpu_count(),
                              "torch_default_threads": default_threads, "python": platform.python_version(),
                              "torch": torch.__version__},
                  "settings": {"steps": args.steps, "window": args.window, "rounds": args.rounds,
                               "batch_size": 64, "preset": "tiny", "cache": args.cache,
                               "layouts": chosen},
                  "medians_steps_per_s": medians, "runs": runs}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
