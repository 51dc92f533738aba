"""The manifest round-trips and every broken cache directory gives a one-line, named error."""

from __future__ import annotations

import hashlib
import json

import pytest

from vlpipe.cache.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    FileEntry,
    ImageSpec,
    Manifest,
    ShardEntry,
    TextSpec,
    load_manifest,
    shard_file_relpath,
    shard_files,
    split_of,
    token_dtype,
)
from vlpipe.errors import VlpipeError
from vlpipe.utils.names import shard_name


def make_manifest(num_shards: int = 2, per_shard: int = 3, codec: str = "raw") -> Manifest:
    shards = []
    for k in range(num_shards):
        name = shard_name(k)
        files = {kind: FileEntry(path=shard_file_relpath(name, kind), bytes=10 + k, sha256="ab" * 32)
                 for kind in shard_files(codec)}
        shards.append(ShardEntry(name=name, num_samples=per_shard, source=f"{name}.tar", files=files))
    text = TextSpec(tokenizer_file="tokenizer.json", tokenizer_sha256="cd" * 32, tokenizer_spec="wordpiece:100",
                    vocab_size=100, max_len=16, dtype="uint16", pad_id=0, cls_id=2, sep_id=3, mask_id=4, unk_id=1)
    return Manifest(
        num_samples=num_shards * per_shard, image=ImageSpec.create(32, 8, codec, 95), text=text,
        splits={"train": 5, "val": 1}, shards=shards,
        provenance={"source": "/x", "options": {"image_size": 32}}, skipped={"undecodable": 1},
    )


def write(tmp_path, obj) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps(obj))


def test_roundtrip_and_documented_keys(tmp_path):
    m = make_manifest()
    d = m.to_dict()
    assert list(d) == ["format", "version", "num_samples", "image", "text", "splits", "shards",
                       "labels", "provenance", "skipped"]
    assert d["format"] == FORMAT_NAME and d["version"] == FORMAT_VERSION
    assert d["image"] == {
        "image_size": 32, "patch_size": 8, "grid": 4, "num_patches": 16, "patch_dim": 192,
        "dtype": "uint8", "layout": "row-major patches; each patch flattened (patch_row, patch_col, channel)",
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
        "codec": "raw", "quality": None, "subsampling": None, "encoder": None,
    }
    assert d["shards"][1]["files"]["meta"] == {"path": "shards/00001/meta.parquet", "bytes": 11, "sha256": "ab" * 32}
    write(tmp_path, d)
    loaded = load_manifest(tmp_path)
    assert loaded == m
    assert loaded.shard_offsets() == [0, 3]
    assert loaded.shards[1].path(tmp_path, "images") == tmp_path / "shards/00001/images.npy"


def test_split_of_matches_documented_formula():
    keys = [f"{i:09d}" for i in range(2000)]
    for key in keys[:50]:
        h = int(hashlib.sha256(key.encode()).hexdigest()[:16], 16)
        assert split_of(key, 0.3) == ("val" if h / 2**64 < 0.3 else "train")
    frac = sum(split_of(k, 0.1) == "val" for k in keys) / len(keys)
    assert 0.07 < frac < 0.13
    assert all(split_of(k, 0.0) == "train" for k in keys)
    assert all(split_of(k, 1.0) == "val" for k in keys)


def test_token_dtype():
    assert token_dtype(30522) == "uint16"
    assert token_dtype(65535) == "uint16"
    assert token_dtype(65536) == "uint32"


def test_missing_dir(tmp_path):
    with pytest.raises(VlpipeError, match="no such cache directory"):
        load_manifest(tmp_path / "nope")


def test_no_manifest_is_incomplete(tmp_path):
    (tmp_path / "shards").mkdir()
    with pytest.raises(VlpipeError, match=r"not a complete vlpipe cache \(no manifest.json\); rerun"):
        load_manifest(tmp_path)


def test_malformed_json(tmp_path):
    (tmp_path / MANIFEST).write_text('{"format": ')
    with pytest.raises(VlpipeError, match="malformed JSON"):
        load_manifest(tmp_path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="other"), "format is 'other'"),
        (lambda d: d.update(version=3), r"version 3 is not supported \(this vlpipe reads versions 1, 2\)"),
        (lambda d: d["image"].pop("codec"), "missing field 'image.codec'"),
        (lambda d: d["image"].update(codec="png"), "image.codec is 'png', expected one of raw, jpeg"),
        (lambda d: d["image"].pop("patch_size"), "missing field 'image.patch_size'"),
        (lambda d: d["text"].update(vocab_size="big"), "field 'text.vocab_size' has the wrong type"),
        (lambda d: d["shards"][1]["files"].pop("tokens"), r"missing field 'shards\[1\].files.tokens'"),
        (lambda d: d["shards"][0]["files"]["images"].pop("sha256"),
         r"missing field 'shards\[0\].files.images.sha256'"),
        (lambda d: d.update(num_samples=99), "num_samples is 99 but the shards hold 6"),
        (lambda d: d.pop("text"), "missing field 'text'"),
        (lambda d: d["shards"][0]["files"]["images"].update(path="../../../etc/passwd"),
         r"'shards\[0\].files.images.path' is '../../../etc/passwd', which leaves the cache folder"),
        (lambda d: d["shards"][1]["files"]["meta"].update(path="/etc/passwd"), "which leaves the cache folder"),
        (lambda d: d["shards"][1]["files"]["meta"].update(path=""), "which leaves the cache folder"),
        (lambda d: d["text"].update(tokenizer_file="../tok.json"), "'text.tokenizer_file' is '../tok.json', which"),
    ],
)
def test_bad_manifest_names_the_field(tmp_path, mutate, message):
    d = make_manifest().to_dict()
    mutate(d)
    write(tmp_path, d)
    with pytest.raises(VlpipeError, match=message) as info:
        load_manifest(tmp_path)
    assert "\n" not in str(info.value)


def test_jpeg_manifest_records_codec_and_lists_its_files(tmp_path):
    m = make_manifest(codec="jpeg")
    d = m.to_dict()
    assert {k: d["image"][k] for k in ("codec", "quality", "subsampling")} == {
        "codec": "jpeg", "quality": 95, "subsampling": "4:4:4"}
    assert d["image"]["encoder"].startswith("simplejpeg ")
    assert list(d["shards"][0]["files"]) == ["jpeg", "jpeg_offsets", "tokens", "lengths", "meta"]
    assert d["shards"][0]["files"]["jpeg_offsets"]["path"] == "shards/00000/jpeg_offsets.npy"
    write(tmp_path, d)
    assert load_manifest(tmp_path) == m

    for mutate, message in [
        (lambda d: d["shards"][1]["files"].pop("jpeg_offsets"), r"missing field 'shards\[1\].files.jpeg_offsets'"),
        (lambda d: d["image"].pop("quality"), "missing field 'image.quality'"),
        (lambda d: d["image"].update(grid=3), "image sizes disagree"),
    ]:
        broken = m.to_dict()
        mutate(broken)
        write(tmp_path, broken)
        with pytest.raises(VlpipeError, match=message):
            load_manifest(tmp_path)


def test_version_1_manifest_is_a_raw_cache(tmp_path):
    """Version 1 had no codec fields: such a manifest still opens, as a raw cache."""
    d = make_manifest().to_dict()
    d["version"] = 1
    for key in ("codec", "quality", "subsampling", "encoder"):
        del d["image"][key]
    write(tmp_path, d)
    loaded = load_manifest(tmp_path)
    assert loaded.version == 1 and loaded.image.codec == "raw" and loaded.image.files == {"images": "images.npy"}
