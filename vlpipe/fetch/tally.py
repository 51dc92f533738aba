"""`vlpipe fetch report DIR`: what a fetch attempted, kept, dropped (and why), and how fast.

Everything is recomputed from the files in DIR (done records, drop tables, run records), so the
report is also a consistency check: attempted must equal kept plus every dropped sample.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.errors import VlpipeError, one_line

CONFIG_FILE = "vlpipe_fetch.json"
INPUT_FILE = "vlpipe_input.parquet"
SELECTION_DROPS_FILE = "vlpipe_selection_drops.parquet"
# A damaged record cannot be repaired from the other files: the downloads must be redone.
_REMEDY = "the fetch output is damaged: fetch again into a new --out (or delete the folder)"


def _read_json(path: Path, what: str) -> Any:
    """Parse a JSON file, turning a truncated or unreadable file into one error line naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VlpipeError(f"{path}: not a valid {what} ({_short(exc)}); {_REMEDY}") from exc


def _short(exc: BaseException) -> str:
    """An exception as a short one-line phrase (Arrow and OS messages can span several lines)."""
    text = re.sub(r"^Could not open Parquet input source '[^']*': ", "", one_line(exc, limit=10**6))  # path named
    return text if len(text) <= 160 else text[:157] + "..."


def load_record(path: Path) -> dict[str, Any]:
    """The run record `vlpipe_fetch.json`, checked for the fields `fetch_tsv` and the report use.

    Written atomically, so a bad one was edited or copied by hand; refusing it is safer than
    resuming a fetch whose options are unknown.
    """
    record = _read_json(path, "fetch record")
    problem = None
    if not isinstance(record, dict):
        problem = f"expected a JSON object, got {type(record).__name__}"
    elif not isinstance(record.get("options"), dict):
        problem = "no 'options' object"
    elif not isinstance(record.get("runs"), list):
        problem = "no 'runs' list"
    else:
        shard_size = record["options"].get("shard_size")
        if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
            problem = f"options.shard_size {shard_size!r} is not a whole number >= 1"
        for i, run in enumerate(record["runs"]):
            if not (isinstance(run, dict) and all(_is_number(run.get(k)) for k in ("start", "end"))):
                problem = f"runs[{i}] has no numeric 'start' and 'end'"
                break
    if problem:
        raise VlpipeError(f"{path}: not a valid fetch record ({problem}); {_REMEDY}")
    return record


def _load_done(path: Path) -> dict[str, Any]:
    """One shard's done record, checked for the counts the report adds up."""
    done = _read_json(path, "shard record")
    counts = ("attempted", "kept", "bytes_written")
    if (
        not isinstance(done, dict)
        or not all(isinstance(done.get(k), int) for k in counts)
        or not isinstance(done.get("dropped"), dict)
        or not all(isinstance(v, int) for v in done["dropped"].values())
        or not (done.get("bytes_downloaded") is None or isinstance(done["bytes_downloaded"], int))
    ):
        raise VlpipeError(
            f"{path}: not a valid shard record (expected attempted, kept, dropped, bytes_*); {_REMEDY}"
        )
    return done


def input_rows(path: Path) -> int:
    """Rows of the selected-input Parquet file, with a garbage file reported by name."""
    try:
        return pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException) as exc:
        raise VlpipeError(f"{path}: not a readable Parquet file ({_short(exc)}); {_REMEDY}") from exc


def _selection_drop_reasons(path: Path) -> list[str]:
    try:
        return pq.read_table(path, columns=["reason"]).column("reason").to_pylist()
    except (OSError, KeyError, pa.ArrowException) as exc:
        raise VlpipeError(f"{path}: not a readable drop table ({_short(exc)}); {_REMEDY}") from exc


def fetch_report(out: str | Path) -> dict[str, Any]:
    """Counts, drop reasons, bytes and throughput of the fetch in `out`."""
    out = Path(out)
    config_path = out / CONFIG_FILE
    if not config_path.is_file():
        raise VlpipeError(f"{out}: not a vlpipe fetch output (no {CONFIG_FILE})")
    record = load_record(config_path)
    dropped: Counter[str] = Counter()
    selected = 0
    if (out / INPUT_FILE).exists():
        selected = input_rows(out / INPUT_FILE)
        dropped.update(_selection_drop_reasons(out / SELECTION_DROPS_FILE))
    dropped_before_download = sum(dropped.values())
    shard_size = record["options"]["shard_size"]
    expected_shards = -(-selected // shard_size)
    done = [_load_done(p) for p in sorted(out.glob("vlpipe_*_done.json"))]
    downloaded = sum(d["attempted"] for d in done)
    kept = sum(d["kept"] for d in done)
    for d in done:
        dropped.update(d["dropped"])
    duration = sum(run["end"] - run["start"] for run in record["runs"])
    report = {
        "dir": str(out),
        "complete": len(done) == expected_shards,
        "shards_done": len(done),
        "shards_expected": expected_shards,
        "attempted": dropped_before_download + downloaded,
        "kept": kept,
        "dropped": dict(sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))),
        "dropped_total": sum(dropped.values()),
        # Unknown (None) for a shard published after a crash: img2dataset keeps no byte counts.
        "bytes_downloaded": sum(d["bytes_downloaded"] or 0 for d in done),
        "bytes_written": sum(d["bytes_written"] for d in done),
        "duration_s": round(duration, 3),
        "images_per_s": round(downloaded / duration, 2) if duration > 0 else None,
        "runs": len(record["runs"]),
    }
    if report["kept"] + report["dropped_total"] != report["attempted"]:
        raise VlpipeError(f"{out}: inconsistent records (kept + dropped != attempted); rerun the fetch")
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a few aligned lines for the terminal."""
    lines = [
        f"fetch report for {report['dir']}"
        + ("" if report["complete"] else "  (INCOMPLETE: rerun to finish)"),
        f"  shards      {report['shards_done']} / {report['shards_expected']}",
        f"  attempted   {report['attempted']}",
        f"  kept        {report['kept']}",
        f"  dropped     {report['dropped_total']}",
    ]
    lines += [f"    {reason:<20} {count}" for reason, count in report["dropped"].items()]
    lines += [
        f"  downloaded  {report['bytes_downloaded'] / 1e6:.1f} MB, written {report['bytes_written'] / 1e6:.1f} MB",
        f"  duration    {report['duration_s']:.1f} s over {report['runs']} run(s)",
        f"  throughput  {report['images_per_s']} images/s",
    ]
    return "\n".join(lines)


def _is_number(value: Any) -> bool:
    """An int or float in a JSON record (a bool is not a number)."""
    return isinstance(value, int | float) and not isinstance(value, bool)
