"""`vlpipe bench dataloader` end to end on a tiny cache and tiny img2dataset-style shards.

The cache is built by the real writer from the same tar shards the baselines read, so every
pipeline reads the same samples. No timing assertions: only that every documented field is there and every
figure is a real, positive measurement.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from rich.console import Console
from tokenizers import Tokenizer

from vlpipe.bench import bench_dataloader
from vlpipe.bench.jpeg_files import prepare_source
from vlpipe.bench.pipelines import SeedDataset, SeedTransform
from vlpipe.bench.system import drop_page_cache
from vlpipe.bench.table import render
from vlpipe.cache.format import DEFAULT_MEAN, DEFAULT_STD, load_manifest
from vlpipe.cache.writer import build_cache
from vlpipe.cli.bench import dataloader
from vlpipe.errors import VlpipeError

IMAGE_SIZE, PATCH, MAX_LEN = 32, 8, 16
WORDS = ["a", "red", "cat", "sits", "on", "the", "blue", "mat", "near", "two", "green", "trees", "under", "sky"]
SHARD_SIZES = (16, 8)


def _image(i: int, h: int | None = None, w: int | None = None) -> Image.Image:
    """A gradient with a coloured block: cheap, but with real structure for JPEG to encode."""
    h, w = h or 36 + (i % 3) * 4, w or 44 - (i % 2) * 8
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, (i * 37) % 256)], axis=-1)
    arr[h // 4: h // 2, w // 4: w // 2] = (i * 53 % 256, 40, 200)
    return Image.fromarray(arr.astype(np.uint8))


def _caption(i: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 5))


def write_raw_shards(out: Path, sizes: tuple[int, ...]) -> None:
    """An img2dataset-style webdataset folder: NNNNN.tar with KEY.jpg / KEY.txt / KEY.json."""
    out.mkdir(parents=True)
    i = 0
    for shard_id, size in enumerate(sizes):
        with tarfile.open(out / f"{shard_id:05d}.tar", "w") as tar:
            for _ in range(size):
                buf = io.BytesIO()
                _image(i).save(buf, "JPEG", quality=95)
                key, caption = f"{shard_id:05d}{i:04d}", _caption(i)
                members = {"jpg": buf.getvalue(), "txt": caption.encode(),
                           "json": json.dumps({"key": key, "caption": caption, "status": "success"}).encode()}
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                i += 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    write_raw_shards(root / "raw", SHARD_SIZES)
    build_cache(root / "raw", root / "cache", image_size=IMAGE_SIZE, patch_size=PATCH, max_len=MAX_LEN,
                tokenizer="wordpiece:100", val_fraction=0.0, processes=1, quiet=True)
    return root / "cache", root / "raw"


def test_seed_transform_matches_a_hand_computed_tensor(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    cache, _ = tiny
    img = _image(1, h=70, w=50)
    path = tmp_path / "known.png"  # lossless, so the expected pixels are exactly known
    img.save(path)
    transform = SeedTransform(IMAGE_SIZE, list(DEFAULT_MEAN), list(DEFAULT_STD), cache / "tokenizer.json",
                              MAX_LEN, pad_id=0)
    item = SeedDataset([path], ["a red cat"], transform)[0]
    ids = Tokenizer.from_file(str(cache / "tokenizer.json")).encode("a red cat").ids

    # Seed recipe scaled to 32 px: shorter side 50 -> 36 (= 32 * 256 / 224), so 50x70 -> 36x50;
    # then the central 32x32 (2 px off the sides, 9 px off the top).
    scaled = img.resize((36, 50), Image.Resampling.BICUBIC)
    crop = np.asarray(scaled.crop((2, 9, 34, 41)), np.float32) / 255
    expected = (crop - np.array(DEFAULT_MEAN, np.float32)) / np.array(DEFAULT_STD, np.float32)

    assert item["images"].shape == (3, IMAGE_SIZE, IMAGE_SIZE) and item["images"].dtype == torch.float32
    np.testing.assert_allclose(item["images"].permute(1, 2, 0).numpy(), expected, atol=2e-2)
    assert item["input_ids"].dtype == torch.int64 and item["input_ids"].shape == (MAX_LEN,)
    assert ids[0] == 2 and ids[-1] == 3  # [CLS] ... [SEP] from the cache's own tokenizer
    assert item["input_ids"][:len(ids)].tolist() == ids and item["input_ids"][len(ids):].eq(0).all()
    assert item["attention_mask"].tolist() == [1] * len(ids) + [0] * (MAX_LEN - len(ids))


def test_drop_page_cache_reports_when_not_permitted(tmp_path: Path) -> None:
    # A directory can never be opened for writing, even by root: the "not permitted" path, for real.
    dropped, note = drop_page_cache(str(tmp_path))
    assert not dropped
    assert "could not drop the page cache" in note and str(tmp_path) in note


def _check_report(report: dict, pipelines: set[str], ceilings: set[str]) -> None:
    assert set(report) == {"machine", "results", "ceiling_samples_per_s"}
    assert report["ceiling_samples_per_s"] > 0
    machine = report["machine"]
    assert machine["usable_cpus"] >= 1 and machine["versions"]["torch"]
    assert set(machine["ceiling"]) == ceilings  # 1 process and `workers` processes at once
    assert set(machine["ceiling_with_consumer_copy"]) == ceilings
    assert set(machine["np_take_ceiling"]) == ceilings
    assert {r["pipeline"] for r in report["results"]} == pipelines
    for row in report["results"]:
        for name in ("samples_per_s", "samples_per_s_min", "samples_per_s_max", "ratio_to_baseline",
                     "share_of_ceiling", "share_of_copy_bound", "share_of_np_take_ceiling", "read_mb_per_s", "cpu_cores", "peak_rss_mb",
                     "samples_timed"):
            assert row[name] > 0, (row["pipeline"], name, row[name])
        assert row["samples_per_s_min"] <= row["samples_per_s"] <= row["samples_per_s_max"]
    baseline = next(r for r in report["results"] if r["pipeline"] == "seed-baseline")
    assert baseline["ratio_to_baseline"] == 1.0


def test_bench_dataloader_short_run_reports_every_pipeline(tiny: tuple[Path, Path]) -> None:
    cache, raw = tiny
    steps: list[str] = []
    report = bench_dataloader(cache, source=raw, batch_size=4, workers=2, seconds=0.2, rounds=2,
                              progress=lambda done, total, label: steps.append(label))
    _check_report(report, {"vlpipe-inline", "vlpipe-threads", "vlpipe-processes", "seed-baseline", "webdataset"},
                  {"1_process", "2_processes"})
    # Interleaved: the 6 gather-only series (ceiling, copy bound, np.take; 1 and 2 processes each),
    # then every pipeline, once per round.
    assert len(steps) == 2 * 11 and steps[6].endswith("vlpipe-inline") and steps[17].endswith("vlpipe-inline")
    assert [s.split(": ", 1)[1] for s in steps[:6]] == [
        f"{series}, {n} process(es)" for series in ("ceiling", "copy bound", "np.take") for n in (1, 2)]
    assert report["machine"]["page_cache"] == "warm"
    assert "extracted from" in report["machine"]["data"]["jpeg_source"]
    assert all(len(r["samples_per_s_rounds"]) == 2 for r in report["results"])
    # The table fits a 100-column terminal: every figure whole, nothing cropped.
    console = Console(width=100, record=True)
    render(report, console)
    text = console.export_text()
    assert "…" not in text
    for row in report["results"]:
        assert row["pipeline"] in text and f"{row['samples_per_s']:,.0f}" in text
        assert f"{100 * row['share_of_np_take_ceiling']:.1f}" in text and f"{row['other_load_cores']:.2f}" in text


def test_cli_json_without_source_and_cold_not_permitted(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """Cache alone: the baselines read re-encoded JPEGs; --cold must degrade to a clear note."""
    cache, _ = tiny
    result = CliRunner().invoke(dataloader, ["--cache", str(cache), "--batch-size", "4", "--workers", "1",
                                             "--seconds", "0.2", "--rounds", "1", "--modes", "threads", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    _check_report(report, {"vlpipe-threads", "seed-baseline", "webdataset"}, {"1_process"})
    assert "re-encoded" in report["machine"]["data"]["jpeg_source"]

    # workers=0: everything loads in this process, so only vlpipe's inline mode is comparable.
    cold = bench_dataloader(cache, batch_size=4, workers=0, seconds=0.1, rounds=1, cold=True,
                            drop_caches_file=str(tmp_path))
    assert [r["pipeline"] for r in cold["results"]] == ["vlpipe-inline", "seed-baseline", "webdataset"]
    assert cold["machine"]["page_cache"] == "not dropped"
    assert "could not drop the page cache" in cold["machine"]["page_cache_note"]


def test_bad_arguments_are_user_errors(tiny: tuple[Path, Path]) -> None:
    cache, _ = tiny
    with pytest.raises(VlpipeError, match="larger than the cache"):
        bench_dataloader(cache, batch_size=1000)
    with pytest.raises(VlpipeError, match="unknown vlpipe mode"):
        bench_dataloader(cache, batch_size=4, modes=["gpu"])
    with pytest.raises(VlpipeError, match="--modes is empty"):
        bench_dataloader(cache, batch_size=4, modes=[])
    with pytest.raises(VlpipeError, match="--workers 0 runs only vlpipe's inline mode"):
        bench_dataloader(cache, batch_size=4, workers=0, modes=["threads"])


def test_sources_extract_whole_shards_up_to_the_cap_or_reencode_the_cache(tiny: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    cache, raw = tiny
    manifest = load_manifest(cache)
    extracted = prepare_source(manifest, cache, raw, tmp_path / "x", max_samples=8)
    assert len(extracted.jpeg_paths) == 8 and extracted.shard_paths == [raw / "00000.tar"]
    with tarfile.open(raw / "00000.tar") as tar:
        first_jpg = tar.extractfile(tar.getmember("000000000.jpg")).read()
    assert extracted.jpeg_paths[0].read_bytes() == first_jpg and extracted.captions[0] == _caption(0)

    reencoded = prepare_source(manifest, cache, None, tmp_path / "r", max_samples=100)
    assert len(reencoded.jpeg_paths) == manifest.num_samples and len(reencoded.shard_paths) == 1
    with Image.open(reencoded.jpeg_paths[0]) as img:
        assert img.format == "JPEG" and img.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert reencoded.jpeg_bytes_per_sample > 0 and reencoded.shard_bytes_per_sample > reencoded.jpeg_bytes_per_sample


@pytest.mark.parametrize(("file", "message"), [
    ("images.npy", r"images.npy: 100 bytes but the manifest records \d+ \(truncated"),
    ("meta.parquet", r"meta.parquet: 100 bytes but the manifest records \d+ \(truncated"),
])
def test_reencoding_a_damaged_cache_is_a_one_line_error(tiny: tuple[Path, Path], tmp_path: Path, file: str,
                                                        message: str) -> None:
    import shutil

    cache, _ = tiny
    damaged = tmp_path / "cache"
    shutil.copytree(cache, damaged)
    path = damaged / "shards" / "00000" / file
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(VlpipeError, match=message) as info:
        prepare_source(load_manifest(damaged), damaged, None, tmp_path / "work", max_samples=100)
    assert "\n" not in str(info.value)


def test_reencoding_a_cache_with_a_garbage_npy_header_is_a_one_line_error(tiny: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    import shutil

    cache, _ = tiny
    damaged = tmp_path / "cache"
    shutil.copytree(cache, damaged)
    path = damaged / "shards" / "00000" / "images.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + b"\xff" * (path.stat().st_size - 8))  # size kept, header garbage
    with pytest.raises(VlpipeError, match=r"images.npy: not a readable .npy file") as info:
        prepare_source(load_manifest(damaged), damaged, None, tmp_path / "work", max_samples=100)
    assert "\n" not in str(info.value)
