"""A build split with `build-cache --part I/N` and finished by `vlpipe cache merge`, without any engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cachegen
import pytest
from click.testing import CliRunner
from test_writer import OPTS, cache_bytes

from vlpipe.cache.format import load_manifest
from vlpipe.cache.merge import merge_parts
from vlpipe.cache.writer import build_cache
from vlpipe.cli.main import cli
from vlpipe.errors import VlpipeError
from vlpipe.text import load_tokenizer

FLAGS = ["--image-size", "32", "--patch-size", "8", "--max-len", "16", "--tokenizer", "wordpiece:200",
         "--val-fraction", "0.3", "--processes", "1"]


def vlpipe(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    if isinstance(result.exception, VlpipeError):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def manifest_without_created(cache: Path) -> dict:
    manifest = json.loads((cache / "manifest.json").read_text())
    del manifest["provenance"]["created"]
    return manifest


def assert_same_cache(a: Path, b: Path) -> None:
    """Every file byte-identical; the manifest too but for the time it was written."""
    left, right = cache_bytes(a), cache_bytes(b)
    assert left.keys() == right.keys() and all(left[k] == right[k] for k in left)
    assert manifest_without_created(a) == manifest_without_created(b)


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    items = cachegen.hard_items() + cachegen.photo_items(12, 100)
    chunks = [items[:5], items[5:10], items[10:14], items[14:18], items[18:]]
    return cachegen.write_layout(tmp_path_factory.mktemp("src"), "webdataset", chunks)


@pytest.fixture(scope="module")
def local(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "cache"
    build_cache(src, out, processes=1, **OPTS)
    return out


def build_parts(src: Path, out: Path, count: int, parts: range | None = None) -> None:
    for i in parts if parts is not None else range(count):
        vlpipe("build-cache", str(src), "--out", str(out), "--part", f"{i}/{count}", *FLAGS)


def test_parts_then_merge_equal_a_one_machine_build(src: Path, local: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    build_parts(src, out, 3, range(2))
    with pytest.raises(VlpipeError, match="not a complete vlpipe cache"):
        load_manifest(out)  # parts write no manifest
    # part 0 of 3 holds shards 0 and 3, part 1 shards 1 and 4, as `index mod N` says
    assert json.loads((out / "parts/00000-of-00003.json").read_text())["shards"] == ["00000", "00003"]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000", "00001", "00003", "00004"]
    with pytest.raises(VlpipeError, match=r": part 2/3 is missing: no parts/00002-of-00003\.json; run `vlpipe "
                                          r"build-cache SRC --out .* --part 2/3`"):
        vlpipe("cache", "merge", str(out))

    build_parts(src, out, 3, range(2, 3))
    assert "merged 3 parts" in vlpipe("cache", "merge", str(out))
    assert_same_cache(out, local)
    assert not (out / "parts").exists() and not (out / "build.json").exists()
    assert "nothing to merge" in vlpipe("cache", "merge", str(out))  # a second merge changes nothing
    assert_same_cache(out, local)


def test_labelled_dataset_in_parts(tmp_path: Path) -> None:
    # The labels section is summed over the parts' shards exactly as a one-machine build sums it.
    src = cachegen.hateful(tmp_path / "hm")
    opts = {**cachegen.LABELLED_OPTS, "shard_size": 3}
    build_cache(src, tmp_path / "local", **opts)
    for i in range(2):
        assert build_cache(src, tmp_path / "parts", part=f"{i}/2", **opts) is None
    merge_parts(tmp_path / "parts", quiet=True)
    assert load_manifest(tmp_path / "parts").labels is not None
    assert_same_cache(tmp_path / "parts", tmp_path / "local")


def test_rerun_part_skips_its_finished_shards(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    build_parts(src, out, 2, range(1))
    done = {p: p.stat().st_mtime_ns for p in out.glob("shards/*/done.json")}
    assert sorted(p.parent.name for p in done) == ["00000", "00002", "00004"]
    (out / "shards/00002/done.json").unlink()  # as a kill in the middle of that shard leaves it
    del done[out / "shards/00002/done.json"]
    assert "resuming: 2 of 3 shards already built" in CliRunner().invoke(
        cli, ["build-cache", str(src), "--out", str(out), "--part", "0/2", *FLAGS]).output
    assert {p: p.stat().st_mtime_ns for p in done} == done
    assert (out / "shards/00002/done.json").exists()


def test_merge_names_a_part_built_with_other_options(src: Path, tmp_path: Path) -> None:
    # Part 1 built elsewhere with another --image-size and copied in (rsync from the wrong run).
    out, other = tmp_path / "cache", tmp_path / "other"
    build_parts(src, out, 2, range(1))
    vlpipe("build-cache", str(src), "--out", str(other), "--part", "1/2", *FLAGS, "--image-size", "16")
    shutil.copytree(other / "shards", out / "shards", dirs_exist_ok=True)
    shutil.copy(other / "parts/00001-of-00002.json", out / "parts")
    with pytest.raises(VlpipeError, match=r"^parts/00001-of-00002\.json: part 1/2 was built with other options "
                                          r"than build\.json \(image_size 32 -> 16\); rebuild it$"):
        merge_parts(out, quiet=True)
    assert not (out / "manifest.json").exists()


def test_merge_names_a_part_that_used_another_tokenizer(src: Path, tmp_path: Path) -> None:
    # tokenizer.json replaced between two parts (say, by a part of an older vlpipe that overwrote
    # it): the shards of part 0 hold ids of the old vocabulary.
    out = tmp_path / "cache"
    build_parts(src, out, 2, range(1))
    load_tokenizer("wordpiece:150", ["some other captions", "entirely"]).save(out / "tokenizer.json")
    build_parts(src, out, 2, range(1, 2))
    with pytest.raises(VlpipeError, match=r"^parts/00000-of-00002\.json: part 0/2 used another tokenizer \(sha256 "):
        merge_parts(out, quiet=True)


def test_merge_refuses_incomplete_or_mixed_parts(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    with pytest.raises(VlpipeError, match="no build to merge"):
        merge_parts(tmp_path, quiet=True)
    build_parts(src, out, 2)
    (out / "shards/00003/images.npy").write_bytes(b"cut")
    with pytest.raises(VlpipeError, match=r"shards/00003: shard of part 1/2 is not complete"):
        merge_parts(out, quiet=True)
    (out / "shards/00003/done.json").unlink()
    build_parts(src, out, 2, range(1, 2))  # rerunning the part repairs it
    (out / "parts/00000-of-00003.json").write_text((out / "parts/00000-of-00002.json").read_text()
                                                   .replace('"parts": 2', '"parts": 3'))
    with pytest.raises(VlpipeError, match=r"parts: parts of 2 and of 3 were built; one build is split one way"):
        merge_parts(out, quiet=True)
    (out / "parts/00000-of-00003.json").unlink()
    merge_parts(out, quiet=True)


@pytest.mark.parametrize(("flags", "message"), [
    (["--part", "3/3"], "--part 3/3: needs N >= 1 and 0 <= I < N (parts are counted from 0)"),
    (["--part", "one of two"], "--part one of two: expected I/N: part I of N, counted from 0"),
    (["--part", "0/2", "--overwrite"], "--part 0/2 with --overwrite would let each part delete the others' shards"),
    (["--part", "0/2", "--distributor", "ray"], "--part 0/2 splits a build without an engine"),
    (["--ray-address", "auto"], "--ray-address is for --distributor ray"),
])  # fmt: skip
def test_bad_part_and_engine_flags_are_one_line_errors(src: Path, tmp_path: Path, flags: list[str],
                                                       message: str) -> None:
    with pytest.raises(VlpipeError) as info:
        vlpipe("build-cache", str(src), "--out", str(tmp_path / "cache"), *FLAGS, *flags)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists()
