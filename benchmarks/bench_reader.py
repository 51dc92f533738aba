"""Quick reader throughput check: CacheLoader modes vs a torch DataLoader over the same cache.

Writes a synthetic cache (random pixels; only the bytes moved matter), warms the page cache,
then times shuffled epochs of batch 64 at 224 px / 16-px patches. Each row is the median of
`--runs` runs of `--batches` timed batches after a few untimed ones (RSS+ is the largest growth
of this process's RSS over one run); `+copy` rows have the
consumer copy every batch once into a reused buffer (a stand-in for the host->device staging
copy, and how loader-baselines-2core.md timed its rows). The product benchmark is
`vlpipe bench dataloader`; this is the reader engineer's own measuring stick.

    python benchmarks/bench_reader.py --samples 4000 --dir /tmp/vlpipe-bench-cache
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vlpipe.cache import CacheDataset, CacheLoader, CacheSampler

PATCHES, PATCH_DIM, MAX_LEN = 196, 768, 64


def write_synthetic_cache(root: Path, samples: int, shards: int) -> None:
    if (root / "manifest.json").exists():
        return
    rng = np.random.default_rng(0)
    per = -(-samples // shards)
    entries, start = [], 0
    for k in range(shards):
        n = min(per, samples - start)
        name = f"{k:05d}"
        d = root / "shards" / name
        d.mkdir(parents=True, exist_ok=True)
        images = np.lib.format.open_memmap(d / "images.npy", "w+", np.uint8, (n, PATCHES, PATCH_DIM))
        for i in range(0, n, 256):
            images[i : i + 256] = rng.integers(0, 256, size=(min(256, n - i), PATCHES, PATCH_DIM), dtype=np.uint8)
        images.flush()
        del images
        np.save(d / "tokens.npy", rng.integers(0, 8000, size=(n, MAX_LEN)).astype(np.uint16))
        np.save(d / "lengths.npy", rng.integers(3, MAX_LEN, size=n).astype(np.uint16))
        keys = [f"{start + i:09d}" for i in range(n)]
        pq.write_table(pa.table({"key": keys, "caption": keys, "url": [None] * n,
                                 "width": pa.array([256] * n, pa.int32()), "height": pa.array([256] * n, pa.int32()),
                                 "sha256": ["0" * 64] * n, "split": ["train"] * n}), d / "meta.parquet")
        files = {kind: {"path": f"shards/{name}/{fname}", "bytes": (d / fname).stat().st_size, "sha256": "0" * 64}
                 for kind, fname in (("images", "images.npy"), ("tokens", "tokens.npy"),
                                     ("lengths", "lengths.npy"), ("meta", "meta.parquet"))}
        entries.append({"name": name, "num_samples": n, "source": "synthetic", "files": files})
        start += n
    manifest = {
        "format": "vlpipe-cache", "version": 1, "num_samples": samples,
        "image": {"image_size": 224, "patch_size": 16, "grid": 14, "num_patches": PATCHES, "patch_dim": PATCH_DIM,
                  "dtype": "uint8", "layout": "row-major patches; each patch flattened (patch_row, patch_col, channel)",
                  "mean": [0.5] * 3, "std": [0.25] * 3},
        "text": {"tokenizer_file": "tokenizer.json", "tokenizer_sha256": hashlib.sha256(b"").hexdigest(),
                 "tokenizer_spec": "synthetic", "vocab_size": 8000, "max_len": MAX_LEN, "dtype": "uint16",
                 "pad_id": 0, "cls_id": 2, "sep_id": 3, "mask_id": 4, "unk_id": 1},
        "splits": {"train": samples}, "shards": entries, "labels": None, "provenance": {}, "skipped": {},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))


def warm(root: Path) -> None:
    for path in sorted(root.glob("shards/*/*.npy")):
        with open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass


def time_loader(make_iter, batches: int, warmup: int, copy_to: torch.Tensor | None) -> float:
    it = make_iter()
    for _ in range(warmup):
        next(it)
    count = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        if copy_to is not None:
            # numpy's single-threaded memcpy: torch's copy_ fans out over intra-op threads, which
            # on a busy 2-core machine measures thread contention rather than the loader.
            np.copyto(copy_to[: len(batch["images"])].numpy(), batch["images"].numpy())
        count += len(batch["index"])
    elapsed = time.perf_counter() - t0
    del it
    return count / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vlpipe-bench-cache"))
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--torch-dataloader", action="store_true", help="also time torch DataLoader workers")
    args = ap.parse_args()
    torch.set_num_threads(2)
    write_synthetic_cache(args.dir, args.samples, args.shards)
    warm(args.dir)
    bs = args.batch_size
    needed = args.batches + 5
    rows: dict[str, list[float]] = {}
    rss_growth: dict[str, float] = {}
    proc = psutil.Process()
    staging = torch.empty((bs, PATCHES, PATCH_DIM), dtype=torch.uint8)

    configs = []
    for copy in (False, True):
        tag = "+copy" if copy else ""
        for mode, workers in (("inline", 0), ("threads", 2)):
            configs.append((f"CacheLoader {mode} w={workers}{tag}", mode, workers, copy, None))
        configs.append((f"CacheLoader threads w=2 shuffle=False (views){tag}", "threads", 2, copy, "seq"))
    if args.torch_dataloader:
        configs.append(("torch DataLoader(__getitems__) w=2+copy", "torch", 2, True, None))

    for run in range(args.runs):
        for name, mode, workers, copy, order in configs:
            ds = CacheDataset(args.dir, split=None)
            sampler = CacheSampler(len(ds), seed=run, shuffle=order != "seq")
            if needed * bs > len(sampler):
                raise SystemExit(f"--samples too small for {needed} batches of {bs}")
            if mode == "torch":
                from torch.utils.data import DataLoader

                dl = DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=workers,
                                collate_fn=lambda b: b, drop_last=True)
                make = lambda dl=dl: iter(dl)  # noqa: E731
            else:
                loader = CacheLoader(ds, batch_size=bs, sampler=sampler, mode=mode, workers=max(workers, 1))
                make = lambda loader=loader: iter(loader)  # noqa: E731
            before = proc.memory_info().rss
            rows.setdefault(name, []).append(time_loader(make, args.batches, 5, staging if copy else None))
            grown = (proc.memory_info().rss - before) / 2**20
            rss_growth[name] = max(rss_growth.get(name, grown), grown)

    rss = proc.memory_info().rss / 2**20
    print(f"cache: {args.samples} samples in {args.shards} shards at {args.dir}; batch {bs}; "
          f"{args.runs} runs x {args.batches} batches; torch threads {torch.get_num_threads()}")
    print(f"{'configuration':52s} {'median/s':>9s} {'min':>7s} {'max':>7s} {'RSS+ MiB':>9s}")
    for name, values in rows.items():
        print(f"{name:52s} {statistics.median(values):9.0f} {min(values):7.0f} {max(values):7.0f} "
              f"{rss_growth[name]:9.1f}")
    print(f"process RSS at the end: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
