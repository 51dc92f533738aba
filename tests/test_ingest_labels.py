"""Label vocabulary from the train split, ids, and the rows labels make uncacheable."""

from __future__ import annotations

from pathlib import Path

import cachegen
import pytest
from cachegen import LABELLED_OPTS as OPTS

from vlpipe.cache.format import MISSING_LABEL
from vlpipe.cache.writer import build_cache
from vlpipe.errors import VlpipeError
from vlpipe.ingest.labels import label_rows
from vlpipe.ingest.rows import Row


def _row(key: str, label, split: str = "train") -> Row:
    return Row(key, image_path=f"/data/{key}.png", caption="c", label=label, split=split, where=f"d.csv:{key}")


def test_vocabulary_ids_problems_and_split():
    rows = [_row("1", "b"), _row("2", "a"), _row("3", None), _row("2", "a"), _row("4", None, "test"),
            _row("5", "a", "test")]
    spec, labelled = label_rows(rows, None, None, Path("d.csv"))
    assert (spec.task, spec.names) == ("binary", ("a", "b"))
    assert [r.label for r in labelled] == [1, 0, MISSING_LABEL, 0, MISSING_LABEL, 0]
    # No dev rows: train rows leave the split to the key hash (None); test stays test.
    assert [r.split for r in labelled] == [None, None, None, None, "test", "test"]
    assert [r.problem and r.problem[0] for r in labelled] == [None, None, "missing_label", "duplicate_id", None, None]
    assert labelled[3].problem[1] == "d.csv:2 (train) repeats id 2 of d.csv:2 (train); kept the first"


def test_a_dev_split_keeps_train_rows_in_train():
    spec, labelled = label_rows([_row("1", "a"), _row("2", "b"), _row("3", "a", "val")], None, None, Path("d"))
    assert [r.split for r in labelled] == ["train", "train", "val"]


def test_multi_label_drops_and_counts_names_outside_the_train_split():
    rows = [_row("1", ["x", "y"]), _row("2", ["y"]), _row("3", ["y", "z"], "test"), _row("4", None, "test")]
    spec, labelled = label_rows(rows, "multilabel", None, Path("d"))
    assert (spec.names, spec.unknown) == (("x", "y"), (("z", 1),))
    assert [r.label for r in labelled[:3]] == [(0, 1), (1,), (1,)]
    assert labelled[3].problem[0] == "missing_label"  # an all-zero row would claim "no label"


def test_food101_label_outside_train_vocabulary(tmp_path):
    src = cachegen.food(tmp_path / "food", test_label="ramen")
    with pytest.raises(VlpipeError, match=r"test_titles.csv:2: label 'ramen' is not among the 3 labels"):
        build_cache(src, tmp_path / "cache", **OPTS)


@pytest.mark.parametrize(("label", "message"), [
    ("a", r"only one label \('a'\)"),
    ("", r"no labels found in the train split"),
])
def test_a_classifier_needs_two_labels(tmp_path, label, message):
    cachegen.generic_images(tmp_path / "g", 1)
    cachegen.write_jsonl(tmp_path / "g" / "d.jsonl", [{"image": "p0.png", "text": "t", "label": label}])
    with pytest.raises(VlpipeError, match=message) as info:
        build_cache(tmp_path / "g" / "d.jsonl", tmp_path / "cache", format="generic", **OPTS)
    assert "\n" not in str(info.value)


def test_generic_binary_ints_sorted_numerically(tmp_path):
    cachegen.generic_images(tmp_path / "g", 4)
    cachegen.write_jsonl(tmp_path / "g" / "d.jsonl", [{"image": f"p{i}.png", "text": f"t {i}", "label": [1, 0][i % 2]}
                                                      for i in range(4)])
    out = tmp_path / "cache"
    build_cache(tmp_path / "g" / "d.jsonl", out, format="generic", val_fraction=0.0, **OPTS)
    m, _meta, labels = cachegen.read_labelled(out)
    assert (m["labels"]["task"], m["labels"]["names"]) == ("binary", ["0", "1"])
    assert labels.tolist() == [1, 0, 1, 0]


def test_generic_train_row_without_label_is_skipped(tmp_path):
    cachegen.generic_images(tmp_path / "g", 4)
    cachegen.write_jsonl(tmp_path / "g" / "d.jsonl",
                         [{"image": f"p{i}.png", "text": f"t {i}", "label": "ab"[i % 2] if i else None} for i in range(4)])
    out = tmp_path / "cache"
    build_cache(tmp_path / "g" / "d.jsonl", out, label_column="label", val_fraction=0.0, **OPTS)
    assert cachegen.skipped(out) == [("p0", "missing_label")]
    assert cachegen.read_labelled(out)[2].tolist() == [1, 0, 1]
