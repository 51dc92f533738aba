"""Captions tables naming image files: columns found or named, keys, shards of rows, bad files."""

from __future__ import annotations

import json

import cachegen
import pytest

from vlpipe.errors import VlpipeError
from vlpipe.ingest import Row, Skip, iter_samples, open_source


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_captions_file_columns_autodetected(tmp_path, fmt):
    for i in range(5):
        (tmp_path / f"im{i}.jpg").write_bytes(cachegen.photo_items(1, i)[0].data)
    rows = [{"img": f"im{i}.jpg", "text": f"caption, number {i}"} for i in range(5)]
    path = tmp_path / f"caps.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        sep = "," if fmt == "csv" else "\t"
        quote = '"' if fmt == "csv" else ""
        path.write_text(f"img{sep}text\n" + "".join(f"{r['img']}{sep}{quote}{r['text']}{quote}\n" for r in rows))
    source = open_source(tmp_path, shard_size=2)
    assert source.layout == "captions" and [len(s.rows) for s in source.shards] == [2, 2, 1]
    assert [s.name for s in source.shards] == [f"caps.{fmt}[0:2]", f"caps.{fmt}[2:4]", f"caps.{fmt}[4:5]"]
    samples = [s for shard in source.shards for s in iter_samples(shard)]
    assert [(s.key, s.caption) for s in samples] == [(f"im{i}", f"caption, number {i}") for i in range(5)]


def test_explicit_columns(tmp_path):
    (tmp_path / "a.png").write_bytes(cachegen.png16())
    (tmp_path / "c.jsonl").write_text(json.dumps({"picture": "a.png", "words": "grey", "id": 7}) + "\n")
    with pytest.raises(VlpipeError, match=r"no image column .*name it with --image-column"):
        open_source(tmp_path)
    source = open_source(tmp_path / "c.jsonl", image_column="picture", caption_column="words")
    (sample,) = iter_samples(source.shards[0])
    assert (sample.key, sample.caption) == ("7", "grey")


def test_missing_image_file_is_a_skip_naming_it(tmp_path):
    (tmp_path / "a.png").write_bytes(cachegen.png16())
    (tmp_path / "c.csv").write_text("image,caption\na.png,grey\ngone.png,lost\n")
    source = open_source(tmp_path / "c.csv")
    first, second = iter_samples(source.shards[0])
    assert isinstance(first, Row) and first.image == (tmp_path / "a.png").read_bytes()
    assert isinstance(second, Skip) and (second.key, second.source, second.reason) == ("gone", "c.csv[0:2]",
                                                                                       "missing_image")
    assert second.detail.startswith(str(tmp_path / "gone.png"))


@pytest.mark.parametrize(("content", "message"), [
    ("", "captions file is empty"),
    ('{"image": "a.jpg", "caption": "x"}\n{"image": \n', r"c.jsonl:2: malformed JSON"),
    ('{"image": "", "caption": "x"}\n', r"c.jsonl:1: empty 'image'"),
    ('{"image": "a.jpg", "title": "x"}\n', "no caption column"),
])
def test_bad_captions_files(tmp_path, content, message):
    (tmp_path / "c.jsonl").write_text(content)
    with pytest.raises(VlpipeError, match=message):
        open_source(tmp_path / "c.jsonl")


def test_header_without_rows(tmp_path):
    (tmp_path / "c.csv").write_text("image,caption\n")
    with pytest.raises(VlpipeError, match=r"c.csv: captions file has a header but no rows"):
        open_source(tmp_path / "c.csv")
