"""`bench_dataloader`: every pipeline and the random-gather ceiling, interleaved, in one run.

Rounds go ceiling, A, B, C, ceiling, A, B, C, ... so slow phases of a shared machine spread over
all rows instead of hitting one; each row reports the median over rounds with its min-max.
"""

from __future__ import annotations

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
from vlpipe.bench.system import DROP_CACHES_FILE, drop_page_cache, machine_info, usable_cpus, warm_files
from vlpipe.cache.format import load_manifest
from vlpipe.errors import VlpipeError

Progress = Callable[[int, int, str], None]
# The gather-only series measured every round, in this order: name -> (consumer copy, gather method).
SERIES: dict[str, tuple[bool, str]] = {
    "ceiling": (False, "rows"),
    "copy bound": (True, "rows"),
    "np.take": (False, "take"),
}


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
    ceiling_processes: list[int] = field(default_factory=list)


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
    drop_caches_file: str = DROP_CACHES_FILE,
) -> dict[str, Any]:
    """Benchmark vlpipe's reader against JPEG-decoding loaders (`baselines`) on this machine.

    Returns `{"machine": {...}, "results": [...], "ceiling_samples_per_s": float}`; `machine`
    also carries the run's settings, page-cache state, data origin, the per-process ceilings, the
    copy bounds (the ceiling's gathers plus the consumer's copy that every pipeline pays), the
    np.take gathers the anchor figures were measured with, and `skipped` (row -> why: seed-recipe
    without the bert-uncased vocabulary). Ratios are taken against `BASELINE`, which must be run.
    `workers=None` uses every usable CPU. Short settings (seconds=0.3, rounds=1) give a smoke
    run in seconds; real figures want the defaults on a quiet machine.
    """
    cache_dir = Path(cache)
    manifest = load_manifest(cache_dir)
    workers = usable_cpus() if workers is None else workers
    # The same checks as on the command line (vlpipe/bench/config.py), then those that need the cache.
    DataloaderSettings(cache=str(cache_dir), source=None if source is None else str(source), batch_size=batch_size,
                       workers=workers, seconds=seconds, rounds=rounds, modes=tuple(modes), baselines=tuple(baselines),
                       max_source_samples=max_source_samples, cold=cold)
    if batch_size > manifest.num_samples:
        raise VlpipeError(f"--batch-size {batch_size} is larger than the cache ({manifest.num_samples} samples)")
    if workers == 0:
        # Equal cores: with no workers the baselines load in the calling process, and so does
        # vlpipe's inline mode; threads mode needs at least one worker.
        modes = [m for m in modes if m == "inline"]
    settings = BenchRun(str(cache_dir), None if source is None else str(source), batch_size, workers,
                             seconds, rounds, cold, list(modes), list(baselines), max_source_samples,
                             sorted({1, max(1, workers)}))
    image_files = [str(shard.path(cache_dir, "images")) for shard in manifest.shards]
    # Before the run, so the load average describes the machine rather than the benchmark.
    machine = machine_info()
    names, skipped, seed_transform = list(baselines), {}, None
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
            *(vlpipe_pipeline(cache_dir, manifest, mode, batch_size, workers) for mode in modes),
            *baseline_pipelines(names, manifest, cache_dir, jpegs, seed_transform, batch_size, workers),
        ]
        all_files = [*map(Path, image_files), *_other_cache_files(manifest, cache_dir),
                     *jpegs.jpeg_paths, *jpegs.presized_paths, *jpegs.shard_paths]
        if cold:
            done, page_cache_note = drop_page_cache(drop_caches_file)
            page_cache = "cold" if done else "not dropped"
        else:
            done, page_cache_note = warm_files(all_files)
            page_cache = "warm" if done else "not warmed"
        drop_before_runs = drop_caches_file if page_cache == "cold" else None
        rounds_by_name, ceilings = _interleave(pipelines, settings, image_files, drop_before_runs, progress)
    ceiling, copy_bound, take_ceiling = (
        max(statistics.median(rates) for (_n, s), rates in ceilings.items() if s == series) for series in SERIES)
    results = _summarize(pipelines, rounds_by_name, ceiling, copy_bound, take_ceiling)
    machine.update({
        "page_cache": page_cache,
        "page_cache_note": page_cache_note,
        "data": {"cache_samples": manifest.num_samples, "image_size": manifest.image.image_size,
                 "patch_size": manifest.image.patch_size, "max_len": manifest.text.max_len,
                 "jpeg_source": jpegs.origin, "mean_jpeg_bytes": round(jpegs.jpeg_bytes_per_sample)},
        "skipped": skipped,
        "ceiling": _ceiling_summary(ceilings, "ceiling"),
        # The same gathers, each batch copied once more as the consumer copies every pipeline's
        # batches: the most any pipeline can deliver through this benchmark on this machine.
        "ceiling_with_consumer_copy": _ceiling_summary(ceilings, "copy bound"),
        # The gather the anchor figures were measured with: a reference
        # beside the ceiling, not a bound (see vlpipe.bench.ceiling).
        "np_take_ceiling": _ceiling_summary(ceilings, "np.take"),
        "settings": asdict(settings),
    })
    return {"machine": machine, "results": results, "ceiling_samples_per_s": round(ceiling, 1)}


def _other_cache_files(manifest: Any, cache_dir: Path) -> list[Path]:
    return [shard.path(cache_dir, kind) for shard in manifest.shards for kind in ("tokens", "lengths")]


def _interleave(pipelines: list[Pipeline], settings: BenchRun, image_files: list[str],
                drop_before_runs: str | None, progress: Progress | None
                ) -> tuple[dict[str, list[RoundResult]], dict[tuple[int, str], list[float]]]:
    steps_per_round = len(SERIES) * len(settings.ceiling_processes) + len(pipelines)
    total = settings.rounds * steps_per_round
    done = 0
    by_name: dict[str, list[RoundResult]] = {p.name: [] for p in pipelines}
    # (processes, series) -> rates; see SERIES and ceiling.RowGatherer.
    ceilings: dict[tuple[int, str], list[float]] = {
        (n, series): [] for series in SERIES for n in settings.ceiling_processes}

    def step(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, label)

    for round_index in range(settings.rounds):
        if settings.cold:
            # The ceiling is a memory-bandwidth figure by definition: measure it on warm pages.
            warm_files(map(Path, image_files))
        for processes, series in ceilings:
            copy, method = SERIES[series]
            ceilings[processes, series].append(
                measure_ceiling(image_files, settings.batch_size, settings.seconds, processes,
                                seed=round_index, consumer_copy=copy, method=method).samples_per_s)
            step(f"round {round_index + 1}: {series}, {processes} process(es)")
        for pipeline in pipelines:
            if drop_before_runs is not None:
                drop_page_cache(drop_before_runs)
            # Cold runs time the very first batches, worker start-up included, as a first epoch would.
            by_name[pipeline.name].append(
                run_round(pipeline, seed=round_index, seconds=settings.seconds, warmup=not settings.cold))
            step(f"round {round_index + 1}: {pipeline.name}")
    return by_name, ceilings


def _ceiling_summary(ceilings: dict[tuple[int, str], list[float]], series: str) -> dict[str, dict[str, float]]:
    return {f"{n}_process{'es' if n > 1 else ''}": {"samples_per_s": round(statistics.median(r), 1),
                                                    "min": round(min(r), 1), "max": round(max(r), 1)}
            for (n, name), r in ceilings.items() if name == series}


def _max_mb(values: list[int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(max(known) / 1e6, 1) if known else None


def _summarize(pipelines: list[Pipeline], rounds_by_name: dict[str, list[RoundResult]],
               ceiling: float, copy_bound: float, take_ceiling: float) -> list[dict[str, Any]]:
    medians = {name: statistics.median(r.samples_per_s for r in rounds) for name, rounds in rounds_by_name.items()}
    baseline = medians[BASELINE]
    results = []
    for pipeline in pipelines:
        rounds = rounds_by_name[pipeline.name]
        rates = [r.samples_per_s for r in rounds]
        median = medians[pipeline.name]
        results.append({
            "pipeline": pipeline.name,
            "description": pipeline.description,
            "workers": pipeline.workers,
            "samples_per_s": round(median, 1),
            "samples_per_s_min": round(min(rates), 1),
            "samples_per_s_max": round(max(rates), 1),
            "samples_per_s_rounds": [round(x, 1) for x in rates],
            "ratio_to_baseline": round(median / baseline, 3),
            "share_of_ceiling": round(median / ceiling, 4),
            "share_of_copy_bound": round(median / copy_bound, 4),
            "share_of_np_take_ceiling": round(median / take_ceiling, 4),
            "read_mb_per_s": round(median * pipeline.read_bytes_per_sample / 1e6, 1),
            "read_bytes_per_sample": round(pipeline.read_bytes_per_sample),
            "cpu_cores": round(statistics.mean(r.cpu_seconds / r.seconds for r in rounds), 2),
            "peak_rss_mb": round(max(r.peak_rss_bytes for r in rounds) / 1e6, 1),
            "pss_mb": _max_mb([r.pss_bytes for r in rounds]),
            "other_load_cores": round(max(r.other_load_cores for r in rounds), 2),
            "samples_timed": sum(r.samples for r in rounds),
        })
    return results
