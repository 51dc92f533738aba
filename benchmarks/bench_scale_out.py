"""build-cache beyond one machine: Ray's overhead, per-part throughput, and the merge's cost.

    .venv/bin/python benchmarks/bench_scale_out.py [--samples 4000] [--rounds 2] [--merge-shards 10,100,1000]

Three measurements, written as JSON to stdout (and --json FILE):

1. Engine overhead on this machine, same source, rounds interleaved so drift on a shared machine
   spreads over all variants: `--distributor local --processes P` against `--distributor ray`
   with a Ray started by the build itself (what `vlpipe build-cache --distributor ray` costs on one
   machine, Ray's start and stop included) and with a Ray already running (the cost on a cluster,
   where Ray is up before the build). Target: warm Ray within 15% of the local build's time.
2. Per-part throughput: the source built as `--part I/N` one part after the other, then merged;
   images/s of each part and the merge's seconds.
3. The merge's cost against the number of shards: a cache of S tiny shards is built, put back in
   the state that S parts (one shard each) leave it in (build.json, S part records, no manifest),
   and merged; the merged cache is checked byte-identical to the one-machine build.

The tokenizer is trained once beforehand and passed as a file, so every build does the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dataloader import make_shards  # noqa: E402  (sibling script, same synthetic data)

from vlpipe.cache.config import BuildOptions  # noqa: E402
from vlpipe.cache.format import MANIFEST, SKIPPED_FILE, TOKENIZER_FILE  # noqa: E402
from vlpipe.cache.merge import merge_parts  # noqa: E402
from vlpipe.cache.writer import (  # noqa: E402
    BUILD_RECORD,
    build_cache,
    build_record,
    open_build_source,
    write_part_record,
)
from vlpipe.utils.atomic import sha256_file, write_json_atomic  # noqa: E402
from vlpipe.utils.names import shard_name  # noqa: E402
from vlpipe.utils.raysession import ray_session  # noqa: E402

BIG = {"image_size": 224, "patch_size": 16, "max_len": 64}
TINY = {"image_size": 32, "patch_size": 16, "max_len": 16, "tokenizer": "wordpiece:200"}


def timed(fn: object, *args: object, **kwargs: object) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - start


def fresh_build(raw: Path, out: Path, **kwargs: object) -> float:
    """Seconds of one build from scratch (an existing complete cache would be a no-op)."""
    shutil.rmtree(out, ignore_errors=True)
    return timed(build_cache, raw, out, **kwargs)


def engine_overhead(raw: Path, work: Path, tokenizer: Path, processes: int, rounds: int) -> dict:
    opts = {**BIG, "tokenizer": str(tokenizer), "processes": processes, "quiet": True}
    seconds: dict[str, list[float]] = {"local": [], "ray (started by the build)": [], "ray (already running)": []}
    for _ in range(rounds):
        seconds["local"].append(fresh_build(raw, work / "local", **opts))
        seconds["ray (started by the build)"].append(fresh_build(raw, work / "ray", distributor="ray", **opts))
        with ray_session(num_cpus=processes):
            seconds["ray (already running)"].append(fresh_build(raw, work / "ray-warm", distributor="ray", **opts))
    base = statistics.median(seconds["local"])
    return {name: {"seconds": round(statistics.median(v), 2), "min": round(min(v), 2), "max": round(max(v), 2),
                   "overhead_vs_local": round(statistics.median(v) / base - 1, 3)} for name, v in seconds.items()}


def parts_throughput(raw: Path, work: Path, tokenizer: Path, processes: int, count: int) -> dict:
    out = work / "parts"
    shutil.rmtree(out, ignore_errors=True)
    opts = {**BIG, "tokenizer": str(tokenizer), "processes": processes, "quiet": True}
    parts = []
    for i in range(count):
        secs = timed(build_cache, raw, out, part=f"{i}/{count}", **opts)
        samples = sum(json.loads((out / "shards" / name / "done.json").read_text())["num_samples"]
                      for name in json.loads((out / "parts" / f"{i:05d}-of-{count:05d}.json").read_text())["shards"])
        parts.append({"part": f"{i}/{count}", "samples": samples, "seconds": round(secs, 2),
                      "images_per_s": round(samples / secs, 1)})
    return {"parts": parts, "merge_seconds": round(timed(merge_parts, out, quiet=True), 3)}


def merge_cost(work: Path, shards: int, processes: int, rounds: int) -> dict:
    """Merge S one-shard parts of a tiny cache; checks the merged cache equals the built one."""
    raw = work / f"tiny-{shards}"
    if not (raw / f"{shards - 1:05d}.tar").exists():
        shutil.rmtree(raw, ignore_errors=True)
        for i in range(shards):
            make_shards(raw / "one", 2, seed=i)
            (raw / "one" / "00000.tar").rename(raw / f"{i:05d}.tar")
        shutil.rmtree(raw / "one")
    out = work / f"merge-{shards}"
    build_cache(raw, out, processes=processes, quiet=True, overwrite=True, **TINY)
    reference = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST}
    options = BuildOptions(**TINY)
    record = build_record(open_build_source(raw, options), options)
    tokenizer = sha256_file(out / TOKENIZER_FILE)
    seconds = []
    for _ in range(rounds):
        # The state S parts of one shard each leave behind: build.json, S part records, no manifest.
        (out / MANIFEST).unlink()
        (out / SKIPPED_FILE).unlink()
        write_json_atomic(out / BUILD_RECORD, record)
        for i in range(shards):
            write_part_record(out, i, shards, record, [shard_name(i)], tokenizer)
        seconds.append(timed(merge_parts, out, quiet=True))
        merged = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST}
        assert merged == reference, "merged cache differs from the one-machine build"
    secs = statistics.median(seconds)
    return {"shards": shards, "part_records": shards, "merge_seconds": round(secs, 3), "min": round(min(seconds), 3),
            "max": round(max(seconds), 3), "ms_per_part": round(1000 * secs / shards, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4000, help="shards of 1000 (bench_dataloader.py's data)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--merge-shards", default="10,100,1000")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vlpipe-bench-scale-out")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    raw = args.work / f"raw-{args.samples}"
    if not (raw / "00000.tar").exists():
        make_shards(raw, args.samples)
    warm = args.work / "warm-cache"
    build_cache(raw, warm, **BIG, processes=1, quiet=True, overwrite=True)
    tokenizer = args.work / "tokenizer.json"
    shutil.copy(warm / TOKENIZER_FILE, tokenizer)

    results = {
        "samples": args.samples, "rounds": args.rounds, "processes": args.processes, "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "engine_overhead": engine_overhead(raw, args.work, tokenizer, args.processes, args.rounds),
        "parts": parts_throughput(raw, args.work, tokenizer, args.processes, args.parts),
        "merge": [merge_cost(args.work, int(s), args.processes, args.rounds) for s in args.merge_shards.split(",")],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
