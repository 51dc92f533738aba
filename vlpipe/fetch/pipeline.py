"""`fetch_tsv` / `fetch_cc`: select rows, download with img2dataset, verify, and record everything.

Output folder (what `vlpipe build-cache` reads, img2dataset's webdataset layout):

    OUT/NNNNN.tar                    verified samples KEY.jpg (RGB JPEG) + KEY.txt + KEY.json
    OUT/NNNNN.parquet                one row per attempted sample (status success / failed_*)
    OUT/NNNNN_stats.json             img2dataset-style counts for the verified shard
    OUT/vlpipe_NNNNN_drops.parquet   key, row, url, reason, detail, stage per dropped sample
    OUT/vlpipe_NNNNN_done.json       written last per shard: the shard counts as done
    OUT/vlpipe_input.parquet         the selected rows (row, caption, url) given to img2dataset
    OUT/vlpipe_selection_drops.parquet  rows dropped before downloading (bad scheme, duplicate URL)
    OUT/vlpipe_fetch.json            options and one record per run (for `vlpipe fetch report`)
    OUT/vlpipe_staging/              img2dataset's own output, deleted shard by shard once published

A rerun of the same command skips every shard with a done record, publishes shards that were
downloaded but not published, and re-downloads the rest, so it ends with the same kept set.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.progress import Progress

from vlpipe.errors import VlpipeError
from vlpipe.fetch.config import DEFAULT_DOWNLOAD_DIR, FetchConfig, VerifyConfig
from vlpipe.fetch.download import run_img2dataset
from vlpipe.fetch.publish import done_path, finalize_shard
from vlpipe.fetch.safety import all_private
from vlpipe.fetch.shardwriter import written_by_us
from vlpipe.fetch.tally import (
    CONFIG_FILE,
    INPUT_FILE,
    SELECTION_DROPS_FILE,
    fetch_report,
    input_rows,
    load_record,
)
from vlpipe.fetch.url_lists import (
    CC_FILENAMES,
    CC_URLS,
    Selection,
    download_file,
    resolve_list,
    select_rows,
    write_parquet,
)
from vlpipe.utils.atomic import TMP_PREFIX, write_json_atomic
from vlpipe.utils.names import shard_name

STAGING_DIR = "vlpipe_staging"


def fetch_cc(
    out: str | Path,
    *,
    split: str = "train",
    tsv: str | None = None,
    download_dir: str | Path = DEFAULT_DOWNLOAD_DIR,
    config: FetchConfig | None = None,
) -> dict[str, Any]:
    """Fetch Conceptual Captions: the official TSV of `split` (or `tsv`), then `fetch_tsv`."""
    if split not in CC_URLS:
        raise VlpipeError(f"--split {split!r}: expected one of {', '.join(CC_URLS)}")
    if tsv is None:
        path = download_file(CC_URLS[split], Path(download_dir) / CC_FILENAMES[split])
        tsv = str(path)
    return fetch_tsv(tsv, out, download_dir=download_dir, config=config)


def fetch_tsv(
    source: str,
    out: str | Path,
    *,
    download_dir: str | Path = DEFAULT_DOWNLOAD_DIR,
    config: FetchConfig | None = None,
) -> dict[str, Any]:
    """Fetch any caption/URL TSV (local path or http(s) URL) into verified shards under `out`.

    Every check of the input (options, the list and its columns, the record of an existing
    fetch) comes before `out` is created or written, so a mistake leaves nothing behind.
    """
    cfg = config or FetchConfig()
    subset = cfg.rows
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise VlpipeError(f"--out {out}: exists and is not a folder")
    source_id = source if source.startswith(("http://", "https://")) else str(Path(source).resolve())
    fixed = cfg.fixed_part(source_id)
    input_path = out / INPUT_FILE
    record = _existing_record(out, fixed)
    if record is None:
        selection = select_rows(
            resolve_list(source, Path(download_dir)), subset, sample=cfg.sample, seed=cfg.seed
        )
        if selection.rows.num_rows == 0:
            raise VlpipeError(_nothing_to_fetch(source, selection))
        if not cfg.policy.allow_private_network and all_private(selection.rows.column("url").to_pylist()):
            raise VlpipeError(f"{source}: every URL is on a loopback or private address, which fetch refuses "
                              "unless you pass --allow-private-network (tests, intranets)")
        out.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(out)
        record = {"format": "vlpipe-fetch", "version": 1, "options": fixed, "runs": []}
        write_json_atomic(out / CONFIG_FILE, record)
        write_parquet(selection.drops, out / SELECTION_DROPS_FILE)
        write_parquet(selection.rows, input_path)  # last: its presence means the selection is complete
    else:
        _remove_leftovers(out)
    num_shards = math.ceil(input_rows(input_path) / cfg.shard_size)

    start = time.time()
    staging = out / STAGING_DIR
    _finalize_staged(staging, out, num_shards, cfg.verify)
    if _missing_shards(out, num_shards):
        with _progress(out, num_shards):
            run_img2dataset(
                input_path, staging, out, shard_size=cfg.shard_size,
                download=cfg.download, policy=cfg.policy, verify=cfg.verify,
            )  # fmt: skip
        _finalize_staged(staging, out, num_shards, cfg.verify)
    record["runs"].append({"start": start, "end": time.time(), "download": cfg.download.model_dump()})
    write_json_atomic(out / CONFIG_FILE, record)
    missing = _missing_shards(out, num_shards)
    if missing:
        raise VlpipeError(
            f"{len(missing)} of {num_shards} shards in {out} did not finish (e.g. shard {shard_name(missing[0])}); "
            "rerun the same command to retry them"
        )
    report = fetch_report(out)
    if report["kept"] == 0:
        # A complete fetch with no image is a mistake (e.g. a missing --allow-private-network or a
        # dead mirror), not a dataset: say so rather than hand an empty folder to build-cache.
        hint = ("; private_address: pass --allow-private-network to fetch from loopback/intranet hosts"
                if report["dropped"].get("private_address") else "")
        raise VlpipeError(
            f"{out}: no image was kept: all {report['attempted']} rows were dropped "
            f"({_reasons(report['dropped'])}); each row's reason is in {out}/vlpipe_*drops.parquet{hint}"
        )
    return report


def _remove_leftovers(out: Path) -> None:
    """Delete files a killed run left half-written under their temporary names."""
    for leftover in out.glob(f"{TMP_PREFIX}*"):
        leftover.unlink()


def _reasons(counts: dict[str, int]) -> str:
    """{'bad_scheme': 2, 'bad_url': 1} -> 'bad_scheme 2, bad_url 1', most frequent first."""
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _nothing_to_fetch(source: str, selection: Selection) -> str:
    """Why a selection with no row left is refused: the counts by reason and the first bad row."""
    rows = selection.drops.to_pylist()
    if not rows:
        return f"{source}: no data rows to fetch (only a header line?)"
    first = rows[0]
    return (
        f"{source}: all {len(rows)} selected rows were dropped before downloading "
        f"({_reasons(Counter(r['reason'] for r in rows))}); e.g. line {first['row'] + 1 + selection.header_lines}: "
        f"{first['detail']}" + (f" ({first['url']!r:.80})" if first["url"] else "")
    )


def _existing_record(out: Path, fixed: dict[str, Any]) -> dict[str, Any] | None:
    """The run record of a fetch in `out` to continue, or None to start afresh. Writes nothing.

    Refuses a damaged record and a fetch made with other options (resuming it would mix two
    datasets in one folder).
    """
    path = out / CONFIG_FILE
    started = (out / INPUT_FILE).exists()
    if not path.exists():
        if started:
            raise VlpipeError(
                f"{path}: missing, but {out} holds a started fetch ({INPUT_FILE}); "
                "fetch again into a new --out (or delete the folder)"
            )
        return None
    record = load_record(path)
    # Until rows were selected nothing depends on the options (e.g. a mistyped path): start afresh.
    if not started:
        return None
    if record["options"] != fixed:
        old, new = record["options"], fixed
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise VlpipeError(
            f"{out} was fetched with other options ({', '.join(changed)} differ); "
            "use the same options to resume, or a new --out"
        )
    return record


def _missing_shards(out: Path, num_shards: int) -> list[int]:
    return [i for i in range(num_shards) if not done_path(out, i).exists()]


def _finalize_staged(staging: Path, out: Path, num_shards: int, cfg: VerifyConfig) -> None:
    """Bring staging in line with the done records after a killed run.

    A shard img2dataset finished (its stats file is written last) but that was not published is
    published now; a partly downloaded shard, or one staged by an older vlpipe in img2dataset's
    own tar layout, loses img2dataset's done marker so it is downloaded again; raw files left
    behind by a kill after the done record are removed.
    """
    for shard_id in range(num_shards):
        name = shard_name(shard_id)
        raw = [staging / f"{name}{suffix}" for suffix in (".tar", ".parquet", "_stats.json")]
        if done_path(out, shard_id).exists():
            for path in raw[:2]:
                path.unlink(missing_ok=True)
        elif all(path.exists() for path in raw) and written_by_us(raw[1]):
            finalize_shard(staging, out, shard_id, cfg)
        else:
            raw[2].unlink(missing_ok=True)


@contextlib.contextmanager
def _progress(out: Path, num_shards: int) -> Iterator[None]:
    """A rich progress bar over finished shards, polled from the done records while img2dataset runs."""
    stop = threading.Event()

    def poll() -> None:
        with Progress(transient=True) as bar:
            task = bar.add_task("fetch: shards done", total=num_shards)
            while not stop.wait(1.0):
                bar.update(task, completed=num_shards - len(_missing_shards(out, num_shards)))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
