"""vlpipe.imaging: every image mode a crawl returns comes out as correct, upright 8-bit RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vlpipe.imaging import (
    ImageError,
    check_geometry,
    load_rgb,
    patchify,
    resize_center_crop,
    resize_shorter,
    unpatchify,
)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def left_red_right_blue(width: int = 40, height: int = 20) -> Image.Image:
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


def test_exif_orientation_is_applied():
    img = left_red_right_blue()  # wide: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored pixels are the sideways version
    data = encode(img.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    out = np.asarray(load_rgb(data))
    assert out.shape == (20, 40, 3)
    assert out[10, 5, 0] > 200 and out[10, 5, 2] < 60  # red on the left again
    assert out[10, 35, 2] > 200 and out[10, 35, 0] < 60
    assert load_rgb(data).info["original_size"] == (40, 20)


def test_16bit_greyscale_is_rescaled_not_white():
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(load_rgb(data))
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert out.mean() < 200  # naive convert("RGB") makes this almost entirely 255


def test_cmyk_jpeg_colours():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = np.asarray(load_rgb(encode(cmyk, "JPEG", quality=95)))
    r, g, b = out[8, 8].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_palette_transparency_composited_on_white():
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((0, 0), 1)
    data = encode(img, "PNG", transparency=0)
    out = np.asarray(load_rgb(data))
    assert tuple(out[4, 4]) == (255, 255, 255)  # transparent black -> white, not black
    assert tuple(out[0, 0]) == (0, 255, 0)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_composited_on_white(mode: str):
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0)).convert(mode)
    out = np.asarray(load_rgb(encode(img, "PNG")))
    assert (out == 255).all()


def test_greyscale_becomes_three_channels():
    out = np.asarray(load_rgb(encode(Image.new("L", (6, 5), 77), "JPEG")))
    assert out.shape == (5, 6, 3)
    assert abs(int(out[2, 2, 0]) - 77) <= 2 and (out[..., 0] == out[..., 1]).all()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"<html>not an image</html>", "undecodable"),
    ],
)
def test_bad_bytes_raise_image_error(data: bytes, reason: str):
    with pytest.raises(ImageError) as info:
        load_rgb(data)
    assert info.value.reason == reason


def test_truncated_jpeg():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageError) as info:
        load_rgb(data[: len(data) // 2])
    assert info.value.reason in ("truncated", "undecodable")


def test_decompression_bomb_rejected_from_header():
    data = encode(Image.new("L", (3000, 3000)), "PNG")  # compresses to a few kB
    with pytest.raises(ImageError) as info:
        load_rgb(data, max_pixels=1_000_000)
    assert info.value.reason == "too_large"


def test_draft_keeps_both_sides_at_least_requested():
    data = encode(Image.effect_noise((400, 300), 40).convert("RGB"), "JPEG")
    img = load_rgb(data, draft_size=64)
    assert min(img.size) >= 64 and img.size[0] < 400
    assert img.info["original_size"] == (400, 300)


def test_resize_center_crop_matches_resize_then_crop():
    img = left_red_right_blue(90, 30)
    out = resize_center_crop(img, 24)
    ref = np.asarray(resize_shorter(img, 24))[:, 24:48]  # 72x24, centre 24 columns
    assert out.shape == (24, 24, 3)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 8


def test_patchify_layout_and_round_trip():
    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    patches = patchify(arr, 8)
    assert patches.shape == (16, 192)
    # patch 5 is grid row 1, col 1; flattened (row, col, channel)
    np.testing.assert_array_equal(patches[5], arr[8:16, 8:16].reshape(-1))
    np.testing.assert_array_equal(unpatchify(patches, 8), arr)


def test_check_geometry():
    assert check_geometry(1, 1, min_side=32, max_aspect=4, max_pixels=10**6) == "too_small"
    assert check_geometry(1000, 10, min_side=8, max_aspect=4, max_pixels=10**6) == "bad_aspect"
    assert check_geometry(2000, 2000, min_side=8, max_aspect=4, max_pixels=10**6) == "too_large"
    assert check_geometry(300, 200, min_side=8, max_aspect=4, max_pixels=10**6) is None


def quadrants(width: int = 48, height: int = 32) -> np.ndarray:
    """Red top-left, green top-right, blue bottom-left, white bottom-right: any flip/turn shows."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[: height // 2, : width // 2] = (255, 0, 0)
    arr[: height // 2, width // 2 :] = (0, 255, 0)
    arr[height // 2 :, : width // 2] = (0, 0, 255)
    arr[height // 2 :, width // 2 :] = (255, 255, 255)
    return arr


# EXIF orientation -> how to store the upright picture so a viewer shows it upright.
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_every_exif_orientation_comes_out_upright(orientation: int):
    upright = quadrants()
    stored = Image.fromarray(upright)
    if STORED_AS[orientation] is not None:
        stored = stored.transpose(STORED_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    img = load_rgb(encode(stored, "JPEG", quality=95, exif=exif))
    assert img.info["original_size"] == (48, 32)
    assert np.abs(np.asarray(img).astype(int) - upright).mean() < 4


def test_resize_shorter_downscales_with_area_averaging():
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    img = coarse.resize((640, 480), Image.Resampling.BICUBIC)  # smooth, photo-like
    out = resize_shorter(img, 256)
    assert out.mode == "RGB" and out.size == (341, 256)
    bicubic = np.asarray(img.resize((341, 256), Image.Resampling.BICUBIC)).astype(int)
    assert np.abs(np.asarray(out).astype(int) - bicubic).mean() < 2  # same picture, another filter
    assert resize_shorter(out, 256) is out  # already at size: untouched
