"""build-cache on labelled downstream datasets generated here in each layout, read back with numpy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cachegen
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from vlpipe.cache import CacheDataset
from vlpipe.cache.downstream import detect_format, open_downstream
from vlpipe.cache.format import load_manifest
from vlpipe.cache.verify import check_cache
from vlpipe.cache.writer import build_cache
from vlpipe.errors import VlpipeError

OPTS = {"image_size": 16, "patch_size": 8, "max_len": 12, "tokenizer": "wordpiece:120", "quiet": True,
        "processes": 1}


def image(seed: int, fmt: str = "PNG") -> bytes:
    return cachegen._encode(cachegen.photo(24, 20, seed), fmt)


def read(cache: Path) -> tuple[dict, list[dict], np.ndarray]:
    """Manifest, meta rows and labels of every shard concatenated, with json/pyarrow/numpy only."""
    m = json.loads((cache / "manifest.json").read_text())
    meta, labels = [], []
    for shard in m["shards"]:
        meta += pq.read_table(cache / shard["files"]["meta"]["path"]).to_pylist()
        labels.append(np.load(cache / shard["files"]["labels"]["path"]))
    return m, meta, np.concatenate(labels)


def skipped(cache: Path) -> list[tuple[str, str]]:
    return [(r["key"], r["reason"]) for r in pq.read_table(cache / "skipped.parquet").to_pylist()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---- Hateful Memes ---------------------------------------------------------------------------------


def hateful(root: Path) -> Path:
    (root / "img").mkdir(parents=True)
    for i in range(10):
        (root / "img" / f"{i:05d}.png").write_bytes(image(i))
    write_jsonl(root / "train.jsonl", [{"id": i, "img": f"img/{i:05d}.png", "label": i % 2, "text": f"meme {i}"}
                                       for i in range(6)])
    # id 3 is also in train: a leak the build must report rather than keep.
    write_jsonl(root / "dev_seen.jsonl", [{"id": i, "img": f"img/{i:05d}.png", "label": 1, "text": f"dev {i}"}
                                          for i in (6, 3)])
    write_jsonl(root / "test_unseen.jsonl", [{"id": i, "img": f"img/{i:05d}.png", "text": f"test meme {i}"}
                                             for i in (7, 8, 9)])
    return root


def test_hateful_memes(tmp_path):
    src = hateful(tmp_path / "hm")
    assert detect_format(src) == "hateful-memes"
    (src / "img" / "00009.png").unlink()
    out = tmp_path / "cache"
    manifest = build_cache(src, out, **OPTS)
    m, meta, labels = read(out)
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
    assert sorted(skipped(out)) == [("3", "duplicate_id"), ("9", "missing_image")]
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
    src = hateful(tmp_path / "hm")
    write_jsonl(src / "train.jsonl", [line])
    with pytest.raises(VlpipeError, match=message) as info:
        build_cache(src, tmp_path / "cache", **OPTS)
    assert "\n" not in str(info.value)


# ---- MM-IMDB ---------------------------------------------------------------------------------------

GENRES = {"10": ["Drama", "Comedy"], "11": ["Action"], "12": ["Comedy"], "13": ["Drama", "Action"],
          "14": ["Comedy", "Romance"], "20": ["Drama"], "30": ["Action", "News"], "31": ["Comedy"]}


def mmimdb(root: Path) -> Path:
    folder = root / "dataset"
    folder.mkdir(parents=True)
    for i, key in enumerate(GENRES):
        (folder / f"{key}.jpeg").write_bytes(image(i, "JPEG"))
        plot = [f"plot of movie {key}", "a second outline"] if i % 2 else f"plot of movie {key}"
        (folder / f"{key}.json").write_text(json.dumps({"plot": plot, "genres": GENRES[key], "title": key}))
    (folder / "15.jpeg").write_bytes(image(15, "JPEG"))  # no 15.json
    (root / "split.json").write_text(json.dumps({"train": ["10", "11", "12", "13", "14", "15"], "dev": ["20"],
                                                 "test": ["30", "31"]}))
    return root


def test_mmimdb(tmp_path):
    src = mmimdb(tmp_path / "mm")
    assert detect_format(src) == "mmimdb"
    out = tmp_path / "cache"
    build_cache(src, out, **OPTS)
    m, meta, labels = read(out)
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
    assert skipped(out) == [("15", "missing_metadata")]
    check_cache(out)
    hot = CacheDataset(out, split="val").__getitems__([0])["labels"]
    assert hot.dtype == torch.uint8 and hot.tolist() == [[0, 0, 1, 0]]


def test_mmimdb_bad_split_file(tmp_path):
    src = mmimdb(tmp_path / "mm")
    (src / "split.json").write_text('{"train": ["10"], "holdout": ["11"]}')
    with pytest.raises(VlpipeError, match=r"split.json: 'holdout' is not a split"):
        build_cache(src, tmp_path / "cache", **OPTS)


# ---- UPMC Food-101 ---------------------------------------------------------------------------------


def food(root: Path, test_label: str = "sushi") -> Path:
    (root / "texts").mkdir(parents=True)
    rows = {"train": [(f"{lab}_{i}.jpg", f"recipe for {lab}, number {i}", lab)
                      for lab in ("pizza", "sushi", "apple_pie") for i in range(4)],
            "test": [("pizza_9.jpg", "best pizza", "pizza"), (f"{test_label}_9.jpg", "rolls", test_label)]}
    for split, items in rows.items():
        with (root / "texts" / f"{split}_titles.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows(items)
        for k, (name, _text, lab) in enumerate(items):
            folder = root / "images" / split / lab
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(image(k, "JPEG"))
    return root


def test_food101(tmp_path):
    src = food(tmp_path / "food")
    assert detect_format(src) == "food101"
    (src / "images" / "train" / "sushi" / "sushi_2.jpg").unlink()
    out = tmp_path / "cache"
    build_cache(src, out, val_fraction=0.3, **OPTS)
    m, meta, labels = read(out)
    assert m["labels"]["names"] == ["apple_pie", "pizza", "sushi"] and m["labels"]["task"] == "multiclass"
    expected = {"pizza": 1, "sushi": 2, "apple_pie": 0}
    assert labels.tolist() == [expected[r["key"].split("/")[1]] for r in meta]
    assert meta[0]["caption"] == "recipe for pizza, number 0"  # commas inside the text survive
    # No dev set: val is hashed out of train, test stays test.
    splits = [r["split"] for r in meta]
    assert splits[-2:] == ["test", "test"] and set(splits[:-2]) == {"train", "val"}
    assert m["splits"]["test"] == 2 and m["splits"]["train"] + m["splits"]["val"] == 11
    assert skipped(out) == [("train/sushi/sushi_2", "missing_image")]
    check_cache(out)


def test_food101_label_outside_train_vocabulary(tmp_path):
    src = food(tmp_path / "food", test_label="ramen")
    with pytest.raises(VlpipeError, match=r"test_titles.csv:2: label 'ramen' is not among the 3 labels"):
        build_cache(src, tmp_path / "cache", **OPTS)


# ---- generic ---------------------------------------------------------------------------------------


def generic_images(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"p{i}.png").write_bytes(image(i))


def test_generic_csv_with_split_column_via_cli(tmp_path):
    from vlpipe.cli.cache import build_cache as cli

    generic_images(tmp_path / "g", 6)
    rows = [("p0.png", "a cat", "cat", "train"), ("p1.png", "a dog", "dog", "train"), ("p2.png", "a cow", "cow", "train"),
            ("p3.png", "a cat again", "cat", "dev"), ("p4.png", "mystery", "", "test"), ("p5.png", "a dog", "dog", "test")]
    (tmp_path / "g" / "data.csv").write_text("picture,text,animal,part\n" + "".join(",".join(r) + "\n" for r in rows))
    out = tmp_path / "cache"
    result = CliRunner().invoke(cli, [str(tmp_path / "g" / "data.csv"), "--out", str(out), "--label-column", "animal",
                                      "--split-column", "part", "--image-column", "picture", "--image-size", "16",
                                      "--patch-size", "8", "--tokenizer", "wordpiece:120", "--processes", "1"])
    assert result.exit_code == 0, result.output
    m, meta, labels = read(out)
    assert m["provenance"]["source_format"] == "generic"
    assert m["labels"]["names"] == ["cat", "cow", "dog"] and m["labels"]["task"] == "multiclass"
    assert labels.tolist() == [0, 2, 1, 0, -1, 2]
    assert [r["split"] for r in meta] == ["train", "train", "train", "val", "test", "test"]
    assert load_manifest(out).labels["unlabeled"] == {"test": 1}


def test_generic_jsonl_multi_label_and_hash_split(tmp_path):
    generic_images(tmp_path / "g", 8)
    rows = [{"image": f"p{i}.png", "caption": f"photo {i}", "tags": ["red", "blue", "green"][: 1 + i % 3]}
            for i in range(8)]
    rows[7]["tags"] = []  # a sample with no tag is valid: an all-zero row
    write_jsonl(tmp_path / "g" / "tags.jsonl", rows)
    out = tmp_path / "cache"
    # SRC may be the folder holding the one labelled file.
    build_cache(tmp_path / "g", out, label_column="tags", multi_label=True, val_fraction=0.4, **OPTS)
    m, meta, labels = read(out)
    assert m["labels"]["names"] == ["blue", "green", "red"] and labels.dtype == np.uint8
    assert labels.tolist()[:3] == [[0, 0, 1], [1, 0, 1], [1, 1, 1]] and labels[7].tolist() == [0, 0, 0]
    assert {r["split"] for r in meta} == {"train", "val"}


def test_generic_binary_ints_sorted_numerically(tmp_path):
    generic_images(tmp_path / "g", 4)
    write_jsonl(tmp_path / "g" / "d.jsonl", [{"image": f"p{i}.png", "text": f"t {i}", "label": [1, 0][i % 2]}
                                             for i in range(4)])
    out = tmp_path / "cache"
    build_cache(tmp_path / "g" / "d.jsonl", out, format="generic", val_fraction=0.0, **OPTS)
    m, _meta, labels = read(out)
    assert (m["labels"]["task"], m["labels"]["names"]) == ("binary", ["0", "1"])
    assert labels.tolist() == [1, 0, 1, 0]


@pytest.mark.parametrize(("rows", "kwargs", "message"), [
    ([{"image": "p0.png", "text": "t"}], {"format": "generic"}, r"d.jsonl: no label column .* --label-column"),
    ([{"image": "p0.png", "text": "t", "y": 1}], {"label_column": "z"}, r"d.jsonl: no column 'z'"),
    ([{"image": "p0.png", "text": "t", "label": ["a"]}], {"format": "generic"}, r"d.jsonl:1: label is a list"),
    ([{"image": "p0.png", "text": "t", "label": "a", "split": "holdout"}], {"format": "generic"},
     r"d.jsonl:1: split 'holdout' is not one of"),
    ([{"image": "p0.png", "text": "t", "label": "a"}], {"format": "generic"}, r"only one label \('a'\)"),
    ([{"image": "p0.png", "text": "t", "label": ""}], {"format": "generic"}, r"no labels found in the train split"),
    ([{"image": "p0.png", "text": "t", "label": "a"}], {"format": "food101"}, r"no train_titles.csv"),
])
def test_generic_bad_inputs(tmp_path, rows, kwargs, message):
    generic_images(tmp_path / "g", 1)
    write_jsonl(tmp_path / "g" / "d.jsonl", rows)
    with pytest.raises(VlpipeError, match=message) as info:
        build_cache(tmp_path / "g" / "d.jsonl", tmp_path / "cache", **{**OPTS, **kwargs})
    assert "\n" not in str(info.value)


def test_generic_train_row_without_label_is_skipped(tmp_path):
    generic_images(tmp_path / "g", 4)
    write_jsonl(tmp_path / "g" / "d.jsonl", [{"image": f"p{i}.png", "text": f"t {i}", "label": "ab"[i % 2] if i else None}
                                             for i in range(4)])
    out = tmp_path / "cache"
    build_cache(tmp_path / "g" / "d.jsonl", out, label_column="label", val_fraction=0.0, **OPTS)
    assert skipped(out) == [("p0", "missing_label")]
    assert read(out)[2].tolist() == [1, 0, 1]


def test_food101_header_tolerated_and_bad_rows_refused(tmp_path):
    src = food(tmp_path / "food")
    train = src / "texts" / "train_titles.csv"
    train.write_text("image_name,text,label\n" + train.read_text())
    source = open_downstream(src, "food101")
    assert sum(len(s.rows) for s in source.shards) == 14
    train.write_text(train.read_text() + "pizza_7.jpg,pizza\n")
    with pytest.raises(VlpipeError, match=r"train_titles.csv:14: expected image_name,text,label; found 2"):
        open_downstream(src, "food101")
    train.write_bytes(b"pizza_1.jpg,caf\xe9,pizza\n")
    with pytest.raises(VlpipeError, match=r"train_titles.csv: not a readable UTF-8 CSV file"):
        open_downstream(src, "food101")


@pytest.mark.parametrize(("content", "message"), [
    ('image,text,labels\np0.png,a photo,"[1,2"\np1.png,"a red\n', r"d.csv:3: unterminated quoted field"),
    ("image,text,labels\np0.png,a photo,[1,2\n", r"d.csv:2: expected 3 fields, got 4"),
    ("image,text,labels\np0.png,a photo,cat,extra\n", r"d.csv:2: expected 3 fields, got 4"),
])
def test_generic_malformed_csv_rows_are_refused(tmp_path, content, message):
    generic_images(tmp_path / "g", 2)
    (tmp_path / "g" / "d.csv").write_text(content)
    with pytest.raises(VlpipeError, match=message) as info:
        build_cache(tmp_path / "g" / "d.csv", tmp_path / "cache", label_column="labels", multi_label=True, **OPTS)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_food101_quoted_title_spanning_lines_is_kept_and_unterminated_quote_refused(tmp_path):
    src = food(tmp_path / "food")
    train = src / "texts" / "train_titles.csv"
    lines = train.read_bytes().split(b"\r\n")  # csv.writer ends rows with \r\n
    lines[0] = lines[0].split(b",")[0] + b',"pizza\r\nal taglio, with \xe2\x80\xa8 and \x0c",pizza'
    train.write_bytes(b"\r\n".join(lines))
    source = open_downstream(src, "food101")
    rows = [r for s in source.shards for r in s.rows]
    assert len(rows) == 14 and rows[0][2] == "pizza\r\nal taglio, with \u2028 and \f"
    assert rows[1][0].startswith("train/pizza/pizza_1")

    # Unclosed, the quote would swallow every later row into one title.
    train.write_bytes(b"\r\n".join([*lines[:3], b'pizza_8.jpg,"never closed,pizza', *lines[3:]]))
    with pytest.raises(VlpipeError, match=r"train_titles.csv:5: malformed CSV record .*must be closed"):
        open_downstream(src, "food101")
    train.write_bytes(b"\r\n".join([*lines, b'pizza_8.jpg,"never closed,pizza\r\n']))
    with pytest.raises(VlpipeError, match=r"train_titles.csv:15: unterminated quoted field"):
        open_downstream(src, "food101")
