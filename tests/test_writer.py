"""build-cache end to end on small img2dataset-style inputs, read back the way a user would."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cachegen
import numpy as np
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from vlpipe.cache.format import load_manifest, split_of
from vlpipe.cache.writer import build_cache
from vlpipe.errors import VlpipeError
from vlpipe.imaging import load_rgb, patchify, resize_center_crop

SIZE, PATCH, MAX_LEN = 32, 8, 16
OPTS = {"image_size": SIZE, "patch_size": PATCH, "max_len": MAX_LEN, "tokenizer": "wordpiece:200",
        "val_fraction": 0.3, "quiet": True}


def read_cache_as_user(cache: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """Exactly what docs/cache-format.md tells a user to do: json + numpy + pyarrow, no vlpipe."""
    m = json.loads((cache / "manifest.json").read_text())
    images, tokens, lengths, meta = [], [], [], []
    for shard in m["shards"]:
        f = shard["files"]
        images.append(np.load(cache / f["images"]["path"], mmap_mode="r"))
        tokens.append(np.load(cache / f["tokens"]["path"], mmap_mode="r"))
        lengths.append(np.load(cache / f["lengths"]["path"], mmap_mode="r"))
        meta += pq.read_table(cache / f["meta"]["path"]).to_pylist()
    return m, np.concatenate(images), np.concatenate(tokens), np.concatenate(lengths), meta


def to_image(patches: np.ndarray, p: int) -> np.ndarray:
    """The doc's un-patchify formula, written out here on purpose (no vlpipe)."""
    g = int(round(patches.shape[0] ** 0.5))
    return patches.reshape(g, g, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(g * p, g * p, 3)


def cache_bytes(cache: Path) -> dict[str, bytes]:
    return {p.relative_to(cache).as_posix(): p.read_bytes()
            for p in sorted(cache.rglob("*")) if p.is_file() and p.name != "manifest.json"}


@pytest.mark.parametrize("layout", cachegen.LAYOUTS)
def test_build_layout_matches_reference_and_doc(tmp_path, layout):
    items = cachegen.hard_items()
    src = cachegen.write_layout(tmp_path / "src", layout, [items[:6], items[6:]])
    out = tmp_path / "cache"
    manifest = build_cache(src, out, processes=1, **OPTS)
    m, images, tokens, lengths, meta = read_cache_as_user(out)

    assert m["format"] == "vlpipe-cache" and m["version"] == 2 and m["image"]["codec"] == "raw"
    assert m["provenance"]["source_format"] == layout
    assert m["num_samples"] == manifest.num_samples == len(meta) == 9
    assert images.shape == (9, 16, 192) and images.dtype == np.uint8
    assert tokens.shape == (9, MAX_LEN) and tokens.dtype == np.uint16 and lengths.dtype == np.uint16
    assert m["skipped"] == {"missing_caption": 1, "undecodable": 1}
    skipped = pq.read_table(out / "skipped.parquet").to_pylist()
    assert {(s["key"], s["reason"]) for s in skipped} == {("000000008", "undecodable"),
                                                          ("000000009", "missing_caption")}

    by_key = {it.key: it for it in items}
    for i, row in enumerate(meta):
        item = by_key[row["key"]]
        ref = load_rgb(item.data, draft_size=2 * SIZE)
        np.testing.assert_array_equal(images[i], patchify(resize_center_crop(ref, SIZE), PATCH))
        assert row["caption"] == item.caption
        assert (row["width"], row["height"]) == ref.info["original_size"]
        assert row["split"] == split_of(row["key"], 0.3)
        assert row["url"].endswith(f"{item.key}.{item.ext}")

    px = {row["key"]: to_image(images[i], PATCH).astype(int) for i, row in enumerate(meta)}
    rotated = px["000000001"]  # EXIF 6: upright means red on top, blue at the bottom
    assert rotated[:12, :, 0].mean() > 150 > rotated[:12, :, 2].mean()
    assert rotated[-12:, :, 2].mean() > 150 > rotated[-12:, :, 0].mean()
    assert (meta[[r["key"] for r in meta].index("000000001")]["width"],
            meta[[r["key"] for r in meta].index("000000001")]["height"]) == (32, 48)
    grey16 = px["000000002"]  # 26000/65535 -> ~101 and 13000/65535 -> ~51, not white
    assert abs(grey16[:, :10].mean() - 101) < 3 and abs(grey16[:, -10:].mean() - 51) < 3
    cyan = px["000000003"].reshape(-1, 3).mean(0)
    assert cyan[0] < 80 and cyan[1] > 150 and cyan[2] > 150
    assert (px["000000004"][:, :12] >= 250).all()  # transparent palette half -> white
    assert abs(px["000000004"][:, -10:].reshape(-1, 3).mean(0) - (30, 160, 40)).max() < 4
    assert (px["000000005"][:, :12] >= 250).all() and px["000000005"][:, -10:].mean() < 70
    assert (px["000000006"][:12] >= 250).all() and px["000000006"][-10:, :, 2].mean() > 180

    # tokens: [CLS] caption [SEP], padded with pad_id, ids in range, consistent with tokenizer.json
    hf = Tokenizer.from_file(str(out / m["text"]["tokenizer_file"]))
    t = m["text"]
    assert (tokens < t["vocab_size"]).all()
    for i, row in enumerate(meta):
        n = int(lengths[i])
        assert tokens[i, 0] == t["cls_id"] and tokens[i, n - 1] == t["sep_id"]
        assert (tokens[i, n:] == t["pad_id"]).all()
        full = hf.encode(row["caption"]).ids  # framed [CLS] ... [SEP] by tokenizer.json itself
        expected = full if len(full) <= MAX_LEN else full[: MAX_LEN - 1] + [t["sep_id"]]
        assert tokens[i, :n].tolist() == expected


def test_jpeg_draft_stays_close_to_full_decode(tmp_path):
    big = cachegen.photo_items(3, size=(400, 300))
    src = cachegen.write_layout(tmp_path / "src", "webdataset", [big])
    build_cache(src, tmp_path / "a", processes=1, **OPTS)
    build_cache(src, tmp_path / "b", processes=1, jpeg_draft=False, **OPTS)
    _, fast, *_ = read_cache_as_user(tmp_path / "a")
    _, exact, *_ = read_cache_as_user(tmp_path / "b")
    assert not np.array_equal(fast, exact)  # the draft path really ran
    assert np.abs(fast.astype(int) - exact.astype(int)).mean() < 1.0


@pytest.mark.slow  # worker processes import torch (through vlpipe.cache) on start
@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_rebuild_is_byte_identical_across_process_counts(tmp_path, codec):
    items = cachegen.hard_items() + cachegen.photo_items(6, 100)
    src = cachegen.write_layout(tmp_path / "src", "webdataset", [items[:5], items[5:10], items[10:]])
    build_cache(src, tmp_path / "a", processes=1, codec=codec, **OPTS)
    build_cache(src, tmp_path / "b", processes=2, codec=codec, **OPTS)
    a, b = cache_bytes(tmp_path / "a"), cache_bytes(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    # the streamed image file is exactly what np.save writes (the header is rewritten in place at the end)
    name = "images.npy" if codec == "raw" else "jpeg.npy"
    arr = np.load(tmp_path / f"a/shards/00000/{name}")
    buf = io.BytesIO()
    np.save(buf, arr)
    assert buf.getvalue() == a[f"shards/00000/{name}"]


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_resume_after_kill_matches_uninterrupted_build(tmp_path, codec):
    shards = [cachegen.photo_items(3, 10 * k) for k in range(3)]
    # the fourth shard is slow enough (many PNGs, no draft) to be killed in the middle of it
    shards.append([it._replace(data=_png(it.data), ext="png") for it in cachegen.photo_items(150, 100, (160, 120))])
    src = cachegen.write_layout(tmp_path / "src", "webdataset", shards)
    out = tmp_path / "killed"
    code = (f"from vlpipe.cache.writer import build_cache; build_cache({str(src)!r}, {str(out)!r}, "
            f"processes=1, image_size={SIZE}, patch_size={PATCH}, max_len={MAX_LEN}, "
            f"tokenizer='wordpiece:200', val_fraction=0.3, quiet=True, codec={codec!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 120
    while not (out / "shards/00002/done.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "build ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "shards/00003/done.json").exists()
    with pytest.raises(VlpipeError, match="not a complete vlpipe cache"):
        load_manifest(out)

    kept = {n: (out / f"shards/{n}/done.json").stat().st_mtime_ns for n in ("00000", "00001", "00002")}
    build_cache(src, out, processes=1, codec=codec, **OPTS)
    assert {n: (out / f"shards/{n}/done.json").stat().st_mtime_ns for n in kept} == kept
    assert not list(out.rglob(".tmp-*")) and not (out / "build.json").exists()
    build_cache(src, tmp_path / "clean", processes=1, codec=codec, **OPTS)
    assert cache_bytes(out) == cache_bytes(tmp_path / "clean")


def test_jpeg_cache_holds_the_raw_cache_pixels_of_real_photos(tmp_path):
    """Same source, both codecs: the JPEGs, read back as the format doc shows (numpy and any JPEG
    decoder, here Pillow), are the raw cache's pixels within 2 grey levels on average."""
    from PIL import Image

    src = cachegen.write_layout(tmp_path / "src", "webdataset", [cachegen.real_photo_items(14, min_side=256)])
    opts = {**OPTS, "image_size": 224, "patch_size": 16}
    build_cache(src, tmp_path / "raw", processes=1, **opts)
    build_cache(src, tmp_path / "jpeg", processes=1, codec="jpeg", **opts)
    _, raw, *_ = read_cache_as_user(tmp_path / "raw")

    m = json.loads((tmp_path / "jpeg/manifest.json").read_text())
    assert m["version"] == 2 and m["image"]["codec"] == "jpeg" and m["image"]["quality"] == 95
    f = m["shards"][0]["files"]
    data = np.load(tmp_path / "jpeg" / f["jpeg"]["path"], mmap_mode="r")
    offsets = np.load(tmp_path / "jpeg" / f["jpeg_offsets"]["path"])
    decoded = [np.asarray(Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]]))) for i in range(len(offsets) - 1)]

    assert len(decoded) == len(raw) == 14 and offsets[0] == 0 and offsets[-1] == len(data)
    errors = np.stack([np.abs(img.astype(np.int16) - to_image(r, 16)) for img, r in zip(decoded, raw, strict=True)])
    mse = float((errors.astype(np.float64) ** 2).mean())
    print(f"JPEG q95 vs raw on {len(raw)} photographs: MAE {errors.mean():.2f} levels, "
          f"PSNR {10 * np.log10(255**2 / mse):.1f} dB, {offsets[-1] / len(raw) / 1e3:.1f} kB per image")
    assert errors.mean() <= 2.0
    assert offsets[-1] / raw.nbytes < 0.25  # the point of it: a fraction of the raw bytes


def _png(jpeg: bytes) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buf, "PNG")
    return buf.getvalue()


def test_existing_output_rules(tmp_path):
    src = cachegen.write_layout(tmp_path / "src", "files", [cachegen.photo_items(4)])
    out = tmp_path / "cache"
    first = build_cache(src, out, processes=1, **OPTS)
    again = build_cache(src, out, processes=1, **OPTS)  # complete and identical: nothing rebuilt
    assert again.provenance["created"] == first.provenance["created"]
    with pytest.raises(VlpipeError, match=r"other options \(image_size 32 -> 64\).*--overwrite"):
        build_cache(src, out, processes=1, **{**OPTS, "image_size": 64})
    rebuilt = build_cache(src, out, processes=1, overwrite=True, **{**OPTS, "image_size": 64})
    assert rebuilt.image.image_size == 64 and load_manifest(out).image.num_patches == 64

    # A cache built before the JPEG codec existed records no codec or quality: rerunning its build is
    # the same build (nothing to do), while asking for JPEG is not.
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("codec", "jpeg_quality"):
        del manifest["provenance"]["options"][key]
    (out / "manifest.json").write_text(json.dumps(manifest))
    created = manifest["provenance"]["created"]
    assert build_cache(src, out, processes=1, **{**OPTS, "image_size": 64}).provenance["created"] == created
    with pytest.raises(VlpipeError, match=r"other options \(codec .*'jpeg'"):
        build_cache(src, out, processes=1, codec="jpeg", **{**OPTS, "image_size": 64})

    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(VlpipeError, match="not empty and not a vlpipe cache"):
        build_cache(src, other, processes=1, overwrite=True, **OPTS)
    assert (other / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"image_size": 30}, "must be a positive multiple of --patch-size"),
    ({"max_len": 1}, "config: max_len must be >= 2, got 1"),
    ({"max_len": 70000}, "config: max_len must be <= 65535, got 70000"),
    ({"val_fraction": 1.5}, "config: val_fraction must be <= 1, got 1.5"),
    ({"image_colum": "x"}, "config: unknown setting 'image_colum'"),
    ({"tokenizer": "nonsense-spec"}, "nonsense-spec"),
])
def test_bad_options_are_one_line_errors(tmp_path, kwargs, message):
    src = cachegen.write_layout(tmp_path / "src", "files", [cachegen.photo_items(2)])
    with pytest.raises(VlpipeError, match=message) as info:
        build_cache(src, tmp_path / "cache", processes=1, **{**OPTS, **kwargs})
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache/manifest.json").exists()


def test_captions_folder_is_chunked_into_shards(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rows = []
    for it in cachegen.photo_items(7):
        (folder / "sub" / f"{it.key}.jpg").write_bytes(it.data)
        rows.append({"image": f"sub/{it.key}.jpg", "caption": it.caption})
    rows.append({"image": "sub/missing.jpg", "caption": "gone"})
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = build_cache(folder, tmp_path / "cache", processes=1, shard_size=3, **OPTS)
    assert [s.num_samples for s in m.shards] == [3, 3, 1]
    assert m.shards[0].source == "captions.jsonl[0:3]"
    assert m.skipped == {"missing_image": 1}
    _, _, _, _, meta = read_cache_as_user(tmp_path / "cache")
    assert [r["key"] for r in meta] == [f"sub/{i:09d}" for i in range(7)]


def test_nothing_decodable_is_an_error_not_an_empty_cache(tmp_path):
    broken = [cachegen.Item(f"{i:09d}", b"not an image", "jpg", "a caption") for i in range(3)]
    src = cachegen.write_layout(tmp_path / "src", "files", [broken])
    with pytest.raises(VlpipeError, match=r"no sample could be cached \(3 undecodable\); e.g. 00000/ 000000000: "
                                          r".*; nothing was written to .*cache$"):
        build_cache(src, tmp_path / "cache", processes=1, **OPTS)
    assert not (tmp_path / "cache").exists()  # no partial folder left for later commands to trip over
    (tmp_path / "empty").mkdir()  # a folder the user made stays, empty
    with pytest.raises(VlpipeError, match="no sample could be cached"):
        build_cache(src, tmp_path / "empty", processes=1, **OPTS)
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_cache_without_validation_samples_is_warned_about(tmp_path, capsys):
    src = cachegen.write_layout(tmp_path / "src", "files", [cachegen.photo_items(2)])
    build_cache(src, tmp_path / "cache", processes=1, **{**OPTS, "val_fraction": 0.0, "quiet": False})
    assert "none of the 2 samples went to the val split" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize(("spec", "message"), [
    ("nothere.json", "nothere.json: tokenizer file not found"),
    ("wordpiece:abc", "expected wordpiece:N"),
    ("bad.json", "bad.json: not a valid HF tokenizers tokenizer.json"),
    ("empty-captions", "no captions to train on"),
])
def test_bad_tokenizer_leaves_no_output_that_blocks_the_fix(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    Path("bad.json").write_text('{"version": "1.0", "model": ')
    folder = tmp_path / "imgs"
    folder.mkdir()
    items = cachegen.photo_items(3)
    for it in items:
        (folder / f"{it.key}.jpg").write_bytes(it.data)
    # wordpiece:N fails only once the captions are read: none of these rows has one.
    captions = [{"image": f"{it.key}.jpg", "caption": "" if spec == "empty-captions" else it.caption} for it in items]
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in captions))
    out = tmp_path / "q1"
    with pytest.raises(VlpipeError, match=message) as info:
        build_cache(folder, out, processes=1, **{**OPTS, "tokenizer": "wordpiece:200" if spec == "empty-captions"
                                                 else spec})
    assert "\n" not in str(info.value)
    assert not out.exists()
    if spec == "empty-captions":
        (folder / "captions.jsonl").write_text("".join(
            json.dumps({"image": f"{it.key}.jpg", "caption": it.caption}) + "\n" for it in items))
    m = build_cache(folder, out, processes=1, **OPTS)  # the corrected command is not refused
    assert m.num_samples == 3 and not (out / "build.json").exists()


def test_bad_tokenizer_does_not_clear_an_existing_cache_with_overwrite(tmp_path):
    src = cachegen.write_layout(tmp_path / "src", "files", [cachegen.photo_items(2)])
    out = tmp_path / "cache"
    build_cache(src, out, processes=1, **OPTS)
    before = cache_bytes(out)
    with pytest.raises(VlpipeError, match="tokenizer file not found"):
        build_cache(src, out, processes=1, overwrite=True, **{**OPTS, "tokenizer": str(tmp_path / "nothere.json")})
    assert cache_bytes(out) == before and load_manifest(out).num_samples == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"processes": 0}, "config: processes must be >= 1, got 0"),
    ({"processes": -3}, "config: processes must be >= 1, got -3"),
    ({"patch_size": -16}, "config: patch_size must be >= 1, got -16"),
    ({"patch_size": 0}, "config: patch_size must be >= 1, got 0"),
])
def test_bad_process_and_patch_counts_name_their_setting(tmp_path, kwargs, message):
    src = cachegen.write_layout(tmp_path / "src", "files", [cachegen.photo_items(2)])
    with pytest.raises(VlpipeError, match=message):
        build_cache(src, tmp_path / "cache", **{"processes": 1, **OPTS, **kwargs})
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--processes", "0"], "error: --processes 0: must be >= 1"),
    (["--patch-size", "0"], "error: --patch-size 0: must be >= 1"),
    (["--image-size", "30", "--patch-size", "8"], "error: --image-size 30 must be a positive multiple of --patch-size 8"),
    (["--max-len", "1"], "error: --max-len 1: must be >= 2"),
])
def test_bad_flags_are_named_as_typed(tmp_path, capsys, flags, message):
    from vlpipe.cli.main import main

    src = cachegen.write_layout(tmp_path / "src", "files", [cachegen.photo_items(2)])
    with pytest.raises(SystemExit) as exc:
        main(["build-cache", str(src), "--out", str(tmp_path / "cache"), *flags])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.strip() == message or err.startswith(message), err
    assert not (tmp_path / "cache").exists()
