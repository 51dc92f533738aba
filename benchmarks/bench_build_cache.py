"""build-cache throughput against bare PIL decode + resize, per core and with --processes.

    .venv/bin/python benchmarks/bench_build_cache.py [--samples 4000] [--rounds 3]

Target: build-cache >= 80% of bare PIL decode + resize throughput per core, scaling
with --processes. The baseline is the least any cache builder must do per image: read the JPEG
bytes from the tar, `Image.open(...).convert("RGB")`, resize the shorter side and center-crop to
224 with the same `vlpipe.imaging.resize_center_crop` (one process). vlpipe's build adds
tokenization, patchify, checksums and writing the arrays. Rounds interleave baseline, build with
1 process and build with N processes so drift on a shared machine spreads over all of them.
The raw shards are the synthetic CC-like set of `bench_dataloader.py` (same generator).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dataloader import make_shards  # noqa: E402  (sibling script, same synthetic data)

from vlpipe.cache.writer import build_cache  # noqa: E402
from vlpipe.imaging import resize_center_crop  # noqa: E402


def bare_pil(raw: Path, image_size: int) -> tuple[int, float]:
    """Decode + resize + crop every JPEG of every tar in one process; (images, seconds)."""
    count, start = 0, time.perf_counter()
    for tar_path in sorted(raw.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    data = tar.extractfile(member).read()
                    resize_center_crop(Image.open(io.BytesIO(data)).convert("RGB"), image_size)
                    count += 1
    return count, time.perf_counter() - start


def timed_build(raw: Path, out: Path, processes: int, tokenizer: Path) -> tuple[int, float]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    manifest = build_cache(raw, out, image_size=224, patch_size=16, max_len=64, tokenizer=str(tokenizer),
                           processes=processes, quiet=True)
    return manifest.num_samples, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4000, help="4 shards of 1000: --processes parallelizes over shards")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vlpipe-bench-build")
    args = parser.parse_args()

    raw = args.work / f"raw-{args.samples}"
    if not (raw / "00000.tar").exists():
        make_shards(raw, args.samples)
    # Train the tokenizer once outside the timing: every round then does identical work.
    warm = args.work / "warm-cache"
    build_cache(raw, warm, image_size=224, patch_size=16, max_len=64, processes=1, quiet=True, overwrite=True)
    tokenizer = args.work / "tokenizer.json"
    shutil.copy(warm / "tokenizer.json", tokenizer)

    rates: dict[str, list[float]] = {"bare PIL decode+resize (1 process)": [], "build-cache --processes 1": [],
                                     f"build-cache --processes {args.processes}": []}
    for _ in range(args.rounds):
        n, secs = bare_pil(raw, 224)
        rates["bare PIL decode+resize (1 process)"].append(n / secs)
        n, secs = timed_build(raw, args.work / "cache-1", 1, tokenizer)
        rates["build-cache --processes 1"].append(n / secs)
        n, secs = timed_build(raw, args.work / "cache-n", args.processes, tokenizer)
        rates[f"build-cache --processes {args.processes}"].append(n / secs)

    base = statistics.median(rates["bare PIL decode+resize (1 process)"])
    rows = []
    for name, values in rates.items():
        med = statistics.median(values)
        rows.append({"pipeline": name, "images_per_s": round(med, 1), "min": round(min(values), 1),
                     "max": round(max(values), 1), "ratio_to_bare_pil_1core": round(med / base, 3)})
    print(json.dumps({"samples": args.samples, "rounds": args.rounds, "cpus": os.cpu_count(), "results": rows},
                     indent=2))


if __name__ == "__main__":
    main()
