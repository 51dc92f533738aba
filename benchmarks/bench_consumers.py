"""What share of the random-gather ceiling vlpipe's threads loader delivers, by what the consumer does.

    .venv/bin/python benchmarks/bench_consumers.py --cache /tmp/vlpipe-bench/cache-raw-4000

`vlpipe bench dataloader` gives every pipeline's batches one consumer: a copy into a reused buffer,
the stand-in for the pinned-memory staging copy a DataLoader's pin thread makes. vlpipe with
`pin_memory=True` gathers straight into page-locked ring slots, so on a GPU it never pays that copy:
the GPU's DMA engine reads the slot. This runs the threads loader, as the benchmark runs it, under
three consumers, interleaved with the ceiling and the copy bound in every round:

- `copy`: the benchmark's staging copy (numpy memcpy into a reused buffer);
- `read`: every byte read once (max over a uint64 view), the memory traffic of a DMA or of a model's
  first op, paid here on the CPU;
- `none`: the batch is taken and dropped, the host's share of the work when the DMA reads the slot.

The cache is the one `bench_dataloader.py` builds (4000 synthetic CC-like samples, 224 px).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vlpipe.bench.ceiling import measure_ceiling
from vlpipe.bench.measure import BatchConsumer, run_round
from vlpipe.bench.pipelines import Batch, vlpipe_pipeline
from vlpipe.cache.format import load_manifest


def read_once(batch: Batch) -> int:
    images = batch["images"].numpy()
    images.reshape(-1).view(np.uint64).max()  # 150,528-byte rows: a whole number of uint64s
    return len(images)


def drop(batch: Batch) -> int:
    return len(batch["images"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="as in bench_dataloader: the cores to use")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    manifest = load_manifest(args.cache)
    files = [str(shard.path(args.cache, "images")) for shard in manifest.shards]
    pipeline = vlpipe_pipeline(args.cache, manifest, "threads", args.batch_size, args.workers)
    consumers: dict[str, Callable[[], Callable[[Batch], int]]] = {
        "copy": BatchConsumer, "read": lambda: read_once, "none": lambda: drop}
    rates: dict[str, list[float]] = {name: [] for name in ("ceiling", "copy bound", *consumers)}
    for round_index in range(args.rounds):
        rates["ceiling"].append(measure_ceiling(files, args.batch_size, args.seconds, 2, seed=round_index).samples_per_s)
        rates["copy bound"].append(measure_ceiling(files, args.batch_size, args.seconds, 2, seed=round_index,
                                                   consumer_copy=True).samples_per_s)
        for name, make in consumers.items():
            rates[name].append(run_round(pipeline, round_index, args.seconds, consumer=make()).samples_per_s)
    ceiling = statistics.median(rates["ceiling"])
    print(f"{pipeline.description}; batch {args.batch_size}, {args.rounds} rounds x {args.seconds} s\n")
    print("| row | samples/s, median [min-max] | % of ceiling |\n|---|---|---|")
    for name, values in rates.items():
        label = name if name in ("ceiling", "copy bound") else f"vlpipe-threads, consumer `{name}`"
        median = statistics.median(values)
        print(f"| {label} | {median:,.0f} [{min(values):,.0f}-{max(values):,.0f}] | {100 * median / ceiling:.1f} |")


if __name__ == "__main__":
    main()
