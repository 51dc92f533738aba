"""Run img2dataset with our URL guard and our image normalizer plugged in.

img2dataset's `download()` has no hook for how a URL is fetched, how an image is decoded, or
what happens after a shard is written, so for the duration of the call we swap the `Downloader`
class it instantiates for a subclass. The subclass is pickled into every download process
(multiprocessing or Ray workers alike), where it (1) installs the guarded urllib opener
from `safety.py`, (2) replaces img2dataset's resizer with `normalize.Normalizer`, which runs on
each image as it arrives, overlapped with the other downloads, (3) replaces its webdataset writer
with `shardwriter.StagedShardWriter`, which stages each tar already sorted and in its final form,
and (4) publishes each shard with its drop records (`publish.finalize_shard`) right after
img2dataset finished it.

Multiprocessing note: img2dataset uses the "spawn" start method, which re-imports the caller's
main module in every worker. The `vlpipe` command and pytest are safe; a script calling
`fetch_tsv` must keep its top-level code under `if __name__ == "__main__":`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import os
import signal
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones PyPI on import otherwise

import cv2  # noqa: E402
from img2dataset.downloader import Downloader  # noqa: E402

from vlpipe.fetch.config import DownloadConfig, UrlPolicy, VerifyConfig  # noqa: E402
from vlpipe.fetch.normalize import Normalizer  # noqa: E402
from vlpipe.fetch.publish import finalize_shard  # noqa: E402
from vlpipe.fetch.safety import install_guard  # noqa: E402
from vlpipe.fetch.shardwriter import StagedShardWriter  # noqa: E402
from vlpipe.utils.raysession import ray_session  # noqa: E402

# The package re-exports a function named `main`, shadowing the submodule as an attribute.
i2d_main = importlib.import_module("img2dataset.main")
# img2dataset's pyspark engine is not offered: untested here, and testing it costs CI a 450 MB
# package (docs/fetch.md, "Scale-out").
class VerifyingDownloader(Downloader):
    """img2dataset's Downloader, fetching through the URL guard, normalizing with our decoder."""

    def __init__(self, *, policy: UrlPolicy, verify: VerifyConfig, final_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy
        self.verify = verify
        self.final_dir = final_dir
        # Called on each image as it arrives, where img2dataset would decode and resize.
        self.resizer = CountingNormalizer(verify)
        # Writes the staged tar already sorted, in its published form (no rewrite when publishing).
        self.sample_writer_class = StagedShardWriter

    def __call__(self, row: Any) -> Any:
        install_guard(self.policy)
        # Parallelism comes from processes x download threads; OpenCV's own thread pool on top of
        # that only oversubscribes the cores (a 640x480 resize: 1.8 ms on 1 thread, 2.2 ms on 2).
        cv2.setNumThreads(1)
        return super().__call__(row)

    def download_shard(self, row: Any) -> None:
        self.resizer.bytes_seen = 0
        super().download_shard(row)
        finalize_shard(
            Path(self.output_folder), Path(self.final_dir), row[0], self.verify, self.resizer.bytes_seen
        )


class CountingNormalizer(Normalizer):
    """Also counts the downloaded bytes it sees (img2dataset records no sizes of its own)."""

    bytes_seen = 0

    def __call__(self, img_stream: io.BytesIO, blurring_bbox_list: Any = None) -> tuple[Any, ...]:
        self.bytes_seen += img_stream.getbuffer().nbytes
        return super().__call__(img_stream, blurring_bbox_list)


def run_img2dataset(
    input_parquet: Path,
    staging: Path,
    out: Path,
    *,
    shard_size: int,
    download: DownloadConfig,
    policy: UrlPolicy,
    verify: VerifyConfig,
) -> None:
    """Download every not-yet-done shard of `input_parquet` into `staging`, verified into `out`."""
    factory = functools.partial(VerifyingDownloader, policy=policy, verify=verify, final_dir=str(out))
    original = i2d_main.Downloader
    previous_sigint = signal.getsignal(signal.SIGINT)
    i2d_main.Downloader = factory  # type: ignore[misc]
    engine = contextlib.ExitStack()
    try:
        if download.distributor == "ray":
            # Connected here, not by img2dataset: its Ray engine would start a Ray with every CPU.
            engine.enter_context(ray_session(num_cpus=download.processes))
        i2d_main.download(
            url_list=str(input_parquet),
            input_format="parquet",
            url_col="url",
            caption_col="caption",
            save_additional_columns=["row"],
            output_folder=str(staging),
            output_format="webdataset",
            processes_count=download.processes,
            thread_count=download.threads,
            number_sample_per_shard=shard_size,
            timeout=download.timeout,
            retries=download.retries,
            distributor=download.distributor,
            extract_exif=False,
            compute_hash="sha256",
            incremental_mode="incremental",
            enable_wandb=False,
            user_agent_token="vlpipe",
            max_shard_retry=1,
        )
    except SystemExit as exc:
        # img2dataset's SIGINT handler cleans up and calls sys.exit(0); a Ctrl-C is not success.
        raise KeyboardInterrupt from exc
    finally:
        engine.close()
        i2d_main.Downloader = original  # type: ignore[misc]
        signal.signal(signal.SIGINT, previous_sigint)
