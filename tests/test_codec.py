"""The image codecs: the sink writes what np.save would, JPEGs round-trip within the quality bound,
and damaged or wrong-sized JPEG bytes are refused."""

from __future__ import annotations

import io

import cachegen
import numpy as np
import pytest
import simplejpeg
from PIL import Image

from vlpipe.cache.codec import ImageSink, decode_jpeg, encode_jpeg
from vlpipe.cache.config import DEFAULT_JPEG_QUALITY
from vlpipe.imaging import load_rgb, patchify, resize_center_crop


def photos(n: int, size: int = 224) -> list[np.ndarray]:
    """What a raw cache stores for real photographs: upright RGB, resized and center-cropped."""
    return [resize_center_crop(load_rgb(item.data), size) for item in cachegen.real_photo_items(n, min_side=size)]


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_raw_sink_writes_np_save_of_the_patches(tmp_path):
    images = photos(3, 32)
    with ImageSink(tmp_path, "raw", 32, 8, DEFAULT_JPEG_QUALITY) as sink:
        for img in images:
            sink.add(img)
    expected = np.stack([patchify(img, 8) for img in images])
    assert (tmp_path / "images.npy").read_bytes() == npy_bytes(expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.npy"]


def test_jpeg_sink_writes_flat_bytes_and_offsets(tmp_path):
    images = photos(4, 32)
    with ImageSink(tmp_path, "jpeg", 32, 8, 90) as sink:
        for img in images:
            sink.add(img)
    encoded = [encode_jpeg(img, 90) for img in images]
    offsets = np.cumsum([0] + [len(e) for e in encoded]).astype(np.int64)
    assert (tmp_path / "jpeg.npy").read_bytes() == npy_bytes(np.frombuffer(b"".join(encoded), np.uint8))
    assert (tmp_path / "jpeg_offsets.npy").read_bytes() == npy_bytes(offsets)
    assert len(set(np.diff(offsets).tolist())) > 1  # rows really have different sizes
    # any JPEG decoder reads a row: here Pillow, reading 4:4:4 at the recorded quality's bytes
    data = np.load(tmp_path / "jpeg.npy", mmap_mode="r")
    row = Image.open(io.BytesIO(data[offsets[2] : offsets[3]]))
    assert row.size == (32, 32) and row.mode == "RGB"
    assert simplejpeg.decode_jpeg_header(bytes(data[offsets[2] : offsets[3]]))[3] == "444"


def test_empty_jpeg_sink_and_a_failed_one(tmp_path):
    with ImageSink(tmp_path / "a", "jpeg", 32, 8, 90):
        pass
    assert np.load(tmp_path / "a/jpeg.npy").shape == (0,)
    assert np.load(tmp_path / "a/jpeg_offsets.npy").tolist() == [0]
    (tmp_path / "b").mkdir()
    with pytest.raises(RuntimeError, match="boom"), ImageSink(tmp_path / "b", "jpeg", 32, 8, 90) as sink:
        sink.add(photos(1, 32)[0])
        raise RuntimeError("boom")
    assert list((tmp_path / "b").iterdir()) == []  # nothing half-written left behind


def test_round_trip_on_photographs_stays_within_two_levels():
    images = photos(14)
    errors, sizes = [], []
    for img in images:
        data = encode_jpeg(img, DEFAULT_JPEG_QUALITY)
        assert encode_jpeg(img, DEFAULT_JPEG_QUALITY) == data  # deterministic: rebuilds are byte-identical
        out = np.empty_like(img)
        decode_jpeg(data, out)
        errors.append(np.abs(out.astype(np.int16) - img))
        sizes.append(len(data))
    err = np.stack(errors)
    psnr = 10 * np.log10(255**2 / (err.astype(np.float64) ** 2).mean())
    print(f"q{DEFAULT_JPEG_QUALITY}: MAE {err.mean():.2f}, PSNR {psnr:.1f} dB, {np.mean(sizes) / 1e3:.1f} kB")
    assert err.mean() <= 2.0 and psnr > 38
    assert np.mean(sizes) < 224 * 224 * 3 / 4


def test_decode_refuses_other_sizes_and_damaged_bytes():
    img = photos(1, 32)[0]
    data = encode_jpeg(img, 95)
    with pytest.raises(ValueError, match="too small"):
        decode_jpeg(data, np.empty((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="decodes to 32x32 pixels, expected 48x48"):
        decode_jpeg(data, np.empty((48, 48, 3), np.uint8))
    with pytest.raises(ValueError):
        decode_jpeg(data[: len(data) // 2], np.empty((32, 32, 3), np.uint8))
    with pytest.raises(ValueError):
        decode_jpeg(b"not a jpeg at all", np.empty((32, 32, 3), np.uint8))
