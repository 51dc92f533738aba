"""The cache format (version 2; version 1 still read) as Python objects: names, paths and a typed view of manifest.json.

docs/cache-format.md is the contract; this module mirrors it so that the writer, the reader,
verify and info agree on every name and field. Anyone may still read a cache with numpy and
pyarrow alone: nothing here is needed to *read* the arrays, only to avoid spelling them twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from vlpipe.errors import VlpipeError
from vlpipe.imaging import CLIP_MEAN, CLIP_STD

FORMAT_NAME = "vlpipe-cache"
FORMAT_VERSION = 2
# Version 1 is version 2 without the image codec fields: every version-1 cache is a raw cache.
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
SKIPPED_FILE = "skipped.parquet"
SHARDS_DIR = "shards"
# Per-shard record written after a shard's files are complete; lets a rerun skip the shard.
DONE_FILE = "done.json"
# How images are stored (vlpipe/cache/codec.py): raw patch rows, or one JPEG each.
CODECS = ("raw", "jpeg")
# The file kinds of one shard, in the order they appear in the manifest: its images (per codec),
# then tokens, lengths and metadata.
IMAGE_FILES: dict[str, dict[str, str]] = {
    "raw": {"images": "images.npy"},
    "jpeg": {"jpeg": "jpeg.npy", "jpeg_offsets": "jpeg_offsets.npy"},
}
TEXT_FILES: dict[str, str] = {"tokens": "tokens.npy", "lengths": "lengths.npy", "meta": "meta.parquet"}
LABELS_FILE = "labels.npy"
# labels.npy of downstream caches: int64 (n,) class ids (MISSING_LABEL = unlabeled, test split only)
# for binary/multiclass tasks, uint8 (n, num_labels) multi-hot rows for multilabel tasks.
LABEL_TASKS = ("binary", "multiclass", "multilabel")
MISSING_LABEL = -1
PATCH_LAYOUT = "row-major patches; each patch flattened (patch_row, patch_col, channel)"
META_COLUMNS = ("key", "caption", "url", "width", "height", "sha256", "split")
SPLITS = ("train", "val", "test")


def shard_dir(cache_dir: str | os.PathLike[str], name: str) -> Path:
    return Path(cache_dir) / SHARDS_DIR / name


def shard_files(codec: str) -> dict[str, str]:
    """File kind -> file name of one shard of a cache with this codec (labels.npy aside)."""
    return {**IMAGE_FILES[codec], **TEXT_FILES}


def shard_file_relpath(name: str, kind: str) -> str:
    """Path of one shard file relative to the cache root, with forward slashes as in the manifest."""
    names = {**IMAGE_FILES["raw"], **IMAGE_FILES["jpeg"], **TEXT_FILES, "labels": LABELS_FILE}
    return f"{SHARDS_DIR}/{name}/{names[kind]}"


def token_dtype(vocab_size: int) -> str:
    """uint16 halves the token bytes; only vocabularies past 65535 ids need uint32."""
    return "uint16" if vocab_size <= 65535 else "uint32"


def split_of(key: str, val_fraction: float) -> str:
    """`val` or `train` as a pure function of the key, so splits survive rebuilds and reshuffles."""
    h = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:16], 16)
    return "val" if h / 2**64 < val_fraction else "train"


@dataclass(frozen=True)
class LabelSpec:
    """What the labels of a downstream cache mean; the manifest's `labels` section is built from it.

    `names[i]` is the name of class id `i` (single-label) or of column `i` of the multi-hot rows.
    `unknown` counts label names met outside the train split's vocabulary and left out (multilabel).
    """

    task: str
    names: tuple[str, ...]
    unknown: tuple[tuple[str, int], ...] = ()

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    @property
    def dtype(self) -> str:
        return "uint8" if self.multilabel else "int64"

    def to_manifest(self, counts: dict[str, list[int]], unlabeled: dict[str, int]) -> dict[str, Any]:
        return {"task": self.task, "num_labels": len(self.names), "names": list(self.names),
                "file": LABELS_FILE, "dtype": self.dtype, "missing": None if self.multilabel else MISSING_LABEL,
                "counts": counts, "unlabeled": unlabeled, "unknown": dict(self.unknown)}


def label_counts(labels: np.ndarray, splits: list[str], multilabel: bool,
                 num_labels: int) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Samples per label id (positives, for multi-hot rows) and unlabeled samples, per split.

    The manifest records them so a trainer can weight classes without reading every label, and
    verify recomputes them from labels.npy and meta.parquet.
    """
    counts, unlabeled = {}, {}
    split_arr = np.asarray(splits, dtype=object)
    for split in SPLITS:
        rows = np.asarray(labels[split_arr == split])
        if not len(rows):
            continue
        if multilabel:
            counts[split] = rows.astype(np.int64).sum(axis=0).tolist()
            continue
        known = rows[rows != MISSING_LABEL]
        counts[split] = np.bincount(known, minlength=num_labels).tolist()
        if len(known) < len(rows):
            unlabeled[split] = int(len(rows) - len(known))
    return counts, unlabeled


class _Record(BaseModel):
    """A section of manifest.json: strict types (a bool is no count), keys beyond the format ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", validate_assignment=False)


def _inside_cache(path: str) -> str:
    """A file path relative to the cache folder, refused if it leads out of it.

    A manifest from someone else must not make the reader, `cache verify` or `cache info` open
    files elsewhere (an absolute path, or one through `..`).
    """
    pure = PurePosixPath(path)
    if not pure.parts or pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"is {path!r}, which leaves the cache folder (expected a path inside it, like "
                         "shards/00000/images.npy)")
    return path


CachePath = Annotated[str, AfterValidator(_inside_cache)]


class LabelsSection(_Record):
    """The fields of the manifest's `labels` a trainer relies on: a known task, one name per label id.

    Only these are checked, so `vlpipe cache verify` still opens a cache whose labels section
    another tool wrote differently (the section itself is kept as the plain object it is).
    """

    task: Literal[LABEL_TASKS]  # type: ignore[valid-type]
    num_labels: int
    names: list[str]

    @model_validator(mode="after")
    def _names(self) -> LabelsSection:
        if self.num_labels != len(self.names):
            raise ValueError("labels.names must be num_labels strings")
        if len(self.names) < 2 and self.task != "multilabel":
            raise ValueError(f"a {self.task} task needs at least 2 label names, found {len(self.names)}")
        return self


def check_labels_section(labels: Any, source: str) -> None:
    """Raise a one-line VlpipeError naming what is wrong with a `labels` section (None is fine)."""
    if labels is not None:
        _validated(LabelsSection, labels, source, prefix="labels")


class ImageSpec(_Record):
    image_size: int
    patch_size: int
    grid: int
    num_patches: int
    patch_dim: int
    dtype: str = "uint8"
    layout: str = PATCH_LAYOUT
    mean: list[float] = Field(default_factory=lambda: list(CLIP_MEAN))
    std: list[float] = Field(default_factory=lambda: list(CLIP_STD))
    # Version 2: how the images are stored. A JPEG cache records its quality, chroma subsampling
    # and the library that encoded it (another version of it may write other bytes).
    codec: Literal[CODECS] = "raw"  # type: ignore[valid-type]
    quality: int | None = None
    subsampling: str | None = None
    encoder: str | None = None

    @property
    def files(self) -> dict[str, str]:
        """The file kinds holding each shard's images (`images`, or `jpeg` and `jpeg_offsets`)."""
        return IMAGE_FILES[self.codec]

    @classmethod
    def create(cls, image_size: int, patch_size: int, codec: str = "raw", quality: int | None = None) -> ImageSpec:
        grid = image_size // patch_size
        spec = cls(image_size=image_size, patch_size=patch_size, grid=grid, num_patches=grid * grid,
                   patch_dim=patch_size * patch_size * 3, codec=codec)
        if codec == "jpeg":
            from vlpipe.cache.codec import JPEG_SUBSAMPLING, encoder_name  # simplejpeg only where needed

            spec.quality, spec.subsampling, spec.encoder = quality, JPEG_SUBSAMPLING, encoder_name()
        return spec


class TextSpec(_Record):
    tokenizer_file: CachePath
    tokenizer_sha256: str
    tokenizer_spec: str
    vocab_size: int
    max_len: int
    dtype: str
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    # None for tokenizers that can spell any string (open_clip's byte-level BPE has no [UNK]).
    unk_id: int | None


class FileEntry(_Record):
    path: CachePath
    bytes: int
    sha256: str


class ShardEntry(_Record):
    name: str
    num_samples: int
    source: str
    files: dict[str, FileEntry]

    def path(self, cache_dir: str | os.PathLike[str], kind: str) -> Path:
        """Absolute path of one of this shard's files (`images`, `tokens`, `lengths`, `meta`, ...)."""
        return Path(cache_dir) / self.files[kind].path


class Manifest(_Record):
    num_samples: int
    image: ImageSpec
    text: TextSpec
    splits: dict[str, int]
    shards: list[ShardEntry]
    labels: dict[str, Any] | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)
    skipped: dict[str, int] = Field(default_factory=dict)
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    @model_validator(mode="before")
    @classmethod
    def _format_and_version(cls, obj: Any) -> Any:
        """The checks that decide how the rest is read: the format's name, its version and (from
        version 2 on) the image codec and its fields, which version 1 lacks."""
        if not isinstance(obj, dict):
            return obj
        if "format" in obj and obj["format"] != FORMAT_NAME:
            raise ValueError(f"format is {obj['format']!r}, expected {FORMAT_NAME!r}")
        version = obj.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version not in READABLE_VERSIONS:
            raise ValueError(f"cache format version {version} is not supported (this vlpipe reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}); rebuild it with `vlpipe build-cache`")
        image = obj.get("image")
        if version != 1 and isinstance(image, dict):
            required = ["codec", *(["quality", "subsampling", "encoder"] if image.get("codec") == "jpeg" else [])]
            for key in required:
                if key not in image:
                    raise ValueError(f"missing field 'image.{key}'")
        return {**obj, "labels": obj.get("labels"), "provenance": obj.get("provenance") or {},
                "skipped": obj.get("skipped") or {}}

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        image = self.image
        if image.codec == "jpeg" and (image.grid * image.patch_size != image.image_size or
                                      image.num_patches != image.grid**2 or image.patch_dim != image.patch_size**2 * 3):
            # Decoded images are cut into the patch grid, so the numbers must agree.
            raise ValueError(f"image sizes disagree (image_size {image.image_size}, patch_size {image.patch_size}, "
                             f"grid {image.grid}, num_patches {image.num_patches}, patch_dim {image.patch_dim})")
        for i, shard in enumerate(self.shards):
            for kind in shard_files(image.codec):
                if kind not in shard.files:
                    raise ValueError(f"missing field 'shards[{i}].files.{kind}'")
        total = sum(s.num_samples for s in self.shards)
        if total != self.num_samples:
            raise ValueError(f"num_samples is {self.num_samples} but the shards hold {total} samples")
        return self

    def shard_offsets(self) -> list[int]:
        """Global index of each shard's first sample (samples are numbered in shard order)."""
        offsets, total = [], 0
        for shard in self.shards:
            offsets.append(total)
            total += shard.num_samples
        return offsets

    def to_dict(self) -> dict[str, Any]:
        """The manifest.json object, keys in the documented order."""
        out = self.model_dump(mode="json")
        return {k: out[k] for k in ("format", "version", "num_samples", "image", "text", "splits", "shards",
                                    "labels", "provenance", "skipped")}

    @classmethod
    def from_dict(cls, obj: Any, source: str = MANIFEST) -> Manifest:
        """Parse and check a manifest object; VlpipeError names the first missing or wrong field."""
        return _validated(cls, obj, source)


def _validated(cls: type[_Record], obj: Any, source: str, prefix: str = "") -> Any:
    """`cls` from a JSON object, or a one-line VlpipeError naming the field (`shards[1].files.tokens`)."""
    if not isinstance(obj, dict):
        raise VlpipeError(f"{source}: field {prefix or 'root'!r} must be a JSON object")
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        error = exc.errors()[0]
        parts = [prefix] if prefix else []
        for part in error["loc"]:
            if isinstance(part, int):
                parts[-1] = f"{parts[-1]}[{part}]" if parts else f"[{part}]"
            else:
                parts.append(str(part))
        name = ".".join(parts)
        if error["type"] == "missing":
            raise VlpipeError(f"{source}: missing field {name!r}") from None
        if error["type"] == "value_error":
            message = str(error.get("ctx", {}).get("error", error["msg"]))
            if prefix and not error["loc"]:
                name = ""
            raise VlpipeError(f"{source}: field {name!r} {message}" if error["loc"] else f"{source}: {message}") \
                from None
        if error["type"] == "literal_error":
            raise VlpipeError(f"{source}: {name} is {error['input']!r}, expected one of "
                              f"{', '.join(str(a) for a in typing.get_args(_annotation(cls, error['loc'])))}") from None
        if error["type"] in ("model_type", "dict_type"):
            raise VlpipeError(f"{source}: field {name!r} must be a JSON object") from None
        raise VlpipeError(f"{source}: field {name!r} has the wrong type") from None


def _annotation(cls: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The type annotation of the field at `loc` (for the allowed values of a Literal)."""
    annotation: Any = cls
    for part in loc:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(part, str):
            annotation = annotation.model_fields[part].annotation
    return annotation


def load_manifest(cache_dir: str | os.PathLike[str]) -> Manifest:
    """Open a cache's manifest; a directory without one is an unfinished build, never a cache."""
    root = Path(cache_dir)
    if not root.exists():
        raise VlpipeError(f"{root}: no such cache directory")
    if not root.is_dir():
        raise VlpipeError(f"{root}: is not a directory (expected a vlpipe cache directory)")
    path = root / MANIFEST
    if not path.is_file():
        raise VlpipeError(
            f"{root} is not a complete vlpipe cache (no {MANIFEST}); rerun `vlpipe build-cache`"
        )
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VlpipeError(f"{path}: malformed JSON ({exc})") from None
    return Manifest.from_dict(obj, source=str(path))
