"""`build_cache`: turn a folder of captioned images into a memory-mapped vlpipe cache.

The input, in whatever layout, is listed by vlpipe/ingest/ as source shards. The build is a list
of independent shard jobs (vlpipe/cache/shard.py), one per source shard, run in worker processes,
framed by two steps in the main process: train or load the tokenizer first, write the manifest
last. The manifest's atomic appearance is what makes a directory a cache, so a build killed at
any moment leaves a directory that `load_manifest` refuses and that a rerun resumes: finished
shards (with a done record) are kept, anything else is rebuilt.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import queue
import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vlpipe import __version__
from vlpipe.cache.config import BuildOptions, BuildSettings
from vlpipe.cache.format import (
    FORMAT_NAME,
    MANIFEST,
    SHARDS_DIR,
    SKIPPED_FILE,
    SPLITS,
    TOKENIZER_FILE,
    FileEntry,
    ImageSpec,
    Manifest,
    ShardEntry,
    TextSpec,
    load_manifest,
    shard_name,
)
from vlpipe.cache.shard import SKIP_FIELDS, ShardTask, build_shard, read_done
from vlpipe.errors import VlpipeError
from vlpipe.ingest import Source, iter_captions, open_source
from vlpipe.text import TextTokenizer, load_tokenizer
from vlpipe.text.specs import _wordpiece_size
from vlpipe.utils.atomic import TMP_PREFIX, atomic_path, sha256_file, write_json_atomic

# Written when a build starts; lets a rerun check it resumes the same build (same source, options).
BUILD_RECORD = "build.json"
BUILD_FORMAT = "vlpipe-cache-build"


def build_cache(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    processes: int | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    **values: Any,
) -> Manifest:
    """Build (or resume, or confirm) the cache of `src` in `out`; returns its manifest.

    `values` are `BuildOptions` settings (vlpipe/cache/config.py): `image_size=`, `tokenizer=`,
    `format=`, ... `format` "auto" reads img2dataset output or a captions file, unless `src` is laid
    out as one of the labelled downstream datasets or `label_column` is given (vlpipe/ingest/).
    """
    options = BuildOptions(**values)
    BuildSettings(processes=processes, overwrite=overwrite)  # the same checks as on the command line
    # Before --out is touched: a bad --tokenizer found only after build.json is written would leave
    # an unfinished build that refuses the corrected command (other options) without --overwrite.
    given = _check_tokenizer(options.tokenizer)
    console = Console(stderr=True, quiet=quiet)
    source = open_source(src, format=options.format, shard_size=options.shard_size, image_column=options.image_column,
                         caption_column=options.caption_column, label_column=options.label_column,
                         multi_label=options.multi_label, split_column=options.split_column)
    out = Path(out).expanduser().resolve()
    record = {"format": BUILD_FORMAT, "source": str(source.root), "source_format": source.layout,
              "options": options.to_dict()}
    created = not out.exists()
    existing = _prepare_output(out, record, overwrite)
    if existing is not None:
        console.print(f"[green]{out} is already a complete cache of {source.root}; nothing to do[/green]")
        return existing

    started = time.perf_counter()
    # Trained (or taken) in memory before the build record exists, for the same reason; a resumed
    # build reuses its saved tokenizer.json instead.
    try:
        fresh = None if (out / TOKENIZER_FILE).is_file() else _new_tokenizer(options, source, console, given)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: never remove anything this build did not create
        raise
    write_json_atomic(out / BUILD_RECORD, record)
    text = _ensure_tokenizer(out, options, fresh)
    names = [shard_name(i) for i in range(len(source.shards))]
    done = {name: rec for name in names if (rec := read_done(out, name)) is not None}
    tasks = [ShardTask(s, n, str(out), options, source.labels) for s, n in zip(source.shards, names, strict=True) if n not in done]
    if done:
        console.print(f"resuming: {len(done)} of {len(names)} shards already built")
    workers = max(1, min(processes or os.cpu_count() or 1, len(tasks)))
    for rec in _run_tasks(tasks, workers, console):
        done[rec["name"]] = rec

    records = [done[n] for n in names]
    manifest = _write_manifest(out, options, source, records, text)
    (out / BUILD_RECORD).unlink(missing_ok=True)
    _print_summary(console, out, manifest, time.perf_counter() - started)
    return manifest


def _prepare_output(out: Path, record: dict[str, Any], overwrite: bool) -> Manifest | None:
    """Make `out` ready for this build; returns the manifest if the same build is already complete.

    Only directories that vlpipe itself wrote are ever reused or deleted: anything else that is
    not empty is refused, so a typo in --out cannot wipe someone's data.
    """
    if out.exists() and not out.is_dir():
        raise VlpipeError(f"{out}: exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return None
    previous = _read_json(out / MANIFEST) or _read_json(out / BUILD_RECORD)
    if previous is None or previous.get("format") not in (FORMAT_NAME, BUILD_FORMAT):
        raise VlpipeError(f"{out}: not empty and not a vlpipe cache; choose another --out or empty it")
    prov = previous.get("provenance", previous)
    same = prov.get("options") == record["options"] and prov.get("source") == record["source"]
    if not same and not overwrite:
        what = "a cache" if (out / MANIFEST).exists() else "an unfinished build"
        raise VlpipeError(f"{out}: holds {what} of {prov.get('source')} with other options "
                          f"({_option_diff(prov.get('options') or {}, record['options'])}); "
                          "pass --overwrite to rebuild it or choose another --out")
    if not same:
        _clear(out)
        return None
    if (out / MANIFEST).exists():
        return load_manifest(out)
    return None


def _option_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
    return ", ".join(diffs) or "different source"


def _clear(out: Path) -> None:
    """Remove a previous cache; the manifest goes first so no moment looks complete-but-wrong."""
    (out / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
    for name in (TOKENIZER_FILE, SKIPPED_FILE, BUILD_RECORD):
        (out / name).unlink(missing_ok=True)
    for leftover in out.glob(f"{TMP_PREFIX}*"):
        leftover.unlink()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _check_tokenizer(spec: str) -> TextTokenizer | None:
    """Fail fast on a bad --tokenizer; returns the tokenizer unless it is trained on the captions.

    A file, bert-uncased or openclip is loaded here (cheap); wordpiece:N only has N checked,
    since training needs the captions and happens once the source is known to be readable.
    """
    if spec.startswith("wordpiece:"):
        _wordpiece_size(spec)
        return None
    return load_tokenizer(spec)


def _new_tokenizer(options: BuildOptions, source: Source, console: Console,
                   given: TextTokenizer | None) -> TextTokenizer:
    """The tokenizer for a fresh build: `given` (already loaded), or trained on the source's captions."""
    if given is not None:
        return given
    console.print(f"training {options.tokenizer} on the captions of {len(source.shards)} shard(s)")
    captions = (c for shard in source.shards for c in iter_captions(shard))
    return load_tokenizer(options.tokenizer, captions)


def _ensure_tokenizer(out: Path, options: BuildOptions, fresh: TextTokenizer | None) -> TextTokenizer:
    """Save `fresh` as the build's tokenizer.json, or reuse the saved one on resume (never retrain mid-build)."""
    path = out / TOKENIZER_FILE
    if fresh is not None:
        fresh.save(path)
    return TextTokenizer.load(path, spec=options.tokenizer)


# ---- running shard jobs --------------------------------------------------------------------------

_progress_queue: Any = None


def _init_worker(progress_queue: Any) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _worker(task: ShardTask) -> dict[str, Any]:
    return build_shard(task, report=_progress_queue.put)


def _run_tasks(tasks: list[ShardTask], workers: int, console: Console) -> list[dict[str, Any]]:
    """Run shard jobs (in-process for one worker), with a progress bar over shards and images/s."""
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

        if workers == 1:
            results = []
            for task in tasks:
                results.append(build_shard(task, report=add_images))
                progress.advance(bar)
            return results
        return _run_pool(tasks, workers, progress, bar, add_images)


def _run_pool(tasks: list[ShardTask], workers: int, progress: Progress, bar: Any,
              add_images: Callable[[int], None]) -> list[dict[str, Any]]:
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
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(progress_queue, add_images)
                for future in finished:
                    results.append(future.result())
                    progress.advance(bar)
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


# ---- finishing -----------------------------------------------------------------------------------


def _write_manifest(out: Path, options: BuildOptions, source: Source, records: list[dict[str, Any]],
                    tokenizer: TextTokenizer) -> Manifest:
    """skipped.parquet, then manifest.json (atomically, last): from here on the cache is complete."""
    skips = [s for rec in records for s in rec["skipped"]]
    table = pa.Table.from_pydict({f: [s[f] for s in skips] for f in SKIP_FIELDS},
                                 schema=pa.schema([(f, pa.string()) for f in SKIP_FIELDS]))
    with atomic_path(out / SKIPPED_FILE) as tmp:
        pq.write_table(table, tmp)
    if not any(rec["num_samples"] for rec in records):
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(Counter(s["reason"] for s in skips).items())) or "none found"
        raise VlpipeError(f"{source.root}: no sample could be cached ({reasons}); see {out / SKIPPED_FILE}")
    text_fields = tokenizer.to_manifest()
    text = TextSpec(tokenizer_file=TOKENIZER_FILE, tokenizer_sha256=sha256_file(out / TOKENIZER_FILE),
                    tokenizer_spec=options.tokenizer, vocab_size=text_fields["vocab_size"],
                    max_len=options.max_len, dtype=text_fields["dtype"], pad_id=text_fields["pad_id"],
                    cls_id=text_fields["cls_id"], sep_id=text_fields["sep_id"],
                    mask_id=text_fields["mask_id"], unk_id=text_fields["unk_id"])
    # Shards left empty (every sample skipped) are not listed: readers never see zero-length arrays.
    shards = [ShardEntry(rec["name"], rec["num_samples"], rec["source"],
                         {k: FileEntry(**v) for k, v in rec["files"].items()})
              for rec in records if rec["num_samples"] > 0]
    splits: Counter[str] = Counter()
    for rec in records:
        splits.update(rec["splits"])
    manifest = Manifest(
        num_samples=sum(s.num_samples for s in shards),
        image=ImageSpec.create(options.image_size, options.patch_size, options.codec, options.jpeg_quality),
        text=text,
        # train and val always (readers ask for them by name); test only where the dataset has one.
        splits={s: splits[s] for s in SPLITS if s != "test" or splits[s]},
        shards=shards,
        labels=None if source.labels is None else _labels_section(source, records),
        provenance={"source": str(source.root), "source_format": source.layout, "options": options.to_dict(),
                    "vlpipe_version": __version__,
                    "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")},
        skipped=dict(sorted(Counter(s["reason"] for s in skips).items())),
    )
    write_json_atomic(out / MANIFEST, manifest.to_dict())
    return manifest


def _labels_section(source: Source, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's `labels`: the source's vocabulary plus per-split counts summed over shards."""
    counts: dict[str, list[int]] = {}
    unlabeled: Counter[str] = Counter()
    for rec in records:
        for split, row in rec["label_counts"].items():
            counts[split] = [a + b for a, b in zip(counts.get(split, [0] * len(row)), row, strict=True)]
        unlabeled.update(rec["unlabeled"])
    ordered = {s: counts[s] for s in SPLITS if s in counts}
    return source.labels.to_manifest(ordered, {s: unlabeled[s] for s in SPLITS if unlabeled[s]})


def _print_summary(console: Console, out: Path, manifest: Manifest, seconds: float) -> None:
    size = sum(f.bytes for s in manifest.shards for f in s.files.values())
    skipped = ", ".join(f"{n} {reason}" for reason, n in manifest.skipped.items()) or "none"
    splits = ", ".join(f"{n} {name}" for name, n in manifest.splits.items())
    console.print(
        f"[green]cache written to {out}[/green]: {manifest.num_samples} samples "
        f"({splits}) in {len(manifest.shards)} shards, {size / 1e6:.1f} MB, {seconds:.1f} s; skipped: {skipped}"
    )
    labels = manifest.labels
    if labels is not None:
        console.print(f"labels: {labels['task']}, {labels['num_labels']} names"
                      + "".join(f"; {n} unlabeled {s}" for s, n in labels["unlabeled"].items()))
        if labels["unknown"]:
            names = ", ".join(f"{name} ({n})" for name, n in labels["unknown"].items())
            console.print(f"[yellow]warning: label names outside the train split were dropped: {names}[/yellow]")
    if manifest.skipped.get("duplicate_id"):
        console.print(f"[yellow]warning: {manifest.skipped['duplicate_id']} duplicate id(s) skipped "
                      f"(first occurrence kept); see {out / SKIPPED_FILE}[/yellow]")
