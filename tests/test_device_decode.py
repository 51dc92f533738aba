"""The device decode path: compressed batches decoded by one batched torchvision call give the very
batches the loader's threads decode, and a bad row is named. The CPU runs the same code path as
CUDA (torchvision's decode_jpeg on device="cpu"); the nvJPEG check itself needs a GPU."""

from __future__ import annotations

import shutil

import cachegen
import numpy as np
import pytest
import torch

from vlpipe.cache import CacheDataset, CacheLoader, CacheSampler
from vlpipe.cache.device_decode import decode_batch
from vlpipe.errors import VlpipeError

torch.set_num_threads(1)
KEYS = ("images", "input_ids", "lengths", "index")


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory):
    return cachegen.jpeg_cache(tmp_path_factory.mktemp("jpeg"))


def _batches(ds: CacheDataset, decode: str, device: str, pin: bool = False) -> list[dict[str, torch.Tensor]]:
    loader = CacheLoader(ds, batch_size=8, sampler=CacheSampler(len(ds), seed=3), workers=1, decode=decode,
                         pin_memory=pin)
    with loader:
        return [{k: v.cpu().clone() for k, v in loader.to_device(b, KEYS, torch.device(device)).items()}
                for b in loader]


def test_batched_torchvision_decode_equals_the_loader_threads(jpeg):
    root, patches, _ = jpeg
    ds = CacheDataset(root, split=None)
    on_device = _batches(ds, "device", "cpu")
    by_threads = _batches(ds, "cpu", "cpu")
    assert len(on_device) == len(by_threads) == 3
    for a, b in zip(on_device, by_threads, strict=True):
        assert a.keys() == b.keys() == set(KEYS)
        assert a["images"].dtype == torch.uint8 and a["images"].shape == (8, 16, 192)
        # 4:4:4 with the accurate integer IDCT: libjpeg-turbo in torchvision and in simplejpeg agree exactly
        assert torch.equal(a["images"], b["images"])
        assert np.array_equal(a["images"].numpy(), patches[a["index"].numpy()])
        for key in ("input_ids", "lengths", "index"):
            assert torch.equal(a[key], b[key])


def test_a_row_torchvision_refuses_is_named_by_shard_and_row(jpeg, tmp_path):
    root, _, _ = jpeg
    shutil.copytree(root, tmp_path / "cache")
    offsets = np.load(tmp_path / "cache/shards/00002/jpeg_offsets.npy")
    data = np.load(tmp_path / "cache/shards/00002/jpeg.npy", mmap_mode="r+")
    data[offsets[1] : offsets[1] + 2] = 0  # no start-of-image marker: torchvision raises too
    data.flush()
    ds = CacheDataset(tmp_path / "cache", split=None)
    glob = ds.manifest.shard_offsets()[2] + 1
    batch = ds.gather([0, glob, 3], out=ds.new_batch(3, encoded=True))
    with pytest.raises(VlpipeError, match=r"shards/00002/jpeg.npy: row 1 is not a decodable 32x32 JPEG"):
        decode_batch(ds, batch, "cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG decode needs a CUDA GPU")
def test_nvjpeg_decode_matches_the_cpu_path(jpeg):
    root, _, _ = jpeg
    ds = CacheDataset(root, split=None)
    on_gpu = _batches(ds, "device", "cuda", pin=True)
    by_threads = _batches(ds, "cpu", "cpu")
    for a, b in zip(on_gpu, by_threads, strict=True):
        assert torch.equal(a["index"], b["index"])
        # nvJPEG's IDCT and colour conversion may round differently from libjpeg-turbo's
        assert (a["images"].int() - b["images"].int()).abs().max() <= 2
