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
import os
import shutil
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from vlpipe import __version__
from vlpipe.cache.config import BuildOptions, BuildSettings, parse_part
from vlpipe.cache.distribute import run_shards
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
)
from vlpipe.cache.shard import SKIP_FIELDS, ShardTask, read_done
from vlpipe.errors import VlpipeError
from vlpipe.ingest import Source, iter_captions, open_source
from vlpipe.text import TextTokenizer, load_tokenizer
from vlpipe.text.specs import _wordpiece_size
from vlpipe.utils.atomic import TMP_PREFIX, atomic_path, sha256_file, tmp_path_for, write_json_atomic
from vlpipe.utils.names import shard_name
from vlpipe.utils.raysession import require_ray

# Written when a build starts; lets a rerun check it resumes the same build (same source, options).
BUILD_RECORD = "build.json"
BUILD_FORMAT = "vlpipe-cache-build"
# A build split with --part I/N: one completion record per part, read by `vlpipe cache merge`.
PARTS_DIR = "parts"
PART_FORMAT = "vlpipe-cache-part"


def build_cache(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    processes: int | None = None,
    overwrite: bool = False,
    distributor: str = "local",
    ray_address: str | None = None,
    part: str | None = None,
    quiet: bool = False,
    **values: Any,
) -> Manifest | None:
    """Build (or resume, or confirm) the cache of `src` in `out`; returns its manifest.

    `values` are `BuildOptions` settings (vlpipe/cache/config.py): `image_size=`, `tokenizer=`,
    `format=`, ... `format` "auto" reads img2dataset output or a captions file, unless `src` is laid
    out as one of the labelled downstream datasets or `label_column` is given (vlpipe/ingest/).
    With `part="I/N"` only that part's shards are built and None is returned: the manifest is
    written by `vlpipe.cache.merge.merge_parts` once every part is done.
    """
    options = BuildOptions(**values)
    # The same checks as on the command line.
    BuildSettings(processes=processes, overwrite=overwrite, distributor=distributor, ray_address=ray_address,
                  part=part)
    if distributor == "ray":
        require_ray()
    # Before --out is touched: a bad --tokenizer found only after build.json is written would leave
    # an unfinished build that refuses the corrected command (other options) without --overwrite.
    given = _check_tokenizer(options.tokenizer)
    console = Console(stderr=True, quiet=quiet)
    source = open_build_source(src, options)
    out = Path(out).expanduser().resolve()
    record = build_record(source, options)
    created = not out.exists()
    existing = _prepare_output(out, record, overwrite)
    if existing is not None:
        console.print(f"[green]{out} is already a complete cache of {source.root}; nothing to do[/green]")
        return existing

    started = time.perf_counter()
    # Trained (or taken) in memory before the build record exists, for the same reason; a resumed
    # build reuses its saved tokenizer.json instead. Trained here, once, before any shard job
    # starts: the jobs (worker processes, Ray tasks) load it from the cache by path.
    try:
        fresh = None if (out / TOKENIZER_FILE).is_file() else _new_tokenizer(options, source, console, given)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: never remove anything this build did not create
        raise
    write_json_atomic(out / BUILD_RECORD, record)
    text = _ensure_tokenizer(out, options, fresh)
    tokenizer_sha256 = sha256_file(out / TOKENIZER_FILE)  # the file every shard job of this run loads
    names = [shard_name(i) for i in range(len(source.shards))]
    index, count = parse_part(part) if part is not None else (0, 1)
    mine = names[index::count]
    done = {name: rec for name in mine if (rec := read_done(out, name)) is not None}
    tasks = [ShardTask(source.shards[i], names[i], str(out), options, source.labels)
             for i in range(index, len(names), count) if names[i] not in done]
    if done:
        console.print(f"resuming: {len(done)} of {len(mine)} shards already built")
    for rec in run_shards(tasks, console, distributor=distributor, processes=processes, ray_address=ray_address):
        done[rec["name"]] = rec

    if part is not None:
        write_part_record(out, index, count, record, mine, tokenizer_sha256)
        console.print(f"[green]part {index}/{count} of {out} built[/green]: {len(mine)} of {len(names)} shards, "
                      f"{sum(r['num_samples'] for r in done.values())} samples, {time.perf_counter() - started:.1f} s; "
                      f"once all {count} parts are built: vlpipe cache merge {out}")
        return None
    records = [done[n] for n in names]
    try:
        manifest = write_manifest(out, options, source, records, text)
    except NothingCached as exc:
        # A build that kept nothing leaves nothing behind: no half cache that later commands must refuse.
        if created:
            shutil.rmtree(out)
        else:
            _clear(out)
        raise VlpipeError(f"{exc}; nothing was written to {out}") from None
    (out / BUILD_RECORD).unlink(missing_ok=True)
    _print_summary(console, out, manifest, time.perf_counter() - started)
    return manifest


def open_build_source(src: str | os.PathLike[str], options: BuildOptions) -> Source:
    """The source shards of `src` as `options` read them."""
    return open_source(src, format=options.format, shard_size=options.shard_size, image_column=options.image_column,
                       caption_column=options.caption_column, label_column=options.label_column,
                       multi_label=options.multi_label, split_column=options.split_column)


def build_record(source: Source, options: BuildOptions) -> dict[str, Any]:
    """What build.json (and each part record) holds: the build a rerun or a merge must match."""
    return {"format": BUILD_FORMAT, "source": str(source.root), "source_format": source.layout,
            "options": options.to_dict()}


def part_record_path(out: Path, index: int, count: int) -> Path:
    return out / PARTS_DIR / f"{index:05d}-of-{count:05d}.json"


def write_part_record(out: Path, index: int, count: int, record: dict[str, Any], shards: list[str],
                      tokenizer_sha256: str) -> None:
    """Part I/N's completion record, written once all its shards have their done records."""
    write_json_atomic(part_record_path(out, index, count),
                      {**record, "format": PART_FORMAT, "part": index, "parts": count, "shards": shards,
                       "tokenizer_sha256": tokenizer_sha256, "vlpipe_version": __version__})


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
    previous = read_json(out / MANIFEST) or read_json(out / BUILD_RECORD)
    if previous is None or previous.get("format") not in (FORMAT_NAME, BUILD_FORMAT):
        raise VlpipeError(f"{out}: not empty and not a vlpipe cache; choose another --out or empty it")
    prov = previous.get("provenance", previous)
    same = _comparable(prov.get("options")) == _comparable(record["options"]) and prov.get("source") == record["source"]
    if not same and not overwrite:
        what = "a cache" if (out / MANIFEST).exists() else "an unfinished build"
        raise VlpipeError(f"{out}: holds {what} of {prov.get('source')} with other options "
                          f"({option_diff(prov.get('options') or {}, record['options'])}); "
                          "pass --overwrite to rebuild it or choose another --out")
    if not same:
        _clear(out)
        return None
    if (out / MANIFEST).exists():
        return load_manifest(out)
    return None


def _comparable(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """Build options as they decide the output: a build recorded before the JPEG codec existed (format
    version 1, no `codec`) is a raw build, and a raw build's JPEG quality decides nothing."""
    if options is None:
        return None
    options = {"codec": "raw", **options}
    if options["codec"] == "raw":
        options.pop("jpeg_quality", None)
    return options


def option_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
    return ", ".join(diffs) or "different source"


def _clear(out: Path) -> None:
    """Remove a previous cache; the manifest goes first so no moment looks complete-but-wrong."""
    (out / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
    for name in (TOKENIZER_FILE, SKIPPED_FILE, BUILD_RECORD):
        (out / name).unlink(missing_ok=True)
    for leftover in out.glob(f"{TMP_PREFIX}*"):
        leftover.unlink()


def read_json(path: Path) -> dict[str, Any] | None:
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
    """Save `fresh` as the build's tokenizer.json, or reuse the saved one on resume (never retrain mid-build).

    Never replaces a tokenizer.json that appeared meanwhile: parts of one build started at once
    each train one, and every part must then use the one file that won (the merge checks it).
    """
    path = out / TOKENIZER_FILE
    if fresh is not None:
        tmp = tmp_path_for(path)
        try:
            fresh.save(tmp)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # unlike a rename, fails instead of replacing
        finally:
            tmp.unlink(missing_ok=True)
    return TextTokenizer.load(path, spec=options.tokenizer)


# ---- finishing -----------------------------------------------------------------------------------


class NothingCached(VlpipeError):
    """Every sample of a build was skipped (undecodable, missing ...): there is no cache to write."""


def write_manifest(out: Path, options: BuildOptions, source: Source, records: list[dict[str, Any]],
                    tokenizer: TextTokenizer) -> Manifest:
    """skipped.parquet, then manifest.json (atomically, last): from here on the cache is complete."""
    skips = [s for rec in records for s in rec["skipped"]]
    table = pa.Table.from_pydict({f: [s[f] for s in skips] for f in SKIP_FIELDS},
                                 schema=pa.schema([(f, pa.string()) for f in SKIP_FIELDS]))
    with atomic_path(out / SKIPPED_FILE) as tmp:
        pq.write_table(table, tmp)
    if not any(rec["num_samples"] for rec in records):
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(Counter(s["reason"] for s in skips).items())) or "none found"
        example = f"; e.g. {skips[0]['source']} {skips[0]['key']}: {skips[0]['detail']}" if skips else ""
        raise NothingCached(f"{source.root}: no sample could be cached ({reasons}){example}")
    text_fields = tokenizer.to_manifest()
    text = TextSpec(tokenizer_file=TOKENIZER_FILE, tokenizer_sha256=sha256_file(out / TOKENIZER_FILE),
                    tokenizer_spec=options.tokenizer, vocab_size=text_fields["vocab_size"],
                    max_len=options.max_len, dtype=text_fields["dtype"], pad_id=text_fields["pad_id"],
                    cls_id=text_fields["cls_id"], sep_id=text_fields["sep_id"],
                    mask_id=text_fields["mask_id"], unk_id=text_fields["unk_id"])
    # Shards left empty (every sample skipped) are not listed: readers never see zero-length arrays.
    shards = [ShardEntry(name=rec["name"], num_samples=rec["num_samples"], source=rec["source"],
                         files={k: FileEntry(**v) for k, v in rec["files"].items()})
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
    if not manifest.splits.get("val"):
        console.print(f"[yellow]warning: {out}: none of the {manifest.num_samples} samples went to the val split; "
                      "`vlpipe train pretrain` will report no validation metrics. Raise --val-fraction (e.g. 0.1) "
                      "or add samples.[/yellow]")
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
