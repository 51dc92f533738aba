"""The settings of `vlpipe fetch`, each declared once (vlpipe/settings.py).

Four groups, each a section of `FetchConfig` and each pickled into img2dataset's download
processes as it is: what counts as a correct image (`VerifyConfig`), what a connection may do
(`UrlPolicy`), how img2dataset runs (`DownloadConfig`), and which rows are fetched. img2dataset
takes nonsense such as 0 processes or threads and fails deep in its workers (or leaves shards
that no rerun can finish), and negative sizes or ratios would quietly drop every image, so every
range is declared here and checked before anything is downloaded or written.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import field_validator

from vlpipe.settings import Settings, setting

DISTRIBUTORS = ("multiprocessing", "ray")
DEFAULT_DOWNLOAD_DIR = os.environ.get("VLPIPE_DOWNLOAD_DIR", os.path.join(os.path.expanduser("~"), ".cache",
                                                                          "vlpipe", "cc"))


class VerifyConfig(Settings):
    """What counts as a correct image and how kept images are stored."""

    min_side: int = setting(64, "Drop images whose shorter side is smaller (too_small): they only become blur "
                            "once upscaled for a 224 px model.", ge=0)
    max_aspect: float = setting(3.0, "Drop images with a longer/shorter side ratio above this (bad_aspect): a "
                                "square center crop loses most of a wider strip; inf = no limit.", ge=1)
    max_pixels: int = setting(40_000_000, "Drop images with more pixels, checked from the header before "
                              "decoding (too_large: decompression bombs).", ge=1)
    shorter_side: int = setting(256, "Kept images are stored with their shorter side at most this "
                                "(0 = original size).", ge=0)
    jpeg_quality: int = setting(95, "JPEG quality of the kept images.", ge=1, le=100)


class UrlPolicy(Settings):
    """What a download connection may do (vlpipe/fetch/safety.py enforces it)."""

    allow_private_network: bool = setting(False, "Allow URLs on loopback/private/link-local hosts (tests, "
                                          "intranets).", negatable=False)
    deadline_s: float = setting(30.0, "Seconds for a whole response, headers and body; defeats servers that "
                                "trickle bytes.", flag="--deadline", gt=0, allow_inf_nan=False)
    max_bytes: int = setting(32 * 1024 * 1024, "Stop downloading a response after this many bytes (too_large); "
                             "a real photo is far smaller.", ge=1)


class DownloadConfig(Settings):
    """img2dataset settings; changing them between runs of the same output is allowed."""

    processes: int = setting(help="img2dataset download processes.", factory=lambda: os.cpu_count() or 1,
                             shown_default="all CPUs", ge=1)
    threads: int = setting(64, "Download threads per process.", ge=1)
    timeout: float = setting(10.0, "Seconds per socket operation (connect, each read).", gt=0, allow_inf_nan=False)
    retries: int = setting(0, "Retries per failed image.", ge=0)
    distributor: Literal[DISTRIBUTORS] = setting(  # type: ignore[valid-type]
        "multiprocessing", "img2dataset's engine; ray runs on the cluster of $RAY_ADDRESS, else on a local Ray "
        "with --processes CPUs (docs/scale-out.md).")

    @field_validator("distributor")
    @classmethod
    def _ray_installed(cls, name: str) -> str:
        """Fail early: img2dataset's ray distributor silently does nothing when ray is missing."""
        if name == "ray":
            from vlpipe.utils.raysession import require_ray

            require_ray()
        return name


class FetchConfig(Settings):
    """Everything a fetch depends on. The selection and `verify` must not change for an output folder."""

    subset: str = setting("all", "How many rows of the list: 5000, 200k, 1m or all.")
    sample: bool = setting(False, "Take a seeded random sample of --subset rows instead of the first ones.",
                           negatable=False)
    seed: int = setting(0, "Seed for --sample.")
    shard_size: int = setting(1000, "Samples per shard (each worker pays ~10 s to import img2dataset: keep it "
                              "large).", ge=1)
    verify: VerifyConfig = setting(factory=VerifyConfig, help="What counts as a correct image.")
    policy: UrlPolicy = setting(factory=UrlPolicy, help="What a connection may do.")
    download: DownloadConfig = setting(factory=DownloadConfig, help="How img2dataset runs.")

    @field_validator("subset")
    @classmethod
    def _subset(cls, text: str) -> str:
        from vlpipe.fetch.url_lists import parse_subset

        parse_subset(text)
        return text

    @property
    def rows(self) -> int | None:
        """The number of rows `subset` selects (None: all)."""
        from vlpipe.fetch.url_lists import parse_subset

        return parse_subset(self.subset)

    def fixed_part(self, source: str) -> dict[str, Any]:
        """The options that decide the kept set; a rerun with other values would mix two datasets."""
        return {
            "source": source, "subset": self.subset, "sample": self.sample, "seed": self.seed,
            "shard_size": self.shard_size, "verify": self.verify.model_dump(),
            "allow_private_network": self.policy.allow_private_network,
        }  # fmt: skip


class FetchCommand(Settings):
    """What `vlpipe fetch cc` and `vlpipe fetch tsv` share: the list cache folder and the fetch itself."""

    download_dir: str = setting(DEFAULT_DOWNLOAD_DIR, "Where downloaded caption/URL lists are kept.",
                                shown_default="$VLPIPE_DOWNLOAD_DIR, else ~/.cache/vlpipe/cc")
    fetch: FetchConfig = setting(factory=FetchConfig, help="The fetch.")


class CcCommand(FetchCommand):
    """`vlpipe fetch cc`: Conceptual Captions from its official list (or a copy of it)."""

    split: Literal["train", "validation"] = setting("train", "Which Conceptual Captions file.")
    out: str | None = setting(None, "Output folder.", shown_default="cache/raw/cc-SUBSET, or cc-val-SUBSET for "
                              "validation")
    tsv: str | None = setting(None, "Use this CC-format TSV (path or http(s) URL) instead of the official one.")


class TsvCommand(FetchCommand):
    """`vlpipe fetch tsv`: any caption/URL list."""

    out: str = setting(help="Output folder.", min_length=1)


class ReportCommand(Settings):
    """`vlpipe fetch report`."""

    as_json: bool = setting(False, "Print the report as JSON.", flag="--json", negatable=False)
