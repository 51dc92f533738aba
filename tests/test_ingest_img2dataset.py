"""img2dataset's three layouts: shard discovery, sample order, the cheap caption pass, bad shards."""

from __future__ import annotations

import cachegen
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlpipe.errors import VlpipeError
from vlpipe.ingest import Row, Skip, iter_captions, iter_samples, open_source


@pytest.mark.parametrize("layout", cachegen.LAYOUTS)
def test_layouts_yield_samples_and_skips(tmp_path, layout):
    items = cachegen.hard_items()
    src = cachegen.write_layout(tmp_path / "src", layout, [items[:4], items[4:]])
    source = open_source(src)
    assert source.layout == layout and len(source.shards) == 2
    out = [s for shard in source.shards for s in iter_samples(shard)]
    assert [s.key for s in out] == [it.key for it in items]
    samples = [s for s in out if isinstance(s, Row)]
    assert [s.image for s in samples] == [it.data for it in items if it.caption is not None]
    assert samples[1].caption == "red on top, blue below" and samples[1].url.endswith("000000001.jpg")
    assert [(s.key, s.reason) for s in out if isinstance(s, Skip)] == [("000000009", "missing_caption")]
    captions = [c for shard in source.shards for c in iter_captions(shard)]
    assert sorted(captions) == sorted(it.caption for it in items if it.caption is not None)


def test_single_tar_as_src(tmp_path):
    src = cachegen.write_layout(tmp_path / "src", "webdataset", [cachegen.photo_items(2)])
    source = open_source(src / "00000.tar")
    assert (source.layout, source.root, [s.name for s in source.shards]) == ("webdataset", src, ["00000.tar"])
    assert [s.key for s in iter_samples(source.shards[0])] == ["000000000", "000000001"]


def test_fetch_output_side_files_are_ignored(tmp_path):
    src = cachegen.write_layout(tmp_path / "src", "webdataset", [cachegen.photo_items(2)])
    pq.write_table(pa.table({"key": ["x"], "reason": ["too_small"]}), src / "vlpipe_drops.parquet")
    source = open_source(src)
    assert source.layout == "webdataset" and [s.name for s in source.shards] == ["00000.tar"]


def _bad_tar(tmp_path, data: bytes):
    (tmp_path / "00000.tar").write_bytes(data)
    return open_source(tmp_path).shards[0]


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: _bad_tar(p, b""), "00000.tar: input shard is empty"),
    (lambda p: _bad_tar(p, b"garbage" * 300), "00000.tar: corrupt or truncated tar shard"),
    (lambda p: _bad_tar(p, (cachegen.write_layout(p / "w", "webdataset", [cachegen.photo_items(3)])
                            / "00000.tar").read_bytes()[:1500]), "00000.tar: corrupt or truncated"),
])
def test_bad_tar_shards(tmp_path, make, message):
    shard = make(tmp_path)
    with pytest.raises(VlpipeError, match=message) as info:
        list(iter_samples(shard))
    assert "\n" not in str(info.value)


def test_bad_parquet_shard(tmp_path):
    src = cachegen.write_layout(tmp_path / "src", "parquet", [cachegen.photo_items(2), cachegen.photo_items(2, 5)])
    (src / "00001.parquet").write_bytes(b"PAR1 not really")
    source = open_source(src)
    with pytest.raises(VlpipeError, match="00001.parquet: corrupt parquet shard"):
        list(iter_samples(source.shards[1]))
