"""How a cache stores its images: raw patch rows, or one JPEG per image (docs/cache-format.md, codecs).

A raw cache is the fastest to read but holds 150,528 bytes per 224-px sample; a JPEG cache holds
the same pixels (decoded, upright, resized, center-cropped: exactly what a raw cache stores) as
one JPEG each, about 1/5 of the bytes at the default quality, so a cache several times larger
fits the page cache. Per shard the JPEGs are one flat uint8 array (`jpeg.npy`) and the row
boundaries one int64 array of n + 1 offsets (`jpeg_offsets.npy`).

The codec library is simplejpeg (libjpeg-turbo), chosen by measurement on 224-px crops of
photographs (benchmarks/bench_jpeg_codecs.py, benchmarks/RESULTS.md). Encoding: the fastest of the
three measured (3.7k images/s on one core at q90 4:4:4, OpenCV 3.6k, Pillow 2.8k; Pillow and OpenCV
write the same libjpeg-turbo bytes, simplejpeg within 0.2% of their size), and deterministic, so a
rebuild is byte-identical. Decoding: simplejpeg, Pillow, OpenCV and torchvision all release the GIL
and, at 4:4:4, decode within noise of each other on the 2-core machine (~2.1k images/s per thread,
patchify included); simplejpeg is kept because it decodes into a buffer the thread reuses, refuses
damaged data instead of warning and returning garbage (torchvision's CPU decoder does), and is the
fastest at 4:2:0. Chroma stays at full resolution (4:4:4): 4:2:0 saves ~20% of the bytes but measured
~0.55 grey levels worse, and over the 2.0 bound at quality 95 (2.24).

Writers append images through an `ImageSink`; the file is streamed (memory stays flat) and its
.npy header rewritten at the end, byte for byte what `np.save` writes. Nothing here imports
torch: build workers use it.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg

from vlpipe.cache.format import IMAGE_FILES
from vlpipe.errors import VlpipeError, one_line
from vlpipe.imaging import patchify
from vlpipe.utils.atomic import atomic_path

JPEG_SUBSAMPLING = "4:4:4"


def encoder_name() -> str:
    """The library that wrote a JPEG cache's bytes (another version may write other bytes)."""
    return f"simplejpeg {simplejpeg.__version__}"


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes, baseline, 4:4:4, accurate integer DCT."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(pixels), quality=quality, colorspace="RGB",
                                  colorsubsampling=JPEG_SUBSAMPLING.replace(":", ""))


def decode_jpeg(data: Any, out: np.ndarray) -> None:
    """Decode JPEG bytes (any buffer) into `out` (H, W, 3) uint8, which must be the image's size.

    Raises ValueError for anything that is not a JPEG of exactly that size, including data
    libjpeg would only warn about (strict): those are damaged, whatever pixels they give.
    """
    got = simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out, strict=True)
    if got.shape != out.shape:
        raise ValueError(f"decodes to {got.shape[1]}x{got.shape[0]} pixels, expected {out.shape[1]}x{out.shape[0]}")


def bad_row(path: Path, row: int, size: int, exc: BaseException) -> VlpipeError:
    """The one-line error for a cache row whose bytes are not a JPEG of the cache's image size."""
    return VlpipeError(f"{path}: row {row} is not a decodable {size}x{size} JPEG ({one_line(exc)}); "
                       "run `vlpipe cache verify` and rebuild the cache")


# ---- writing ---------------------------------------------------------------------------------------


def write_npy_header(fh: io.BufferedIOBase, shape: tuple[int, ...], descr: str = "|u1") -> int:
    """Write a version-1.0 .npy header for a C-order array; returns its length in bytes.

    numpy pads headers so the first axis can grow without the header changing length: writing a
    placeholder first and the real shape last gives exactly what `np.save` writes.
    """
    start = fh.tell()
    np.lib.format.write_array_header_1_0(fh, {"descr": descr, "fortran_order": False, "shape": shape})
    return fh.tell() - start


def save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


class ImageSink:
    """Appends a shard's images to its file(s) as they are made; leaving the `with` block finishes them.

    On an exception the temporary files are removed and nothing appears under the final names.
    """

    def __init__(self, folder: Path, codec: str, image_size: int, patch_size: int, quality: int) -> None:
        self.codec, self.patch_size, self.quality = codec, patch_size, quality
        grid = image_size // patch_size
        # The trailing axes are in the placeholder header too: only the first may change length.
        self._shape_tail = (grid * grid, patch_size * patch_size * 3) if codec == "raw" else ()
        self.count = 0
        self._folder = folder
        self._path = folder / IMAGE_FILES[codec]["images" if codec == "raw" else "jpeg"]
        self._offsets = [0]
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ImageSink:
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_path(self._path))
            self._fh = stack.enter_context(open(tmp, "wb"))
            self._header_len = write_npy_header(self._fh, (0, *self._shape_tail))
            self._stack = stack.pop_all()
        return self

    def add(self, pixels: np.ndarray) -> None:
        """Store one (image_size, image_size, 3) uint8 image."""
        if self.codec == "raw":
            self._fh.write(np.ascontiguousarray(patchify(pixels, self.patch_size)).data)
        else:
            data = encode_jpeg(pixels, self.quality)
            self._fh.write(data)
            self._offsets.append(self._offsets[-1] + len(data))
        self.count += 1

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None:
            self._stack.__exit__(*exc)  # closes and removes the temporary file
            return
        with self._stack:  # closes the file, then renames it into place
            self._fh.seek(0)
            shape = (self.count, *self._shape_tail) if self.codec == "raw" else (self._offsets[-1],)
            if write_npy_header(self._fh, shape) != self._header_len:
                raise RuntimeError(f"numpy .npy header changed length; cannot finalize {self._path.name} in place")
        if self.codec == "jpeg":
            save_npy(self._folder / IMAGE_FILES["jpeg"]["jpeg_offsets"], np.asarray(self._offsets, dtype=np.int64))
