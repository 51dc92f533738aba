"""Run a build's shard jobs: in local worker processes, or as Ray tasks on a cluster.

The engine is only the launcher. Every shard job (vlpipe/cache/shard.py) is self-contained: it
reads its source shard, loads the build's tokenizer.json by path, writes its files under
temporary names and its done record last, and starts over from nothing if a previous attempt left
a folder behind. So any engine that runs each job at least once to completion gives the same
bytes: a job whose worker died (a SIGKILL, a lost node) is simply run again. On Ray each job is
one task with `max_retries`; exceptions raised by the job itself (a bad source file) are not
retried, since they would fail the same way again.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vlpipe.cache.shard import ShardTask, build_shard
from vlpipe.errors import VlpipeError, one_line
from vlpipe.utils.raysession import ray_session

# Attempts after the first when a Ray worker dies mid-shard (Ray's own default is 3 as well).
RAY_RETRIES = 3

Record = dict[str, Any]


def run_shards(tasks: list[ShardTask], console: Console, *, distributor: str = "local",
               processes: int | None = None, ray_address: str | None = None) -> list[Record]:
    """Run every task once to completion; returns their done records (in completion order)."""
    if not tasks:
        return []
    columns = (TextColumn("[bold]build-cache"), BarColumn(), MofNCompleteColumn(), TextColumn("shards"),
               TextColumn("{task.fields[images]} images, {task.fields[rate]:.0f} images/s"), TimeElapsedColumn())
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("shards", total=len(tasks), images=0, rate=0.0)
        images = 0

        def add_images(n: int) -> None:
            nonlocal images
            images += n
            progress.update(bar, images=images, rate=images / max(time.perf_counter() - started, 1e-9))

        def finished(record: Record) -> Record:
            progress.advance(bar)
            return record

        if distributor == "ray":
            return _run_ray(tasks, processes, ray_address, add_images, finished)
        workers = max(1, min(processes or os.cpu_count() or 1, len(tasks)))
        if workers == 1:
            return [finished(build_shard(task, report=add_images)) for task in tasks]
        return _run_pool(tasks, workers, add_images, finished)


# ---- local worker processes ----------------------------------------------------------------------

_progress_queue: Any = None


def _init_worker(progress_queue: Any) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _worker(task: ShardTask) -> Record:
    return build_shard(task, report=_progress_queue.put)


def _run_pool(tasks: list[ShardTask], workers: int, add_images: Callable[[int], None],
              finished: Callable[[Record], Record]) -> list[Record]:
    # forkserver/spawn, not fork: the parent may hold threads (rich, tokenizers) that fork would copy
    # in a locked state, and fresh processes do not inherit its memory.
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    progress_queue = ctx.Queue()
    results = []
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(progress_queue,)) as pool:
        pending: set[Future] = {pool.submit(_worker, t) for t in tasks}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(progress_queue, add_images)
                for future in done:
                    results.append(finished(future.result()))
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        _drain(progress_queue, add_images)
    return results


def _drain(progress_queue: Any, add_images: Callable[[int], None]) -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            add_images(progress_queue.get_nowait())


# ---- Ray -----------------------------------------------------------------------------------------


def build_shard_on_ray(task: ShardTask) -> Record:
    """The body of one Ray task (its worker's process title reads `ray::build_shard_on_ray`)."""
    return build_shard(task)


def _run_ray(tasks: list[ShardTask], processes: int | None, address: str | None,
             add_images: Callable[[int], None], finished: Callable[[Record], Record]) -> list[Record]:
    with ray_session(address, num_cpus=processes):
        import ray
        from ray.exceptions import RayError, RayTaskError

        remote = ray.remote(num_cpus=1, max_retries=RAY_RETRIES, retry_exceptions=False)(build_shard_on_ray)
        names = {remote.remote(task): task.name for task in tasks}
        pending, results = list(names), []
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in done:
                    try:
                        record = ray.get(ref)
                    except RayTaskError as exc:  # the job itself failed: its own error, one line
                        cause = exc.cause
                        raise (cause if isinstance(cause, VlpipeError) else
                               VlpipeError(f"shard {names[ref]}: {one_line(cause or exc)}")) from exc
                    except RayError as exc:  # its worker died more than RAY_RETRIES times, or the node
                        raise VlpipeError(f"shard {names[ref]}: Ray gave up after {RAY_RETRIES + 1} attempts "
                                          f"({type(exc).__name__}); rerun the same command to resume") from exc
                    add_images(record["num_samples"])
                    results.append(finished(record))
        except BaseException:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise
    return results
