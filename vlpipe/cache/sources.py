"""Input readers for `build-cache`: img2dataset folders (all three layouts) and captions files.

Labelled downstream datasets are read by vlpipe/cache/downstream.py into `labeled` shards, whose
rows carry a label and a split; their samples are produced here like every other layout's.

Every source is cut into `SourceShard`s, and one source shard becomes one cache shard: shards are
the unit of parallel work and of resumption. A shard yields `Sample`s, or `Skip`s for single bad
samples (a missing caption, a missing image file); a bad *shard* (missing, empty, corrupt) raises
VlpipeError naming the file, because silently dropping thousands of samples would go unnoticed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.cache.format import LabelSpec
from vlpipe.errors import VlpipeError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")
CAPTION_FILE_EXTENSIONS = (".jsonl", ".csv", ".tsv")
IMAGE_COLUMN_CANDIDATES = ("image", "img", "file", "filename", "file_name", "path", "image_path")
CAPTION_COLUMN_CANDIDATES = ("caption", "text", "txt")
_SHARD_STEM = re.compile(r"^\d+$")


class Sample(NamedTuple):
    key: str
    image: bytes
    caption: str
    url: str | None
    source: str
    # Downstream datasets only: class id or tuple of label ids, and the split the dataset assigns.
    label: int | tuple[int, ...] | None = None
    split: str | None = None


class Skip(NamedTuple):
    """A sample left out of the cache; recorded in skipped.parquet."""

    key: str
    source: str
    reason: str
    detail: str


@dataclass(frozen=True)
class SourceShard:
    """One unit of work; small and picklable so it can be sent to a worker process."""

    name: str  # shown in the manifest as the shard's `source`
    layout: str  # webdataset | parquet | files | captions | labeled
    path: str
    # captions layout: (key, absolute image path, caption, url) per sample;
    # labeled layout: (key, absolute image path, text, label, split, problem) per sample, where
    # problem is None or a (reason, detail) skip found before any image is read (a duplicate id).
    rows: tuple[tuple, ...] = ()


@dataclass(frozen=True)
class Source:
    root: Path
    layout: str
    shards: list[SourceShard]
    labels: LabelSpec | None = None


def open_source(
    src: str | os.PathLike[str],
    *,
    shard_size: int = 1000,
    image_column: str | None = None,
    caption_column: str | None = None,
) -> Source:
    """Detect the layout of `src` and list its shards (nothing is decoded yet)."""
    root = Path(src).expanduser().resolve()
    if not root.exists():
        raise VlpipeError(f"{src}: no such file or directory")
    if root.is_file():
        if root.suffix.lower() in CAPTION_FILE_EXTENSIONS:
            return _captions_source(root, shard_size, image_column, caption_column)
        if root.suffix.lower() == ".tar":
            return Source(root.parent, "webdataset", [SourceShard(root.name, "webdataset", str(root))])
        raise VlpipeError(f"{src}: expected a folder, a .tar shard or a captions file (.jsonl, .csv, .tsv)")
    tars = sorted(p for p in root.glob("*.tar") if not p.name.startswith("."))
    if tars:
        return Source(root, "webdataset", [SourceShard(p.name, "webdataset", str(p)) for p in tars])
    parquets = sorted(p for p in root.glob("*.parquet") if _SHARD_STEM.match(p.stem))
    if parquets and _image_column(parquets[0]) is not None:
        return Source(root, "parquet", [SourceShard(p.name, "parquet", str(p)) for p in parquets])
    folders = sorted(p for p in root.iterdir() if p.is_dir() and _SHARD_STEM.match(p.name))
    if folders:
        return Source(root, "files", [SourceShard(p.name + "/", "files", str(p)) for p in folders])
    captions = sorted(p for p in root.iterdir() if p.suffix.lower() in CAPTION_FILE_EXTENSIONS)
    if len(captions) == 1:
        return _captions_source(captions[0], shard_size, image_column, caption_column)
    if len(captions) > 1:
        names = ", ".join(p.name for p in captions)
        raise VlpipeError(f"{src}: several captions files ({names}); pass the one to use as SRC")
    raise VlpipeError(
        f"{src}: no input found: expected img2dataset shards (NNNNN.tar, NNNNN.parquet with image "
        "bytes, or NNNNN/ folders) or a captions file (.jsonl, .csv, .tsv) naming image paths"
    )


def iter_samples(shard: SourceShard) -> Iterator[Sample | Skip]:
    """The shard's samples in a fixed order (so rebuilds are byte-identical)."""
    if shard.layout == "webdataset":
        yield from _tar_samples(shard)
    elif shard.layout == "parquet":
        yield from _parquet_samples(shard)
    elif shard.layout == "files":
        yield from _files_samples(shard)
    elif shard.layout == "labeled":
        yield from _labeled_samples(shard)
    else:
        yield from _captions_samples(shard)


def iter_captions(shard: SourceShard) -> Iterator[str]:
    """Captions only, read cheaply (no image bytes) to train a tokenizer before the real pass."""
    if shard.layout in ("captions", "labeled"):
        yield from (row[2] for row in shard.rows if row[2])
    elif shard.layout == "parquet":
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


def _tar_samples(shard: SourceShard) -> Iterator[Sample | Skip]:
    seen: set[str] = set()
    for key, members in _tar_groups(shard):
        meta = _json_or_empty(members.get("json"))
        caption = members["txt"].decode("utf-8", errors="replace") if "txt" in members else meta.get("caption")
        ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
        yield _make_sample(key, ext and members[ext], caption, meta.get("url"), shard.name, seen)


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


def _parquet_samples(shard: SourceShard) -> Iterator[Sample | Skip]:
    path = Path(shard.path)
    image_col = _image_column(path)
    if image_col is None:
        raise VlpipeError(f"{path}: no image bytes column ({', '.join(IMAGE_EXTENSIONS[:3])}, ...)")
    caption_col = _parquet_caption_column(path)
    names = _parquet_schema(path).names
    if "key" not in names:
        raise VlpipeError(f"{path}: no 'key' column")
    extra = [c for c in ("url", "status") if c in names]
    seen: set[str] = set()
    for batch in _parquet_batches(path, ["key", image_col, caption_col, *extra]):
        cols = {name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)}
        for i, key in enumerate(cols["key"]):
            image = cols[image_col][i]
            # img2dataset keeps failed downloads as rows without bytes; fetch already reported them.
            if image is None and cols.get("status", [None] * (i + 1))[i] not in (None, "success"):
                continue
            url = cols["url"][i] if "url" in cols else None
            yield _make_sample(str(key), image, cols[caption_col][i], url, shard.name, seen)


# ---- files (NNNNN/KEY.jpg) -----------------------------------------------------------------------


def _files_samples(shard: SourceShard) -> Iterator[Sample | Skip]:
    folder = Path(shard.path)
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            stem, _, ext = path.name.partition(".")
            groups.setdefault(stem, {})[ext.lower()] = path
    seen: set[str] = set()
    for key, files in groups.items():
        meta = _json_or_empty(files["json"].read_bytes() if "json" in files else None)
        caption = files["txt"].read_text(encoding="utf-8", errors="replace") if "txt" in files else meta.get("caption")
        ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
        image = files[ext].read_bytes() if ext else None
        yield _make_sample(key, image, caption, meta.get("url"), shard.name, seen)


# ---- folder of images + captions file ------------------------------------------------------------


def _pick_column(names: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str:
    if wanted is not None:
        if wanted not in names:
            raise VlpipeError(f"{path}: no column {wanted!r}; columns are {', '.join(names)}")
        return wanted
    lower = {n.lower(): n for n in names}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    raise VlpipeError(
        f"{path}: no {what} column (looked for {', '.join(candidates)}); columns are {', '.join(names)}; "
        f"name it with --{what}-column"
    )


def _read_text(path: Path) -> str:
    """The whole file, decoded but with its line endings untouched.

    `newline=""` matters: universal-newline translation would turn a quoted CSV caption's "\\r\\n"
    into "\\n", and the csv module must see the raw ending to tell a record's end from a newline
    inside a quoted field.
    """
    if not path.stat().st_size:
        return ""
    with path.open(encoding="utf-8-sig", errors="strict", newline="") as fh:
        return fh.read()


def _read_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """Column names and (line number, row) pairs of a .jsonl/.csv/.tsv file.

    Records are split only where the format ends them: JSON Lines at "\\n" (not at the other
    characters `str.splitlines` breaks on, such as U+2028 or form feed, which are valid inside a
    caption), CSV/TSV by the csv module (so a quoted field may span lines). A row's line number
    is the line it starts on. A malformed record (unterminated quote, wrong number of fields) is
    an error naming that line rather than a row silently cut, padded or merged.
    """
    text = _read_text(path)
    if not text.strip():
        raise VlpipeError(f"{path}: captions file is empty")
    if path.suffix.lower() == ".jsonl":
        return _jsonl_rows(path, text)
    return _delimited_rows(path, text, "\t" if path.suffix.lower() == ".tsv" else ",")


def _jsonl_rows(path: Path, text: str) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    rows = []
    # A "\r" left by CRLF endings is JSON whitespace, so json.loads accepts it as is.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise VlpipeError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise VlpipeError(f"{path}:{lineno}: expected a JSON object per line")
        rows.append((lineno, row))
    names = list(dict.fromkeys(k for _, r in rows for k in r))
    return names, iter(rows)


def _csv_records(path: Path, text: str, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each non-blank record of CSV/TSV `text` read from `path`.

    strict: a quote that is never closed (which would swallow every later line into one field)
    or text after a closing quote is an error naming the record's line, not a silently merged field.
    """
    kind = "TSV" if delimiter == "\t" else "CSV"
    # TSV has no quoting (a field holds no tab or newline), so a caption that starts with a quote,
    # like '"Twilight" poster', is taken as written rather than refused or stripped of its quotes.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True, quoting=quoting)
    end = 0  # line_num after the previous record: the next record starts on the line after it
    while True:
        start = end + 1
        try:
            cells = next(reader, None)
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise VlpipeError(f"{path}:{start}: unterminated quoted field (a '\"' opened in this "
                                  "record is never closed)") from None
            raise VlpipeError(f"{path}:{start}: malformed {kind} record ({exc}); a quoted field must "
                              "be closed, quote the whole field and double any '\"' inside it") from None
        if cells is None:
            return
        end = reader.line_num
        if cells and not (len(cells) == 1 and not cells[0].strip()):  # skip blank lines
            yield start, cells


def _delimited_rows(path: Path, text: str, delimiter: str) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """The header's names and every later record as a dict; each must have one field per name."""
    records = _csv_records(path, text, delimiter)
    _, names = next(records, (0, []))
    rows = []
    for lineno, cells in records:
        if len(cells) != len(names):
            raise VlpipeError(f"{path}:{lineno}: expected {len(names)} fields, got {len(cells)}")
        rows.append((lineno, dict(zip(names, cells, strict=True))))
    return names, iter(rows)


def _captions_source(
    path: Path, shard_size: int, image_column: str | None, caption_column: str | None
) -> Source:
    try:
        names, rows = _read_rows(path)
    except UnicodeDecodeError as exc:
        raise VlpipeError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    image_col = _pick_column(names, image_column, IMAGE_COLUMN_CANDIDATES, "image", path)
    caption_col = _pick_column(names, caption_column, CAPTION_COLUMN_CANDIDATES, "caption", path)
    key_col = next((n for n in names if n.lower() in ("key", "id")), None)
    url_col = next((n for n in names if n.lower() == "url"), None)
    samples = []
    for lineno, row in rows:
        image = row.get(image_col)
        if not image:
            raise VlpipeError(f"{path}:{lineno}: empty {image_col!r} (image path)")
        rel = Path(str(image))
        key = str(row[key_col]) if key_col and row.get(key_col) not in (None, "") else rel.with_suffix("").as_posix()
        caption = row.get(caption_col)
        url = row.get(url_col) if url_col else None
        samples.append((key, str(path.parent / rel), "" if caption is None else str(caption), url or None))
    if not samples:
        raise VlpipeError(f"{path}: captions file has a header but no rows")
    shards = [
        SourceShard(f"{path.name}[{i}:{i + len(chunk)}]", "captions", str(path), tuple(chunk))
        for i in range(0, len(samples), shard_size)
        for chunk in [samples[i : i + shard_size]]
    ]
    return Source(path.parent, "captions", shards)


def _captions_samples(shard: SourceShard) -> Iterator[Sample | Skip]:
    seen: set[str] = set()
    for key, image_path, caption, url in shard.rows:
        try:
            image = Path(image_path).read_bytes()
        except OSError as exc:
            yield Skip(key, shard.name, "missing_image", f"{image_path}: {exc.strerror or exc}")
            continue
        yield _make_sample(key, image, caption, url, shard.name, seen)


def _labeled_samples(shard: SourceShard) -> Iterator[Sample | Skip]:
    seen: set[str] = set()
    for key, image_path, text, label, split, problem in shard.rows:
        if problem is not None:
            yield Skip(key, shard.name, *problem)
            continue
        try:
            image = Path(image_path).read_bytes()
        except OSError as exc:
            yield Skip(key, shard.name, "missing_image", f"{image_path}: {exc.strerror or exc}")
            continue
        sample = _make_sample(key, image, text, None, shard.name, seen)
        yield sample._replace(label=label, split=split) if isinstance(sample, Sample) else sample


# ---- shared --------------------------------------------------------------------------------------


def _json_or_empty(data: bytes | None) -> dict:
    if not data:
        return {}
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _make_sample(
    key: str, image: bytes | None, caption: str | None, url: object, source: str, seen: set[str]
) -> Sample | Skip:
    """A Sample, or the Skip that says which part of it is missing."""
    if key in seen:
        return Skip(key, source, "duplicate_key", "key already seen earlier in this shard")
    seen.add(key)
    if image is None:
        return Skip(key, source, "missing_image", "no image file for this key")
    if caption is None or not str(caption).strip():
        return Skip(key, source, "missing_caption", "no caption (or an empty one)")
    return Sample(key, bytes(image), str(caption), None if url is None else str(url), source)
