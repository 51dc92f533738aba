"""Do random row gathers from a cache scale with threads? pread per row vs copies out of the map.

    .venv/bin/python benchmarks/bench_gather_threads.py --cache /tmp/vlpipe-bench/cache-raw-4000

Prints a Markdown table and writes the raw record (per-round rates, machine, host load, command,
date) to --json, by default benchmarks/results/gather_threads.json.

vlpipe's reader copies each random image row with one `os.preadv` call, which releases the GIL
for the copy and takes it back afterwards: 64 hand-overs per batch of 64 (that is how it reads a
cache too big to stay mapped). This measures, with 1 and 2 threads gathering at once into their
own reused buffers (no consumer), what that costs, against two ways of reading through the memory
map (every page mapped before timing, as in a cache that stays mapped): one row-slice copy per row
(`out[i] = map[row]`, how the reader copies from a resident cache) and `np.take(map, rows, axis=0,
out=...)`, which releases the GIL once per shard. Rounds are interleaved; the figure is the median
of the rounds' aggregate rows per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

from vlpipe.bench.system import HostLoad, machine_info, script_record, utc_now
from vlpipe.cache.format import load_manifest
from vlpipe.utils.atomic import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results"


class Shards:
    def __init__(self, cache: Path) -> None:
        manifest = load_manifest(cache)
        paths = [shard.path(cache, "images") for shard in manifest.shards]
        self.maps = [np.load(path, mmap_mode="r") for path in paths]
        self.plain = [m.view(np.ndarray) for m in self.maps]
        self.fds = [os.open(path, os.O_RDONLY) for path in paths]
        self.starts = [m.offset for m in self.maps]
        self.offsets = np.cumsum([0, *(len(m) for m in self.maps)])
        self.row_shape = self.maps[0].shape[1:]
        self.row_bytes = int(np.prod(self.row_shape))
        for array in self.plain:  # page cache warm and every page of the maps mapped
            array.sum(dtype=np.uint64)

    def pick(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.sort(rng.integers(0, self.offsets[-1], batch))
        shard = np.searchsorted(self.offsets, index, side="right") - 1
        return shard, index - self.offsets[shard]


def pread_batch(shards: Shards, out: np.ndarray, shard: np.ndarray, row: np.ndarray) -> None:
    flat, step = memoryview(out).cast("B"), shards.row_bytes
    for i, (s, r) in enumerate(zip(shard.tolist(), row.tolist(), strict=True)):
        os.preadv(shards.fds[s], [flat[i * step : (i + 1) * step]], shards.starts[s] + r * step)


def slice_batch(shards: Shards, out: np.ndarray, shard: np.ndarray, row: np.ndarray) -> None:
    for i, (s, r) in enumerate(zip(shard.tolist(), row.tolist(), strict=True)):
        out[i] = shards.plain[s][r]


def take_batch(shards: Shards, out: np.ndarray, shard: np.ndarray, row: np.ndarray) -> None:
    # One np.take per shard the batch touches (4 here), each releasing the GIL for its rows.
    filled = 0
    for s in np.unique(shard).tolist():
        rows = row[shard == s]
        np.take(shards.plain[s], rows, axis=0, out=out[filled : filled + len(rows)])
        filled += len(rows)


def run(shards: Shards, method, threads: int, batch: int, seconds: float) -> float:
    stop = threading.Event()
    counts = [0] * threads

    def work(slot: int) -> None:
        rng = np.random.default_rng(slot)
        out = np.empty((batch, *shards.row_shape), dtype=np.uint8)
        while not stop.is_set():
            method(shards, out, *shards.pick(rng, batch))
            counts[slot] += batch

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS / "gather_threads.json", help="raw record (%(default)s)")
    args = parser.parse_args()
    started, machine, host = utc_now(), machine_info(), HostLoad()
    shards = Shards(args.cache)
    rows: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, method in (("os.preadv per row", pread_batch), ("row slice copy from the mapped file", slice_batch),
                             ("np.take over the mapped file", take_batch)):
            for threads in (1, 2):
                rate = run(shards, method, threads, args.batch_size, args.seconds)
                rows.setdefault(f"{name}, {threads} thread{'s' if threads > 1 else ''}", []).append(rate)
    record = script_record("benchmarks/bench_gather_threads.py", sys.argv[1:], started, machine, host,
                           {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, rows)
    write_json_atomic(args.json, record)
    print(f"other load {record['other_load_cores']:.2f} cores; wrote {args.json}")
    print("| gather | rows/s, median [min-max] |\n|---|---|")
    for name, rates in rows.items():
        print(f"| {name} | {statistics.median(rates):,.0f} [{min(rates):,.0f}-{max(rates):,.0f}] |")


if __name__ == "__main__":
    main()
