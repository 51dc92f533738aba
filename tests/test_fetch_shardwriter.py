"""StagedShardWriter: the staged tar comes out sorted and final whatever order samples arrive in."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.fetch.shardwriter import RECORD_FIELDS, StagedShardWriter, sample_record, written_by_us

SCHEMA = pa.schema(
    [("url", pa.string()), ("caption", pa.string()), ("row", pa.int64()), ("key", pa.string()),
     ("status", pa.string()), ("error_message", pa.string()), ("sha256", pa.string())]
)  # fmt: skip


def meta(key: str, status: str = "success") -> dict:
    return {"url": f"http://example.com/{key}", "caption": f"caption {key}", "row": int(key), "key": key,
            "status": status, "error_message": None if status == "success" else "HTTP Error 404: Not Found",
            "sha256": "ab" * 32 if status == "success" else None}  # fmt: skip


def write_shard(folder: Path, order: list[str], dropped: set[str]) -> None:
    writer = StagedShardWriter(7, str(folder), True, 5, SCHEMA, "jpg")
    for key in order:
        status = "failed_to_download" if key in dropped else "success"
        writer.write(None if key in dropped else f"jpeg of {key}".encode() * 100, key, f"caption {key}", meta(key, status))
    writer.close()


def test_tar_is_sorted_final_and_spool_removed(tmp_path: Path) -> None:
    order = ["0000007003", "0000007000", "0000007002", "0000007001", "0000007004"]
    write_shard(tmp_path, order, dropped={"0000007002"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00007.parquet", "00007.tar"]  # no spool, no temp
    with tarfile.open(tmp_path / "00007.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
        names = tar.getnames()
    kept = ["0000007000", "0000007001", "0000007003", "0000007004"]
    assert names == [f"{key}.{ext}" for key in kept for ext in ("jpg", "txt", "json")]
    for key in kept:
        assert members[f"{key}.jpg"] == f"jpeg of {key}".encode() * 100  # bytes from the spool, not mixed up
        assert members[f"{key}.txt"] == f"caption {key}".encode()
        record = json.loads(members[f"{key}.json"])
        assert list(record) == list(RECORD_FIELDS) and record == sample_record(meta(key))
    rows = pq.read_table(tmp_path / "00007.parquet")
    assert rows.schema == SCHEMA and rows.column("key").to_pylist() == order  # every attempt, drops too
    assert written_by_us(tmp_path / "00007.parquet")


def test_same_samples_in_another_order_give_identical_bytes(tmp_path: Path) -> None:
    keys = [f"{7000000 + i:010d}" for i in range(20)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_shard(tmp_path / "a", keys, dropped={keys[3]})
    write_shard(tmp_path / "b", keys[::-1], dropped={keys[3]})
    assert (tmp_path / "a" / "00007.tar").read_bytes() == (tmp_path / "b" / "00007.tar").read_bytes()


def test_empty_shard(tmp_path: Path) -> None:
    StagedShardWriter(0, str(tmp_path), True, 5, SCHEMA, "jpg").close()
    with tarfile.open(tmp_path / "00000.tar") as tar:
        assert tar.getnames() == []
    assert pq.read_table(tmp_path / "00000.parquet").num_rows == 0
