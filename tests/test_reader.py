"""CacheDataset on tiny caches written by hand from docs/cache-format.md (numpy + pyarrow only)."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from vlpipe.cache import CacheDataset
from vlpipe.cache.format import LabelSpec, label_counts
from vlpipe.errors import VlpipeError

torch.set_num_threads(1)

PATCHES, PATCH_DIM, MAX_LEN, PAD = 4, 12, 6, 0


def write_cache(root: Path, shard_sizes=(5, 7, 4), labels: bool = False, seed: int = 0,
                patch_dim: int = PATCH_DIM) -> dict[str, np.ndarray]:
    """Write a cache per the format doc; return the concatenated arrays and splits for checking."""
    rng = np.random.default_rng(seed)
    shards, everything, total = [], {"images": [], "tokens": [], "lengths": [], "split": [], "labels": []}, 0
    for k, n in enumerate(shard_sizes):
        name = f"{k:05d}"
        d = root / "shards" / name
        d.mkdir(parents=True)
        lengths = rng.integers(2, MAX_LEN + 1, size=n).astype(np.uint16)
        tokens = rng.integers(5, 100, size=(n, MAX_LEN)).astype(np.uint16)
        tokens[np.arange(MAX_LEN)[None, :] >= lengths[:, None]] = PAD
        arrays = {"images": rng.integers(0, 256, size=(n, PATCHES, patch_dim), dtype=np.uint8),
                  "tokens": tokens, "lengths": lengths}
        if labels:
            arrays["labels"] = rng.integers(0, 3, size=n).astype(np.int64)
        keys = [f"s{k}-{i}" for i in range(n)]
        split = ["val" if (total + i) % 4 == 1 else "train" for i in range(n)]
        files = {}
        for kind, arr in arrays.items():
            np.save(d / f"{kind}.npy", arr)
        pq.write_table(pa.table({
            "key": keys, "caption": [f"caption of {key}" for key in keys], "url": [None] * n,
            "width": pa.array([64] * n, pa.int32()), "height": pa.array([48] * n, pa.int32()),
            "sha256": ["0" * 64] * n, "split": split,
        }), d / "meta.parquet")
        for kind in (*arrays, "meta"):
            path = d / (f"{kind}.npy" if kind != "meta" else "meta.parquet")
            files[kind] = {"path": str(path.relative_to(root)), "bytes": path.stat().st_size,
                           "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        shards.append({"name": name, "num_samples": n, "source": f"{name}.tar", "files": files})
        for kind, arr in arrays.items():
            everything[kind].append(arr)
        everything["split"].append(np.array(split))
        total += n
    out = {k: np.concatenate(v) for k, v in everything.items() if v}
    manifest = {
        "format": "vlpipe-cache", "version": 1, "num_samples": total,
        "image": {"image_size": 4, "patch_size": 2, "grid": 2, "num_patches": PATCHES, "patch_dim": patch_dim,
                  "dtype": "uint8", "layout": "row-major patches; each patch flattened (patch_row, patch_col, channel)",
                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "text": {"tokenizer_file": "tokenizer.json", "tokenizer_sha256": "0" * 64, "tokenizer_spec": "wordpiece:100",
                 "vocab_size": 100, "max_len": MAX_LEN, "dtype": "uint16",
                 "pad_id": PAD, "cls_id": 2, "sep_id": 3, "mask_id": 4, "unk_id": 1},
        "splits": {"train": int((out["split"] == "train").sum()), "val": int((out["split"] == "val").sum())},
        "shards": shards, "labels": _labels_section(out) if labels else None,
        "provenance": {}, "skipped": {},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return out


def _labels_section(out: dict[str, np.ndarray]) -> dict:
    """A labels section as build-cache writes it (3 classes), so `vlpipe cache verify` accepts it."""
    spec = LabelSpec("multiclass", ("a", "b", "c"))
    counts, unlabeled = label_counts(out["labels"], out["split"].tolist(), multilabel=False, num_labels=3)
    return spec.to_manifest(counts, unlabeled)


@pytest.fixture
def cache(tmp_path):
    return tmp_path, write_cache(tmp_path)


def test_contiguous_batch_is_a_view_of_the_memmap(cache):
    root, ref = cache
    ds = CacheDataset(root, split=None)
    batch = ds.__getitems__([6, 7, 8, 9])  # inside shard 1 (global 5..11)
    mm = ds._arrays[1]["images"]
    lo, hi = mm.ctypes.data, mm.ctypes.data + mm.nbytes
    assert lo <= batch["images"].data_ptr() < hi
    assert np.shares_memory(batch["images"].numpy(), mm)
    assert np.array_equal(batch["images"].numpy(), ref["images"][6:10])
    assert batch["input_ids"].dtype == torch.int64 and batch["lengths"].dtype == torch.int64
    assert np.array_equal(batch["input_ids"].numpy(), ref["tokens"][6:10].astype(np.int64))


# None: the default limit, under which these tiny caches stay mapped; 1 byte: too big, pread.
READ_PATHS = {"mapped": None, "pread": 1}


@pytest.mark.parametrize("path", READ_PATHS)
@pytest.mark.parametrize("indices", [[15, 0, 7, 3, 11, 5, 12], [9, 6, 8], [4, 4, 0], [11, 12]])
def test_random_batch_equals_numpy_indexing(cache, indices, path):
    root, ref = cache
    ds = CacheDataset(root, split=None, resident_limit=READ_PATHS[path])
    assert ds.resident == (path == "mapped")
    batch = ds.__getitems__(indices)
    assert batch["images"].shape == (len(indices), PATCHES, PATCH_DIM) and batch["images"].dtype == torch.uint8
    assert np.array_equal(batch["images"].numpy(), ref["images"][indices])
    assert np.array_equal(batch["input_ids"].numpy(), ref["tokens"][indices].astype(np.int64))
    assert np.array_equal(batch["lengths"].numpy(), ref["lengths"][indices].astype(np.int64))
    assert batch["index"].tolist() == indices
    assert "labels" not in batch


@pytest.mark.parametrize("path", READ_PATHS)
def test_gather_into_preallocated_output(cache, path):
    root, ref = cache
    ds = CacheDataset(root, split=None, resident_limit=READ_PATHS[path])
    out = ds.new_batch(8)
    indices = np.array([13, 2, 9, 0, 15])
    batch = ds.gather(indices, out=out, views=False)
    assert batch["images"].data_ptr() == out["images"].data_ptr()
    assert np.array_equal(out["images"][:5].numpy(), ref["images"][indices])
    contiguous = ds.gather([1, 2, 3], out=out, views=False)  # copied, not a view, when views=False
    assert contiguous["images"].data_ptr() == out["images"].data_ptr()
    assert np.array_equal(out["images"][:3].numpy(), ref["images"][1:4])


def test_resident_limit_decides_whether_the_cache_stays_mapped(cache):
    root, _ref = cache
    size = sum(f.stat().st_size for f in (root / "shards").rglob("*.npy"))
    assert CacheDataset(root, split=None).resident  # default: min(4 GiB, RAM/8)
    assert CacheDataset(root, split=None, resident_limit=0).resident  # 0: no limit
    assert CacheDataset(root, split=None, resident_limit=size).resident
    assert not CacheDataset(root, split=None, resident_limit=size - 1).resident


@pytest.mark.parametrize("path", READ_PATHS)
def test_row_ranges_filled_by_threads_make_the_whole_batch(cache, path):
    """The loader's threads copy disjoint row ranges of one batch at once; the sum is `gather`."""
    root, ref = cache
    ds = CacheDataset(root, split=None, resident_limit=READ_PATHS[path])
    indices = [15, 0, 7, 3, 11, 5, 12, 1, 9]
    for plan_indices in (indices, [6, 7, 8, 9]):  # scattered rows, and one consecutive run
        out = ds.new_batch(len(plan_indices))
        plan = ds.plan(plan_indices)
        ds.fill_small(plan, out)
        images = out["images"].numpy()
        threads = [threading.Thread(target=ds.fill_rows, args=(plan, out, lo, min(lo + 2, len(plan_indices))))
                   for lo in range(0, len(plan_indices), 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert plan.run == (plan_indices == [6, 7, 8, 9])
        assert np.array_equal(images, ref["images"][plan_indices])
        assert np.array_equal(out["input_ids"].numpy(), ref["tokens"][plan_indices].astype(np.int64))
        assert out["index"].tolist() == plan_indices


def test_split_maps_local_to_global(cache):
    root, ref = cache
    train, val, everything = (CacheDataset(root, split=s) for s in ("train", "val", None))
    assert len(everything) == 16
    assert len(train) + len(val) == 16
    val_global = np.flatnonzero(ref["split"] == "val")
    assert len(val) == len(val_global)
    batch = val.__getitems__(list(range(len(val)))[::-1])
    assert batch["index"].tolist() == val_global[::-1].tolist()
    assert np.array_equal(batch["images"].numpy(), ref["images"][val_global[::-1]])
    assert train.global_indices(np.arange(len(train))).tolist() == np.flatnonzero(ref["split"] == "train").tolist()


def test_single_item_and_conveniences(cache):
    root, ref = cache
    ds = CacheDataset(root, split=None)
    item = ds[12]
    assert item["images"].shape == (PATCHES, PATCH_DIM) and int(item["index"]) == 12
    assert np.array_equal(item["images"].numpy(), ref["images"][12])
    assert ds.pad_id == PAD and ds.max_len == MAX_LEN and ds.manifest.num_samples == 16
    with pytest.raises(IndexError):
        ds.__getitems__([16])


@pytest.mark.parametrize("path", READ_PATHS)
def test_labels_are_returned_when_present(tmp_path, path):
    ref = write_cache(tmp_path, labels=True)
    ds = CacheDataset(tmp_path, split=None, resident_limit=READ_PATHS[path])
    batch = ds.__getitems__([14, 1, 6])
    assert batch["labels"].dtype == torch.int64
    assert batch["labels"].tolist() == ref["labels"][[14, 1, 6]].tolist()
    # The fixture's labels section is one build-cache would write: verify finds nothing wrong with it.
    from vlpipe.cache.verify import verify_cache

    problems = verify_cache(tmp_path)  # (the fixture's tokens are random, so other files do get reported)
    assert problems and not [p for p in problems if "labels.npy" in p or "label" in p.split(": ", 1)[1]]


def test_release_pages_keeps_data_and_views_valid(cache):
    root, ref = cache
    ds = CacheDataset(root, split=None, resident_limit=1)  # release after every gather
    view = ds.__getitems__([0, 1, 2])["images"]
    for _ in range(3):
        batch = ds.__getitems__([15, 3, 8])
        assert np.array_equal(batch["images"].numpy(), ref["images"][[15, 3, 8]])
    assert np.array_equal(view.numpy(), ref["images"][0:3])


def test_truncated_npy_is_refused_naming_the_file(cache):
    root, _ref = cache
    path = root / "shards" / "00001" / "images.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(VlpipeError, match=r"00001/images\.npy.*bytes"):
        CacheDataset(root)


def test_wrong_shape_and_missing_files_are_refused(tmp_path):
    write_cache(tmp_path)
    tokens = tmp_path / "shards" / "00000" / "tokens.npy"
    # Same byte size, different shape: only the header check can notice.
    np.save(tokens, np.zeros((MAX_LEN, 5), np.uint16))
    with pytest.raises(VlpipeError, match=r"00000/tokens\.npy.*expected uint16\[5, 6\]"):
        CacheDataset(tmp_path)
    tokens.unlink()
    with pytest.raises(VlpipeError, match=r"00000/tokens\.npy: file is missing"):
        CacheDataset(tmp_path)


def test_labels_of_another_shape_are_refused(tmp_path):
    write_cache(tmp_path, labels=True)
    labels = tmp_path / "shards" / "00001" / "labels.npy"
    np.save(labels, np.zeros(7, np.int32))  # 4 bytes per row instead of 8: resize the manifest's record
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"][1]["files"]["labels"]["bytes"] = labels.stat().st_size
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VlpipeError, match=r"00001/labels\.npy: array is int32\[7\], expected int64\[7\] or "
                                          r"uint8\[7, any\]$"):
        CacheDataset(tmp_path)


def test_unknown_split_and_incomplete_cache(cache):
    root, _ref = cache
    with pytest.raises(VlpipeError, match="no split 'test'"):
        CacheDataset(root, split="test")
    (root / "manifest.json").unlink()
    with pytest.raises(VlpipeError, match="not a complete vlpipe cache"):
        CacheDataset(root)


def _rss_file_mb() -> float:
    """This process's resident pages of mapped files (Linux): where read-through-the-map pages go."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("RssFile:")[1].split()[0]) / 1e3


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssFile from /proc (Linux)")
def test_a_cache_read_with_pread_keeps_rss_flat(tmp_path):
    """A cache too big to stay mapped is read with pread, which maps nothing: an epoch over 38 MB of
    rows leaves the process's file-backed RSS flat, while reading through the maps charges them to it."""
    from vlpipe.cache import CacheLoader, CacheSampler

    write_cache(tmp_path, shard_sizes=(64, 64, 64, 64), patch_dim=37632)  # 150,528-byte rows

    def growth(resident_limit: int) -> float:
        ds = CacheDataset(tmp_path, split=None, resident_limit=resident_limit)
        before = _rss_file_mb()
        with CacheLoader(ds, batch_size=16, sampler=CacheSampler(len(ds), seed=0), workers=1) as loader:
            for _ in loader:
                pass
            return _rss_file_mb() - before

    pread, mapped = growth(1 << 20), growth(0)
    assert pread < 2, pread
    assert mapped > 30, mapped  # the measure can tell: mapped reads put the file's pages in RSS
