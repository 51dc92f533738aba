"""cache info / contact sheet, and the `build-cache` / `cache` CLI exit codes."""

from __future__ import annotations

import re

import cachegen
import numpy as np
import pytest
from PIL import Image

from vlpipe.cache.format import load_manifest
from vlpipe.cache.info import cache_info, contact_sheet, sample_rows
from vlpipe.cli.main import main
from vlpipe.errors import VlpipeError


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("info")
    src = cachegen.write_layout(root / "src", "parquet", [cachegen.hard_items()])
    out = root / "cache"
    with pytest.raises(SystemExit) as exit_info:
        main(["build-cache", str(src), "--out", str(out), "--image-size", "32", "--patch-size", "8",
              "--max-len", "16", "--tokenizer", "wordpiece:150", "--processes", "1"])
    assert exit_info.value.code == 0
    return src, out


def test_info_rows(built):
    _, out = built
    rows = dict(cache_info(out))
    assert rows["samples"] == "9"
    assert rows["skipped"] == "1 missing_caption, 1 undecodable"
    assert rows["images"].startswith("32x32 px, 8-px patches: (16, 192) uint8")


def test_contact_sheet_shows_unpatchified_images(built, tmp_path):
    _, out = built
    m = load_manifest(out)
    image, caption = sample_rows(m, out, [1])[0]
    assert image.shape == (32, 32, 3) and caption == "red on top, blue below"
    assert image[:8, :, 0].mean() > 150 and image[-8:, :, 2].mean() > 150  # upright after un-patchify
    png = contact_sheet(out, tmp_path / "sheet.png", n=4, seed=1)
    sheet = np.asarray(Image.open(png).convert("RGB"))
    assert sheet.shape[0] > 200 and sheet.shape[1] > 200 and sheet.std() > 10
    with pytest.raises(VlpipeError, match="--n 0"):
        contact_sheet(out, tmp_path / "x.png", n=0)


def test_cli_exit_codes(built, tmp_path, capsys):
    src, out = built
    code, stdout, _ = run_cli(["cache", "verify", str(out)], capsys)
    assert code == 0 and "ok (9 samples" in stdout
    code, stdout, _ = run_cli(["cache", "info", str(out), "--grid", str(tmp_path / "g.png"), "--n", "3"], capsys)
    assert code == 0 and "samples" in stdout and (tmp_path / "g.png").stat().st_size > 1000

    code, _, err = run_cli(["cache", "verify", str(tmp_path / "nothing")], capsys)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1
    code, _, err = run_cli(["build-cache", str(tmp_path / "nope"), "--out", str(tmp_path / "c")], capsys)
    assert code == 1 and "no such file or directory" in err and "Traceback" not in err
    code, _, err = run_cli(["build-cache", str(src), "--out", str(out), "--image-size", "64",
                            "--patch-size", "8", "--max-len", "16", "--tokenizer", "wordpiece:150"], capsys)
    assert code == 1 and "--overwrite" in err


def test_labels_row_summarizes_a_downstream_cache(tmp_path):
    from vlpipe.cache.writer import build_cache

    build_cache(cachegen.hateful(tmp_path / "hm"), tmp_path / "cache", **cachegen.LABELLED_OPTS)
    rows = dict(cache_info(tmp_path / "cache"))
    assert rows["labels"] == "binary, 2 labels (not_hateful, hateful); 3 unlabeled test"
    assert rows["splits"] == "train 6, val 1, test 3"


def _damaged(built, tmp_path, file: str, data: bytes | None = None, keep_size: bool = False):
    """A copy of the built cache with one shard file replaced by `data` (padded to its old size if asked)."""
    import shutil

    _, out = built
    copy = tmp_path / "damaged"
    shutil.copytree(out, copy)
    path = copy / "shards" / "00000" / file
    if data is None:
        data = path.read_bytes()[:100]
    if keep_size:
        data = (data * (path.stat().st_size // len(data) + 1))[: path.stat().st_size]
    path.write_bytes(data)
    return copy


@pytest.mark.parametrize(("file", "data", "keep_size", "message"), [
    ("images.npy", None, False, r"images.npy: 100 bytes but the manifest records \d+ \(truncated"),
    # same size as recorded, so only parsing the header finds it
    ("images.npy", b"\x93NUMPY\x01\x00", True, r"images.npy: not a readable .npy file"),
    ("meta.parquet", b"garbage!", False, r"meta.parquet: 8 bytes but the manifest records"),
    ("meta.parquet", b"garbage!", True, r"meta.parquet: not a readable parquet file"),
])
def test_contact_sheet_of_a_damaged_cache_is_a_one_line_error(built, tmp_path, capsys, file, data, keep_size,
                                                               message):
    cache = _damaged(built, tmp_path, file, data, keep_size)
    with pytest.raises(VlpipeError, match=message) as info:
        contact_sheet(cache, tmp_path / "g.png", n=9)
    assert "\n" not in str(info.value) and not (tmp_path / "g.png").exists()
    code, _, err = run_cli(["cache", "info", str(cache), "--grid", str(tmp_path / "g.png")], capsys)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_contact_sheet_refuses_a_shard_path_outside_the_cache(built, tmp_path):
    import json

    cache = _damaged(built, tmp_path, "tokens.npy")
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["shards"][0]["files"]["images"]["path"] = "../../../etc/passwd"
    (cache / "manifest.json").write_text(json.dumps(manifest))
    # Refused as the manifest is read, before any file is opened.
    with pytest.raises(VlpipeError, match=r"manifest.json: field 'shards\[0\].files.images.path' is "
                                          "'../../../etc/passwd', which leaves the cache folder"):
        contact_sheet(cache, tmp_path / "g.png", n=9)


def test_info_with_bad_n_prints_only_the_error(built, tmp_path, capsys):
    _, out = built
    code, stdout, err = run_cli(["cache", "info", str(out), "--grid", str(tmp_path / "g.png"), "--n", "0"], capsys)
    assert code == 1 and stdout == "" and err == "error: --n 0: must be >= 1\n"


def test_jpeg_cache_info_contact_sheet_and_cli(built, tmp_path, capsys):
    """The same source built with --codec jpeg: the table says how it is stored, the contact sheet
    shows the decoded images (close to the raw cache's), and verify/info run from the command line."""
    src, raw = built
    out = tmp_path / "jpeg"
    code, _, err = run_cli(["build-cache", str(src), "--out", str(out), "--image-size", "32", "--patch-size", "8",
                            "--max-len", "16", "--tokenizer", "wordpiece:150", "--processes", "1",
                            "--codec", "jpeg", "--jpeg-quality", "90"], capsys)
    assert code == 0, err
    rows = dict(cache_info(out))
    assert rows["images"] == dict(cache_info(raw))["images"]
    assert re.fullmatch(r"jpeg q90 4:4:4 \(simplejpeg [\d.]+\), [\d.]+ kB per image, [\d.]+% of raw", rows["codec"])
    assert dict(cache_info(raw))["codec"] == "raw (uint8 patch rows)"
    m, m_raw = load_manifest(out), load_manifest(raw)
    image, caption = sample_rows(m, out, [1])[0]
    image_raw, caption_raw = sample_rows(m_raw, raw, [1])[0]
    assert caption == caption_raw and image.shape == (32, 32, 3)
    assert np.abs(image.astype(int) - image_raw).mean() < 3  # the same picture, through JPEG q90
    code, stdout, _ = run_cli(["cache", "verify", str(out)], capsys)
    assert code == 0 and "ok (9 samples" in stdout
    code, stdout, _ = run_cli(["cache", "info", str(out), "--grid", str(tmp_path / "g.png"), "--n", "4"], capsys)
    assert code == 0 and "jpeg q90" in stdout and (tmp_path / "g.png").stat().st_size > 1000
    code, _, err = run_cli(["build-cache", str(src), "--out", str(tmp_path / "x"), "--codec", "png"], capsys)
    assert code == 2 and "'png' is not one of 'raw', 'jpeg'" in err
    code, _, err = run_cli(["build-cache", str(src), "--out", str(tmp_path / "x"), "--jpeg-quality", "0"], capsys)
    assert code == 1 and "--jpeg-quality 0: must be >= 1" in err
