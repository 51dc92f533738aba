"""`vlpipe cache merge DIR`: finish a build made in parts (`build-cache --part I/N`) with its manifest.

Each part builds the shards whose index is I modulo N into the shared DIR, each with its done
record, and then writes its part record (parts/IIIII-of-NNNNN.json: the source, the options, the
sha256 of the tokenizer.json it used, its shard names). The merge checks that every part is there
and finished, that all were built from the same source with the same options and the same
tokenizer, and that every shard is complete on disk, then writes skipped.parquet and the manifest
exactly as a one-machine build does: the result is byte-identical to one. It reads only these
small records (never an image array), so its cost grows with the number of shards, not of samples.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from vlpipe.cache.config import BuildOptions
from vlpipe.cache.format import MANIFEST, TOKENIZER_FILE, Manifest, load_manifest, shard_dir
from vlpipe.cache.shard import read_done
from vlpipe.cache.writer import (
    BUILD_FORMAT,
    BUILD_RECORD,
    PART_FORMAT,
    PARTS_DIR,
    open_build_source,
    option_diff,
    part_record_path,
    read_json,
    write_manifest,
)
from vlpipe.errors import VlpipeError
from vlpipe.text import TextTokenizer
from vlpipe.utils.atomic import sha256_file
from vlpipe.utils.names import shard_name


def merge_parts(out: str | Path, *, quiet: bool = False) -> Manifest:
    """Check the parts of the build in `out` and write its manifest; returns it (a no-op on a finished cache)."""
    out = Path(out).expanduser().resolve()
    console = Console(stderr=True, quiet=quiet)
    if (out / MANIFEST).is_file():
        manifest = load_manifest(out)
        shutil.rmtree(out / PARTS_DIR, ignore_errors=True)  # left by a merge killed after its manifest
        console.print(f"[green]{out} is already a complete cache; nothing to merge[/green]")
        return manifest
    started = time.perf_counter()
    build = read_json(out / BUILD_RECORD)
    if build is None or build.get("format") != BUILD_FORMAT:
        raise VlpipeError(f"{out}: no build to merge (no {BUILD_RECORD}); build it first with "
                          f"`vlpipe build-cache SRC --out {out} --part I/N` for I = 0 .. N-1")
    parts = _read_parts(out)
    count = _check_parts(out, build, parts)
    options = BuildOptions(**build["options"])
    source = open_build_source(build["source"], options)
    names = [shard_name(i) for i in range(len(source.shards))]
    for i in range(count):
        if parts[(i, count)]["shards"] != names[i::count]:
            raise VlpipeError(f"{_rel(out, i, count)}: part {i}/{count} lists other shards than {source.root} "
                              f"has now ({len(names)}); was the source changed after the parts were built?")
    records = []
    for i, name in enumerate(names):
        record = read_done(out, name)
        if record is None:
            raise VlpipeError(f"{shard_dir(out, name)}: shard of part {i % count}/{count} is not complete (no "
                              "done.json, or its files changed since); rerun that part")
        records.append(record)
    text = TextTokenizer.load(out / TOKENIZER_FILE, spec=options.tokenizer)
    manifest = write_manifest(out, options, source, records, text)
    (out / BUILD_RECORD).unlink(missing_ok=True)
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
    console.print(f"[green]merged {count} parts into {out}[/green]: {manifest.num_samples} samples in "
                  f"{len(manifest.shards)} shards, {time.perf_counter() - started:.1f} s")
    return manifest


def _read_parts(out: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """Every part record in `out`, by (I, N); a damaged or foreign one is an error naming it."""
    parts = {}
    for path in sorted((out / PARTS_DIR).glob("*.json")):
        record = read_json(path)
        if record is None or record.get("format") != PART_FORMAT or not isinstance(record.get("shards"), list):
            raise VlpipeError(f"{path}: not a vlpipe part record (damaged?); rerun the part that wrote it")
        parts[(record["part"], record["parts"])] = record
    return parts


def _check_parts(out: Path, build: dict[str, Any], parts: dict[tuple[int, int], dict[str, Any]]) -> int:
    """N, once all N parts are present and were built like build.json with the one tokenizer.json."""
    if not parts:
        raise VlpipeError(f"{out}: no part has finished yet (no {PARTS_DIR}/*.json); run `vlpipe build-cache SRC "
                          f"--out {out} --part I/N` for I = 0 .. N-1 first")
    counts = sorted({n for _, n in parts})
    if len(counts) > 1:
        raise VlpipeError(f"{out / PARTS_DIR}: parts of {' and of '.join(map(str, counts))} were built; one build is "
                          "split one way: remove the records (and shards) of the other split")
    count = counts[0]
    missing = [i for i in range(count) if (i, count) not in parts]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise VlpipeError(f"{out}: part {missing[0]}/{count} is missing{more}: no {_rel(out, missing[0], count)}; "
                          f"run `vlpipe build-cache SRC --out {out} --part {missing[0]}/{count}` (or wait for it)")
    if not (out / TOKENIZER_FILE).is_file():
        raise VlpipeError(f"{out / TOKENIZER_FILE}: missing; the parts' tokenizer is gone, rebuild them")
    tokenizer = sha256_file(out / TOKENIZER_FILE)
    for i in range(count):
        record, name = parts[(i, count)], _rel(out, i, count)
        if record.get("options") != build["options"]:
            raise VlpipeError(f"{name}: part {i}/{count} was built with other options than {BUILD_RECORD} "
                              f"({option_diff(build['options'], record.get('options') or {})}); rebuild it")
        if (record.get("source"), record.get("source_format")) != (build["source"], build["source_format"]):
            raise VlpipeError(f"{name}: part {i}/{count} was built from {record.get('source')} "
                              f"({record.get('source_format')}), the build from {build['source']}; rebuild it")
        if record.get("tokenizer_sha256") != tokenizer:
            raise VlpipeError(f"{name}: part {i}/{count} used another tokenizer (sha256 "
                              f"{str(record.get('tokenizer_sha256'))[:12]}..., {TOKENIZER_FILE} has "
                              f"{tokenizer[:12]}...); rebuild it")
    return count


def _rel(out: Path, index: int, count: int) -> str:
    return str(part_record_path(out, index, count).relative_to(out))
