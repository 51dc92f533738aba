"""Pretraining throughput: samples/s with all three tasks and the share of step time spent waiting for data.

    # on a GPU (H100/H200): base preset, bf16 autocast, torch.compile
    python benchmarks/bench_pretrain_step.py --cache cache/cc --batch-size 128
    # no cache at hand: draw N synthetic captioned images at 224 px and cache them first
    python benchmarks/bench_pretrain_step.py --synthetic 2048 --batch-size 128
    # CPU smoke mode (CI): tiny preset, tiny synthetic cache, a few steps, fp32, no compile
    python benchmarks/bench_pretrain_step.py --smoke

It runs the real training loop (`vlpipe.train.pretrain`): the cache loader, on-device task
construction, the EMA teacher, one student forward/backward, AdamW. The first window (compilation,
allocator warm-up) is excluded; the numbers are the mean of the later logging windows. Prints one
JSON object; paste it into benchmarks/RESULTS.md together with the card. `measure_pretrain` is the
measurement itself, also run by benchmarks/gpu_check.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from vlpipe.cache.format import load_manifest
from vlpipe.train.config import PretrainConfig
from vlpipe.train.masking import TASKS
from vlpipe.train.metrics_log import read_metrics
from vlpipe.train.pretrain import pretrain


def synthetic_cache(cache: Path, n: int, image_size: int, patch_size: int, processes: int) -> Path:
    """Draw `n` captioned images and cache them into `cache` (the path users take, generated data).

    Reruns reuse both folders (make_dataset and build_cache return at once when done already).
    """
    from vlpipe.cache.writer import build_cache
    from vlpipe.demo.synth import make_dataset

    captions = make_dataset(cache.with_name(cache.name + "-src"), n=n, seed=0, image_size=image_size)
    build_cache(captions, cache, image_size=image_size, patch_size=patch_size, max_len=32,
                tokenizer="wordpiece:2000", val_fraction=0.02, processes=processes, quiet=True)
    return cache


def measure_pretrain(cache: Path, out: Path, *, preset: str, batch_size: int, window: int, windows: int,
                     precision: str = "auto", compile: bool = True, workers: int = 4, loader_mode: str = "threads",
                     tasks: tuple[str, ...] = TASKS, jpeg_decode: str = "auto") -> dict:
    """Train `window * (1 + windows)` optimizer steps on `cache` into the run directory `out`.

    samples/s and the data-wait share are the means over the logging windows after the first (which
    holds compilation and the allocator's warm-up); peak GPU memory covers the whole run.
    """
    config = PretrainConfig(
        cache=str(cache), out=str(out), preset=preset, steps=window * (1 + windows), batch_size=batch_size,
        log_every=window, precision=precision, compile=compile, workers=workers, loader_mode=loader_mode,
        tasks=tasks, jpeg_decode=jpeg_decode, eval_max_batches=2, eval_batch_size=batch_size, live=False,
        plots=False, lr=1e-4,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = pretrain(config)
    run_config = json.loads((out / "config.json").read_text())
    measured = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"][1:]
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "preset": preset, "batch_size": batch_size, "precision": run_config["precision"],
        "compile": compile, "tasks": list(tasks), "loader": f"{loader_mode}x{workers}",
        "cache_codec": load_manifest(cache).image.codec, "jpeg_decode": jpeg_decode,
        "samples_per_s": sum(w["samples_per_s"] for w in measured) / len(measured),
        "data_wait_share": sum(w["data_wait"] for w in measured) / len(measured),
        "windows_samples_per_s": [w["samples_per_s"] for w in measured],
        "windows_data_wait": [w["data_wait"] for w in measured],
        "measured_steps": window * len(measured),
        "final_train_loss": result.train.get("loss"),
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", help="a cache directory (with --synthetic: where to build it, reused if there)")
    parser.add_argument("--synthetic", type=int, default=0, help="draw N captioned images and cache them first")
    parser.add_argument("--smoke", action="store_true", help="CPU smoke run: tiny preset, few steps")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--window", type=int, default=20, help="optimizer steps per measuring window")
    parser.add_argument("--windows", type=int, default=3, help="measured windows after the warm-up window")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, e.g. mlm,ap")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--loader-mode", default="threads")
    parser.add_argument("--out", help="run directory (default: a temporary one)")
    args = parser.parse_args()

    if args.smoke:
        args.preset, args.batch_size, args.window, args.windows, args.no_compile = "tiny", 8, 2, 2, True
        args.synthetic = args.synthetic or 64
        args.workers = 1
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="vlpipe-bench-") as tmp:
        tmp_root = Path(tmp)
        began = time.perf_counter()
        if args.synthetic:
            size, patch = (32, 8) if args.smoke else (224, 16)
            cache = Path(args.cache) if args.cache else tmp_root / "cache"
            synthetic_cache(cache, args.synthetic, size, patch, processes=1 if args.smoke else 8)
        elif args.cache:
            cache = Path(args.cache)
        else:
            parser.error("give --cache DIR, --synthetic N or --smoke")
        cache_seconds = time.perf_counter() - began
        report = measure_pretrain(
            cache, Path(args.out) if args.out else tmp_root / "run", preset=args.preset, batch_size=args.batch_size,
            window=args.window, windows=args.windows, precision=args.precision, compile=not args.no_compile,
            workers=args.workers, loader_mode=args.loader_mode, tasks=tuple(args.tasks.split(",")))
        print(json.dumps({**report, "cache_build_s": cache_seconds}, indent=2))


if __name__ == "__main__":
    main()
