"""Layout detection, sample order, cheap caption pass and one-line errors for bad inputs."""

from __future__ import annotations

import json

import cachegen
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlpipe.cache.sources import Sample, Skip, iter_captions, iter_samples, open_source
from vlpipe.errors import VlpipeError


@pytest.mark.parametrize("layout", cachegen.LAYOUTS)
def test_layouts_yield_samples_and_skips(tmp_path, layout):
    items = cachegen.hard_items()
    src = cachegen.write_layout(tmp_path / "src", layout, [items[:4], items[4:]])
    source = open_source(src)
    assert source.layout == layout and len(source.shards) == 2
    out = [s for shard in source.shards for s in iter_samples(shard)]
    assert [s.key for s in out] == [it.key for it in items]
    samples = [s for s in out if isinstance(s, Sample)]
    assert [s.image for s in samples] == [it.data for it in items if it.caption is not None]
    assert samples[1].caption == "red on top, blue below" and samples[1].url.endswith("000000001.jpg")
    assert [(s.key, s.reason) for s in out if isinstance(s, Skip)] == [("000000009", "missing_caption")]
    captions = [c for shard in source.shards for c in iter_captions(shard)]
    assert sorted(captions) == sorted(it.caption for it in items if it.caption is not None)


def test_fetch_output_side_files_are_ignored(tmp_path):
    src = cachegen.write_layout(tmp_path / "src", "webdataset", [cachegen.photo_items(2)])
    pq.write_table(pa.table({"key": ["x"], "reason": ["too_small"]}), src / "vlpipe_drops.parquet")
    source = open_source(src)
    assert source.layout == "webdataset" and [s.name for s in source.shards] == ["00000.tar"]


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


def test_missing_or_unrecognised_src(tmp_path):
    with pytest.raises(VlpipeError, match="no such file or directory"):
        open_source(tmp_path / "nope")
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(VlpipeError, match="no input found"):
        open_source(tmp_path)


def _two_images(folder):
    for i in range(2):
        (folder / f"im{i}.jpg").write_bytes(cachegen.photo_items(1, i)[0].data)


@pytest.mark.parametrize(("name", "content", "first_caption"), [
    # U+2028 and form feed are line breaks to str.splitlines(), but valid characters in a caption.
    ("c.jsonl", '{"image": "im0.jpg", "caption": "a\u2028b"}\r\n{"image": "im1.jpg", "caption": "two"}\r\n',
     "a\u2028b"),
    ("c.tsv", "image\tcaption\nim0.jpg\tform\ffeed\u2028and more\nim1.jpg\ttwo\n", "form\ffeed\u2028and more"),
    # TSV has no quoting: a caption that starts with a quote is taken as written.
    ("c.tsv", 'image\tcaption\r\nim0.jpg\t"Twilight" poster\r\nim1.jpg\ttwo\r\n', '"Twilight" poster'),
    # A quoted CSV field may hold a line break, kept byte for byte (no "\r\n" -> "\n" translation).
    ("c.csv", 'image,caption\r\nim0.jpg,"multi\r\nline caption"\r\nim1.jpg,two\r\n', "multi\r\nline caption"),
    ("c.csv", '\ufeffimage,caption\nim0.jpg,"a ""quoted"" word, and a comma"\n\nim1.jpg,two\n',
     'a "quoted" word, and a comma'),
])
def test_captions_with_line_break_characters_are_kept_whole(tmp_path, name, content, first_caption):
    _two_images(tmp_path)
    (tmp_path / name).write_bytes(content.encode("utf-8"))
    source = open_source(tmp_path / name)
    samples = [s for shard in source.shards for s in iter_samples(shard)]
    assert [(s.key, s.caption) for s in samples] == [("im0", first_caption), ("im1", "two")]
    assert all(isinstance(s, Sample) for s in samples)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("c.csv", 'image,caption\nim1.jpg,fine\nim0.jpg,"a red\n', r"c.csv:3: unterminated quoted field"),
    # the error names the line a record starts on, counting the lines of a multi-line record before it
    ("c.csv", 'image,caption\nim0.jpg,"two\nlines"\nim1.jpg,"a red\nstill open\n', r"c.csv:4: unterminated quoted"),
    ("c.tsv", "image\tcaption\nim0.jpg\tok\textra\tmore\n", r"c.tsv:2: expected 2 fields, got 4"),
    ("c.csv", "image,caption\nim0.jpg\n", r"c.csv:2: expected 2 fields, got 1"),
    ("c.csv", "image,label,caption\nim0.jpg,[1,2,a caption\n", r"c.csv:2: expected 3 fields, got 4"),
    ("c.csv", 'image,caption\nim0.jpg,"quoted" then text\n', r"c.csv:2: malformed CSV record \(',' expected after"),
    ("c.jsonl", '{"image": "im0.jpg", "caption": "x"}\n\n{"image": \n', r"c.jsonl:3: malformed JSON"),
])
def test_malformed_caption_records_are_errors_naming_the_line(tmp_path, name, content, message):
    _two_images(tmp_path)
    (tmp_path / name).write_text(content, newline="")
    with pytest.raises(VlpipeError, match=message) as info:
        open_source(tmp_path / name)
    assert "\n" not in str(info.value)
