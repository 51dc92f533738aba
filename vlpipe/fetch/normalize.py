"""Check and normalize every downloaded image as it arrives, in img2dataset's download processes.

`Normalizer` takes the place of img2dataset's resizer, so it runs on each image as it arrives,
overlapped with the downloads of the other threads, exactly where img2dataset would decode.
It decodes with `vlpipe.imaging.load_rgb` (EXIF, 16-bit, CMYK, alpha ... done right), checks
size/aspect/area and returns an upright RGB JPEG whose shorter side is at most `shorter_side`;
a rejected image becomes img2dataset's "failed_to_resize" with a `vlpipe:<reason>` message,
which `publish.py` turns into the sample's drop record.
"""

from __future__ import annotations

import io
from typing import Any

from vlpipe.fetch.config import VerifyConfig
from vlpipe.fetch.safety import REASON_PREFIX
from vlpipe.imaging import ImageError, check_geometry, load_rgb, resize_shorter


def normalize(data: bytes, cfg: VerifyConfig) -> tuple[bytes, dict[str, int]]:
    """Decode, check and re-encode one image; raises ImageError with the drop reason."""
    img = load_rgb(data, max_pixels=cfg.max_pixels, draft_size=cfg.shorter_side or None)
    width, height = img.info["original_size"]
    reason = check_geometry(
        width, height, min_side=cfg.min_side, max_aspect=cfg.max_aspect, max_pixels=cfg.max_pixels
    )
    if reason:
        raise ImageError(reason, f"{width}x{height}")
    if cfg.shorter_side and min(img.size) > cfg.shorter_side:
        img = resize_shorter(img, cfg.shorter_side)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=cfg.jpeg_quality)
    sizes = {"width": img.size[0], "height": img.size[1], "original_width": width, "original_height": height}
    return buffer.getvalue(), sizes


class Normalizer:
    """A drop-in for img2dataset's `Resizer`: same call, same 6-tuple result, never raises.

    It must not raise: img2dataset skips a sample whose resizer raised without writing any
    record of it, which would be a silent drop.
    """

    def __init__(self, cfg: VerifyConfig) -> None:
        self.cfg = cfg

    def __call__(self, img_stream: io.BytesIO, blurring_bbox_list: Any = None) -> tuple[Any, ...]:
        try:
            data, sizes = normalize(img_stream.read(), self.cfg)
        except ImageError as exc:
            return None, None, None, None, None, f"{REASON_PREFIX}{exc.reason} {exc.detail}"
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the image
            return None, None, None, None, None, f"{REASON_PREFIX}undecodable {type(exc).__name__}: {exc}"
        return data, sizes["width"], sizes["height"], sizes["original_width"], sizes["original_height"], None
