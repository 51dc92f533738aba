"""open_source: which reader SRC goes to, and the one-line errors when it fits none."""

from __future__ import annotations

import cachegen
import pytest

from vlpipe.errors import VlpipeError
from vlpipe.ingest import detect_format, iter_captions, open_source


def test_missing_or_unrecognised_src(tmp_path):
    with pytest.raises(VlpipeError, match="no such file or directory"):
        open_source(tmp_path / "nope")
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(VlpipeError, match="no input found"):
        open_source(tmp_path)
    with pytest.raises(VlpipeError, match=r"notes.md: expected a folder, a .tar shard or a captions file"):
        open_source(tmp_path / "notes.md")


def test_several_captions_files_must_be_chosen(tmp_path):
    (tmp_path / "a.csv").write_text("image,caption\nx.jpg,x\n")
    (tmp_path / "b.jsonl").write_text('{"image": "x.jpg", "caption": "x"}\n')
    with pytest.raises(VlpipeError, match=r"several captions files \(a.csv, b.jsonl\); pass the one"):
        open_source(tmp_path)


def test_auto_detects_each_labelled_layout(tmp_path):
    assert detect_format(cachegen.hateful(tmp_path / "hm")) == "hateful-memes"
    assert detect_format(cachegen.mmimdb(tmp_path / "mm")) == "mmimdb"
    assert detect_format(cachegen.food(tmp_path / "food")) == "food101"
    src = cachegen.write_layout(tmp_path / "w", "webdataset", [cachegen.photo_items(1)])
    assert detect_format(src) is None and detect_format(src / "00000.tar") is None
    source = open_source(tmp_path / "mm", shard_size=3)
    assert source.layout == "mmimdb" and source.labels is not None and source.root == tmp_path / "mm"
    assert [s.name for s in source.shards] == ["mmimdb[0:3]", "mmimdb[3:6]", "mmimdb[6:9]"]
    assert sorted(c for s in source.shards for c in iter_captions(s))[0] == "plot of movie 10"


def test_a_label_column_makes_a_captions_file_generic(tmp_path):
    cachegen.generic_images(tmp_path, 2)
    (tmp_path / "d.csv").write_text("image,caption,kind\np0.png,a,x\np1.png,b,y\n")
    assert open_source(tmp_path / "d.csv").labels is None
    source = open_source(tmp_path / "d.csv", label_column="kind")
    assert source.layout == "generic" and source.labels.names == ("x", "y")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"format": "mmimdb", "label_column": "x"}, "--label-column, --multi-label and --split-column apply to "
                                                "--format generic only"),
    ({"format": "coco"}, r"--format 'coco': expected one of hateful-memes, mmimdb, food101, generic"),
])
def test_bad_format_options(tmp_path, kwargs, message):
    with pytest.raises(VlpipeError, match=message):
        open_source(cachegen.mmimdb(tmp_path / "mm"), **kwargs)
