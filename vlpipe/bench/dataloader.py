"""`bench_dataloader`: every pipeline and the random-gather ceiling, interleaved, in one run.

Rounds go ceiling, A, B, C, ceiling, A, B, C, ... so slow phases of a shared machine spread over
all rows instead of hitting one; each row reports the median over rounds with its min-max.
With a JPEG twin of the cache (`jpeg_cache`) both codecs run in the same rounds; with `cold`, every
vlpipe row also runs cold (its files evicted before each round), beside the disk's own sequential
read rate, measured every round on the raw cache's image files by one reader: the yardstick of a cold
read (several reads in flight can beat it).
"""

from __future__ import annotations

import gc
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlpipe.bench import BASELINE, BASELINES, VLPIPE_MODES
from vlpipe.bench.ceiling import measure_ceiling
from vlpipe.bench.config import DataloaderSettings
from vlpipe.bench.jpeg_files import DEFAULT_MAX_SOURCE_SAMPLES, prepare_source
from vlpipe.bench.measure import RoundResult, run_round
from vlpipe.bench.pipelines import JpegTransform, Pipeline, baseline_pipelines, vlpipe_pipeline
from vlpipe.bench.system import (
    evict_files,
    machine_info,
    resident_share,
    sequential_read_rate,
    warm_files,
)
from vlpipe.cache.format import Manifest, load_manifest
from vlpipe.errors import VlpipeError
from vlpipe.utils.cpus import usable_cpus

Progress = Callable[[int, int, str], None]
# The gather-only series measured every round, in this order: name -> (consumer copy, gather method).
SERIES: dict[str, tuple[bool, str]] = {
    "ceiling": (False, "rows"),
    "copy bound": (True, "rows"),
    "np.take": (False, "take"),
}
# A cold row whose files kept more than this share of their pages cached was not cold: said so.
COLD_RESIDENT_WARNING = 0.02


@dataclass
class BenchRun:
    """Everything that defines a run; saved in the JSON so a figure can be reproduced."""

    cache: str
    source: str | None
    batch_size: int
    workers: int
    seconds: float
    rounds: int
    cold: bool
    modes: list[str]
    baselines: list[str]
    max_source_samples: int
    jpeg_cache: str | None = None
    ceiling_processes: list[int] = field(default_factory=list)


@dataclass
class _Measured:
    """Per-round figures of one run: pipeline rounds, gather series, disk rate, cold leftovers."""

    rounds: dict[str, list[RoundResult]]
    ceilings: dict[tuple[int, str], list[float]]
    disk: list[float] = field(default_factory=list)
    disk_left: list[float] = field(default_factory=list)
    left_cached: dict[str, list[float]] = field(default_factory=dict)


def bench_dataloader(
    cache: str | Path,
    source: str | Path | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    seconds: float = 5.0,
    rounds: int = 3,
    cold: bool = False,
    modes: Sequence[str] = VLPIPE_MODES,
    baselines: Sequence[str] = BASELINES,
    max_source_samples: int = DEFAULT_MAX_SOURCE_SAMPLES,
    progress: Progress | None = None,
    jpeg_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Benchmark vlpipe's reader against JPEG-decoding loaders (`baselines`) on this machine.

    Returns `{"machine": {...}, "results": [...], "ceiling_samples_per_s": float | None}`; `machine`
    also carries the run's settings, page-cache state, data origin, the per-process ceilings, the
    copy bounds (the ceiling's gathers plus the consumer's copy that every pipeline pays), the
    np.take gathers the anchor figures were measured with, the disk's sequential read rate (cold
    runs) and `skipped` (row -> why: seed-recipe without the bert-uncased vocabulary; the ceilings
    without a raw cache, as they gather raw rows). Ratios are taken against `BASELINE`, which must be
    run. `cache` is a raw or a JPEG cache; `jpeg_cache`, the JPEG twin of a raw `cache` (same
    samples), adds its rows. `workers=None` uses every usable CPU. Short settings (seconds=0.3,
    rounds=1) give a smoke run in seconds; real figures want the defaults on a quiet machine.
    """
    cache_dir = Path(cache)
    manifest = load_manifest(cache_dir)
    workers = usable_cpus() if workers is None else workers
    # The same checks as on the command line (vlpipe/bench/config.py), then those that need the cache.
    DataloaderSettings(cache=str(cache_dir), source=None if source is None else str(source), batch_size=batch_size,
                       workers=workers, seconds=seconds, rounds=rounds, modes=tuple(modes), baselines=tuple(baselines),
                       max_source_samples=max_source_samples, cold=cold,
                       jpeg_cache=None if jpeg_cache is None else str(jpeg_cache))
    if batch_size > manifest.num_samples:
        raise VlpipeError(f"--batch-size {batch_size} is larger than the cache ({manifest.num_samples} samples)")
    caches = [(cache_dir, manifest)]
    if jpeg_cache is not None:
        caches.append((Path(jpeg_cache), _jpeg_twin(cache_dir, manifest, Path(jpeg_cache))))
    if workers == 0:
        # Equal cores: with no workers the baselines load in the calling process, and so does
        # vlpipe's inline mode; threads mode needs at least one worker.
        modes = [m for m in modes if m == "inline"]
    settings = BenchRun(str(cache_dir), None if source is None else str(source), batch_size, workers,
                        seconds, rounds, cold, list(modes), list(baselines), max_source_samples,
                        None if jpeg_cache is None else str(jpeg_cache), sorted({1, max(1, workers)}))
    raw = next(((d, m) for d, m in caches if m.image.codec == "raw"), None)
    image_files = [] if raw is None else [str(s.path(raw[0], "images")) for s in raw[1].shards]
    # Before the run, so the load average describes the machine rather than the benchmark.
    machine = machine_info()
    names, skipped, seed_transform = list(baselines), {}, None
    if raw is None:
        skipped["ceiling"] = ("the ceiling, copy bound and np.take series gather raw patch rows: give the raw cache "
                              "as --cache and this one as --jpeg-cache")
    if "seed-recipe" in names:
        try:
            seed_transform = JpegTransform.seed_recipe(manifest)
        except VlpipeError as exc:
            # An optional extra: the run goes on without the row and says why.
            names.remove("seed-recipe")
            skipped["seed-recipe"] = str(exc)
    with tempfile.TemporaryDirectory(prefix="vlpipe-bench-") as tmp:
        jpegs = prepare_source(manifest, cache_dir, None if source is None else Path(source), Path(tmp),
                               max_source_samples, manifest.image.image_size if seed_transform else None)
        pipelines: list[Pipeline] = [
            *(vlpipe_pipeline(d, m, mode, batch_size, workers, cold=c, keep_open=not cold)
              for c in ((False, True) if cold else (False,)) for d, m in caches for mode in modes),
            *baseline_pipelines(names, manifest, cache_dir, jpegs, seed_transform, batch_size, workers),
        ]
        all_files = [*{f for p in pipelines for f in p.files}, *jpegs.jpeg_paths, *jpegs.presized_paths,
                     *jpegs.shard_paths]
        done, page_cache_note = warm_files(all_files)
        page_cache = "warm" if done else "not warmed"
        measured = _interleave(pipelines, settings, image_files, progress)
    ceiling, copy_bound, take_ceiling = (
        max((statistics.median(rates) for (_n, s), rates in measured.ceilings.items() if s == series), default=None)
        for series in SERIES)
    results = _summarize(pipelines, measured, ceiling, copy_bound, take_ceiling)
    if cold:
        page_cache += " + cold rows"
        page_cache_note += _cold_note(measured)
    machine.update({
        "page_cache": page_cache,
        "page_cache_note": page_cache_note,
        "data": {"cache_samples": manifest.num_samples, "image_size": manifest.image.image_size,
                 "patch_size": manifest.image.patch_size, "max_len": manifest.text.max_len,
                 "codecs": [m.image.codec for _d, m in caches],
                 "jpeg_source": jpegs.origin, "mean_jpeg_bytes": round(jpegs.jpeg_bytes_per_sample)},
        "skipped": skipped,
        "ceiling": _ceiling_summary(measured.ceilings, "ceiling"),
        # The same gathers, each batch copied once more as the consumer copies every pipeline's
        # batches: the most any pipeline can deliver through this benchmark on this machine.
        "ceiling_with_consumer_copy": _ceiling_summary(measured.ceilings, "copy bound"),
        # The gather the anchor figures were measured with: a reference
        # beside the ceiling, not a bound (see vlpipe.bench.ceiling).
        "np_take_ceiling": _ceiling_summary(measured.ceilings, "np.take"),
        "disk_sequential_read": _disk_summary(measured, image_files),
        "settings": asdict(settings),
    })
    return {"machine": machine, "results": results,
            "ceiling_samples_per_s": None if ceiling is None else round(ceiling, 1)}


def _jpeg_twin(cache_dir: Path, manifest: Manifest, jpeg_dir: Path) -> Manifest:
    """The --jpeg-cache manifest, refused unless it is a JPEG cache of the same samples as a raw --cache."""
    twin = load_manifest(jpeg_dir)
    if manifest.image.codec != "raw":
        raise VlpipeError(f"--cache {cache_dir} is a {manifest.image.codec} cache; with --jpeg-cache, --cache must be "
                          "the raw one")
    if twin.image.codec != "jpeg":
        raise VlpipeError(f"--jpeg-cache {jpeg_dir} is a {twin.image.codec} cache, not a JPEG one "
                          "(vlpipe build-cache --codec jpeg)")
    ours = (manifest.num_samples, manifest.image.image_size, manifest.image.patch_size, manifest.text.max_len)
    theirs = (twin.num_samples, twin.image.image_size, twin.image.patch_size, twin.text.max_len)
    if ours != theirs:
        raise VlpipeError(f"--jpeg-cache {jpeg_dir} holds other samples than --cache {cache_dir} (samples, image "
                          f"size, patch size, max_len: {theirs} against {ours}); build both from the same source")
    return twin


def _interleave(pipelines: list[Pipeline], settings: BenchRun, image_files: list[str],
                progress: Progress | None) -> _Measured:
    processes = settings.ceiling_processes if image_files else []
    disk_step = settings.cold and bool(image_files)
    steps_per_round = len(SERIES) * len(processes) + disk_step + len(pipelines)
    total = settings.rounds * steps_per_round
    done = 0
    # (processes, series) -> rates; see SERIES and ceiling.RowGatherer.
    measured = _Measured({p.name: [] for p in pipelines}, {(n, series): [] for series in SERIES for n in processes},
                         left_cached={p.name: [] for p in pipelines if p.cold})

    def step(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, label)

    for round_index in range(settings.rounds):
        if settings.cold and image_files:
            # The ceiling is a memory-bandwidth figure by definition: measure it on warm pages.
            warm_files(map(Path, image_files))
        for n, series in measured.ceilings:
            copy, method = SERIES[series]
            measured.ceilings[n, series].append(
                measure_ceiling(image_files, settings.batch_size, settings.seconds, n,
                                seed=round_index, consumer_copy=copy, method=method).samples_per_s)
            step(f"round {round_index + 1}: {series}, {n} process(es)")
        if disk_step:
            rate, left = sequential_read_rate(map(Path, image_files))
            measured.disk.append(rate)
            measured.disk_left.append(left)
            step(f"round {round_index + 1}: disk sequential read")
        for pipeline in pipelines:
            if pipeline.cold:
                gc.collect()  # no earlier window's map may still pin the pages
                evict_files(pipeline.files)
                measured.left_cached[pipeline.name].append(resident_share(pipeline.files))
            elif settings.cold and pipeline.files:
                warm_files(pipeline.files)  # a cold row's window may have ended before its epoch did
            measured.rounds[pipeline.name].append(run_round(pipeline, seed=round_index, seconds=settings.seconds))
            step(f"round {round_index + 1}: {pipeline.name}")
    return measured


def _cold_note(measured: _Measured) -> str:
    worst = max((max(v) for v in measured.left_cached.values() if v), default=0.0)
    note = (f"; cold rows: their files evicted (posix_fadvise DONTNEED) before every round, at most {100 * worst:.1f}% "
            "of their pages still cached after")
    if worst > COLD_RESIDENT_WARNING:
        note += " (NOT fully cold: another process may map them)"
    return note


def _disk_summary(measured: _Measured, image_files: list[str]) -> dict[str, Any] | None:
    if not measured.disk:
        return None
    size = sum(Path(f).stat().st_size for f in image_files)
    return {"mb_per_s": round(statistics.median(measured.disk) / 1e6, 1), "min": round(min(measured.disk) / 1e6, 1),
            "max": round(max(measured.disk) / 1e6, 1), "rounds": [round(r / 1e6, 1) for r in measured.disk],
            "bytes": size, "files": len(image_files), "cached_share_before": round(max(measured.disk_left), 4),
            "what": "the raw cache's image files read front to back after posix_fadvise(DONTNEED)"}


def _ceiling_summary(ceilings: dict[tuple[int, str], list[float]], series: str) -> dict[str, dict[str, float]]:
    return {f"{n}_process{'es' if n > 1 else ''}": {"samples_per_s": round(statistics.median(r), 1),
                                                    "min": round(min(r), 1), "max": round(max(r), 1)}
            for (n, name), r in ceilings.items() if name == series}


def _max_mb(values: list[int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(max(known) / 1e6, 1) if known else None


def _share(value: float, bound: float | None, digits: int = 4) -> float | None:
    return None if not bound else round(value / bound, digits)


def _summarize(pipelines: list[Pipeline], measured: _Measured, ceiling: float | None, copy_bound: float | None,
               take_ceiling: float | None) -> list[dict[str, Any]]:
    medians = {name: statistics.median(r.samples_per_s for r in rounds) for name, rounds in measured.rounds.items()}
    baseline = medians[BASELINE]
    disk = statistics.median(measured.disk) if measured.disk else None
    results = []
    for pipeline in pipelines:
        rounds = measured.rounds[pipeline.name]
        rates = [r.samples_per_s for r in rounds]
        median = medians[pipeline.name]
        read_rate = median * pipeline.read_bytes_per_sample
        results.append({
            "pipeline": pipeline.name,
            "description": pipeline.description,
            "workers": pipeline.workers,
            "cold": pipeline.cold,
            "samples_per_s": round(median, 1),
            "samples_per_s_min": round(min(rates), 1),
            "samples_per_s_max": round(max(rates), 1),
            "samples_per_s_rounds": [round(x, 1) for x in rates],
            "ratio_to_baseline": round(median / baseline, 3),
            "share_of_ceiling": _share(median, ceiling),
            "share_of_copy_bound": _share(median, copy_bound),
            "share_of_np_take_ceiling": _share(median, take_ceiling),
            "read_mb_per_s": round(read_rate / 1e6, 1),
            "read_bytes_per_sample": round(pipeline.read_bytes_per_sample),
            "stored_bytes_per_sample": round(pipeline.stored_bytes_per_sample),
            # Cold rows: their read rate over one reader's sequential rate (several reads in flight can beat it).
            "share_of_disk_read": _share(read_rate, disk) if pipeline.cold else None,
            "cached_share_after_evict": (round(max(measured.left_cached[pipeline.name]), 4)
                                         if pipeline.cold else None),
            "cpu_cores": round(statistics.mean(r.cpu_seconds / r.seconds for r in rounds), 2),
            "peak_rss_mb": round(max(r.peak_rss_bytes for r in rounds) / 1e6, 1),
            "pss_mb": _max_mb([r.pss_bytes for r in rounds]),
            "other_load_cores": round(max(r.other_load_cores for r in rounds), 2),
            "samples_timed": sum(r.samples for r in rounds),
        })
    return results
