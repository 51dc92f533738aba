"""MM-IMDB through build-cache: multi-hot genres, joined plot outlines, a movie without metadata skipped."""

from __future__ import annotations

import cachegen
import numpy as np
import pytest
import torch
from cachegen import GENRES
from cachegen import LABELLED_OPTS as OPTS

from vlpipe.cache import CacheDataset
from vlpipe.cache.verify import check_cache
from vlpipe.cache.writer import build_cache
from vlpipe.errors import VlpipeError
from vlpipe.ingest import detect_format


def test_mmimdb(tmp_path):
    src = cachegen.mmimdb(tmp_path / "mm")
    assert detect_format(src) == "mmimdb"
    out = tmp_path / "cache"
    build_cache(src, out, **OPTS)
    m, meta, labels = cachegen.read_labelled(out)
    names = m["labels"]["names"]
    # Vocabulary from the train split, sorted: "Romance" is train-only, "News" appears only in test.
    assert names == ["Action", "Comedy", "Drama", "Romance"]
    assert m["labels"]["task"] == "multilabel" and m["labels"]["unknown"] == {"News": 1}
    assert labels.dtype == np.uint8 and labels.shape == (8, 4)
    for row, hot in zip(meta, labels, strict=True):
        assert [names[j] for j in np.flatnonzero(hot)] == sorted(g for g in GENRES[row["key"]] if g != "News")
    assert [r["split"] for r in meta] == ["train"] * 5 + ["val"] + ["test"] * 2
    assert meta[1]["caption"] == "plot of movie 11 a second outline"
    assert m["labels"]["counts"]["train"] == [2, 3, 2, 1]
    assert cachegen.skipped(out) == [("15", "missing_metadata")]
    check_cache(out)
    hot = CacheDataset(out, split="val").__getitems__([0])["labels"]
    assert hot.dtype == torch.uint8 and hot.tolist() == [[0, 0, 1, 0]]


@pytest.mark.parametrize(("content", "message"), [
    ('{"train": ["10"], "holdout": ["11"]}', r"split.json: 'holdout' is not a split"),
    ('["10", "11"]', r"split.json: expected \{\"train\""),
    ('{"train": ["10"', r"split.json: malformed JSON"),
])
def test_mmimdb_bad_split_file(tmp_path, content, message):
    src = cachegen.mmimdb(tmp_path / "mm")
    (src / "split.json").write_text(content)
    with pytest.raises(VlpipeError, match=message):
        build_cache(src, tmp_path / "cache", **OPTS)


def test_mmimdb_bad_genres(tmp_path):
    src = cachegen.mmimdb(tmp_path / "mm")
    (src / "dataset" / "12.json").write_text('{"plot": "p", "genres": "Comedy"}')
    with pytest.raises(VlpipeError, match=r"12.json: 'genres' must be a list of strings"):
        build_cache(src, tmp_path / "cache", **OPTS)
