"""CacheLoader: every mode delivers the sampler's batches in order, resumes, and shuts down cleanly."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
import torch
from test_reader import write_cache

from vlpipe.cache import CacheDataset, CacheLoader, CacheSampler
from vlpipe.cache.loader import MODES
from vlpipe.errors import VlpipeError

torch.set_num_threads(1)


@pytest.fixture
def cache(tmp_path):
    ref = write_cache(tmp_path, shard_sizes=(9, 13, 6, 12))
    return CacheDataset(tmp_path, split=None), ref


def _gather_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("vlpipe-gather")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("mapped", [True, False])
def test_delivers_sampler_batches_in_order(cache, mode, shuffle, mapped):
    ds, ref = cache
    if not mapped:  # as a cache too big to stay mapped is read: pread per row
        ds = CacheDataset(ds.cache_dir, split=None, resident_limit=1)
    sampler = CacheSampler(len(ds), shuffle=shuffle, seed=4)
    expected = sampler.batches(5, drop_last=False)
    loader = CacheLoader(ds, batch_size=5, sampler=sampler, mode=mode, workers=2, drop_last=False)
    assert len(loader) == len(expected) == 8
    seen = 0
    for batch, indices in zip(loader, expected, strict=True):
        assert batch["index"].tolist() == indices.tolist()
        assert np.array_equal(batch["images"].numpy(), ref["images"][indices])
        assert np.array_equal(batch["input_ids"].numpy(), ref["tokens"][indices].astype(np.int64))
        assert np.array_equal(batch["lengths"].numpy(), ref["lengths"][indices].astype(np.int64))
        seen += 1
        assert sampler.position == sum(len(b) for b in expected[:seen])  # advanced on delivery
    assert seen == len(expected)
    loader.close()
    assert not _gather_threads()


@pytest.mark.parametrize("mode", MODES)
def test_previous_batch_stays_valid_and_drop_last(cache, mode):
    ds, ref = cache
    loader = CacheLoader(ds, batch_size=8, sampler=CacheSampler(len(ds), seed=1), mode=mode, workers=2)
    assert len(loader) == 5
    previous = None
    for batch in loader:
        if previous is not None:
            # The ownership rule: the previous batch is intact while the current one is in use.
            assert np.array_equal(previous[0]["images"].numpy(), ref["images"][previous[1]])
        previous = (batch, batch["index"].numpy().copy())
        assert len(batch["index"]) == 8


@pytest.mark.parametrize("mode", MODES)
def test_break_then_resume_from_state_dict(cache, mode):
    ds, _ref = cache
    sampler = CacheSampler(len(ds), seed=9)
    sampler.set_epoch(3)
    full = [b.tolist() for b in sampler.batches(4, drop_last=True)]
    loader = CacheLoader(ds, batch_size=4, sampler=sampler, mode=mode, workers=2)
    got = []
    for batch in loader:
        got.append(batch["index"].tolist())
        if len(got) == 3:
            state = loader.state_dict()
            break
    loader.close()
    assert not _gather_threads()
    resumed = CacheLoader(ds, batch_size=4, sampler=CacheSampler(len(ds), seed=9), mode=mode, workers=2)
    resumed.load_state_dict(state)
    rest = [b["index"].tolist() for b in resumed]
    assert got + rest == full


@pytest.mark.parametrize("mode", MODES)
def test_epochs_reuse_the_ring_and_keep_the_held_batch_valid(cache, mode):
    ds, ref = cache
    sampler = CacheSampler(len(ds), seed=2)
    loader = CacheLoader(ds, batch_size=8, sampler=sampler, mode=mode, workers=2)
    previous = None
    rings, threads = [], []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in loader:
            # The ownership rule holds across the epoch boundary too.
            if previous is not None:
                assert np.array_equal(previous[0]["images"].numpy(), ref["images"][previous[1]])
            assert np.array_equal(batch["images"].numpy(), ref["images"][batch["index"].numpy()])
            previous = (batch, batch["index"].numpy().copy())
        rings.append([slot["images"].data_ptr() for slot in loader._ring])
        threads.append(sorted(t.ident for t in _gather_threads()))
    assert rings[0] == rings[1] == rings[2]  # no new buffers per epoch
    if mode == "threads":
        assert len(threads[0]) == 2 and threads[0] == threads[1] == threads[2]  # no new threads per epoch
    loader.close()
    assert not _gather_threads()


@pytest.mark.parametrize("mode", MODES)
def test_break_mid_epoch_then_next_epoch_is_intact(cache, mode):
    ds, ref = cache
    sampler = CacheSampler(len(ds), seed=5)
    with CacheLoader(ds, batch_size=4, sampler=sampler, mode=mode, workers=2, prefetch=3) as loader:
        for i, _batch in enumerate(loader):
            if i == 1:
                break  # batches 2..4 were already being gathered
        sampler.set_epoch(1)
        expected = sampler.batches(4, drop_last=True)
        for batch, indices in zip(loader, expected, strict=True):
            assert batch["index"].tolist() == indices.tolist()
            assert np.array_equal(batch["images"].numpy(), ref["images"][indices])
    assert not _gather_threads()


@pytest.mark.parametrize("batch_size", [1, 7, 12, 40])
def test_threads_chunks_cover_uneven_and_last_partial_batches(cache, batch_size):
    """Batches that are no multiple of CHUNK_ROWS, and a short last batch, arrive whole."""
    ds, ref = cache
    sampler = CacheSampler(len(ds), seed=6)
    expected = sampler.batches(batch_size, drop_last=False)
    with CacheLoader(ds, batch_size=batch_size, sampler=sampler, mode="threads", workers=1,
                     drop_last=False) as loader:
        got = [(batch["index"].tolist(), batch["images"].numpy().copy()) for batch in loader]
    assert [index for index, _ in got] == [b.tolist() for b in expected]
    for index, images in got:
        assert np.array_equal(images, ref["images"][index])


def test_waiting_consumer_gathers_chunks_itself(cache, monkeypatch):
    """threads mode: while the crew is busy, the consuming thread copies the batch's other chunks."""
    ds, ref = cache
    original = ds.fill_rows
    copied_by: list[str] = []

    def slow_crew(plan, batch, lo, hi):
        name = threading.current_thread().name
        copied_by.append(name)
        if name.startswith("vlpipe-gather"):
            time.sleep(0.05)  # a crew slower than the consumer: it must not sit and wait
        return original(plan, batch, lo, hi)

    monkeypatch.setattr(ds, "fill_rows", slow_crew)
    monkeypatch.setattr("vlpipe.cache.loader.CHUNK_ROWS", 2)
    with CacheLoader(ds, batch_size=8, sampler=CacheSampler(len(ds), seed=3), mode="threads", workers=1) as loader:
        for batch in loader:
            assert np.array_equal(batch["images"].numpy(), ref["images"][batch["index"].numpy()])
            time.sleep(0.01)  # a training step: the crew gets the GIL and takes a queued chunk
    assert len(copied_by) == 5 * 4  # 5 batches of 4 chunks, each copied once
    assert copied_by.count(threading.main_thread().name) > len(copied_by) // 2
    assert any(name.startswith("vlpipe-gather") for name in copied_by)


def test_dropped_loader_stops_its_threads(cache):
    ds, _ref = cache
    loader = CacheLoader(ds, batch_size=4, mode="threads", workers=2)
    batches = iter(loader)
    next(batches)
    assert len(_gather_threads()) == 2
    del loader, batches
    gc.collect()
    assert not _gather_threads()


@pytest.mark.parametrize("mode", MODES)
def test_gather_error_propagates_with_its_message(cache, mode, monkeypatch):
    ds, _ref = cache
    loader = CacheLoader(ds, batch_size=4, sampler=CacheSampler(len(ds), seed=0), mode=mode, workers=2)
    original = ds.gather

    def failing(indices, *args, **kwargs):  # inline mode gathers whole batches
        if 5 in np.asarray(indices).tolist():
            raise ValueError("boom at sample 5")
        return original(indices, *args, **kwargs)

    monkeypatch.setattr(ds, "gather", failing)
    original_fill = ds.fill_rows

    def failing_fill(plan, batch, lo, hi):  # threads mode copies image rows chunk by chunk
        if 5 in plan.glob[plan.order[lo:hi]].tolist():
            raise ValueError("boom at sample 5")
        return original_fill(plan, batch, lo, hi)

    monkeypatch.setattr(ds, "fill_rows", failing_fill)
    with pytest.raises(ValueError, match="boom at sample 5"):
        for _ in loader:
            pass
    assert not _gather_threads()


def test_pin_memory_without_cuda_is_ignored(cache):
    ds, _ref = cache
    if torch.cuda.is_available():
        pytest.skip("CUDA present: pinning is real here")
    with pytest.warns(UserWarning, match="pin_memory"):
        loader = CacheLoader(ds, batch_size=4, pin_memory=True)
    assert not loader.pin_memory and len(list(loader)) == 10


def test_bad_arguments_are_refused(cache):
    ds, _ref = cache
    with pytest.raises(VlpipeError, match=r"unknown loader mode 'processes'; choose one of threads, inline"):
        CacheLoader(ds, mode="processes")
    with pytest.raises(VlpipeError, match=r"mode 'threads' needs workers >= 1, got 0"):
        CacheLoader(ds, mode="threads", workers=0)
    with pytest.raises(VlpipeError, match=r"batch_size must be >= 1, got 0"):
        CacheLoader(ds, batch_size=0, mode="inline", workers=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for page-locked memory")
@pytest.mark.parametrize("mode", MODES)
def test_pin_memory_batches_are_pinned_and_reach_the_gpu(cache, mode):
    ds, ref = cache
    sampler = CacheSampler(len(ds), shuffle=False)  # contiguous runs: pinning must still copy
    loader = CacheLoader(ds, batch_size=6, sampler=sampler, mode=mode, workers=2, pin_memory=True)
    for batch in loader:
        assert all(t.is_pinned() for t in batch.values())
        on_gpu = {k: v.to("cuda", non_blocking=True) for k, v in batch.items()}
        torch.cuda.synchronize()
        indices = on_gpu["index"].cpu().numpy()
        assert np.array_equal(on_gpu["images"].cpu().numpy(), ref["images"][indices])


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory):
    import cachegen

    return cachegen.jpeg_cache(tmp_path_factory.mktemp("jpeg"))


def _rows_of(batch: dict[str, torch.Tensor]) -> list[bytes]:
    bounds, data = batch["jpeg_offsets"].tolist(), batch["jpeg"].numpy()
    return [data[a:b].tobytes() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("decode", ["cpu", "device"])
@pytest.mark.parametrize("mapped", [True, False])
def test_jpeg_rows_of_different_sizes_keep_the_ownership_rule(jpeg, mode, decode, mapped):
    """A JPEG cache's batches, decoded by the threads or handed over compressed, arrive in sampler
    order, and the held batch stays intact while the next ones are gathered, across epochs."""
    root, patches, encoded = jpeg
    ds = CacheDataset(root, split=None, resident_limit=0 if mapped else 1)
    sampler = CacheSampler(len(ds), seed=7)
    loader = CacheLoader(ds, batch_size=6, sampler=sampler, mode=mode, workers=2, decode=decode)
    assert loader.encoded == (decode == "device")
    previous = None
    for epoch in range(2):
        sampler.set_epoch(epoch)
        expected = sampler.batches(6, drop_last=True)
        for batch, indices in zip(loader, expected, strict=True):
            assert batch["index"].tolist() == indices.tolist()
            if decode == "device":
                assert "images" not in batch and _rows_of(batch) == [encoded[i] for i in indices]
            else:
                assert np.array_equal(batch["images"].numpy(), patches[indices])
            if previous is not None:  # the ownership rule, with rows of other sizes in every slot
                held, held_indices = previous
                if decode == "device":
                    assert _rows_of(held) == [encoded[i] for i in held_indices]
                else:
                    assert np.array_equal(held["images"].numpy(), patches[held_indices])
            previous = (batch, indices.copy())
    loader.close()
    assert not _gather_threads()


@pytest.mark.parametrize("mode", MODES)
def test_bad_jpeg_row_stops_the_loader_with_a_line_naming_it(jpeg, tmp_path, mode):
    import shutil

    root, _, _ = jpeg
    shutil.copytree(root, tmp_path / "cache")
    offsets = np.load(tmp_path / "cache/shards/00000/jpeg_offsets.npy")
    data = np.load(tmp_path / "cache/shards/00000/jpeg.npy", mmap_mode="r+")
    data[offsets[5] : offsets[6]] = 7  # the whole row overwritten
    data.flush()
    ds = CacheDataset(tmp_path / "cache", split=None)
    with pytest.raises(VlpipeError, match=r"shards/00000/jpeg.npy: row 5 is not a decodable 32x32 JPEG"):
        for _ in CacheLoader(ds, batch_size=4, sampler=CacheSampler(len(ds), seed=0), mode=mode, workers=2):
            pass
    assert not _gather_threads()


def test_decode_setting_is_checked_and_auto_follows_the_device(cache):
    from vlpipe.cache.loader import decode_where

    ds, _ref = cache
    with pytest.raises(VlpipeError, match=r"unknown decode 'gpu'; choose one of cpu, device"):
        CacheLoader(ds, decode="gpu")
    assert not CacheLoader(ds, decode="device").encoded  # a raw cache has nothing to decode
    assert decode_where("auto", torch.device("cuda")) == "device"
    assert decode_where("auto", torch.device("cpu")) == "cpu"
    assert decode_where("cpu", torch.device("cuda")) == "cpu"
