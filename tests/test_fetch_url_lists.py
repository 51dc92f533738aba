"""Subset parsing, row selection (first N, seeded sample, dedup, bad URLs) and resumable list download."""

from __future__ import annotations

from pathlib import Path

import pytest
from imageserver import ImageServer

from vlpipe.errors import VlpipeError
from vlpipe.fetch.url_lists import detect_columns, download_file, parse_subset, resolve_list, select_rows


@pytest.mark.parametrize(
    ("text", "expected"),
    [("200k", 200_000), ("1m", 1_000_000), ("5000", 5000), ("all", None), ("ALL", None), ("1.5M", 1_500_000)],
)
def test_parse_subset(text: str, expected: int | None) -> None:
    assert parse_subset(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "0", "-5", "10x", "0.5k1", "1.0001k"])
def test_parse_subset_rejects(text: str) -> None:
    with pytest.raises(VlpipeError, match="--subset"):
        parse_subset(text)


def write_tsv(path: Path, n: int, *, header: str | None = None, url_first: bool = False) -> Path:
    lines = [header] if header else []
    for i in range(n):
        caption, url = f"caption {i}", f"http://example.com/{i}.jpg"
        lines.append(f"{url}\t{caption}" if url_first else f"{caption}\t{url}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_first_rows_headerless(tmp_path: Path) -> None:
    selection = select_rows(write_tsv(tmp_path / "cc.tsv", 50), 7)
    assert selection.rows.column("row").to_pylist() == list(range(7))
    assert selection.rows.column("caption").to_pylist()[3] == "caption 3"
    assert selection.rows.column("url").to_pylist()[3] == "http://example.com/3.jpg"
    assert selection.drops.num_rows == 0
    assert select_rows(tmp_path / "cc.tsv", None).rows.num_rows == 50


def test_seeded_sample_is_reproducible(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "cc.tsv", 200)
    first = select_rows(path, 20, sample=True, seed=1).rows.column("row").to_pylist()
    again = select_rows(path, 20, sample=True, seed=1).rows.column("row").to_pylist()
    other = select_rows(path, 20, sample=True, seed=2).rows.column("row").to_pylist()
    assert first == again and len(first) == 20 and first == sorted(first)
    assert first != other and first != list(range(20))
    urls = select_rows(path, 20, sample=True, seed=1).rows.column("url").to_pylist()
    assert urls == [f"http://example.com/{r}.jpg" for r in first]


def test_url_first_and_header_layouts(tmp_path: Path) -> None:
    cc12m = select_rows(write_tsv(tmp_path / "a.tsv", 3, url_first=True), None).rows
    assert cc12m.column("url").to_pylist()[0] == "http://example.com/0.jpg"
    headed = select_rows(write_tsv(tmp_path / "b.tsv", 3, header="caption\turl"), None).rows
    assert headed.column("row").to_pylist() == [0, 1, 2]
    assert headed.column("caption").to_pylist()[0] == "caption 0"
    with pytest.raises(VlpipeError, match="line 1"):
        detect_columns("a\tb\tc\n", tmp_path / "c.tsv")


def test_duplicates_and_bad_urls_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "cc.tsv"
    path.write_text(
        "one\thttp://a.com/1.jpg\n"
        "two\thttp://a.com/1.jpg\n"
        "three\tfile:///etc/passwd\n"
        "four\tjavascript:alert(1)\n"
        "\thttp://a.com/5.jpg\n"
        "six\thttps://a.com/6.jpg\n"
    )
    selection = select_rows(path, None)
    assert selection.rows.column("row").to_pylist() == [0, 5]
    drops = {r["row"]: r["reason"] for r in selection.drops.to_pylist()}
    assert drops == {1: "duplicate_url", 2: "bad_scheme", 3: "bad_scheme", 4: "no_caption"}
    # Every selected row is either passed on or recorded.
    assert selection.rows.num_rows + selection.drops.num_rows == 6


def test_download_resumes_partial_file(tmp_path: Path) -> None:
    with ImageServer() as server:
        url = server.base + "/list.tsv"
        full = server.tsv().encode()
        dest = tmp_path / "list.tsv"
        dest.with_name("list.tsv.part").write_bytes(full[:100])
        assert download_file(url, dest).read_bytes() == full
        assert server.requests == ["/list.tsv"]
        assert server.ranges == ["bytes=100-"]  # only the missing tail was asked for
        download_file(url, dest)  # kept: not fetched again
        assert server.requests == ["/list.tsv"]
        # resolve_list names the copy after the URL's hash, so lists with equal names do not collide.
        assert resolve_list(url, tmp_path).read_bytes() == full
    with pytest.raises(VlpipeError, match="no such file"):
        resolve_list(str(tmp_path / "missing.tsv"), tmp_path)
