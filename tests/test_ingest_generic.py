"""Generic labelled tables through build-cache: named columns, split column or hash, multi-label, bad rows."""

from __future__ import annotations

import cachegen
import pytest
from cachegen import LABELLED_OPTS as OPTS
from click.testing import CliRunner

from vlpipe.cache.format import load_manifest
from vlpipe.cache.writer import build_cache
from vlpipe.errors import VlpipeError


def test_generic_csv_with_split_column_via_cli(tmp_path):
    from vlpipe.cli.cache import build_cache as cli

    cachegen.generic_images(tmp_path / "g", 6)
    rows = [("p0.png", "a cat", "cat", "train"), ("p1.png", "a dog", "dog", "train"), ("p2.png", "a cow", "cow", "train"),
            ("p3.png", "a cat again", "cat", "dev"), ("p4.png", "mystery", "", "test"), ("p5.png", "a dog", "dog", "test")]
    (tmp_path / "g" / "data.csv").write_text("picture,text,animal,part\n" + "".join(",".join(r) + "\n" for r in rows))
    out = tmp_path / "cache"
    result = CliRunner().invoke(cli, [str(tmp_path / "g" / "data.csv"), "--out", str(out), "--label-column", "animal",
                                      "--split-column", "part", "--image-column", "picture", "--image-size", "16",
                                      "--patch-size", "8", "--tokenizer", "wordpiece:120", "--processes", "1"])
    assert result.exit_code == 0, result.output
    m, meta, labels = cachegen.read_labelled(out)
    assert m["provenance"]["source_format"] == "generic"
    assert m["labels"]["names"] == ["cat", "cow", "dog"] and m["labels"]["task"] == "multiclass"
    assert labels.tolist() == [0, 2, 1, 0, -1, 2]
    assert [r["split"] for r in meta] == ["train", "train", "train", "val", "test", "test"]
    assert load_manifest(out).labels["unlabeled"] == {"test": 1}


def test_generic_jsonl_multi_label_and_hash_split(tmp_path):
    cachegen.generic_images(tmp_path / "g", 8)
    rows = [{"image": f"p{i}.png", "caption": f"photo {i}", "tags": ["red", "blue", "green"][: 1 + i % 3]}
            for i in range(8)]
    rows[7]["tags"] = []  # a sample with no tag is valid: an all-zero row
    cachegen.write_jsonl(tmp_path / "g" / "tags.jsonl", rows)
    out = tmp_path / "cache"
    # SRC may be the folder holding the one labelled file.
    build_cache(tmp_path / "g", out, label_column="tags", multi_label=True, val_fraction=0.4, **OPTS)
    m, meta, labels = cachegen.read_labelled(out)
    assert m["labels"]["names"] == ["blue", "green", "red"] and labels.dtype == "uint8"
    assert labels.tolist()[:3] == [[0, 0, 1], [1, 0, 1], [1, 1, 1]] and labels[7].tolist() == [0, 0, 0]
    assert {r["split"] for r in meta} == {"train", "val"}


def test_generic_multi_label_cells_split_on_the_separator(tmp_path):
    cachegen.generic_images(tmp_path / "g", 3)
    (tmp_path / "g" / "d.csv").write_text("image,text,labels\np0.png,a,Drama|Comedy\np1.png,b,Drama\np2.png,c,|\n")
    out = tmp_path / "cache"
    build_cache(tmp_path / "g" / "d.csv", out, multi_label=True, val_fraction=0.0, **OPTS)
    m, _meta, labels = cachegen.read_labelled(out)
    assert m["labels"]["names"] == ["Comedy", "Drama"] and labels.tolist() == [[1, 1], [0, 1], [0, 0]]


@pytest.mark.parametrize(("rows", "kwargs", "message"), [
    ([{"image": "p0.png", "text": "t"}], {"format": "generic"}, r"d.jsonl: no label column .* --label-column"),
    ([{"image": "p0.png", "text": "t", "y": 1}], {"label_column": "z"}, r"d.jsonl: no column 'z'"),
    ([{"image": "p0.png", "text": "t", "label": ["a"]}], {"format": "generic"}, r"d.jsonl:1: label is a list"),
    ([{"image": "p0.png", "text": "t", "label": "a", "split": "holdout"}], {"format": "generic"},
     r"d.jsonl:1: split 'holdout' is not one of"),
    ([{"image": "", "text": "t", "label": "a"}], {"format": "generic"}, r"d.jsonl:1: empty 'image' \(image path\)"),
])
def test_generic_bad_inputs(tmp_path, rows, kwargs, message):
    cachegen.generic_images(tmp_path / "g", 1)
    cachegen.write_jsonl(tmp_path / "g" / "d.jsonl", rows)
    with pytest.raises(VlpipeError, match=message) as info:
        build_cache(tmp_path / "g" / "d.jsonl", tmp_path / "cache", **{**OPTS, **kwargs})
    assert "\n" not in str(info.value)


def test_generic_folder_needs_exactly_one_table(tmp_path):
    cachegen.generic_images(tmp_path / "g", 1)
    with pytest.raises(VlpipeError, match=r"g: --format generic needs one .jsonl, .csv or .tsv file; found 0"):
        build_cache(tmp_path / "g", tmp_path / "cache", format="generic", **OPTS)


@pytest.mark.parametrize(("content", "message"), [
    ('image,text,labels\np0.png,a photo,"[1,2"\np1.png,"a red\n', r"d.csv:3: unterminated quoted field"),
    ("image,text,labels\np0.png,a photo,[1,2\n", r"d.csv:2: expected 3 fields, got 4"),
    ("image,text,labels\np0.png,a photo,cat,extra\n", r"d.csv:2: expected 3 fields, got 4"),
])
def test_generic_malformed_csv_rows_are_refused(tmp_path, content, message):
    cachegen.generic_images(tmp_path / "g", 2)
    (tmp_path / "g" / "d.csv").write_text(content)
    with pytest.raises(VlpipeError, match=message) as info:
        build_cache(tmp_path / "g" / "d.csv", tmp_path / "cache", label_column="labels", multi_label=True, **OPTS)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists()
