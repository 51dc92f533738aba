"""The loaders under test, each as a factory of fresh, endless batch iterators.

Four families, all delivering what a training step consumes:
- `vlpipe-<mode>` (raw cache) and `vlpipe-jpeg-<mode>` (JPEG cache, decoded by the loader's threads):
  vlpipe's CacheLoader (uint8 patches + token ids), exactly as the trainer receives them; the model
  normalizes on the device. `-cold` rows read the same cache with its files evicted from the page
  cache before every round, through pread as a cache larger than RAM is read, for one epoch at most
  (past it they would read pages they brought in themselves).
- `torchvision-uint8` (the baseline every ratio is taken against) and `torchvision-float`: a
  standard torchvision-style map-style Dataset over loose JPEG files: per sample PIL open +
  convert("RGB"), shorter side to 256 bicubic, center crop 224, caption tokenized with the cache's
  tokenizer and padded to max_len, through a torch DataLoader with the same number of workers. The
  uint8 row delivers what vlpipe delivers (uint8 pixels, normalized on the device): like for like.
  The float row adds ToTensor + Normalize on the CPU and delivers float32 (4x the bytes).
- `seed-recipe`: the seed project's own recipe, literally: JPEGs pre-resized to 224 px (q95),
  PIL open + convert("RGB"), ToTensor + Normalize, bert-base-uncased WordPiece padded to 197 tokens.
- `webdataset`: the uint8 row's per-sample work over img2dataset tar shards, the way people train on
  img2dataset output today (resampled shards, a small shuffle buffer).

Every iterator is endless so a timed window never runs dry. The baselines sample endlessly (no
epoch boundary, no worker restart: generous to them); vlpipe chains epochs through its public API,
so its per-epoch start-up (planning the epoch's batches, refilling the prefetch) is inside the
timing, as in training.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
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
# Endless sampling for the map-style baselines: far more indices than any timed window consumes.
_ENDLESS = 1 << 40
# The seed padded every caption to 197 tokens (the ViT-B/16 sequence: 196 patches + CLS).
SEED_MAX_LEN = 197


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
    # What the data occupy on disk per sample (every file of the cache or data set).
    stored_bytes_per_sample: float = 0.0
    # The files it reads: a cold row has them evicted before every round, a warm row re-read.
    files: list[Path] = field(default_factory=list)
    cold: bool = False
    # Batches after which a timed window ends early (a cold row's one epoch); None: `seconds` only.
    max_batches: int | None = None


class JpegTransform:
    """The decoding baselines' per-sample work: torchvision preprocessing + padded tokenization.

    `resize`: shorter side to image_size * 256/224 (256 at 224 px) bicubic, then center crop;
    without it the files are expected at image_size already (the seed's pre-resized JPEGs).
    `normalize`: ToTensor + Normalize to float32; without it the pixels stay uint8 (PILToTensor).
    A class (not a closure) so DataLoader workers can receive it under any start method.
    """

    def __init__(self, image_size: int, mean: list[float], std: list[float], tokenizer: Tokenizer,
                 max_len: int, pad_id: int, resize: bool = True, normalize: bool = False):
        steps: list[Any] = []
        if resize:
            steps += [transforms.Resize(image_size * 256 // 224, interpolation=transforms.InterpolationMode.BICUBIC),
                      transforms.CenterCrop(image_size)]
        steps += [transforms.ToTensor(), transforms.Normalize(mean, std)] if normalize else [transforms.PILToTensor()]
        self.image_transform = transforms.Compose(steps)
        # A private copy: padding and truncation are set on it, not on the caller's tokenizer.
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
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
    def for_cache(cls, manifest: Manifest, cache_dir: Path, normalize: bool) -> JpegTransform:
        """The torchvision-style rows: the cache's image size, mean/std, tokenizer and max_len."""
        tokenizer = Tokenizer.from_file(str(cache_dir / manifest.text.tokenizer_file))
        return cls(manifest.image.image_size, manifest.image.mean, manifest.image.std, tokenizer,
                   manifest.text.max_len, manifest.text.pad_id, resize=True, normalize=normalize)

    @classmethod
    def seed_recipe(cls, manifest: Manifest) -> JpegTransform:
        """The seed's recipe: pre-resized files, ToTensor + Normalize, bert-base-uncased padded to 197.

        Raises VlpipeError when the bert-uncased vocabulary (the `bert` extra) is not installed.
        """
        from vlpipe.text import load_tokenizer

        bert = load_tokenizer("bert-uncased")
        return cls(manifest.image.image_size, manifest.image.mean, manifest.image.std, bert.hf, SEED_MAX_LEN,
                   bert.pad_id, resize=False, normalize=True)


class JpegDataset(Dataset):
    """Map-style: one JPEG file opened and decoded per sample."""

    def __init__(self, paths: list[Path], captions: list[str], transform: JpegTransform):
        self.paths, self.captions, self.transform = paths, captions, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Batch:
        with Image.open(self.paths[index]) as img:
            return self.transform(img, self.captions[index])


class WebdatasetSample:
    """Per-sample work on a webdataset dict (`jpg`/`txt` bytes): the same as a file-based row."""

    def __init__(self, transform: JpegTransform):
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


def files_pipeline(name: str, description: str, paths: list[Path], captions: list[str], bytes_per_sample: float,
                   transform: JpegTransform, batch_size: int, workers: int) -> Pipeline:
    """A map-style Dataset over loose JPEG files through a torch DataLoader (the torchvision and seed rows)."""
    dataset = JpegDataset(paths, captions, transform)

    def open_(seed: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(dataset, num_samples=_ENDLESS, generator=generator)
        return _drain(DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                 drop_last=True))

    return Pipeline(name, description, workers, bytes_per_sample, 3, open_, stored_bytes_per_sample=bytes_per_sample)


def webdataset_pipeline(source: JpegSource, transform: JpegTransform, batch_size: int, workers: int) -> Pipeline:
    import webdataset as wds

    urls = [str(p) for p in source.shard_paths]
    per_sample = WebdatasetSample(transform)

    def open_(seed: int) -> Iterator[Batch]:
        # resampled=True: every worker draws shards at random forever, webdataset's idiom for
        # training, which also works when there are fewer shards than workers.
        dataset = (wds.WebDataset(urls, resampled=True, shardshuffle=False, nodesplitter=None, seed=seed)
                   .shuffle(256).map(per_sample))
        return _drain(DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True))

    return Pipeline("webdataset", "tar shards -> the torchvision-uint8 row's per-sample work; torch DataLoader",
                    workers, source.shard_bytes_per_sample, 3, open_, stored_bytes_per_sample=source.shard_bytes_per_sample)


def vlpipe_pipeline(cache_dir: Path, manifest: Manifest, mode: str, batch_size: int, workers: int,
                    cold: bool = False, keep_open: bool = True) -> Pipeline:
    """The CacheLoader row of one cache (raw or JPEG) and reader mode; `cold`: see the module docstring.

    `keep_open`: a warm row opens its dataset once and keeps it over all windows, as training keeps
    it over its epochs (after the first, nothing faults again). A run with cold rows needs warm rows
    to let go of their maps after each window instead, because pages a live map holds cannot be
    evicted; cold rows always do.
    """
    from vlpipe.cache import CacheDataset, CacheLoader, CacheSampler

    image, n = manifest.image, manifest.num_samples
    text_bytes = np.dtype(manifest.text.dtype).itemsize * manifest.text.max_len + 2  # tokens + lengths rows
    if image.codec == "jpeg":
        # One JPEG and its end offset per sample (the mean over the cache, .npy headers included).
        image_bytes = sum(s.files[k].bytes for s in manifest.shards for k in image.files) / n
    else:
        image_bytes = image.num_patches * image.patch_dim
    kinds = (*image.files, "tokens", "lengths")
    files = [shard.path(cache_dir, kind) for shard in manifest.shards for kind in kinds]
    stored = sum(entry.bytes for shard in manifest.shards for entry in shard.files.values()) / n
    # Equal cores: `threads` mode's consuming thread gathers too while it waits for a batch, so
    # workers - 1 background threads make as many gathering threads as the DataLoader has worker
    # processes (one more thread than cores measured ~12% slower on the 2-core machine).
    mode_workers = max(1, workers - 1) if mode == "threads" else 0
    helpers = " + the consuming thread" if mode == "threads" else ""
    # Cold rows read as a cache larger than RAM is read (pread, nothing kept mapped): the only case
    # in which a cache is read from disk in training.
    resident_limit = 1 if cold else None

    kept = CacheDataset(cache_dir, split=None) if keep_open and not cold else None

    def open_(seed: int) -> Iterator[Batch]:
        dataset = kept if kept is not None else CacheDataset(cache_dir, split=None, resident_limit=resident_limit)
        sampler = CacheSampler(len(dataset), shuffle=True, seed=seed)
        loader = CacheLoader(dataset, batch_size=batch_size, sampler=sampler, mode=mode,
                             workers=mode_workers, pin_memory=False, drop_last=True)
        return _epochs(loader, sampler, close_dataset=kept is None)

    codec = "" if image.codec == "raw" else "-jpeg"
    what = "uint8 patches + token ids" if image.codec == "raw" else "JPEG rows decoded to uint8 patches + token ids"
    description = f"vlpipe CacheLoader mode={mode} ({mode_workers} worker(s){helpers}): {what}"
    if cold:
        description += "; cold: files evicted before each round, pread, one epoch at most"
    return Pipeline(f"vlpipe{codec}-{mode}{'-cold' if cold else ''}", description, mode_workers,
                    image_bytes + text_bytes, 0 if cold else 10, open_, stored_bytes_per_sample=stored,
                    files=files, cold=cold, max_batches=n // batch_size if cold else None)


def _epochs(loader: Any, sampler: Any, close_dataset: bool) -> Iterator[Batch]:
    """Epoch after epoch of one CacheLoader, as the trainer runs it; closing stops its workers (and
    closes the dataset, with `close_dataset`; its maps go with the last reference to it)."""
    epoch = 0
    try:
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
    finally:
        if close_dataset:
            loader.dataset.close()


def baseline_pipelines(names: list[str], manifest: Manifest, cache_dir: Path, jpegs: JpegSource,
                       seed_transform: JpegTransform | None, batch_size: int, workers: int) -> list[Pipeline]:
    """The decoding baselines named in `names`, in that order.

    seed-recipe needs `seed_transform` (JpegTransform.seed_recipe) and the source's pre-resized files.
    """
    uint8 = JpegTransform.for_cache(manifest, cache_dir, normalize=False)
    size = manifest.image.image_size
    crop = f"resize {size * 256 // 224} bicubic + center crop {size}"
    files = (jpegs.jpeg_paths, jpegs.captions, jpegs.jpeg_bytes_per_sample)
    rows = []
    for name in names:
        if name == "torchvision-uint8":
            rows.append(files_pipeline(name, f"PIL open+RGB, {crop}, uint8 (PILToTensor), tokenize; torch DataLoader",
                                       *files, uint8, batch_size, workers))
        elif name == "torchvision-float":
            rows.append(files_pipeline(name, f"PIL open+RGB, {crop}, ToTensor+Normalize float32, tokenize; "
                                       "torch DataLoader", *files, JpegTransform.for_cache(manifest, cache_dir, True),
                                       batch_size, workers))
        elif name == "seed-recipe":
            if seed_transform is None or not jpegs.presized_paths:
                raise ValueError("seed-recipe needs JpegTransform.seed_recipe and the pre-resized JPEG files")
            rows.append(files_pipeline(name, f"{size} px JPEG q95 files, PIL open+RGB, ToTensor+Normalize float32, "
                                       f"bert-base-uncased WordPiece padded to {SEED_MAX_LEN}; torch DataLoader",
                                       jpegs.presized_paths, jpegs.captions, jpegs.presized_bytes_per_sample,
                                       seed_transform, batch_size, workers))
        elif name == "webdataset":
            rows.append(webdataset_pipeline(jpegs, uint8, batch_size, workers))
        else:
            raise ValueError(f"unknown baseline {name!r}")
    return rows
