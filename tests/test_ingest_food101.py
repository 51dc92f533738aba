"""UPMC Food-101 through build-cache: keys from the image paths, val hashed out of train, strict CSV."""

from __future__ import annotations

import cachegen
import pytest
from cachegen import LABELLED_OPTS as OPTS

from vlpipe.cache.verify import check_cache
from vlpipe.cache.writer import build_cache
from vlpipe.errors import VlpipeError
from vlpipe.ingest import detect_format, open_source


def test_food101(tmp_path):
    src = cachegen.food(tmp_path / "food")
    assert detect_format(src) == "food101"
    (src / "images" / "train" / "sushi" / "sushi_2.jpg").unlink()
    out = tmp_path / "cache"
    build_cache(src, out, val_fraction=0.3, **OPTS)
    m, meta, labels = cachegen.read_labelled(out)
    assert m["labels"]["names"] == ["apple_pie", "pizza", "sushi"] and m["labels"]["task"] == "multiclass"
    expected = {"pizza": 1, "sushi": 2, "apple_pie": 0}
    assert labels.tolist() == [expected[r["key"].split("/")[1]] for r in meta]
    assert meta[0]["caption"] == "recipe for pizza, number 0"  # commas inside the text survive
    # No dev set: val is hashed out of train, test stays test.
    splits = [r["split"] for r in meta]
    assert splits[-2:] == ["test", "test"] and set(splits[:-2]) == {"train", "val"}
    assert m["splits"]["test"] == 2 and m["splits"]["train"] + m["splits"]["val"] == 11
    assert cachegen.skipped(out) == [("train/sushi/sushi_2", "missing_image")]
    check_cache(out)


def test_food101_without_train_titles(tmp_path):
    cachegen.generic_images(tmp_path / "g", 1)
    with pytest.raises(VlpipeError, match=r"g: no train_titles.csv \(looked in .*g and .*g/texts\)"):
        build_cache(tmp_path / "g", tmp_path / "cache", format="food101", **OPTS)


def test_food101_header_tolerated_and_bad_rows_refused(tmp_path):
    src = cachegen.food(tmp_path / "food")
    train = src / "texts" / "train_titles.csv"
    train.write_text("image_name,text,label\n" + train.read_text())
    source = open_source(src, format="food101")
    assert sum(len(s.rows) for s in source.shards) == 14
    train.write_text(train.read_text() + "pizza_7.jpg,pizza\n")
    with pytest.raises(VlpipeError, match=r"train_titles.csv:14: expected image_name,text,label; found 2"):
        open_source(src, format="food101")
    train.write_bytes(b"pizza_1.jpg,caf\xe9,pizza\n")
    with pytest.raises(VlpipeError, match=r"train_titles.csv: not a readable UTF-8 CSV file"):
        open_source(src, format="food101")


def test_food101_quoted_title_spanning_lines_is_kept_and_unterminated_quote_refused(tmp_path):
    src = cachegen.food(tmp_path / "food")
    train = src / "texts" / "train_titles.csv"
    lines = train.read_bytes().split(b"\r\n")  # csv.writer ends rows with \r\n
    lines[0] = lines[0].split(b",")[0] + b',"pizza\r\nal taglio, with \xe2\x80\xa8 and \x0c",pizza'
    train.write_bytes(b"\r\n".join(lines))
    source = open_source(src, format="food101")
    rows = [r for s in source.shards for r in s.rows]
    assert len(rows) == 14 and rows[0].caption == "pizza\r\nal taglio, with \u2028 and \f"
    assert rows[1].key.startswith("train/pizza/pizza_1")

    # Unclosed, the quote would swallow every later row into one title.
    train.write_bytes(b"\r\n".join([*lines[:3], b'pizza_8.jpg,"never closed,pizza', *lines[3:]]))
    with pytest.raises(VlpipeError, match=r"train_titles.csv:5: malformed CSV record .*must be closed"):
        open_source(src, format="food101")
    train.write_bytes(b"\r\n".join([*lines, b'pizza_8.jpg,"never closed,pizza\r\n']))
    with pytest.raises(VlpipeError, match=r"train_titles.csv:15: unterminated quoted field"):
        open_source(src, format="food101")
