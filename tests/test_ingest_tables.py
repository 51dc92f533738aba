"""Strict .jsonl/.csv/.tsv reading: records split only where the format ends them, FILE:LINE errors."""

from __future__ import annotations

import cachegen
import pytest

from vlpipe.errors import VlpipeError
from vlpipe.ingest import iter_samples, open_source
from vlpipe.ingest.tables import pick_column, read_table


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
    (tmp_path / name).write_bytes(content.encode("utf-8"))
    names, rows = read_table(tmp_path / name)
    assert names == ["image", "caption"]
    assert [row["caption"] for _, row in rows] == [first_caption, "two"]
    # and they reach the samples whole
    for i in range(2):
        (tmp_path / f"im{i}.jpg").write_bytes(cachegen.photo_items(1, i)[0].data)
    source = open_source(tmp_path / name)
    samples = [s for shard in source.shards for s in iter_samples(shard)]
    assert [(s.key, s.caption) for s in samples] == [("im0", first_caption), ("im1", "two")]


def test_rows_are_numbered_by_the_line_they_start_on(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('image,caption\na.jpg,"two\nlines"\n\nb.jpg,one\n', newline="")
    assert [lineno for lineno, _ in read_table(path)[1]] == [2, 5]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("c.csv", 'image,caption\nim1.jpg,fine\nim0.jpg,"a red\n', r"c.csv:3: unterminated quoted field"),
    # the error names the line a record starts on, counting the lines of a multi-line record before it
    ("c.csv", 'image,caption\nim0.jpg,"two\nlines"\nim1.jpg,"a red\nstill open\n', r"c.csv:4: unterminated quoted"),
    ("c.tsv", "image\tcaption\nim0.jpg\tok\textra\tmore\n", r"c.tsv:2: expected 2 fields, got 4"),
    ("c.csv", "image,caption\nim0.jpg\n", r"c.csv:2: expected 2 fields, got 1"),
    ("c.csv", "image,label,caption\nim0.jpg,[1,2,a caption\n", r"c.csv:2: expected 3 fields, got 4"),
    ("c.csv", 'image,caption\nim0.jpg,"quoted" then text\n', r"c.csv:2: malformed CSV record \(',' expected after"),
    ("c.jsonl", '{"image": "im0.jpg", "caption": "x"}\n\n{"image": \n', r"c.jsonl:3: malformed JSON"),
    ("c.jsonl", '["im0.jpg", "x"]\n', r"c.jsonl:1: expected a JSON object per line"),
    ("c.jsonl", "\n \n", r"c.jsonl: captions file is empty"),
])
def test_malformed_records_are_errors_naming_the_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, newline="")
    with pytest.raises(VlpipeError, match=message) as info:
        read_table(tmp_path / name)
    assert "\n" not in str(info.value)


def test_non_utf8_table_is_refused(tmp_path):
    (tmp_path / "c.csv").write_bytes(b"image,caption\na.jpg,caf\xe9\n")
    with pytest.raises(VlpipeError, match=r"c.csv: not UTF-8 text \(invalid continuation byte at byte 23\)"):
        read_table(tmp_path / "c.csv")


def test_pick_column_prefers_the_named_one_then_candidates_in_any_case(tmp_path):
    path = tmp_path / "c.csv"
    assert pick_column(["Text", "IMG"], None, ("image", "img"), "image", path) == "IMG"
    assert pick_column(["Text", "IMG"], "Text", ("image", "img"), "image", path) == "Text"
    with pytest.raises(VlpipeError, match=r"c.csv: no column 'x'; columns are Text, IMG"):
        pick_column(["Text", "IMG"], "x", ("image",), "image", path)
