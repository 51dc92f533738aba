"""Decode any image a web crawl returns into correct, upright 8-bit RGB; resize; patchify.

Used by both `vlpipe fetch` (to verify and normalize what img2dataset downloaded) and
`vlpipe build-cache` (to decode once into patches), so both agree on what "correct" means.

Why not just `Image.open(...).convert("RGB")`: measured on img2dataset output, that path
- ignores EXIF orientation (phone photos come out sideways),
- clips 16-bit images (`I;16`/`I` modes) to solid white,
- drops transparency onto black (palette/LA/RGBA logos become black blobs),
- and converts CMYK without the embedded ICC profile (colours shift).
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageOps

# OpenAI CLIP's pixel statistics: what a cache records for the model to normalize with (its default),
# and what most pretrained ViTs expect (docs/cache-format.md).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000: beyond this a "photo" is a decompression bomb or a scan
_SRGB_PROFILE = ImageCms.createProfile("sRGB")


class ImageError(Exception):
    """An image that cannot be turned into correct RGB; `reason` is a short stable code for reports."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def load_rgb(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode image bytes into an upright 8-bit RGB image.

    `max_pixels` is checked from the header, before any pixel is decoded, so a decompression
    bomb costs nothing. `draft_size` lets JPEG decoding use DCT scaling (libjpeg decodes at 1/2,
    1/4, 1/8 size for a fraction of the cost) while keeping both sides >= draft_size; callers that
    will resize to `draft_size` anyway lose nothing by it.

    The original size (after EXIF rotation, before any draft scaling) is stored in
    `img.info["original_size"]` because drafting changes `img.size`.
    """
    if not data:
        raise ImageError("empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than raises) between MAX_IMAGE_PIXELS and 2x that; we do our own check.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError("too_large", f"{width}x{height} exceeds {max_pixels} pixels")
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError("too_large", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as exc:
        reason = "truncated" if "truncated" in str(exc) else "undecodable"
        raise ImageError(reason, str(exc) or type(exc).__name__) from exc

    orientation = img.getexif().get(0x0112, 1)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    try:
        # In place: the usual upright image is then not copied (0.5 ms of a 640x480 photo).
        ImageOps.exif_transpose(img, in_place=True)
        rgb = _to_rgb(img)
    except (OSError, ValueError) as exc:
        raise ImageError("undecodable", f"mode {img.mode}: {exc}") from exc
    rgb.info["original_size"] = (width, height)
    return rgb


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without clipping or losing colour information."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16-bit (and 32-bit int) greyscale: Pillow's convert("L") clips at 255, so everything
        # brighter than 1/256 of full scale turns white. Rescale the full range instead.
        arr = np.asarray(img, dtype=np.float64)
        # Float images are either [0, 1] or [0, 255]; integer ones are 16-bit in practice (PNG).
        float_scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        scale = float_scale if mode == "F" else 255.0 / 65535.0
        grey = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "CMYK":
        profile = img.info.get("icc_profile")
        if profile:
            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
                return ImageCms.profileToProfile(img, src, _SRGB_PROFILE, outputMode="RGB")
            except (ImageCms.PyCMSError, OSError):
                pass  # a broken profile: fall back to Pillow's naive conversion below
        return img.convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode == "RGB":
            return img
    elif mode in ("1", "L", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    # Everything with alpha (LA, La, PA, RGBA, RGBa): composite on white, as a viewer would show it.
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Downscale an RGB or L image so the shorter side is `size`, keeping the aspect ratio.

    Area averaging (OpenCV's INTER_AREA, img2dataset's default downscaler): antialiased, and
    about half the CPU of Pillow's bicubic (1.8 vs 3.6 ms for 640x480 -> 341x256), which matters
    because fetch runs it on every downloaded image.
    """
    width, height = img.size
    scale = size / min(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if new_size == img.size:
        return img
    return Image.fromarray(cv2.resize(np.asarray(img), new_size, interpolation=cv2.INTER_AREA))


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side to `size`, center crop to `size` x `size`; returns (size, size, 3) uint8.

    The crop box is passed to `resize` so that only the central square is resampled: the same
    result as resize-then-crop up to sub-pixel rounding, for a fraction of the work on wide images.
    """
    width, height = img.size
    side = min(width, height)
    left = (width - side) / 2
    top = (height - side) / 2
    out = img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    return np.asarray(out, dtype=np.uint8)


def patchify(arr: np.ndarray, patch_size: int) -> np.ndarray:
    """(H, W, 3) -> (num_patches, patch*patch*3): row-major patches, each flattened (row, col, channel)."""
    height, width, channels = arr.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image {height}x{width} is not a multiple of patch size {patch_size}")
    rows, cols = height // patch_size, width // patch_size
    blocks = arr.reshape(rows, patch_size, cols, patch_size, channels).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(rows * cols, patch_size * patch_size * channels)


def unpatchify(patches: np.ndarray, patch_size: int) -> np.ndarray:
    """Inverse of `patchify` for a square grid: (num_patches, patch*patch*3) -> (H, W, 3)."""
    num_patches = patches.shape[0]
    grid = int(round(num_patches**0.5))
    if grid * grid != num_patches:
        raise ValueError(f"{num_patches} patches do not form a square grid")
    blocks = patches.reshape(grid, grid, patch_size, patch_size, 3).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(grid * patch_size, grid * patch_size, 3)


def check_geometry(width: int, height: int, *, min_side: int, max_aspect: float, max_pixels: int) -> str | None:
    """The drop reason for an image of this size, or None if it is acceptable.

    Tiny images get upscaled into blur and extreme strips get cropped to a sliver: both teach a
    model nothing about their caption, so fetch drops them instead of "fixing" them.
    """
    if min(width, height) < min_side:
        return "too_small"
    if max(width, height) / max(1, min(width, height)) > max_aspect:
        return "bad_aspect"
    if width * height > max_pixels:
        return "too_large"
    return None
