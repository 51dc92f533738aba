"""Bad input to `vlpipe fetch`: one `error:` line naming the file/option, exit 1, nothing written.

Every case runs the real `vlpipe` entry point on a real bad file or option. None of them gets
as far as img2dataset, so the whole module takes seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from imageserver import ImageServer

from vlpipe.cli.main import main
from vlpipe.errors import VlpipeError
from vlpipe.fetch.url_lists import select_rows

# A well-formed list whose URLs are never contacted (every case fails before downloading).
GOOD_ROWS = "a red square\thttp://127.0.0.1:9/a.jpg\nblue\thttp://127.0.0.1:9/b.jpg\n"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and stderr of `vlpipe ARGS`, through the same entry point as the installed command."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    """Exit 1 and exactly one `error:` line (no traceback) containing every fragment."""
    assert code == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def good_list(tmp_path: Path) -> Path:
    path = tmp_path / "loc.tsv"
    path.write_text(GOOD_ROWS)
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer() as srv:
        yield srv


# --- 16: option values are checked before anything runs ------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "wanted"),
    [
        ("--processes", "0", "must be >= 1"),
        ("--threads", "0", "must be >= 1"),
        ("--shard-size", "0", "must be >= 1"),
        ("--timeout", "-1", "must be > 0"),
        ("--timeout", "nan", "must be a finite number"),
        ("--deadline", "0", "must be > 0"),
        ("--retries", "-3", "must be >= 0"),
        ("--min-side", "-5", "must be >= 0"),
        ("--max-aspect", "0", "must be >= 1"),
        ("--max-aspect", "0.5", "must be >= 1"),
        ("--max-aspect", "nan", "must be >= 1"),  # nan would fail every comparison and keep nothing
        ("--max-pixels", "0", "must be >= 1"),
        ("--max-bytes", "-1", "must be >= 1"),
        ("--shorter-side", "-1", "must be >= 0"),
        ("--jpeg-quality", "101", "must be <= 100"),
    ],
)
def test_bad_option_values_are_refused_before_anything_runs(
    option: str, value: str, wanted: str, good_list: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, err = run_cli(["fetch", "tsv", str(good_list), "--out", str(out), option, value], capsys)
    assert_one_line_error(code, err, f"error: {option} ", wanted)
    assert not out.exists()


def test_cc_options_are_checked_before_the_list_download(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without --tsv `fetch cc` would first download the multi-GB official list: the bad option
    # must be reported before that (this machine has no internet, so a download would fail).
    dl, out = tmp_path / "dl", tmp_path / "out"
    code, err = run_cli(
        ["fetch", "cc", "--out", str(out), "--download-dir", str(dl), "--threads", "0"], capsys
    )
    assert_one_line_error(code, err, "--threads 0: must be >= 1")
    assert not out.exists() and not dl.exists()


def test_option_zero_values_that_mean_something_are_accepted() -> None:
    from vlpipe.fetch import FetchConfig, VerifyConfig

    assert FetchConfig(verify=VerifyConfig(min_side=0, shorter_side=0, max_aspect=1.0)).rows is None
    assert FetchConfig(subset="5k", verify=VerifyConfig(max_aspect=float("inf"))).rows == 5000


def test_library_callers_get_the_same_checks(good_list: Path, tmp_path: Path) -> None:
    from vlpipe.fetch import DownloadConfig, FetchConfig, fetch_tsv

    with pytest.raises(VlpipeError, match=r"^config: processes must be >= 1, got 0$"):
        fetch_tsv(str(good_list), tmp_path / "out", config=FetchConfig(download=DownloadConfig(processes=0)))
    assert not (tmp_path / "out").exists()


# --- 21: a bad list leaves no --out behind -------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (None, ["nope.tsv: no such file"]),
        (b"", ["list.tsv: the file is empty"]),
        (b"\n\n", ["list.tsv: line 1 is empty"]),
        (b"url\ttext\nhttp://a.com/1.jpg\tcap\n", ["list.tsv: line 1: header has 'url' but no 'caption' column"]),
        (b"a\tb\tc\n", ["list.tsv: line 1: expected 2 tab-separated fields (caption, url), got 3"]),
        (b"caption\turl\n", ["list.tsv: no data rows to fetch"]),
        # A Latin-1 list: the byte is named with its line, not silently replaced.
        (b"ok\thttp://a.com/1.jpg\ncaf\xe9\thttp://a.com/2.jpg\n", ["list.tsv: line 2: not valid UTF-8 (byte 0xe9"]),
        (
            b"caption\turl\none\tftp://a.com/1.jpg\ntwo\t\n",
            ["list.tsv: all 2 selected rows were dropped before downloading (bad_scheme 1, bad_url 1)",
             "e.g. line 2: only http(s) URLs"],
        ),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["tsv", "cc"])
def test_bad_list_leaves_no_output_folder(
    content: bytes | None,
    fragments: list[str],
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    listing = tmp_path / ("nope.tsv" if content is None else "list.tsv")
    if content is not None:
        listing.write_bytes(content)
    out = tmp_path / "fe1"
    args = ["tsv", str(listing)] if command == "tsv" else ["cc", "--tsv", str(listing)]
    code, err = run_cli(["fetch", *args, "--out", str(out)], capsys)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()


def test_missing_remote_list_leaves_no_output_folder(
    server: ImageServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    url = server.base + "/no-such-list.tsv"
    code, err = run_cli(
        ["fetch", "tsv", url, "--out", str(out), "--download-dir", str(tmp_path / "dl")], capsys
    )
    assert_one_line_error(code, err, f"downloading {url}: HTTP 404")
    assert not out.exists()


def test_bad_list_keeps_an_earlier_output_folder_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A record left by a run that never selected rows (e.g. by an older vlpipe): not overwritten.
    out = tmp_path / "out"
    out.mkdir()
    record = {"format": "vlpipe-fetch", "version": 1, "options": {"shard_size": 7}, "runs": []}
    (out / "vlpipe_fetch.json").write_text(json.dumps(record))
    code, err = run_cli(["fetch", "tsv", str(tmp_path / "nope.tsv"), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "nope.tsv: no such file")
    assert sorted(p.name for p in out.iterdir()) == ["vlpipe_fetch.json"]
    assert json.loads((out / "vlpipe_fetch.json").read_text()) == record


def test_out_that_is_a_file(good_list: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, err = run_cli(["fetch", "tsv", str(good_list), "--out", str(blocker)], capsys)
    assert_one_line_error(code, err, f"--out {blocker}: exists and is not a folder")
    assert blocker.read_text() == "x"


# --- 14: a damaged run record in --out -----------------------------------------------------


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ('{"format": "vlpipe-fetch", "version": 1, "opti', "Unterminated string"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"format": "vlpipe-fetch", "runs": []}', "no 'options' object"),
        ('{"options": {"shard_size": 10}}', "no 'runs' list"),
        (
            '{"options": {"shard_size": "10"}, "runs": []}',
            "options.shard_size '10' is not a whole number >= 1",
        ),
        (
            '{"options": {"shard_size": 10}, "runs": [{"start": 1}]}',
            "runs[0] has no numeric 'start' and 'end'",
        ),
        ("\xff\xfe{}", "not a valid fetch record"),
    ],
)
def test_damaged_fetch_record_is_refused(
    record: str, problem: str, good_list: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    record_path = out / "vlpipe_fetch.json"
    record_path.write_bytes(record.encode("latin-1"))
    code, err = run_cli(["fetch", "tsv", str(good_list), "--out", str(out)], capsys)
    assert_one_line_error(
        code, err, f"error: {record_path}: not a valid fetch record (", problem, "new --out"
    )
    assert record_path.read_bytes() == record.encode("latin-1")  # left for the user to inspect
    assert sorted(p.name for p in out.iterdir()) == ["vlpipe_fetch.json"]
    # `fetch report` reads the same record and says the same.
    code, err = run_cli(["fetch", "report", str(out)], capsys)
    assert_one_line_error(code, err, f"{record_path}: not a valid fetch record (", problem)


def test_started_fetch_without_record_is_refused(
    good_list: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vlpipe.fetch.url_lists import write_parquet

    out = tmp_path / "out"
    write_parquet(select_rows(good_list, None).rows, out / "vlpipe_input.parquet")
    code, err = run_cli(["fetch", "tsv", str(good_list), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "vlpipe_fetch.json: missing, but", "holds a started fetch")


# --- minor: encoding and URL details of the list -------------------------------------------


def test_non_utf8_byte_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "cc.tsv"
    path.write_bytes(b"caption\turl\none\thttp://a.com/1.jpg\ntwo\xff\thttp://a.com/2.jpg\n")
    with pytest.raises(VlpipeError, match=r"cc\.tsv: line 3: not valid UTF-8 \(byte 0xff at byte 4\)"):
        select_rows(path, None)
    # Only the selected rows are read: a bad byte past --subset does not stop the fetch.
    assert select_rows(path, 1).rows.column("caption").to_pylist() == ["one"]


def test_utf8_captions_and_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "cc.tsv"
    path.write_bytes("\ufeffcaption\turl\ncafé ☕\thttp://a.com/1.jpg\n".encode())
    rows = select_rows(path, None).rows
    assert rows.column("caption").to_pylist() == ["café ☕"]
    assert rows.column("row").to_pylist() == [0]
    # The same in sample mode (which counts the lines first).
    assert select_rows(path, 1, sample=True).rows.column("caption").to_pylist() == ["café ☕"]


def test_row_without_url_says_so(tmp_path: Path) -> None:
    path = tmp_path / "cc.tsv"
    path.write_text("one\thttp://a.com/1.jpg\nonly-one-field\ntwo\t \nthree\tftp://a.com/3.jpg\n")
    drops = {r["row"]: (r["reason"], r["detail"]) for r in select_rows(path, None).drops.to_pylist()}
    assert drops == {
        1: ("bad_url", "empty URL"),
        2: ("bad_url", "empty URL"),
        3: ("bad_scheme", "only http(s) URLs with a host are fetched"),
    }


def test_a_list_of_only_private_addresses_names_the_flag_before_downloading(
    good_list: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, err = run_cli(["fetch", "tsv", str(good_list), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "every URL is on a loopback or private address", "--allow-private-network")
    assert not out.exists()  # refused before img2dataset started or anything was written


def test_all_private_needs_every_host_to_be_a_literal_private_address() -> None:
    from vlpipe.fetch.safety import all_private

    assert all_private(["http://127.0.0.1:9/a.jpg", "http://10.0.0.7/c", "http://[::1]/d"])
    assert not all_private(["http://127.0.0.1:9/a.jpg", "http://localhost/b.jpg"])  # a name: the guard resolves it
    assert not all_private(["http://127.0.0.1/a.jpg", "http://8.8.8.8/b.jpg"])
    assert not all_private(["http://example.invalid/a.jpg"])  # a name: the guard decides, after its own lookup
    assert not all_private([])
