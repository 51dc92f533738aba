"""Per-image checks and normalization: exact kept set, sizes, colours, orientation, drop reasons."""

from __future__ import annotations

import io

import numpy as np
from imageserver import CASES, ImageServer, assert_kept_image
from PIL import Image

from vlpipe.fetch.normalize import Normalizer, VerifyConfig, normalize
from vlpipe.fetch.publish import map_error
from vlpipe.imaging import load_rgb

CONFIG = VerifyConfig(max_pixels=4_000_000)


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


def test_shorter_side_is_configurable() -> None:
    small = Normalizer(VerifyConfig(max_pixels=4_000_000, shorter_side=100))
    with ImageServer() as server:
        data, width, height, original_width, original_height, _ = small(io.BytesIO(server.body("big")))
    assert (width, height, original_width, original_height) == (133, 100, 1024, 768)
    assert Image.open(io.BytesIO(data)).size == (133, 100)


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
    decoded = load_rgb(data, draft_size=CONFIG.shorter_side)
    assert decoded.size[0] < 1200 and min(decoded.size) >= CONFIG.shorter_side
    assert decoded.info["original_size"] == (1200, 800)
    drafted, sizes = normalize(data, CONFIG)
    full, full_sizes = normalize(data, VerifyConfig(max_pixels=4_000_000, shorter_side=0))
    assert sizes == {"width": 384, "height": 256, "original_width": 1200, "original_height": 800}
    assert full_sizes["width"] == 1200
    out = np.asarray(Image.open(io.BytesIO(drafted)))
    reference = np.asarray(Image.open(io.BytesIO(full)).resize((384, 256), Image.Resampling.BICUBIC))
    assert np.abs(out.astype(int) - reference.astype(int)).mean() < 3
    assert out[128, 20, 0] > 180 and out[128, 360, 2] > 180  # red left, blue right: upright
