"""Read img2dataset output in its three layouts: NNNNN.tar (webdataset), NNNNN.parquet, NNNNN/ folders.

Each img2dataset shard is one source shard: it is found here by its file name and read here, in
the worker that builds its cache shard, into `Row`s that hold the image bytes. A cheap pass reads
the captions alone (no image bytes), to train a tokenizer before the real pass.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.errors import VlpipeError
from vlpipe.ingest.rows import Row, Source, SourceShard

LAYOUTS = ("webdataset", "parquet", "files")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")
_SHARD_STEM = re.compile(r"^\d+$")


def open_folder(root: Path) -> Source | None:
    """The img2dataset shards in folder `root`, in name order, or None when it holds none.

    Side files such as fetch's vlpipe_drops.parquet or img2dataset's metadata NNNNN.parquet next
    to tars are not shards: parquet files count only with a numeric name and an image bytes column.
    """
    tars = sorted(p for p in root.glob("*.tar") if not p.name.startswith("."))
    if tars:
        return Source(root, "webdataset", [SourceShard(p.name, "webdataset", str(p)) for p in tars])
    parquets = sorted(p for p in root.glob("*.parquet") if _SHARD_STEM.match(p.stem))
    if parquets and _image_column(parquets[0]) is not None:
        return Source(root, "parquet", [SourceShard(p.name, "parquet", str(p)) for p in parquets])
    folders = sorted(p for p in root.iterdir() if p.is_dir() and _SHARD_STEM.match(p.name))
    if folders:
        return Source(root, "files", [SourceShard(p.name + "/", "files", str(p)) for p in folders])
    return None


def open_tar(path: Path) -> Source:
    """A single webdataset shard given as SRC."""
    return Source(path.parent, "webdataset", [SourceShard(path.name, "webdataset", str(path))])


def read_rows(shard: SourceShard) -> Iterator[Row]:
    """The shard's rows in file order (so rebuilds are byte-identical)."""
    if shard.layout == "webdataset":
        yield from _tar_rows(shard)
    elif shard.layout == "parquet":
        yield from _parquet_rows(shard)
    else:
        yield from _files_rows(shard)


def read_captions(shard: SourceShard) -> Iterator[str]:
    """The shard's non-empty captions, read without the image bytes."""
    if shard.layout == "parquet":
        caption_col = _parquet_caption_column(Path(shard.path))
        for batch in _parquet_batches(Path(shard.path), [caption_col]):
            yield from (c for c in batch.column(0).to_pylist() if c)
    elif shard.layout == "webdataset":
        for _key, members in _tar_groups(shard, want_images=False):
            if members.get("txt"):
                yield members["txt"].decode("utf-8", errors="replace")
    else:
        for path in sorted(Path(shard.path).glob("*.txt")):
            yield path.read_text(encoding="utf-8", errors="replace")


# ---- webdataset (.tar) -------------------------------------------------------------------------


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is everything before the first dot of the file name."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _tar_groups(shard: SourceShard, want_images: bool = True) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) for consecutive members sharing a key, as webdataset writes them."""
    path = Path(shard.path)
    if not path.is_file():
        raise VlpipeError(f"{path}: input shard is missing")
    if path.stat().st_size == 0:
        raise VlpipeError(f"{path}: input shard is empty (0 bytes); re-download it or remove it")
    key, members = None, {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                member_key, ext = _split_member(info.name)
                if member_key != key:
                    if key is not None:
                        yield key, members
                    key, members = member_key, {}
                if want_images or ext in ("txt", "json"):
                    fh = tar.extractfile(info)
                    members[ext] = fh.read() if fh is not None else b""
                else:
                    members[ext] = b""
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise VlpipeError(f"{path}: corrupt or truncated tar shard ({exc})") from None
    if key is not None:
        yield key, members


def _tar_rows(shard: SourceShard) -> Iterator[Row]:
    for key, members in _tar_groups(shard):
        meta = _json_or_empty(members.get("json"))
        caption = members["txt"].decode("utf-8", errors="replace") if "txt" in members else meta.get("caption")
        ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
        yield Row(key, shard.name, image=members[ext] if ext else None, caption=caption, url=meta.get("url"))


# ---- parquet -------------------------------------------------------------------------------------


def _image_column(path: Path) -> str | None:
    schema = _parquet_schema(path)
    for name in IMAGE_EXTENSIONS:
        if name in schema.names and pa.types.is_binary(schema.field(name).type):
            return name
    return None


def _parquet_schema(path: Path) -> pa.Schema:
    if not path.is_file():
        raise VlpipeError(f"{path}: input shard is missing")
    if path.stat().st_size == 0:
        raise VlpipeError(f"{path}: input shard is empty (0 bytes); re-download it or remove it")
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise VlpipeError(f"{path}: corrupt parquet shard ({exc})") from None


def _parquet_caption_column(path: Path) -> str:
    names = _parquet_schema(path).names
    for name in ("txt", "caption"):
        if name in names:
            return name
    raise VlpipeError(f"{path}: no caption column ('txt' or 'caption'); columns are {', '.join(names)}")


def _parquet_batches(path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Row-group batches, so a multi-GB shard never sits in memory at once."""
    try:
        yield from pq.ParquetFile(path).iter_batches(batch_size=256, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise VlpipeError(f"{path}: corrupt parquet shard ({exc})") from None


def _parquet_rows(shard: SourceShard) -> Iterator[Row]:
    path = Path(shard.path)
    image_col = _image_column(path)
    if image_col is None:
        raise VlpipeError(f"{path}: no image bytes column ({', '.join(IMAGE_EXTENSIONS[:3])}, ...)")
    caption_col = _parquet_caption_column(path)
    names = _parquet_schema(path).names
    if "key" not in names:
        raise VlpipeError(f"{path}: no 'key' column")
    extra = [c for c in ("url", "status") if c in names]
    for batch in _parquet_batches(path, ["key", image_col, caption_col, *extra]):
        cols = {name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)}
        for i, key in enumerate(cols["key"]):
            image = cols[image_col][i]
            # img2dataset keeps failed downloads as rows without bytes; fetch already reported them.
            if image is None and cols.get("status", [None] * (i + 1))[i] not in (None, "success"):
                continue
            url = cols["url"][i] if "url" in cols else None
            yield Row(str(key), shard.name, image=image, caption=cols[caption_col][i], url=url)


# ---- files (NNNNN/KEY.jpg) -----------------------------------------------------------------------


def _files_rows(shard: SourceShard) -> Iterator[Row]:
    folder = Path(shard.path)
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            stem, _, ext = path.name.partition(".")
            groups.setdefault(stem, {})[ext.lower()] = path
    for key, files in groups.items():
        meta = _json_or_empty(files["json"].read_bytes() if "json" in files else None)
        caption = files["txt"].read_text(encoding="utf-8", errors="replace") if "txt" in files else meta.get("caption")
        ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
        image = files[ext].read_bytes() if ext else None
        yield Row(key, shard.name, image=image, caption=caption, url=meta.get("url"))


def _json_or_empty(data: bytes | None) -> dict:
    if not data:
        return {}
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}
