"""End to end: `vlpipe fetch tsv` with real img2dataset downloads from a local server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from imageserver import CASES, ImageServer, assert_kept_image

from vlpipe.cli.fetch import fetch
from vlpipe.errors import VlpipeError
from vlpipe.fetch.tally import fetch_report

# Small everything: one process, small shards. The trickling case costs the 4 s deadline; the
# socket timeout is longer than that, so only the overall deadline can stop it.
FAST = ["--processes", "1", "--threads", "8", "--shard-size", "10", "--timeout", "5", "--deadline", "4",
        "--max-pixels", "4000000", "--allow-private-network"]  # fmt: skip


def run_fetch(server: ImageServer, out: Path, *extra: str, command: tuple[str, ...] = ()) -> dict:
    command = command or ("tsv", server.base + "/list.tsv")
    args = [*command, "--out", str(out), "--download-dir", str(out.parent / "dl"), *extra]
    result = CliRunner().invoke(fetch, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return fetch_report(out)


def read_samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("[0-9]*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def drop_reasons(out: Path) -> dict[str, str]:
    """caption-less view: url -> reason over every drop record (selection and shards)."""
    reasons = {}
    for path in [out / "vlpipe_selection_drops.parquet", *sorted(out.glob("vlpipe_*_drops.parquet"))]:
        for row in pq.read_table(path).to_pylist():
            reasons[(row["row"], row["url"])] = row["reason"]
    return reasons


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def fetched(server: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fetch") / "out"
    return out, run_fetch(server, out, *FAST)


def test_kept_images_are_exactly_the_correct_ones(fetched: tuple[Path, dict]) -> None:
    out, _ = fetched
    samples = read_samples(out)
    by_caption = {s["txt"].decode(): s for s in samples.values()}
    expected_kept = [c for c in CASES if c.expect == "kept"]
    assert sorted(by_caption) == sorted(f"a picture of {c.name}" for c in expected_kept)
    for case in expected_kept:
        sample = by_caption[f"a picture of {case.name}"]
        assert_kept_image(sample["jpg"], case)
        meta = json.loads(sample["json"])
        assert meta["status"] == "success" and meta["caption"] == f"a picture of {case.name}"


def test_every_drop_has_its_reason(fetched: tuple[Path, dict], server: ImageServer) -> None:
    out, report = fetched
    reasons = drop_reasons(out)
    expected = {(row, server.url(c)): c.expect for row, c in enumerate(CASES) if c.expect != "kept"}
    assert reasons == expected
    assert report["attempted"] == len(CASES) == report["kept"] + report["dropped_total"]
    assert report["kept"] == sum(c.expect == "kept" for c in CASES)
    assert report["complete"] and report["shards_done"] == report["shards_expected"] == 3
    assert report["bytes_downloaded"] > 0 and report["bytes_written"] > 0 and report["images_per_s"] > 0


def test_layout_feeds_build_cache(fetched: tuple[Path, dict]) -> None:
    out, _ = fetched
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if n.endswith(".tar")] == ["00000.tar", "00001.tar", "00002.tar"]
    for name in names:
        assert name.startswith(("0000", "vlpipe_")), name  # only img2dataset names and vlpipe_* extras
    meta = pq.read_table(out / "00000.parquet").to_pylist()
    assert {"key", "caption", "url", "status", "width", "height", "sha256"} <= set(meta[0])
    assert not (out / "vlpipe_staging" / "00000.tar").exists()  # raw bytes removed once verified


def test_report_cli(fetched: tuple[Path, dict]) -> None:
    out, report = fetched
    result = CliRunner().invoke(fetch, ["report", str(out), "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == report
    text = CliRunner().invoke(fetch, ["report", str(out)]).output
    assert "redirect_loop" in text and f"kept        {report['kept']}" in text


@pytest.mark.slow
def test_resume_after_killed_run(fetched: tuple[Path, dict], server: ImageServer, tmp_path: Path) -> None:
    out, report = fetched
    resumed = tmp_path / "out"
    args = [
        "tsv",
        server.base + "/list.tsv",
        "--out",
        str(resumed),
        "--download-dir",
        str(tmp_path / "dl"),
        *FAST,
    ]
    # A real `vlpipe fetch` in its own process group, SIGKILLed (with its img2dataset workers)
    # as soon as the first shard is done, i.e. in the middle of the next one.
    proc = subprocess.Popen([sys.executable, "-m", "vlpipe.cli.main", "fetch", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(resumed.glob("vlpipe_*_done.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, "fetch ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not fetch_report(resumed)["complete"]
    # What the killed run finished must survive the resume untouched (not redone, not rewritten).
    finished = {p: p.stat().st_mtime_ns for done in resumed.glob("vlpipe_*_done.json")
                for p in (done, resumed / f"{done.name.split('_')[1]}.tar")}
    assert finished and all(p.exists() for p in finished)
    # A verified shard half-written under its temporary name, as a kill during the rename leaves it.
    (resumed / ".tmp-4242-00001.tar").write_bytes((out / "00001.tar").read_bytes()[:1000])

    again = run_fetch(server, resumed, *FAST)
    assert read_samples(resumed) == read_samples(out)
    assert drop_reasons(resumed) == drop_reasons(out)
    assert {k: again[k] for k in ("attempted", "kept", "dropped")} == {
        k: report[k] for k in ("attempted", "kept", "dropped")
    }
    assert again["complete"] and not list(resumed.glob(".tmp-*"))
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert not list((resumed / "vlpipe_staging").glob("*.tar"))


def test_rerun_with_other_options_is_refused(fetched: tuple[Path, dict], server: ImageServer) -> None:
    out, _ = fetched
    result = CliRunner().invoke(
        fetch, ["tsv", server.base + "/list.tsv", "--out", str(out), *FAST, "--min-side", "8"]
    )
    assert isinstance(result.exception, VlpipeError) and "min_side" not in str(result.exception)
    assert "verify" in str(result.exception)


@pytest.mark.slow
def test_loopback_refused_without_flag(server: ImageServer, tmp_path: Path) -> None:
    """Names that resolve to loopback are refused by the guard inside img2dataset's workers (a list
    of literal private addresses is refused before it starts: test_fetch_errors.py)."""
    no_flag = [a for a in FAST if a != "--allow-private-network"]
    listing = tmp_path / "named.tsv"
    by_name = server.base.replace("127.0.0.1", "localhost")
    listing.write_text("".join(f"photo {i}\t{by_name}/img/jpeg?n={i}\n" for i in range(3)))
    requests_before = len(server.requests)
    out = tmp_path / "out"
    args = ["tsv", str(listing), "--out", str(out), "--download-dir", str(tmp_path / "dl"), *no_flag]
    result = CliRunner().invoke(fetch, args)
    # A fetch that keeps nothing is an error that says why, not an empty dataset with exit 0.
    assert isinstance(result.exception, VlpipeError)
    assert f"{out.resolve()}: no image was kept: all 3 rows were dropped (private_address 3)" in str(
        result.exception
    ) and "--allow-private-network" in str(result.exception)
    report = fetch_report(out)  # the records of the complete fetch stay, for `fetch report`
    assert report["complete"] and report["attempted"] == 3 and report["kept"] == 0
    assert report["dropped"] == {"private_address": 3}
    assert server.requests[requests_before:] == []  # no image URL was contacted


def test_output_feeds_build_cache(fetched: tuple[Path, dict], tmp_path: Path) -> None:
    import numpy as np

    from vlpipe.cache.writer import build_cache

    out, report = fetched
    manifest = build_cache(out, tmp_path / "cache", image_size=32, patch_size=16, max_len=16,
                           tokenizer="wordpiece:200", val_fraction=0.0, processes=1, quiet=True)  # fmt: skip
    assert manifest.num_samples == report["kept"]
    assert not manifest.skipped  # every kept image decodes in build-cache too
    meta = pq.read_table(tmp_path / "cache" / manifest.shards[0].files["meta"].path).to_pylist()
    images = np.load(tmp_path / "cache" / manifest.shards[0].files["images"].path, mmap_mode="r")
    first = next(i for i, m in enumerate(meta) if m["caption"] == "a picture of jpeg")
    # 2x2 patches of a red-over-blue image: the top patches red, the bottom ones blue.
    top, bottom = images[first, 0].reshape(-1, 3).mean(0), images[first, 3].reshape(-1, 3).mean(0)
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]


def test_staging_recovery_after_kill(tmp_path: Path) -> None:
    from test_fetch_publish import stage_shard

    from vlpipe.fetch.normalize import VerifyConfig
    from vlpipe.fetch.pipeline import _finalize_staged
    from vlpipe.fetch.publish import done_path

    staging, out = tmp_path / "staging", tmp_path / "out"
    with ImageServer() as srv:
        stage_shard(staging, srv)  # shard 0: downloaded, killed before verification
    (staging / "00001_stats.json").write_text("{")  # shard 1: killed while img2dataset wrote it
    (staging / "00001.tar").write_bytes(b"partial")
    _finalize_staged(staging, out, 2, VerifyConfig(max_pixels=4_000_000))
    assert done_path(out, 0).exists() and not done_path(out, 1).exists()
    assert sorted(p.name for p in staging.iterdir()) == ["00000_stats.json", "00001.tar"]
    # Killed after shard 0's done record but before its raw files were removed.
    (staging / "00000.tar").write_bytes(b"raw")
    _finalize_staged(staging, out, 2, VerifyConfig(max_pixels=4_000_000))
    assert not (staging / "00000.tar").exists()


def test_staging_left_by_img2dataset_writer_is_downloaded_again(tmp_path: Path) -> None:
    # A shard staged before vlpipe wrote its own staged tars (img2dataset's arrival order): never
    # published as is, img2dataset's done marker goes so that the shard is downloaded again.
    import pyarrow as pa

    from vlpipe.fetch.normalize import VerifyConfig
    from vlpipe.fetch.pipeline import _finalize_staged
    from vlpipe.fetch.publish import done_path

    staging, out = tmp_path / "staging", tmp_path / "out"
    staging.mkdir()
    with tarfile.open(staging / "00000.tar", "w"):
        pass
    pq.write_table(pa.table({"key": ["000000000"], "status": ["failed_to_download"]}), staging / "00000.parquet")
    (staging / "00000_stats.json").write_text("{}")
    _finalize_staged(staging, out, 1, VerifyConfig())
    assert not done_path(out, 0).exists() and not (staging / "00000_stats.json").exists()


def test_nothing_left_to_download(tmp_path: Path) -> None:
    from vlpipe.fetch import FetchConfig, fetch_tsv

    listing = tmp_path / "list.tsv"
    listing.write_text("a\tfile:///etc/passwd\nb\tgopher://x/1\n")
    message = "all 2 selected rows were dropped before downloading (bad_scheme 2); e.g. line 1: only http"
    with pytest.raises(VlpipeError, match=r"list\.tsv: " + re.escape(message)):
        fetch_tsv(str(listing), tmp_path / "out", config=FetchConfig())
    assert not (tmp_path / "out").exists()


def test_finished_fetch_resumes_as_done(fetched: tuple[Path, dict], server: ImageServer, tmp_path: Path) -> None:
    # The list and its columns are only read for a new fetch; a finished one reruns as a no-op.
    out, report = fetched
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    requests_before = len(server.requests)
    again = run_fetch(server, copy, *FAST)
    assert {k: again[k] for k in ("attempted", "kept", "dropped")} == {
        k: report[k] for k in ("attempted", "kept", "dropped")
    }
    assert again["runs"] == report["runs"] + 1 and server.requests[requests_before:] == []


def damage(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(b"garbage, not what the name says\n")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    else:
        path.write_text(how)


@pytest.mark.parametrize(
    ("name", "how", "message"),
    [
        ("vlpipe_selection_drops.parquet", "garbage", "not a readable drop table (Parquet magic bytes not found"),
        ("vlpipe_input.parquet", "truncated", "not a readable Parquet file ("),
        ("vlpipe_fetch.json", "truncated", "not a valid fetch record ("),
        ("vlpipe_fetch.json", "[]", "not a valid fetch record (expected a JSON object, got list)"),
        ("vlpipe_00001_done.json", "truncated", "not a valid shard record ("),
        ("vlpipe_00001_done.json", '{"attempted": 3}', "not a valid shard record (expected attempted, kept"),
    ],
)
def test_report_of_damaged_output(
    name: str, how: str, message: str, fetched: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vlpipe.cli.main import main

    copy = tmp_path / "out"
    shutil.copytree(fetched[0], copy)
    damage(copy / name, how)
    with pytest.raises(SystemExit) as exit_info:
        main(["fetch", "report", str(copy)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"error: {copy / name}: {message}"), err
