"""Verification of a staged img2dataset shard: exact kept set, colours, orientation, drop reasons."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from imageserver import CASES, ImageServer, assert_kept_image

from vlpipe.fetch.verify import VerifyConfig, done_path, drops_path, map_error, verify_shard

CONFIG = VerifyConfig(max_pixels=4_000_000)


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


def stage_shard(staging: Path, server: ImageServer) -> dict[str, str]:
    """Write shard 0 as img2dataset would (original bytes, disable_all_reencoding): key -> case name."""
    staging.mkdir(parents=True)
    rows, keys = [], {}
    with tarfile.open(staging / "00000.tar", "w") as tar:
        for i, case in enumerate(
            c for c in CASES if c.path.startswith("/img/") and c.expect != "duplicate_url"
        ):
            key = f"{i:09d}"
            keys[key] = case.name
            data = server.body(case.path[5:])
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            rows.append({"url": server.url(case), "caption": case.name, "row": i, "key": key,
                         "status": "success", "error_message": None, "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
    keys["000000099"] = "404"
    rows.append({"url": server.base + "/status/404", "caption": "404", "row": 99, "key": "000000099",
                 "status": "failed_to_download", "error_message": "HTTP Error 404: Not Found", "sha256": None})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), staging / "00000.parquet")
    stats = {"count": len(rows), "failed_to_download": 1, "duration": 1.0, "start_time": 0.0}
    (staging / "00000_stats.json").write_text(json.dumps(stats))
    return keys


def test_verify_shard_keeps_exactly_the_correct_images(tmp_path: Path) -> None:
    by_name = {case.name: case for case in CASES}
    with ImageServer() as server:
        keys = stage_shard(tmp_path / "staging", server)
    out = tmp_path / "out"
    done = verify_shard(tmp_path / "staging", out, 0, CONFIG)

    with tarfile.open(out / "00000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    kept = {keys[name.split(".")[0]] for name in members if name.endswith(".jpg")}
    assert kept == {name for name in keys.values() if by_name[name].expect == "kept"}
    for name, data in members.items():
        key, ext = name.split(".")
        if ext == "jpg":
            assert_kept_image(data, by_name[keys[key]])
        elif ext == "txt":
            assert data.decode() == keys[key]
        else:
            assert json.loads(data)["key"] == key

    drops = pq.read_table(drops_path(out, 0)).to_pylist()
    assert {keys[d["key"]]: d["reason"] for d in drops} == {
        name: by_name[name].expect for name in keys.values() if by_name[name].expect != "kept"
    }
    assert done["attempted"] == len(keys) == done["kept"] + sum(done["dropped"].values())
    assert json.loads(done_path(out, 0).read_text()) == done
    meta = pq.read_table(out / "00000.parquet").to_pylist()
    assert sum(r["status"] == "success" for r in meta) == len(kept) and len(meta) == len(keys)
    # The raw files are gone once the shard is verified; img2dataset's done marker stays.
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == ["00000_stats.json"]
    assert not list(out.glob(".tmp-*"))


def test_verify_is_deterministic_and_resizes(tmp_path: Path) -> None:
    with ImageServer() as server:
        for name in "abc":
            stage_shard(tmp_path / name, server)
    verify_shard(tmp_path / "a", tmp_path / "out_a", 0, CONFIG)
    verify_shard(tmp_path / "b", tmp_path / "out_b", 0, CONFIG)
    verify_shard(tmp_path / "c", tmp_path / "out_c", 0, VerifyConfig(max_pixels=4_000_000, image_size=100))
    assert (tmp_path / "out_a" / "00000.tar").read_bytes() == (tmp_path / "out_b" / "00000.tar").read_bytes()
    with tarfile.open(tmp_path / "out_c" / "00000.tar") as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    assert metas and min(min(m["width"], m["height"]) for m in metas) == 100
    big = next(m for m in metas if m["caption"] == "big")
    assert (big["width"], big["height"], big["original_width"], big["original_height"]) == (
        133,
        100,
        1024,
        768,
    )
