"""`fetch_tsv` / `fetch_cc`: select rows, download with img2dataset, verify, and record everything.

Output folder (what `vlpipe build-cache` reads, img2dataset's webdataset layout):

    OUT/NNNNN.tar                    verified samples KEY.jpg (RGB JPEG) + KEY.txt + KEY.json
    OUT/NNNNN.parquet                one row per attempted sample (status success / failed_*)
    OUT/NNNNN_stats.json             img2dataset-style counts for the verified shard
    OUT/vlpipe_NNNNN_drops.parquet   key, row, url, reason, detail, stage per dropped sample
    OUT/vlpipe_NNNNN_done.json       written last per shard: the shard counts as done
    OUT/vlpipe_input.parquet         the selected rows (row, caption, url) given to img2dataset
    OUT/vlpipe_selection_drops.parquet  rows dropped before downloading (bad scheme, duplicate URL)
    OUT/vlpipe_fetch.json            options and one record per run (for `vlpipe fetch report`)
    OUT/vlpipe_staging/              img2dataset's own output, deleted shard by shard once published

A rerun of the same command skips every shard with a done record, publishes shards that were
downloaded but not published, and re-downloads the rest, so it ends with the same kept set.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.progress import Progress

from vlpipe.errors import VlpipeError
from vlpipe.fetch.download import DownloadConfig, check_distributor, run_img2dataset
from vlpipe.fetch.report import CONFIG_FILE, INPUT_FILE, SELECTION_DROPS_FILE, fetch_report
from vlpipe.fetch.safety import UrlPolicy
from vlpipe.fetch.shardwriter import written_by_us
from vlpipe.fetch.sources import (
    CC_FILENAMES,
    CC_URLS,
    DEFAULT_DOWNLOAD_DIR,
    download_file,
    parse_subset,
    resolve_list,
    select_rows,
    write_parquet,
)
from vlpipe.fetch.verify import VerifyConfig, done_path, finalize_shard
from vlpipe.utils.atomic import TMP_PREFIX, write_json_atomic

STAGING_DIR = "vlpipe_staging"


@dataclass(frozen=True)
class FetchConfig:
    """Everything a fetch depends on. `selection` and `verify` must not change for an output folder."""

    subset: str = "all"
    sample: bool = False
    seed: int = 0
    shard_size: int = 1000  # each worker pays ~10 s to import img2dataset: keep shards large
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    policy: UrlPolicy = field(default_factory=UrlPolicy)
    download: DownloadConfig = field(default_factory=DownloadConfig)

    def fixed_part(self, source: str) -> dict[str, Any]:
        """The options that decide the kept set; a rerun with other values would mix two datasets."""
        return {
            "source": source, "subset": self.subset, "sample": self.sample, "seed": self.seed,
            "shard_size": self.shard_size, "verify": asdict(self.verify),
            "allow_private_network": self.policy.allow_private_network,
        }  # fmt: skip


def fetch_cc(
    out: str | Path,
    *,
    split: str = "train",
    tsv: str | None = None,
    download_dir: str | Path = DEFAULT_DOWNLOAD_DIR,
    config: FetchConfig | None = None,
) -> dict[str, Any]:
    """Fetch Conceptual Captions: the official TSV of `split` (or `tsv`), then `fetch_tsv`."""
    if split not in CC_URLS:
        raise VlpipeError(f"--split {split!r}: expected one of {', '.join(CC_URLS)}")
    if tsv is None:
        path = download_file(CC_URLS[split], Path(download_dir) / CC_FILENAMES[split])
        tsv = str(path)
    return fetch_tsv(tsv, out, download_dir=download_dir, config=config)


def fetch_tsv(
    source: str,
    out: str | Path,
    *,
    download_dir: str | Path = DEFAULT_DOWNLOAD_DIR,
    config: FetchConfig | None = None,
) -> dict[str, Any]:
    """Fetch any caption/URL TSV (local path or http(s) URL) into verified shards under `out`."""
    cfg = config or FetchConfig()
    check_distributor(cfg.download.distributor)
    if cfg.shard_size < 1:
        raise VlpipeError(f"--shard-size {cfg.shard_size}: must be >= 1")
    subset = parse_subset(cfg.subset)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(f"{TMP_PREFIX}*"):  # half-written files of a killed run
        leftover.unlink()
    source_id = source if source.startswith(("http://", "https://")) else str(Path(source).resolve())
    record = _check_config(out, cfg.fixed_part(source_id))

    input_path = out / INPUT_FILE
    if not input_path.exists():
        selection = select_rows(
            resolve_list(source, Path(download_dir)), subset, sample=cfg.sample, seed=cfg.seed
        )
        write_parquet(selection.drops, out / SELECTION_DROPS_FILE)
        write_parquet(selection.rows, input_path)  # last: its presence means the selection is complete
    num_rows = pq.read_metadata(input_path).num_rows
    num_shards = math.ceil(num_rows / cfg.shard_size)

    start = time.time()
    staging = out / STAGING_DIR
    _finalize_staged(staging, out, num_shards, cfg.verify)
    if _missing_shards(out, num_shards):
        with _progress(out, num_shards):
            run_img2dataset(
                input_path, staging, out, shard_size=cfg.shard_size,
                download=cfg.download, policy=cfg.policy, verify=cfg.verify,
            )  # fmt: skip
        _finalize_staged(staging, out, num_shards, cfg.verify)
    record["runs"].append({"start": start, "end": time.time(), "download": asdict(cfg.download)})
    write_json_atomic(out / CONFIG_FILE, record)
    missing = _missing_shards(out, num_shards)
    if missing:
        raise VlpipeError(
            f"{len(missing)} of {num_shards} shards in {out} did not finish (e.g. shard {missing[0]:05d}); "
            "rerun the same command to retry them"
        )
    return fetch_report(out)


def _check_config(out: Path, fixed: dict[str, Any]) -> dict[str, Any]:
    """Load the run record of `out`, refusing to continue a fetch made with other options."""
    path = out / CONFIG_FILE
    record = json.loads(path.read_text()) if path.exists() else None
    # Until rows were selected nothing depends on the options (e.g. a mistyped path): start afresh.
    if record is None or (record.get("options") != fixed and not (out / INPUT_FILE).exists()):
        record = {"format": "vlpipe-fetch", "version": 1, "options": fixed, "runs": []}
        write_json_atomic(path, record)
        return record
    if record.get("options") != fixed:
        old, new = record.get("options", {}), fixed
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise VlpipeError(
            f"{out} was fetched with other options ({', '.join(changed)} differ); "
            "use the same options to resume, or a new --out"
        )
    return record


def _missing_shards(out: Path, num_shards: int) -> list[int]:
    return [i for i in range(num_shards) if not done_path(out, i).exists()]


def _finalize_staged(staging: Path, out: Path, num_shards: int, cfg: VerifyConfig) -> None:
    """Bring staging in line with the done records after a killed run.

    A shard img2dataset finished (its stats file is written last) but that was not published is
    published now; a partly downloaded shard, or one staged by an older vlpipe in img2dataset's
    own tar layout, loses img2dataset's done marker so it is downloaded again; raw files left
    behind by a kill after the done record are removed.
    """
    for shard_id in range(num_shards):
        name = f"{shard_id:05d}"
        raw = [staging / f"{name}{suffix}" for suffix in (".tar", ".parquet", "_stats.json")]
        if done_path(out, shard_id).exists():
            for path in raw[:2]:
                path.unlink(missing_ok=True)
        elif all(path.exists() for path in raw) and written_by_us(raw[1]):
            finalize_shard(staging, out, shard_id, cfg)
        else:
            raw[2].unlink(missing_ok=True)


@contextlib.contextmanager
def _progress(out: Path, num_shards: int) -> Iterator[None]:
    """A rich progress bar over finished shards, polled from the done records while img2dataset runs."""
    stop = threading.Event()

    def poll() -> None:
        with Progress(transient=True) as bar:
            task = bar.add_task("fetch: shards done", total=num_shards)
            while not stop.wait(1.0):
                bar.update(task, completed=num_shards - len(_missing_shards(out, num_shards)))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
