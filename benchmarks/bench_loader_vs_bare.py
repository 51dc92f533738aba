"""How far is CacheLoader's threads mode from the bare form of its own design?

    .venv/bin/python benchmarks/bench_loader_vs_bare.py --cache /tmp/vlpipe-bench/cache-raw-4000

Prints a Markdown table and writes the raw record (per-round rates, machine, host load, command,
date) to --json, by default benchmarks/results/loader_vs_bare.json.

The bare form is the same scheme written with numpy and nothing else: one background thread and the
consuming thread copy random rows out of the page-cached `images.npy` maps in chunks of 8 rows into
a ring of batch buffers (3: the ownership rule's two held batches plus one ahead); the consumer
copies the unclaimed chunks of the batch it waits for. No sampler, no tokens, no bookkeeping. Both
deliver to the dataloader benchmark's consumer (one copy of the images into a reused buffer), in
rounds interleaved with the random-gather ceiling. The gap between the two rows is what vlpipe's
Python around the copies costs; the gap between the bare row and the ceiling is the design's.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vlpipe.bench.ceiling import measure_ceiling
from vlpipe.bench.system import HostLoad, machine_info, script_record, utc_now
from vlpipe.cache import CacheDataset, CacheLoader, CacheSampler
from vlpipe.cache.format import load_manifest
from vlpipe.utils.atomic import write_json_atomic

CHUNK = 8
RESULTS = Path(__file__).resolve().parent / "results"


def bare(files: list[str], batch: int, ring: int = 3) -> Iterator[np.ndarray]:
    maps = [np.load(f, mmap_mode="r").view(np.ndarray) for f in files]
    offsets = np.cumsum([0, *(len(m) for m in maps)])
    slots = [np.empty((batch, *maps[0].shape[1:]), np.uint8) for _ in range(ring)]
    rng = np.random.default_rng(0)
    cv = threading.Condition()
    queue: collections.deque = collections.deque()
    remaining: dict[int, int] = {}
    stop = False

    def copy(item: tuple) -> None:
        k, out, shards, rows = item
        for i, (s, r) in enumerate(zip(shards, rows, strict=True)):
            out[i] = maps[s][r]
        with cv:
            remaining[k] -= 1
            cv.notify_all()

    def crew() -> None:
        while True:
            with cv:
                while not queue and not stop:
                    cv.wait()
                if stop:
                    return
                item = queue.popleft()
            copy(item)

    thread = threading.Thread(target=crew, daemon=True)
    thread.start()
    submitted = k = 0
    try:
        while True:
            with cv:
                while submitted <= k + 1:
                    index = rng.permutation(int(offsets[-1]))[:batch]
                    shard = np.searchsorted(offsets, index, side="right") - 1
                    shards, rows = shard.tolist(), (index - offsets[shard]).tolist()
                    out = slots[submitted % ring]
                    remaining[submitted] = -(-batch // CHUNK)
                    queue.extend((submitted, out[lo:lo + CHUNK], shards[lo:lo + CHUNK], rows[lo:lo + CHUNK])
                                 for lo in range(0, batch, CHUNK))
                    submitted += 1
                cv.notify_all()
            while True:
                with cv:
                    if remaining[k] == 0:
                        break
                    if not (queue and queue[0][0] == k):
                        cv.wait()
                        continue
                    item = queue.popleft()
                copy(item)
            del remaining[k]
            yield slots[k % ring]
            k += 1
    finally:
        with cv:
            stop = True
            cv.notify_all()
        thread.join()


def loader(cache: Path, batch: int) -> Iterator[np.ndarray]:
    dataset = CacheDataset(cache, split=None)
    sampler = CacheSampler(len(dataset), shuffle=True, seed=0)
    with CacheLoader(dataset, batch_size=batch, sampler=sampler, mode="threads", workers=1, prefetch=1) as batches:
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            for b in batches:
                yield b["images"].numpy()
            epoch += 1


def rate(batches: Iterator[np.ndarray], seconds: float) -> float:
    sink = None
    try:
        for _ in range(10):
            first = next(batches)
            sink = np.empty_like(first) if sink is None else sink
            np.copyto(sink, first)
        samples, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            out = next(batches)
            np.copyto(sink, out)
            samples += len(out)
        return samples / (time.perf_counter() - start)
    finally:
        batches.close()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=RESULTS / "loader_vs_bare.json", help="raw record (%(default)s)")
    args = parser.parse_args()
    started, machine, host = utc_now(), machine_info(), HostLoad()
    manifest = load_manifest(args.cache)
    files = [str(shard.path(args.cache, "images")) for shard in manifest.shards]
    rows: dict[str, list[float]] = {"ceiling (2 processes)": [], "bare numpy form of the design": [],
                                    "CacheLoader threads, 1 worker, prefetch 1": []}
    for round_index in range(args.rounds):
        rows["ceiling (2 processes)"].append(
            measure_ceiling(files, args.batch_size, args.seconds, 2, seed=round_index).samples_per_s)
        rows["bare numpy form of the design"].append(rate(bare(files, args.batch_size), args.seconds))
        rows["CacheLoader threads, 1 worker, prefetch 1"].append(rate(loader(args.cache, args.batch_size), args.seconds))
    record = script_record("benchmarks/bench_loader_vs_bare.py", sys.argv[1:], started, machine, host,
                           {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, rows)
    write_json_atomic(args.json, record)
    print(f"other load {record['other_load_cores']:.2f} cores; wrote {args.json}")
    ceiling = statistics.median(rows["ceiling (2 processes)"])
    print("| row | samples/s, median [min-max] | % of ceiling |\n|---|---|---|")
    for name, values in rows.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} [{min(values):,.0f}-{max(values):,.0f}] | {100 * median / ceiling:.1f} |")


if __name__ == "__main__":
    main()
