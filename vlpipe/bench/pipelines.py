"""The loaders under test, each as a factory of fresh, endless batch iterators.

Three families, all delivering what a training step consumes:
- `vlpipe-<mode>`: vlpipe's CacheLoader over the memory-mapped cache (uint8 patches + token ids),
  exactly as the trainer receives them; the model normalizes on the device.
- `seed-baseline`: the seed project's map-style Dataset: per sample PIL open + convert("RGB"),
  shorter side to 256 bicubic, center crop 224, ToTensor + Normalize, tokenize and pad to max_len,
  through a torch DataLoader with the same number of workers.
- `webdataset`: the same per-sample work over img2dataset tar shards, the way people train on
  img2dataset output today (resampled shards, a small shuffle buffer).

Every iterator is endless so a timed window never runs dry. The baselines sample endlessly (no
epoch boundary, no worker restart: generous to them); vlpipe chains epochs through its public API,
so its per-epoch start-up (e.g. forking workers in `processes` mode) is inside the timing, as in
training.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import transforms

from vlpipe.bench.jpeg_files import JpegSource
from vlpipe.cache.format import Manifest

Batch = dict[str, torch.Tensor]
# Endless sampling for the map-style baseline: far more indices than any timed window consumes.
_ENDLESS = 1 << 40


@dataclass
class Pipeline:
    """One row of the benchmark: how to open it, and what it reads from disk per sample."""

    name: str
    description: str
    workers: int
    read_bytes_per_sample: float
    # Untimed batches after opening, so worker start-up and first faults stay out of a warm figure.
    warmup_batches: int
    open: Callable[[int], Iterator[Batch]]


class SeedTransform:
    """The seed project's per-sample work: torchvision preprocessing + padded tokenization.

    A class (not a closure) so DataLoader workers can receive it under any start method.
    """

    def __init__(self, image_size: int, mean: list[float], std: list[float], tokenizer_file: Path,
                 max_len: int, pad_id: int):
        # 256 -> 224 at the standard resolution; scaled the same way for other cache sizes.
        resize = image_size * 256 // 224
        self.image_transform = transforms.Compose([
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        pad_token = self.tokenizer.id_to_token(pad_id) or "[PAD]"
        self.tokenizer.enable_truncation(max_len)
        self.tokenizer.enable_padding(length=max_len, pad_id=pad_id, pad_token=pad_token)

    def __call__(self, image: Image.Image, caption: str) -> Batch:
        encoding = self.tokenizer.encode(caption)
        return {
            "images": self.image_transform(image.convert("RGB")),
            "input_ids": torch.tensor(encoding.ids, dtype=torch.int64),
            "attention_mask": torch.tensor(encoding.attention_mask, dtype=torch.int64),
        }

    @classmethod
    def for_cache(cls, manifest: Manifest, cache_dir: Path) -> SeedTransform:
        return cls(manifest.image.image_size, manifest.image.mean, manifest.image.std,
                   cache_dir / manifest.text.tokenizer_file, manifest.text.max_len, manifest.text.pad_id)


class SeedDataset(Dataset):
    """Map-style: one JPEG file opened and decoded per sample, as the seed code did."""

    def __init__(self, paths: list[Path], captions: list[str], transform: SeedTransform):
        self.paths, self.captions, self.transform = paths, captions, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Batch:
        with Image.open(self.paths[index]) as img:
            return self.transform(img, self.captions[index])


class WebdatasetSample:
    """Per-sample work on a webdataset dict (`jpg`/`txt` bytes): the same as the seed baseline."""

    def __init__(self, transform: SeedTransform):
        self.transform = transform

    def __call__(self, sample: dict) -> Batch:
        with Image.open(io.BytesIO(sample["jpg"])) as img:
            return self.transform(img, sample["txt"].decode("utf-8"))


def _drain(loader: Iterable[Batch]) -> Iterator[Batch]:
    # Holding the iterator here means closing this generator drops it, which shuts its workers down.
    batches = iter(loader)
    try:
        yield from batches
    finally:
        del batches


def seed_pipeline(source: JpegSource, transform: SeedTransform, batch_size: int, workers: int) -> Pipeline:
    dataset = SeedDataset(source.jpeg_paths, source.captions, transform)

    def open_(seed: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(dataset, num_samples=_ENDLESS, generator=generator)
        return _drain(DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                 drop_last=True))

    return Pipeline("seed-baseline", "PIL open+RGB, resize 256 bicubic, crop, normalize, tokenize; "
                    "torch DataLoader", workers, source.jpeg_bytes_per_sample, 3, open_)


def webdataset_pipeline(source: JpegSource, transform: SeedTransform, batch_size: int, workers: int) -> Pipeline:
    import webdataset as wds

    urls = [str(p) for p in source.shard_paths]
    per_sample = WebdatasetSample(transform)

    def open_(seed: int) -> Iterator[Batch]:
        # resampled=True: every worker draws shards at random forever, webdataset's idiom for
        # training, which also works when there are fewer shards than workers.
        dataset = (wds.WebDataset(urls, resampled=True, shardshuffle=False, nodesplitter=None, seed=seed)
                   .shuffle(256).map(per_sample))
        return _drain(DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True))

    return Pipeline("webdataset", "tar shards -> PIL decode, same per-sample work; torch DataLoader",
                    workers, source.shard_bytes_per_sample, 3, open_)


def vlpipe_pipeline(cache_dir: Path, manifest: Manifest, mode: str, batch_size: int, workers: int) -> Pipeline:
    from vlpipe.cache import CacheDataset, CacheLoader, CacheSampler

    dataset = CacheDataset(cache_dir, split=None)
    text_bytes = np.dtype(manifest.text.dtype).itemsize * manifest.text.max_len + 2  # tokens + lengths rows
    row_bytes = manifest.image.num_patches * manifest.image.patch_dim + text_bytes
    # Equal cores: `threads` mode's consuming thread gathers too while it waits for a batch, so
    # workers - 1 background threads make as many gathering threads as the DataLoader has worker
    # processes (one more thread than cores measured ~12% slower on the 2-core machine).
    mode_workers = {"inline": 0, "threads": max(1, workers - 1), "processes": workers}[mode]
    helpers = " + the consuming thread" if mode == "threads" else ""

    def open_(seed: int) -> Iterator[Batch]:
        sampler = CacheSampler(len(dataset), shuffle=True, seed=seed)
        loader = CacheLoader(dataset, batch_size=batch_size, sampler=sampler, mode=mode,
                             workers=mode_workers, pin_memory=False, drop_last=True)
        return _epochs(loader, sampler)

    return Pipeline(f"vlpipe-{mode}", f"vlpipe CacheLoader mode={mode} ({mode_workers} worker(s){helpers}): "
                    "uint8 patches + token ids",
                    mode_workers, float(row_bytes), 10, open_)


def _epochs(loader: Any, sampler: Any) -> Iterator[Batch]:
    """Epoch after epoch of one CacheLoader, as the trainer runs it; closing stops its workers."""
    epoch = 0
    with contextlib.closing(loader):
        while True:
            sampler.set_epoch(epoch)
            delivered = 0
            with contextlib.closing(_drain(loader)) as batches:
                for batch in batches:
                    delivered += 1
                    yield batch
            if delivered == 0:
                raise RuntimeError("the vlpipe loader delivered an empty epoch; is batch_size > the cache size?")
            epoch += 1
