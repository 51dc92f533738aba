"""Shard publishing: sorted final tars, drop records with reasons, done record last, determinism."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from imageserver import CASES, ImageServer, assert_kept_image
from test_fetch_normalize import CONFIG, image_cases

from vlpipe.fetch.normalize import Normalizer
from vlpipe.fetch.publish import done_path, drops_path, finalize_shard, map_error
from vlpipe.fetch.shardwriter import StagedShardWriter


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("HTTP Error 404: Not Found", "http_404"),
        ("HTTP Error 503: Service Unavailable", "http_503"),
        (
            "HTTP Error 302: The HTTP server returned a redirect error that would lead to an infinite loop.",
            "redirect_loop",
        ),
        ("<urlopen error timed out>", "timeout"),
        ("The read operation timed out", "timeout"),
        ("vlpipe:timeout response not complete after 2 s", "timeout"),
        ("<urlopen error vlpipe:private_address 10.0.0.1 resolves to 10.0.0.1>", "private_address"),
        ("<urlopen error [Errno 111] Connection refused>", "connection_refused"),
        ("<urlopen error [Errno -2] Name or service not known>", "dns_error"),
        ("Use of image disallowed by X-Robots-Tag directive", "robots_disallowed"),
        ("IncompleteRead(10 bytes read, 90 more expected)", "truncated"),
        ("something nobody expected", "download_error"),
    ],
)
def test_map_error(message: str, reason: str) -> None:
    assert map_error(message) == reason


STAGED_SCHEMA = pa.schema(
    [("url", pa.string()), ("caption", pa.string()), ("row", pa.int64()), ("key", pa.string()),
     ("status", pa.string()), ("error_message", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
     ("original_width", pa.int32()), ("original_height", pa.int32()), ("sha256", pa.string())]
)  # fmt: skip


def stage_shard(staging: Path, server: ImageServer, *, seed: int = 0) -> dict[str, str]:
    """Stage shard 0 as img2dataset does with our Normalizer and writer: key -> case name.

    Samples are written in a shuffled order, as img2dataset's threads finish them.
    """
    staging.mkdir(parents=True)
    normalizer = Normalizer(CONFIG)
    writer = StagedShardWriter(0, str(staging), True, 5, STAGED_SCHEMA, "jpg")
    samples, keys = [], {}
    for i, case in enumerate(image_cases()):
        key = f"{i:09d}"
        keys[key] = case.name
        original = server.body(case.path[5:])
        data, width, height, original_width, original_height, error = normalizer(io.BytesIO(original))
        samples.append((data, {"url": server.url(case), "caption": case.name, "row": i, "key": key,
                               "status": "success" if error is None else "failed_to_resize",
                               "error_message": error, "width": width, "height": height,
                               "original_width": original_width, "original_height": original_height,
                               "sha256": hashlib.sha256(original).hexdigest()}))  # fmt: skip
    keys["000000099"] = "404"
    samples.append((None, {"url": server.base + "/status/404", "caption": "404", "row": 99, "key": "000000099",
                           "status": "failed_to_download", "error_message": "HTTP Error 404: Not Found",
                           "width": None, "height": None, "original_width": None, "original_height": None,
                           "sha256": None}))  # fmt: skip
    random.Random(seed).shuffle(samples)
    for data, meta in samples:
        writer.write(data, meta["key"], meta["caption"], meta)
    writer.close()
    rows = [meta for _, meta in samples]
    failed_to_resize = sum(r["status"] == "failed_to_resize" for r in rows)
    stats = {"count": len(rows), "failed_to_download": 1, "failed_to_resize": failed_to_resize,
             "duration": 1.0, "start_time": 0.0, "end_time": 1.0}  # fmt: skip
    (staging / "00000_stats.json").write_text(json.dumps(stats))
    return keys


def test_finalize_shard_publishes_kept_samples_and_drop_records(tmp_path: Path) -> None:
    by_name = {case.name: case for case in CASES}
    with ImageServer() as server:
        keys = stage_shard(tmp_path / "staging", server)
    out = tmp_path / "out"
    done = finalize_shard(tmp_path / "staging", out, 0, CONFIG, bytes_downloaded=1234)

    with tarfile.open(out / "00000.tar") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    member_keys = [name.split(".")[0] for name, _ in members]
    assert member_keys == sorted(member_keys)  # key order, each sample's files together
    kept = {keys[name.split(".")[0]] for name, _ in members if name.endswith(".jpg")}
    assert kept == {name for name in keys.values() if by_name[name].expect == "kept"}
    for name, data in members:
        key, ext = name.split(".")
        if ext == "jpg":
            assert_kept_image(data, by_name[keys[key]])
        elif ext == "txt":
            assert data.decode() == keys[key]
        else:
            meta = json.loads(data)
            assert meta["key"] == key and meta["status"] == "success" and meta["sha256"]

    drops = pq.read_table(drops_path(out, 0)).to_pylist()
    assert {keys[d["key"]]: d["reason"] for d in drops} == {
        name: by_name[name].expect for name in keys.values() if by_name[name].expect != "kept"
    }
    stages = {keys[d["key"]]: d["stage"] for d in drops}
    assert stages["404"] == "download" and stages["tiny"] == "verify"
    assert next(d for d in drops if keys[d["key"]] == "tiny")["detail"] == "1x1"
    assert done["attempted"] == len(keys) == done["kept"] + sum(done["dropped"].values())
    assert done["bytes_downloaded"] == 1234
    assert json.loads(done_path(out, 0).read_text()) == done
    meta = pq.read_table(out / "00000.parquet").to_pylist()
    assert sum(r["status"] == "success" for r in meta) == len(kept) and len(meta) == len(keys)
    # The staged files are gone once the shard is published; img2dataset's done marker stays.
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == ["00000_stats.json"]
    assert not list(out.glob(".tmp-*"))


def test_finalize_is_deterministic(tmp_path: Path) -> None:
    with ImageServer() as server:
        for seed, name in enumerate("ab"):
            stage_shard(tmp_path / name, server, seed=seed)  # other arrival order, same shard
    finalize_shard(tmp_path / "a", tmp_path / "out_a", 0, CONFIG)
    finalize_shard(tmp_path / "b", tmp_path / "out_b", 0, CONFIG)
    assert (tmp_path / "out_a" / "00000.tar").read_bytes() == (tmp_path / "out_b" / "00000.tar").read_bytes()
