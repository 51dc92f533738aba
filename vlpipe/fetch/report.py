"""`vlpipe fetch report DIR`: what a fetch attempted, kept, dropped (and why), and how fast.

Everything is recomputed from the files in DIR (done records, drop tables, run records), so the
report is also a consistency check: attempted must equal kept plus every dropped sample.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from vlpipe.errors import VlpipeError

CONFIG_FILE = "vlpipe_fetch.json"
INPUT_FILE = "vlpipe_input.parquet"
SELECTION_DROPS_FILE = "vlpipe_selection_drops.parquet"


def fetch_report(out: str | Path) -> dict[str, Any]:
    """Counts, drop reasons, bytes and throughput of the fetch in `out`."""
    out = Path(out)
    config_path = out / CONFIG_FILE
    if not config_path.exists():
        raise VlpipeError(f"{out}: not a vlpipe fetch output (no {CONFIG_FILE})")
    record = json.loads(config_path.read_text())
    dropped: Counter[str] = Counter()
    selected = 0
    if (out / INPUT_FILE).exists():
        selected = pq.read_metadata(out / INPUT_FILE).num_rows
        dropped.update(
            pq.read_table(out / SELECTION_DROPS_FILE, columns=["reason"]).column("reason").to_pylist()
        )
    dropped_before_download = sum(dropped.values())
    shard_size = record["options"]["shard_size"]
    expected_shards = -(-selected // shard_size)
    done = [json.loads(p.read_text()) for p in sorted(out.glob("vlpipe_*_done.json"))]
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
