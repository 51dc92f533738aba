"""Decode a compressed batch of a JPEG cache on the training device, with one batched torchvision call.

With `decode="device"` the loader hands a batch over as its JPEGs side by side in one (pinned)
uint8 array plus B + 1 offsets (vlpipe/cache/loader.py). `torchvision.io.decode_jpeg` takes the
batch as a list of views into that array: on CUDA it is nvJPEG's batched decoder (the host parses
the headers, the GPU does the entropy decode, IDCT and colour conversion, so the loader's CPU
cores only copy bytes); on the CPU the same call decodes row after row with libjpeg-turbo. The
decoded (B, 3, H, W) images are cut into the cache's patch layout on the same device, giving the
uint8 (B, num_patches, patch_dim) a raw cache's batch holds.

A row that does not decode is found again on the CPU (simplejpeg, row by row) so the error can
name its shard file and row, as the loader's threads do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from vlpipe.cache import codec

if TYPE_CHECKING:
    from vlpipe.cache.reader import CacheDataset


def decode_batch(dataset: CacheDataset, batch: dict[str, torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """The images of an encoded batch (`jpeg`, `jpeg_offsets`, `index`) as uint8 (B, P, D) on `device`."""
    bounds = batch["jpeg_offsets"].tolist()
    rows = [batch["jpeg"][start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    try:
        decoded = decode_jpeg(rows, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        raise _bad_row(dataset, batch, rows, exc) from None
    spec = dataset.manifest.image
    size, p, g = spec.image_size, spec.patch_size, spec.grid
    for i, image in enumerate(decoded):
        if tuple(image.shape) != (3, size, size):
            problem = ValueError(f"decodes to {tuple(image.shape)}, expected (3, {size}, {size})")
            raise dataset.bad_jpeg(int(batch["index"][i]), problem)
    images = torch.stack(decoded)
    # (B, 3, g*p, g*p) -> (B, g, g, p, p, 3): row-major patches, each flattened (row, col, channel).
    return images.view(len(rows), 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(len(rows), g * g, p * p * 3)


def _bad_row(dataset: CacheDataset, batch: dict[str, torch.Tensor], rows: list[torch.Tensor],
             exc: RuntimeError) -> Exception:
    """The error naming the first row the CPU decoder refuses too, else torchvision's own error."""
    size = dataset.manifest.image.image_size
    pixels = np.empty((size, size, 3), np.uint8)
    for i, row in enumerate(rows):
        try:
            codec.decode_jpeg(row.numpy(), pixels)
        except ValueError as bad:
            return dataset.bad_jpeg(int(batch["index"][i]), bad)
    return exc
