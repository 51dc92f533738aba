"""The settings of `vlpipe bench dataloader`, each declared once (vlpipe/settings.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from vlpipe.bench import BASELINE, BASELINES, VLPIPE_MODES
from vlpipe.bench.jpeg_files import DEFAULT_MAX_SOURCE_SAMPLES
from vlpipe.settings import Settings, setting


class DataloaderSettings(Settings):
    """What one benchmark run measures and for how long."""

    cache: str = setting(help="vlpipe cache directory (from `vlpipe build-cache`), raw or JPEG.", min_length=1)
    jpeg_cache: str | None = setting(None, "The JPEG twin of a raw --cache (`build-cache --codec jpeg` of the same "
                                     "source): its rows (vlpipe-jpeg-<mode>, decoded by the loader's threads) run in "
                                     "the same rounds.")
    source: str | None = setting(None, "img2dataset webdataset folder the cache was built from: the baselines read "
                                 "its real JPEGs. Without it, the cache's images are re-encoded as JPEG q95 (an "
                                 "approximation).")
    batch_size: int = setting(64, "Samples per batch for every pipeline.", ge=1)
    workers: int | None = setting(None, "Worker processes for the baselines (equal cores); vlpipe's threads mode "
                                  "starts one thread fewer, as its consuming thread gathers too. 0 loads everything "
                                  "in the calling process (baselines with num_workers=0, vlpipe inline mode only).",
                                  shown_default="all usable CPUs", ge=0)
    seconds: float = setting(5.0, "Timed seconds per pipeline per round.", gt=0, allow_inf_nan=False)
    rounds: int = setting(3, "Interleaved rounds (A B C A B C ...); rows report the median and min-max.", ge=1)
    modes: tuple[Literal[VLPIPE_MODES], ...] = setting(  # type: ignore[valid-type]
        VLPIPE_MODES, "vlpipe reader modes to measure.", min_length=1)
    baselines: tuple[Literal[BASELINES], ...] = setting(  # type: ignore[valid-type]
        BASELINES, f"JPEG-decoding loaders to measure; must include {BASELINE}, the like-for-like one every ratio "
        "is taken against.", min_length=1)
    max_source_samples: int = setting(DEFAULT_MAX_SOURCE_SAMPLES, "At most this many JPEGs are extracted/re-encoded "
                                      "for the baselines.", ge=1)
    cold: bool = setting(False, "Also run every vlpipe row cold: its cache files evicted from the page cache "
                         "(posix_fadvise, no root needed) before every round, one epoch at most, beside the disk's "
                         "sequential read rate.", negatable=False)
    as_json: bool = setting(False, "Print one JSON object instead of the table.", flag="--json", negatable=False)

    @field_validator("baselines")
    @classmethod
    def _yardstick(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if BASELINE not in names:
            raise ValueError(f"must include {BASELINE}: every ratio is taken against it")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> DataloaderSettings:
        if self.workers == 0 and "inline" not in self.modes:  # else the run would measure the baselines alone
            raise ValueError(f"--workers 0 runs only vlpipe's inline mode, and --modes {','.join(self.modes)} "
                             "leaves it out")
        if self.batch_size > self.max_source_samples:
            raise ValueError(f"--batch-size {self.batch_size} is larger than --max-source-samples "
                             f"{self.max_source_samples}")
        return self
