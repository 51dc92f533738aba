"""Hateful Memes through build-cache: splits from the file names, 0/1 labels, a leaked id skipped."""

from __future__ import annotations

import cachegen
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from cachegen import LABELLED_OPTS as OPTS

from vlpipe.cache import CacheDataset
from vlpipe.cache.verify import check_cache
from vlpipe.cache.writer import build_cache
from vlpipe.errors import VlpipeError
from vlpipe.ingest import detect_format


def test_hateful_memes(tmp_path):
    src = cachegen.hateful(tmp_path / "hm")
    assert detect_format(src) == "hateful-memes"
    (src / "img" / "00009.png").unlink()
    out = tmp_path / "cache"
    manifest = build_cache(src, out, **OPTS)
    m, meta, labels = cachegen.read_labelled(out)
    assert m["splits"] == {"train": 6, "val": 1, "test": 2} == manifest.splits
    assert [r["key"] for r in meta] == ["0", "1", "2", "3", "4", "5", "6", "7", "8"]
    assert [r["split"] for r in meta] == ["train"] * 6 + ["val"] + ["test"] * 2
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 0, 1, 0, 1, 1, -1, -1]
    assert meta[6]["caption"] == "dev 6"
    lab = m["labels"]
    assert (lab["task"], lab["names"], lab["num_labels"], lab["dtype"]) == ("binary", ["not_hateful", "hateful"],
                                                                          2, "int64")
    assert lab["counts"] == {"train": [3, 3], "val": [0, 1], "test": [0, 0]}
    assert lab["unlabeled"] == {"test": 2}
    assert sorted(cachegen.skipped(out)) == [("3", "duplicate_id"), ("9", "missing_image")]
    detail = pq.read_table(out / "skipped.parquet").to_pylist()
    dup = next(r for r in detail if r["reason"] == "duplicate_id")["detail"]
    assert "dev_seen.jsonl:2 (val)" in dup and "train.jsonl:4 (train)" in dup
    assert m["provenance"]["source_format"] == "hateful-memes"
    check_cache(out)
    # The reader hands the same labels out per split (-1 = unlabeled test rows).
    assert CacheDataset(out, split="test").__getitems__([0, 1])["labels"].tolist() == [-1, -1]
    assert CacheDataset(out, split="train").__getitems__([3])["labels"].dtype == torch.int64


@pytest.mark.parametrize(("line", "message"), [
    ({"id": 1, "img": "img/00001.png", "label": 2, "text": "x"}, r"train.jsonl:1: label 2 is not 0 or 1"),
    ({"id": 1, "img": "", "label": 1, "text": "x"}, r"train.jsonl:1: empty 'img'"),
    ({"id": 1, "img": "img/00001.png", "text": "x"}, r"train.jsonl: no 'label' field"),
])
def test_hateful_memes_bad_rows(tmp_path, line, message):
    src = cachegen.hateful(tmp_path / "hm")
    cachegen.write_jsonl(src / "train.jsonl", [line])
    with pytest.raises(VlpipeError, match=message) as info:
        build_cache(src, tmp_path / "cache", **OPTS)
    assert "\n" not in str(info.value)
