"""Is reading a batch's rows in file order worth it when the cache is not in the page cache?

    .venv/bin/python benchmarks/bench_pread_order.py [--gib 2] [--batches 40] [--rounds 3]

A cache larger than RAM is read with one pread per row (vlpipe/cache/reader.py); the reader sorts
a batch's rows by shard and position before reading them and writes each to its sampler-order
output row. This measures, on this machine's disk, random batches of 64 rows read cold (the file's
pages dropped from the page cache with posix_fadvise(DONTNEED) before every batch, no root needed)
in sampler order and in file order, for raw rows (150,528 B) and JPEG-sized rows (27 kB, the default
quality's mean on photographs). Rounds interleave the two orders; figures are rows/s, median over
rounds [min-max]. The data file is written once into --dir and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROW_SIZES = {"raw 224 px (150,528 B)": 150_528, "jpeg q95 224 px (~27 kB)": 27_000}


def read_batch(fd: int, rows: np.ndarray, row_bytes: int, out: np.ndarray, sort: bool) -> None:
    order = np.argsort(rows, kind="stable") if sort else np.arange(len(rows))
    for i in order.tolist():
        os.preadv(fd, [memoryview(out[i])], int(rows[i]) * row_bytes)


def run(path: Path, row_bytes: int, batches: int, sort: bool, seed: int) -> float:
    n = path.stat().st_size // row_bytes
    rng = np.random.default_rng(seed)
    out = np.empty((64, row_bytes), np.uint8)
    fd = os.open(path, os.O_RDONLY)
    try:
        elapsed = 0.0
        for _ in range(batches):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # cold: nothing of the file cached
            rows = rng.choice(n, size=64, replace=False)
            start = time.perf_counter()
            read_batch(fd, rows, row_bytes, out, sort)
            elapsed += time.perf_counter() - start
    finally:
        os.close(fd)
    return batches * 64 / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=2.0, help="Size of the data file.")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    path = args.dir / "vlpipe-pread-order.bin"
    chunk = np.random.default_rng(0).integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()
    with open(path, "wb") as fh:
        for _ in range(int(args.gib * 16)):
            fh.write(chunk)
        os.fsync(fh.fileno())
    try:
        results: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for label, row_bytes in ROW_SIZES.items():
                for sort in (False, True):
                    key = f"{label}, {'file order' if sort else 'sampler order'}"
                    results.setdefault(key, []).append(run(path, row_bytes, args.batches, sort, seed=r))
    finally:
        path.unlink()
    print(f"{args.gib:g} GiB file, {args.batches} cold batches of 64 random rows per round, {args.rounds} rounds")
    print("| rows | read order | rows/s, median [min-max] |\n|---|---|---|")
    for key, rates in results.items():
        label, order = key.rsplit(", ", 1)
        print(f"| {label} | {order} | {statistics.median(rates):,.0f} [{min(rates):,.0f}-{max(rates):,.0f}] |")


if __name__ == "__main__":
    main()
