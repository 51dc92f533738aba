"""The checks every row passes, and source shards small and picklable enough for worker processes."""

from __future__ import annotations

import pickle

import cachegen

from vlpipe.ingest.rows import ROWS_LAYOUT, Row, Skip, checked, row_shards


def test_checks_in_order_problem_image_file_key_image_caption(tmp_path):
    (tmp_path / "a.png").write_bytes(cachegen.png16())
    seen: set[str] = set()
    rows = [
        Row("k0", "s", image_path=str(tmp_path / "a.png"), caption="ok", url=None, label=1, split="test"),
        Row("k1", "s", image=b"x", caption="c", problem=("duplicate_id", "seen before")),
        Row("k0", "s", image_path=str(tmp_path / "gone.png"), caption="c"),  # unread: the key is not taken yet
        Row("k0", "s", image=b"x", caption="again"),
        Row("k2", "s", caption="no image"),
        Row("k3", "s", image=b"x", caption="  "),
    ]
    out = [checked(r, seen) for r in rows]
    first = out[0]
    assert isinstance(first, Row) and first.image == (tmp_path / "a.png").read_bytes() and first.image_path is None
    assert (first.label, first.split, first.caption) == (1, "test", "ok")
    assert [(s.key, s.reason) for s in out[1:]] == [("k1", "duplicate_id"), ("k0", "missing_image"),
                                                    ("k0", "duplicate_key"), ("k2", "missing_image"),
                                                    ("k3", "missing_caption")]
    assert all(isinstance(s, Skip) and s.source == "s" for s in out[1:])
    assert out[2].detail.startswith(f"{tmp_path / 'gone.png'}: ")


def test_values_are_normalized_to_str_and_bytes():
    row = checked(Row("k", "s", image=bytearray(b"img"), caption=7, url=3), set())
    assert (row.image, row.caption, row.url) == (b"img", "7", "3")


def test_row_shards_are_named_tagged_and_picklable():
    rows = [Row(f"k{i}", image_path=f"/data/{i}.jpg", caption=f"c{i}") for i in range(5)]
    shards = row_shards("caps.csv", "/data/caps.csv", rows, 2)
    assert [s.name for s in shards] == ["caps.csv[0:2]", "caps.csv[2:4]", "caps.csv[4:5]"]
    assert all(s.layout == ROWS_LAYOUT for s in shards)
    assert [r.source for r in shards[1].rows] == ["caps.csv[2:4]"] * 2
    again = pickle.loads(pickle.dumps(shards[1]))
    assert again == shards[1] and all(r.image is None for r in again.rows)  # paths travel, not bytes
