"""A JPEG cache read through CacheDataset: decoded rows, compressed hand-over batches, file-order
preads, and damaged bytes or offsets refused in one line naming the shard file and row."""

from __future__ import annotations

import os
import shutil
import threading

import cachegen
import numpy as np
import pytest
import torch

from vlpipe.cache import CacheDataset
from vlpipe.errors import VlpipeError

torch.set_num_threads(1)
READ_PATHS = {"mapped": 0, "pread": 1}  # resident_limit: 0 = stays mapped, 1 = too big to stay mapped
INDICES = [17, 0, 29, 3, 11, 25, 12, 1, 9, 20]


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory):
    return cachegen.jpeg_cache(tmp_path_factory.mktemp("jpeg"))


@pytest.mark.parametrize("path", READ_PATHS)
def test_batches_are_the_decoded_rows(jpeg, path):
    root, patches, _ = jpeg
    ds = CacheDataset(root, split=None, resident_limit=READ_PATHS[path])
    assert ds.codec == "jpeg" and ds.resident == (path == "mapped")
    batch = ds.gather(INDICES)
    assert batch["images"].shape == (len(INDICES), 16, 192) and batch["images"].dtype == torch.uint8
    assert np.array_equal(batch["images"].numpy(), patches[INDICES])
    assert batch["index"].tolist() == INDICES
    run = ds.gather([4, 5, 6])  # consecutive rows too: decoded, never a view of compressed bytes
    assert np.array_equal(run["images"].numpy(), patches[4:7])
    assert np.array_equal(ds[7]["images"].numpy(), patches[7])


@pytest.mark.parametrize("path", READ_PATHS)
def test_threads_decode_disjoint_ranges_of_one_batch(jpeg, path):
    root, patches, _ = jpeg
    ds = CacheDataset(root, split=None, resident_limit=READ_PATHS[path])
    out = ds.new_batch(len(INDICES))
    plan = ds.plan(INDICES)
    ds.fill_small(plan, out)
    threads = [threading.Thread(target=ds.fill_rows, args=(plan, out, lo, min(lo + 3, len(INDICES))))
               for lo in range(0, len(INDICES), 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert np.array_equal(out["images"].numpy(), patches[INDICES])


@pytest.mark.parametrize("path", READ_PATHS)
def test_encoded_batch_holds_each_rows_bytes_in_sampler_order(jpeg, path):
    root, _, encoded = jpeg
    ds = CacheDataset(root, split=None, resident_limit=READ_PATHS[path])
    slot = ds.new_batch(12, encoded=True)
    assert "images" not in slot and slot["jpeg"].shape == (12 * max(len(e) for e in encoded),)
    batch = ds.gather(INDICES, out=slot)  # a short batch in a 12-row slot
    bounds = batch["jpeg_offsets"].tolist()
    assert len(bounds) == len(INDICES) + 1 and bounds[0] == 0
    data = batch["jpeg"].numpy()
    assert [data[a:b].tobytes() for a, b in zip(bounds[:-1], bounds[1:], strict=True)] == [encoded[i] for i in INDICES]
    with pytest.raises(VlpipeError, match="a raw cache has no compressed rows"):
        CacheDataset(cachegen.captioned_cache(root.parent / "raw", n=8, seed=0, val_fraction=0.0),
                     split=None).new_batch(4, encoded=True)


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_pread_reads_a_batch_in_file_order_and_delivers_sampler_order(jpeg, tmp_path, monkeypatch, codec):
    root, patches, _ = jpeg
    if codec == "raw":
        root = cachegen.captioned_cache(tmp_path, n=40, seed=1, val_fraction=0.0)
        patches = CacheDataset(root, split=None).gather(range(40))["images"].numpy().copy()
    ds = CacheDataset(root, split=None, resident_limit=1)
    reads: list[tuple[int, int]] = []
    real = os.preadv

    def recording(fd, buffers, offset):
        reads.append((fd, offset))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", recording)
    indices = [29, 2, 17, 5, 23, 11, 0, 14]
    batch = ds.gather(indices)
    assert np.array_equal(batch["images"].numpy(), patches[indices])
    assert len(reads) == len(indices)
    assert reads == sorted(reads, key=lambda r: (ds._image_fds.index(r[0]), r[1]))  # forward through each file


@pytest.mark.parametrize("path", READ_PATHS)
def test_bad_jpeg_bytes_are_a_one_line_error_naming_shard_and_row(jpeg, tmp_path, path):
    root, _, encoded = jpeg
    broken = tmp_path / "cache"
    shutil.copytree(root, broken)
    offsets = np.load(broken / "shards/00001/jpeg_offsets.npy")
    data = np.load(broken / "shards/00001/jpeg.npy", mmap_mode="r+")
    data[offsets[3] : offsets[3] + 2] = 0  # the row's start-of-image marker
    data.flush()
    ds = CacheDataset(broken, split=None, resident_limit=READ_PATHS[path])
    first = len(np.load(root / "shards/00000/jpeg_offsets.npy")) - 1
    with pytest.raises(VlpipeError) as info:
        ds.gather([0, first + 3])
    message = str(info.value)
    assert message.startswith(f"{broken / 'shards/00001/jpeg.npy'}: row 3 is not a decodable 32x32 JPEG (")
    assert "vlpipe cache verify" in message and "\n" not in message
    assert np.array_equal(ds.gather([first + 2])["index"].numpy(), [first + 2])  # other rows still read


def test_damaged_offsets_are_refused_when_the_cache_opens(jpeg, tmp_path):
    root, _, _ = jpeg
    for change, message in [
        (lambda o: o.__setitem__(4, o[3]), r"jpeg_offsets.npy: row 3 has no bytes"),
        (lambda o: o.__setitem__(-1, o[-1] + 1), r"jpeg_offsets.npy: offsets run from 0 to \d+, expected 0 to \d+"),
    ]:
        broken = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        shutil.copytree(root, broken)
        offsets = np.load(broken / "shards/00000/jpeg_offsets.npy")
        change(offsets)
        np.save(broken / "shards/00000/jpeg_offsets.npy", offsets)  # same size: only the values differ
        with pytest.raises(VlpipeError, match=message):
            CacheDataset(broken, split=None)
