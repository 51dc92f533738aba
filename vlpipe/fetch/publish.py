"""Seal each staged shard: publish it into the output folder with one drop record per drop.

`finalize_shard` turns img2dataset's staged shard into the published one, in the download
process right after img2dataset finished it (or on a rerun, for a shard staged before a kill):
the tar, which `shardwriter.StagedShardWriter` already wrote sorted by key, is linked into place
unread, and every failure, a download error or a `normalize.Normalizer` rejection, is mapped to
a short reason and written as a drop record.

Crash safety: every published file is written under a temporary name and renamed; the
`vlpipe_NNNNN_done.json` record is written last, and the staged files are deleted only after it,
so a killed run can always redo an unfinished shard from what is staged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.fetch.config import VerifyConfig
from vlpipe.fetch.safety import REASON_PREFIX
from vlpipe.fetch.shardwriter import sample_record
from vlpipe.utils.atomic import atomic_path, write_json_atomic
from vlpipe.utils.names import shard_name


def done_path(out: Path, shard_id: int) -> Path:
    return out / f"vlpipe_{shard_name(shard_id)}_done.json"


def drops_path(out: Path, shard_id: int) -> Path:
    return out / f"vlpipe_{shard_name(shard_id)}_drops.parquet"


_HTTP_RE = re.compile(r"HTTP Error (\d{3})")
# Substrings of urllib/http.client/ssl error messages, most specific first.
_ERROR_PATTERNS = (
    ("timed out", "timeout"),
    ("Connection refused", "connection_refused"),
    ("Name or service not known", "dns_error"),
    ("Temporary failure in name resolution", "dns_error"),
    ("IncompleteRead", "truncated"),
    ("Remote end closed connection", "connection_closed"),
    ("Connection reset", "connection_closed"),
    ("SSL", "ssl_error"),
    ("CERTIFICATE", "ssl_error"),
    ("X-Robots-Tag", "robots_disallowed"),
    ("hash mismatch", "hash_mismatch"),
    ("unknown url type", "bad_scheme"),
)


def map_error(message: str) -> str:
    """img2dataset's free-text `error_message` -> a short, stable drop reason."""
    marker = message.find(REASON_PREFIX)
    if marker >= 0:
        return re.split(r"[\s>]", message[marker + len(REASON_PREFIX) :], maxsplit=1)[0]
    if "infinite loop" in message:
        return "redirect_loop"
    match = _HTTP_RE.search(message)
    if match:
        return f"http_{match.group(1)}"
    for needle, reason in _ERROR_PATTERNS:
        if needle.lower() in message.lower():
            return reason
    return "download_error"


def finalize_shard(
    staging: Path, out: Path, shard_id: int, cfg: VerifyConfig, bytes_downloaded: int | None = None
) -> dict[str, Any]:
    """Publish staged shard `shard_id` into `out`; returns (and writes last) its done record.

    No image is decoded here: `Normalizer` already did that while downloading.
    `bytes_downloaded` is known when called right after the download, not after a crash.
    """
    start = time.time()
    name = shard_name(shard_id)
    rows = sorted(pq.read_table(staging / f"{name}.parquet").to_pylist(), key=lambda r: r["key"])
    stats = json.loads((staging / f"{name}_stats.json").read_text())

    meta_rows: list[dict[str, Any]] = []
    drops: list[dict[str, Any]] = []
    for row in rows:
        record = sample_record(row)
        meta_rows.append(record)
        if row["status"] == "success":
            continue
        message = row["error_message"] or ""
        reason = map_error(message)
        record["error_message"] = reason
        detail = message.split(" ", 1)[1] if message.startswith(REASON_PREFIX) and " " in message else message
        stage = "verify" if row["status"] == "failed_to_resize" else "download"
        drops.append({"key": row["key"], "row": row.get("row"), "url": row["url"],
                      "reason": reason, "detail": detail, "stage": stage})  # fmt: skip

    tar_path = out / f"{name}.tar"
    _publish_tar(staging / f"{name}.tar", tar_path)
    kept = len(rows) - len(drops)
    with atomic_path(out / f"{name}.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(meta_rows), tmp)
    drop_schema = pa.schema(
        [("key", pa.string()), ("row", pa.int64()), ("url", pa.string()), ("reason", pa.string()),
         ("detail", pa.string()), ("stage", pa.string())]
    )  # fmt: skip
    with atomic_path(drops_path(out, shard_id)) as tmp:
        pq.write_table(pa.Table.from_pylist(drops, schema=drop_schema), tmp)
    write_json_atomic(
        out / f"{name}_stats.json",
        {"count": len(rows), "successes": kept, "failed_to_download": stats["failed_to_download"],
         "failed_to_resize": stats["failed_to_resize"], "duration": stats["duration"],
         "start_time": stats["start_time"], "end_time": stats["end_time"]},
    )  # fmt: skip
    done = {
        "shard": name,
        "attempted": len(rows),
        "kept": kept,
        "dropped": dict(sorted(Counter(d["reason"] for d in drops).items())),
        "bytes_downloaded": bytes_downloaded,
        "bytes_written": tar_path.stat().st_size,
        "download_seconds": stats["duration"],
        "finalize_seconds": time.time() - start,
        "config": cfg.model_dump(),
    }
    write_json_atomic(done_path(out, shard_id), done)
    # Only now: until the done record exists, a rerun publishes the shard again from these.
    for leftover in (staging / f"{name}.tar", staging / f"{name}.parquet"):
        leftover.unlink(missing_ok=True)
    return done


def _publish_tar(staged: Path, final: Path) -> None:
    """Publish the staged tar, already in its final form (`StagedShardWriter`), without reading it.

    A hard link under a temporary name, then the atomic rename: the staged copy stays until the
    done record is written. Filesystems without hard links get a copy.
    """
    with atomic_path(final) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(staged, tmp)
        except OSError:
            shutil.copyfile(staged, tmp)
