"""verify finds every kind of damage a copied or half-written cache can have, naming the file."""

from __future__ import annotations

import json
import re
import shutil

import cachegen
import numpy as np
import pytest

from vlpipe.cache.format import load_manifest
from vlpipe.cache.verify import check_cache, verify_cache
from vlpipe.cache.writer import build_cache
from vlpipe.errors import VlpipeError
from vlpipe.utils.atomic import sha256_file

OPTS = {"image_size": 16, "patch_size": 8, "max_len": 12, "tokenizer": "wordpiece:120", "quiet": True}


@pytest.fixture(scope="module")
def sound(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    items = cachegen.photo_items(6)
    src = cachegen.write_layout(root / "src", "webdataset", [items[:3], items[3:]])
    build_cache(src, root / "cache", processes=1, **OPTS)
    return root / "cache"


@pytest.fixture
def cache(sound, tmp_path):
    copy = tmp_path / "cache"
    shutil.copytree(sound, copy)
    return copy


def test_sound_cache_passes(cache):
    assert verify_cache(cache) == []
    assert check_cache(cache).num_samples == 6


def test_flipped_byte_is_caught(cache):
    path = cache / "shards/00001/images.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(VlpipeError, match=r"shards/00001/images.npy: sha256 differs") as info:
        check_cache(cache)
    assert "\n" not in str(info.value)


def test_truncated_file_is_caught(cache):
    path = cache / "shards/00000/tokens.npy"
    path.write_bytes(path.read_bytes()[:-7])
    problems = verify_cache(cache, checksums=False)
    assert problems == [f"{path}: truncated ({path.stat().st_size} bytes, manifest says {path.stat().st_size + 7})"]


def test_missing_file_and_missing_manifest(cache):
    (cache / "shards/00000/meta.parquet").unlink()
    assert verify_cache(cache)[0].endswith("shards/00000/meta.parquet: missing")
    (cache / "manifest.json").unlink()
    assert "not a complete vlpipe cache" in verify_cache(cache)[0]


def test_damaged_tokenizer_and_missing_skip_table_without_checksums(cache):
    # Every build writes skipped.parquet (empty when nothing was skipped, as here).
    (cache / "skipped.parquet").unlink()
    (cache / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    problems = verify_cache(cache, checksums=False)
    assert any("tokenizer.json: not a valid HF tokenizers tokenizer.json" in p for p in problems), problems
    assert problems[-1] == f"{cache / 'skipped.parquet'}: missing"


def _rewrite(cache, kind, arr, shard="00000"):
    """Replace an array and update the manifest's size and sha, so only the deep checks can catch it."""
    path = cache / f"shards/{shard}/{kind}.npy"
    np.save(path, arr)
    m = json.loads((cache / "manifest.json").read_text())
    entry = next(s for s in m["shards"] if s["name"] == shard)["files"][kind]
    entry["bytes"], entry["sha256"] = path.stat().st_size, sha256_file(path)
    (cache / "manifest.json").write_text(json.dumps(m))
    return path


def test_token_id_out_of_range(cache):
    tokens = np.load(cache / "shards/00000/tokens.npy")
    tokens[1, 1] = load_manifest(cache).text.vocab_size
    path = _rewrite(cache, "tokens", tokens)
    assert verify_cache(cache) == [f"{path}: row 1 has token id {tokens[1, 1]} >= vocab_size {tokens[1, 1]}"]


def test_lengths_inconsistent_with_padding(cache):
    lengths = np.load(cache / "shards/00001/lengths.npy")
    lengths[2] -= 1
    _rewrite(cache, "lengths", lengths, shard="00001")
    problems = verify_cache(cache)
    assert len(problems) == 1 and "shards/00001/tokens.npy: row 2 is not [CLS] ... [SEP]" in problems[0]


def test_wrong_dtype_or_shape(cache):
    images = np.load(cache / "shards/00000/images.npy")
    path = _rewrite(cache, "images", images[:2])
    assert verify_cache(cache) == [f"{path}: array is uint8[2, 4, 192], expected uint8[3, 4, 192]"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify_labels")
    build_cache(cachegen.hateful(root / "hm"), root / "cache", processes=1, **OPTS)
    return root / "cache"


def _replace_labels(cache, arr: np.ndarray) -> None:
    """Swap in other labels with matching size and checksum, so only the labels check can object."""
    m = json.loads((cache / "manifest.json").read_text())
    entry = m["shards"][0]["files"]["labels"]
    np.save(cache / entry["path"], arr)
    entry["bytes"], entry["sha256"] = (cache / entry["path"]).stat().st_size, sha256_file(cache / entry["path"])
    (cache / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: a.astype(np.int32), r"labels\.npy: array is int32\[10\], expected int64\[10\]$"),
    (lambda a: a[:, None].astype(np.uint8), r"labels\.npy: array is uint8\[10, 1\], expected int64\[10\]$"),
    (lambda a: np.where(np.arange(10) == 2, 5, a), r"labels\.npy: row 2 has label value\(s\) outside -1\.\.1"),
    (lambda a: np.where(np.arange(10) == 0, -1, a), r"labels\.npy: row 0 is unlabeled \(-1\) outside the test split"),
    # Still valid values, but train now has four positives where the manifest counts three.
    (lambda a: np.where(np.arange(10) == 0, 1, a), r"labels\.counts/unlabeled differ"),
])
def test_bad_labels_are_found(labelled, tmp_path, change, message):
    cache = tmp_path / "cache"
    shutil.copytree(labelled, cache)
    assert verify_cache(cache) == []
    path = cache / json.loads((cache / "manifest.json").read_text())["shards"][0]["files"]["labels"]["path"]
    _replace_labels(cache, change(np.load(path)))
    problems = verify_cache(cache)
    assert problems and all("\n" not in p for p in problems)
    assert any(re.search(message, p) for p in problems), problems


def test_bad_labels_section_is_found(labelled, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(labelled, cache)
    m = json.loads((cache / "manifest.json").read_text())
    m["labels"]["task"] = "regression"
    (cache / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VlpipeError, match=r"labels.task is 'regression', expected one of binary"):
        check_cache(cache)


@pytest.fixture(scope="module")
def sound_jpeg(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify-jpeg")
    items = cachegen.real_photo_items(6, min_side=48)
    src = cachegen.write_layout(root / "src", "webdataset", [items[:3], items[3:]])
    build_cache(src, root / "cache", processes=1, codec="jpeg", **OPTS)
    return root / "cache"


@pytest.fixture
def jpeg(sound_jpeg, tmp_path):
    copy = tmp_path / "cache"
    shutil.copytree(sound_jpeg, copy)
    return copy


def _rehash(cache, rel: str) -> None:
    """Record a file's new size and sha256 in the manifest, as a cache written by another tool would."""
    manifest = json.loads((cache / "manifest.json").read_text())
    for shard in manifest["shards"]:
        for entry in shard["files"].values():
            if entry["path"] == rel:
                entry["bytes"], entry["sha256"] = (cache / rel).stat().st_size, sha256_file(cache / rel)
    (cache / "manifest.json").write_text(json.dumps(manifest))


def test_sound_jpeg_cache_passes_with_every_image_decoded(jpeg):
    assert load_manifest(jpeg).image.codec == "jpeg"
    assert verify_cache(jpeg) == [] and verify_cache(jpeg, checksums=False, decode=False) == []


@pytest.mark.parametrize("name", ["jpeg.npy", "jpeg_offsets.npy"])
def test_flipped_byte_in_jpeg_bytes_or_offsets_is_caught(jpeg, name):
    path = jpeg / "shards/00001" / name
    offsets = np.load(jpeg / "shards/00001/jpeg_offsets.npy")
    data = bytearray(path.read_bytes())
    header = len(data) - (offsets[-1] if name == "jpeg.npy" else 8 * len(offsets))
    # the first byte of row 1's JPEG, or the low byte of its offset
    position = header + (int(offsets[1]) if name == "jpeg.npy" else 8)
    data[position] ^= 0x01
    path.write_bytes(bytes(data))
    assert verify_cache(jpeg) == [f"{path}: sha256 differs from the manifest (file modified or corrupt)"]
    # without the checksums, decoding (or the offsets check) still finds it, naming the row
    problems = verify_cache(jpeg, checksums=False)
    assert len(problems) == 1
    assert re.match(rf"{re.escape(str(jpeg / 'shards/00001/jpeg.npy'))}: row [01] is not a decodable 16x16 JPEG \(",
                    problems[0])


def test_bad_jpeg_under_matching_checksums_is_found_by_decoding(jpeg):
    rel = "shards/00000/jpeg.npy"
    offsets = np.load(jpeg / "shards/00000/jpeg_offsets.npy")
    arr = np.load(jpeg / rel)
    arr[offsets[2] + 20 : offsets[3]] = 0  # row 2: header intact, its image data zeroed
    np.save(jpeg / rel, arr)
    _rehash(jpeg, rel)
    problems = verify_cache(jpeg)
    assert len(problems) == 1 and problems[0].startswith(f"{jpeg / rel}: row 2 is not a decodable 16x16 JPEG (")
    assert verify_cache(jpeg, decode=False) == []  # what --no-decode skips


def test_bad_jpeg_offsets_are_named(jpeg):
    rel = "shards/00001/jpeg_offsets.npy"
    offsets = np.load(jpeg / rel)
    offsets[2] = offsets[1]
    np.save(jpeg / rel, offsets)
    _rehash(jpeg, rel)
    assert verify_cache(jpeg, decode=False) == [f"{jpeg / rel}: row 1 has no bytes (offset {offsets[1]} to {offsets[1]})"]
