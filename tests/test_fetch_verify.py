"""Per-image normalization and shard publishing: exact kept set, colours, orientation, drop reasons."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from imageserver import CASES, ImageServer, assert_kept_image
from PIL import Image

from vlpipe.fetch.shardwriter import StagedShardWriter
from vlpipe.fetch.verify import (
    Normalizer,
    VerifyConfig,
    done_path,
    drops_path,
    finalize_shard,
    map_error,
    normalize,
)
from vlpipe.imaging import load_rgb

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


def image_cases() -> list:
    return [c for c in CASES if c.path.startswith("/img/") and c.expect != "duplicate_url"]


def test_normalizer_keeps_correct_images_and_names_the_rest() -> None:
    normalizer = Normalizer(CONFIG)
    with ImageServer() as server:
        for case in image_cases():
            data, width, height, original_width, original_height, error = normalizer(
                io.BytesIO(server.body(case.path[5:]))
            )
            if case.expect == "kept":
                assert error is None, (case.name, error)
                assert_kept_image(data, case)
                assert (width, height) == case.size and min(original_width, original_height) >= 64
            else:
                assert data is None and map_error(error) == case.expect, (case.name, error)


def test_normalizer_never_raises() -> None:
    # img2dataset would skip a sample whose resizer raised without recording it: a silent drop.
    for junk in (b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a" + b"\xff" * 30, b"RIFF\0\0\0\0WEBPVP8 "):
        *_, error = Normalizer(CONFIG)(io.BytesIO(junk))
        assert error.startswith("vlpipe:")


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


def test_finalize_is_deterministic_and_resize_is_configurable(tmp_path: Path) -> None:
    with ImageServer() as server:
        for seed, name in enumerate("ab"):
            stage_shard(tmp_path / name, server, seed=seed)  # other arrival order, same shard
        small = Normalizer(VerifyConfig(max_pixels=4_000_000, image_size=100))
        data, width, height, original_width, original_height, _ = small(io.BytesIO(server.body("big")))
    finalize_shard(tmp_path / "a", tmp_path / "out_a", 0, CONFIG)
    finalize_shard(tmp_path / "b", tmp_path / "out_b", 0, CONFIG)
    assert (tmp_path / "out_a" / "00000.tar").read_bytes() == (tmp_path / "out_b" / "00000.tar").read_bytes()
    assert (width, height, original_width, original_height) == (133, 100, 1024, 768)


def test_draft_decoding_keeps_size_orientation_and_colours() -> None:
    """A large rotated JPEG decodes at reduced DCT scale, yet the stored image matches a full decode."""
    upright = np.zeros((800, 1200, 3), np.uint8)  # wide: red left half, blue right half
    upright[:, :600] = (220, 30, 30)
    upright[:, 600:] = (30, 30, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=95, exif=exif)
    data = buffer.getvalue()

    # The reduced-scale decode really happens: the decoded image is smaller than the file's 1200x800
    # (libjpeg's 1/2 or 1/4 DCT scaling), yet its sides stay >= the 256 px target.
    decoded = load_rgb(data, draft_size=CONFIG.image_size)
    assert decoded.size[0] < 1200 and min(decoded.size) >= CONFIG.image_size
    assert decoded.info["original_size"] == (1200, 800)
    drafted, sizes = normalize(data, CONFIG)
    full, full_sizes = normalize(data, VerifyConfig(max_pixels=4_000_000, image_size=0))
    assert sizes == {"width": 384, "height": 256, "original_width": 1200, "original_height": 800}
    assert full_sizes["width"] == 1200
    out = np.asarray(Image.open(io.BytesIO(drafted)))
    reference = np.asarray(Image.open(io.BytesIO(full)).resize((384, 256), Image.Resampling.BICUBIC))
    assert np.abs(out.astype(int) - reference.astype(int)).mean() < 3
    assert out[128, 20, 0] > 180 and out[128, 360, 2] > 180  # red left, blue right: upright
