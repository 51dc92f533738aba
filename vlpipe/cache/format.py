"""The cache format (version 2; version 1 still read) as Python objects: names, paths and a typed view of manifest.json.

docs/cache-format.md is the contract; this module mirrors it so that the writer, the reader,
verify and info agree on every name and field. Anyone may still read a cache with numpy and
pyarrow alone: nothing here is needed to *read* the arrays, only to avoid spelling them twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

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


def check_labels_section(labels: Any, source: str) -> None:
    """The fields a trainer relies on: a known task and one name per label id.

    Called by verify rather than by load_manifest, so that a reader that needs only labels.npy
    still opens a cache whose labels section another tool wrote differently.
    """
    if labels is None:
        return
    f = _Fields(labels, "labels", source)
    task = f.get("task", str)
    if task not in LABEL_TASKS:
        raise VlpipeError(f"{source}: labels.task is {task!r}, expected one of {', '.join(LABEL_TASKS)}")
    names = f.get("names", list)
    if f.get("num_labels", int) != len(names) or not all(isinstance(n, str) for n in names):
        raise VlpipeError(f"{source}: labels.names must be num_labels strings")
    if len(names) < 2 and task != "multilabel":
        raise VlpipeError(f"{source}: a {task} task needs at least 2 label names, found {len(names)}")


class _Fields:
    """Reads required fields from a JSON object, naming the full field path when one is wrong."""

    def __init__(self, obj: Any, where: str, source: str):
        if not isinstance(obj, dict):
            raise VlpipeError(f"{source}: field {where or 'root'!r} must be a JSON object")
        self.obj, self.where, self.source = obj, where, source

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, types: type | tuple[type, ...]) -> Any:
        if key not in self.obj:
            raise VlpipeError(f"{self.source}: missing field {self._name(key)!r}")
        value = self.obj[key]
        # bool is an int subclass in Python; a manifest saying `"vocab_size": true` is still wrong.
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise VlpipeError(f"{self.source}: field {self._name(key)!r} has the wrong type")
        if not isinstance(value, types):
            raise VlpipeError(f"{self.source}: field {self._name(key)!r} has the wrong type")
        return value

    def inside_cache(self, key: str) -> str:
        """A file path relative to the cache folder, refused if it leads out of it.

        A manifest from someone else must not make the reader, `cache verify` or `cache info`
        open files elsewhere (an absolute path, or one through `..`).
        """
        path = self.get(key, str)
        pure = PurePosixPath(path)
        if not pure.parts or pure.is_absolute() or ".." in pure.parts:
            raise VlpipeError(f"{self.source}: field {self._name(key)!r} is {path!r}, which leaves the cache "
                              "folder (expected a path inside it, like shards/00000/images.npy)")
        return path

    def sub(self, key: str) -> _Fields:
        return _Fields(self.get(key, dict), self._name(key), self.source)


_NUM = (int, float)


@dataclass
class ImageSpec:
    image_size: int
    patch_size: int
    grid: int
    num_patches: int
    patch_dim: int
    dtype: str = "uint8"
    layout: str = PATCH_LAYOUT
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    # Version 2: how the images are stored. A JPEG cache records its quality, chroma subsampling
    # and the library that encoded it (another version of it may write other bytes).
    codec: str = "raw"
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
        spec = cls(image_size, patch_size, grid, grid * grid, patch_size * patch_size * 3, codec=codec)
        if codec == "jpeg":
            from vlpipe.cache.codec import JPEG_SUBSAMPLING, encoder_name  # simplejpeg only where needed

            spec.quality, spec.subsampling, spec.encoder = quality, JPEG_SUBSAMPLING, encoder_name()
        return spec

    @classmethod
    def _parse(cls, f: _Fields, version: int) -> ImageSpec:
        spec = cls(
            image_size=f.get("image_size", int), patch_size=f.get("patch_size", int),
            grid=f.get("grid", int), num_patches=f.get("num_patches", int),
            patch_dim=f.get("patch_dim", int), dtype=f.get("dtype", str), layout=f.get("layout", str),
            mean=[float(x) for x in f.get("mean", list)], std=[float(x) for x in f.get("std", list)],
        )
        if version == 1:
            return spec
        spec.codec = f.get("codec", str)
        if spec.codec not in CODECS:
            raise VlpipeError(f"{f.source}: image.codec is {spec.codec!r}, expected one of {', '.join(CODECS)}")
        if spec.codec == "jpeg":
            spec.quality, spec.subsampling = f.get("quality", int), f.get("subsampling", str)
            spec.encoder = f.get("encoder", str)
            # Decoded images are cut into the patch grid, so the numbers must agree.
            if (spec.grid * spec.patch_size != spec.image_size or spec.num_patches != spec.grid**2
                    or spec.patch_dim != spec.patch_size**2 * 3):
                raise VlpipeError(f"{f.source}: image sizes disagree (image_size {spec.image_size}, patch_size "
                                  f"{spec.patch_size}, grid {spec.grid}, num_patches {spec.num_patches}, "
                                  f"patch_dim {spec.patch_dim})")
        return spec


@dataclass
class TextSpec:
    tokenizer_file: str
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

    @classmethod
    def _parse(cls, f: _Fields) -> TextSpec:
        return cls(
            tokenizer_file=f.inside_cache("tokenizer_file"), tokenizer_sha256=f.get("tokenizer_sha256", str),
            tokenizer_spec=f.get("tokenizer_spec", str), vocab_size=f.get("vocab_size", int),
            max_len=f.get("max_len", int), dtype=f.get("dtype", str), pad_id=f.get("pad_id", int),
            cls_id=f.get("cls_id", int), sep_id=f.get("sep_id", int), mask_id=f.get("mask_id", int),
            unk_id=f.get("unk_id", (int, type(None))),
        )


@dataclass
class FileEntry:
    path: str
    bytes: int
    sha256: str

    @classmethod
    def _parse(cls, f: _Fields) -> FileEntry:
        return cls(path=f.inside_cache("path"), bytes=f.get("bytes", int), sha256=f.get("sha256", str))


@dataclass
class ShardEntry:
    name: str
    num_samples: int
    source: str
    files: dict[str, FileEntry]

    def path(self, cache_dir: str | os.PathLike[str], kind: str) -> Path:
        """Absolute path of one of this shard's files (`images`, `tokens`, `lengths`, `meta`, ...)."""
        return Path(cache_dir) / self.files[kind].path

    @classmethod
    def _parse(cls, f: _Fields, codec: str) -> ShardEntry:
        files_f = f.sub("files")
        files = {kind: FileEntry._parse(files_f.sub(kind)) for kind in files_f.obj}
        for kind in shard_files(codec):
            if kind not in files:
                raise VlpipeError(f"{f.source}: missing field {files_f._name(kind)!r}")
        return cls(name=f.get("name", str), num_samples=f.get("num_samples", int),
                   source=f.get("source", str), files=files)


@dataclass
class Manifest:
    num_samples: int
    image: ImageSpec
    text: TextSpec
    splits: dict[str, int]
    shards: list[ShardEntry]
    labels: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    def shard_offsets(self) -> list[int]:
        """Global index of each shard's first sample (samples are numbered in shard order)."""
        offsets, total = [], 0
        for shard in self.shards:
            offsets.append(total)
            total += shard.num_samples
        return offsets

    def to_dict(self) -> dict[str, Any]:
        """The manifest.json object, keys in the documented order."""
        return {
            "format": self.format, "version": self.version, "num_samples": self.num_samples,
            "image": asdict(self.image), "text": asdict(self.text), "splits": dict(self.splits),
            "shards": [asdict(s) for s in self.shards], "labels": self.labels,
            "provenance": self.provenance, "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, obj: Any, source: str = MANIFEST) -> Manifest:
        """Parse and check a manifest object; VlpipeError names the first missing or wrong field."""
        f = _Fields(obj, "", source)
        fmt = f.get("format", str)
        if fmt != FORMAT_NAME:
            raise VlpipeError(f"{source}: format is {fmt!r}, expected {FORMAT_NAME!r}")
        version = f.get("version", int)
        if version not in READABLE_VERSIONS:
            raise VlpipeError(
                f"{source}: cache format version {version} is not supported (this vlpipe reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))}); rebuild it with `vlpipe build-cache`"
            )
        image = ImageSpec._parse(f.sub("image"), version)
        shards_raw = f.get("shards", list)
        shards = [ShardEntry._parse(_Fields(s, f"shards[{i}]", source), image.codec) for i, s in enumerate(shards_raw)]
        labels = obj.get("labels")
        if labels is not None and not isinstance(labels, dict):
            raise VlpipeError(f"{source}: field 'labels' must be null or a JSON object")
        manifest = cls(
            num_samples=f.get("num_samples", int),
            image=image,
            text=TextSpec._parse(f.sub("text")),
            splits={str(k): int(v) for k, v in f.get("splits", dict).items()},
            shards=shards,
            labels=labels,
            provenance=dict(obj.get("provenance") or {}),
            skipped={str(k): int(v) for k, v in (obj.get("skipped") or {}).items()},
            format=fmt,
            version=version,
        )
        total = sum(s.num_samples for s in shards)
        if total != manifest.num_samples:
            raise VlpipeError(
                f"{source}: num_samples is {manifest.num_samples} but the shards hold {total} samples"
            )
        return manifest


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
