"""Where caption/URL lists come from and how a subset of one becomes img2dataset's input.

The real Conceptual Captions TSVs have no header (caption <TAB> url), and img2dataset loops
forever on a headerless TSV ("Field caption does not exist"), so the selected rows are always
converted to a Parquet file with named columns first. Every row that is not passed on is
recorded with a reason, so that attempted = kept + dropped holds from the first step.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.errors import VlpipeError
from vlpipe.fetch.safety import scheme_problem
from vlpipe.utils.atomic import atomic_path

# The official Conceptual Captions 3M download locations, in one place.
CC_URLS = {
    "train": "https://storage.googleapis.com/gcc-data/Train/GCC-training.tsv",
    "validation": "https://storage.googleapis.com/gcc-data/Validation/GCC-1.1.0-Validation.tsv",
}
CC_FILENAMES = {"train": "Train_GCC-training.tsv", "validation": "Validation_GCC-1.1.0-Validation.tsv"}

_SUBSET_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([km]?)\s*$", re.IGNORECASE)


def parse_subset(text: str) -> int | None:
    """'200k' -> 200000, '1m' -> 1000000, '5000' -> 5000, 'all' -> None (every row)."""
    if text.strip().lower() == "all":
        return None
    match = _SUBSET_RE.match(text)
    if not match:
        raise VlpipeError(f"--subset {text!r}: expected a count like 5000, 200k, 1m or 'all'")
    value = float(match.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    if value < 1 or value != int(value):
        raise VlpipeError(f"--subset {text!r}: must be a whole number of rows >= 1")
    return int(value)


def download_file(url: str, dest: Path, *, timeout: float = 60.0) -> Path:
    """Download `url` to `dest`, resuming a partial `.part` file with an HTTP Range request.

    A complete file is kept and never fetched again; the `.part` file only gets its final name
    once the whole body arrived, so a killed download is resumed rather than mistaken for done.
    """
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = response.status == 206
            with open(part, "ab" if resumed else "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already complete
            os.replace(part, dest)
            return dest
        raise VlpipeError(f"downloading {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise VlpipeError(f"downloading {url}: {exc}; rerun to resume ({part})") from exc
    os.replace(part, dest)
    return dest


def resolve_list(source: str, download_dir: Path) -> Path:
    """A local path as is; an http(s) URL downloaded (resumably) into `download_dir`."""
    if source.startswith(("http://", "https://")):
        # The URL's hash in the name: two lists both called "train.tsv" must not share a file.
        name = Path(source.split("?", 1)[0]).name or "list.tsv"
        digest = hashlib.sha256(source.encode()).hexdigest()[:10]
        return download_file(source, download_dir / f"{digest}-{name}")
    path = Path(source)
    if not path.is_file():
        raise VlpipeError(f"{source}: no such file")
    return path


@dataclass(frozen=True)
class Columns:
    """Which TSV column holds what, and whether the first line is a header."""

    caption: int
    url: int
    header: bool


def detect_columns(first_line: str, path: Path) -> Columns:
    """Header with `url`/`caption` names, else headerless with the URL column found by '://'.

    Covers CC (caption, url), CC12M (url, caption) and headed lists without any flag.
    """
    fields = first_line.rstrip("\r\n").split("\t")
    lowered = [f.strip().lower() for f in fields]
    if "url" in lowered:
        if "caption" not in lowered:
            raise VlpipeError(f"{path}: line 1: header has 'url' but no 'caption' column")
        return Columns(caption=lowered.index("caption"), url=lowered.index("url"), header=True)
    if len(fields) != 2:
        raise VlpipeError(
            f"{path}: line 1: expected 2 tab-separated fields (caption, url), got {len(fields)}"
        )
    url_col = 0 if "://" in fields[0] and "://" not in fields[1] else 1
    return Columns(caption=1 - url_col, url=url_col, header=False)


def _decode(raw: bytes, path: Path, line_no: int) -> str:
    """One line of the list as text; a byte that is not UTF-8 is an error naming file:line.

    Conceptual Captions and the other published lists are UTF-8, so a bad byte means the file
    is in another encoding or damaged; replacing it would silently store mangled captions.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VlpipeError(
            f"{path}: line {line_no}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}); "
            "save the list as UTF-8"
        ) from exc


def _first_line(fh: BinaryIO, path: Path) -> str:
    """Line 1 as text (a UTF-8 byte order mark removed), or an error for an empty file."""
    first = fh.readline()
    if not first.strip():
        raise VlpipeError(f"{path}: the file is empty" if not first else f"{path}: line 1 is empty")
    return _decode(first, path, 1).removeprefix("\ufeff")


def _read_rows(
    path: Path, wanted: set[int] | None, limit: int | None
) -> tuple[list[tuple[int, str, str]], int]:
    """(row, caption, url) for data rows in `wanted` (or the first `limit`); row = 0-based data line.

    Also returns the number of header lines (0 or 1): file line of row r = r + 1 + header lines.

    Only the lines of selected rows are decoded, so a bad byte in a row that was not asked for
    does not stop a `--subset` fetch.
    """
    rows: list[tuple[int, str, str]] = []
    with open(path, "rb") as fh:
        first = _first_line(fh, path)
        columns = detect_columns(first, path)
        skipped = 1 if columns.header else 0  # physical line of row r is r + 1 + skipped
        lines: Iterator[bytes] = fh if columns.header else itertools.chain([first.encode()], fh)
        for row, raw in enumerate(lines):
            if limit is not None and row >= limit:
                break
            if wanted is not None and row not in wanted:
                continue
            fields = _decode(raw, path, row + 1 + skipped).rstrip("\r\n").split("\t")
            caption = fields[columns.caption].strip() if len(fields) > columns.caption else ""
            url = fields[columns.url].strip() if len(fields) > columns.url else ""
            rows.append((row, caption, url))
    return rows, skipped


def count_rows(path: Path) -> int:
    """Number of data rows (a header line, if any, not counted)."""
    with open(path, "rb") as fh:
        header = detect_columns(_first_line(fh, path), path).header
        return sum(1 for _ in fh) + (0 if header else 1)


@dataclass
class Selection:
    """The rows to download (img2dataset input) and the rows dropped before downloading."""

    rows: pa.Table  # row (int64), caption, url
    drops: pa.Table  # row, url, reason, detail
    header_lines: int = 0  # file line of row r is r + 1 + header_lines (for messages)


def select_rows(path: Path, subset: int | None, *, sample: bool = False, seed: int = 0) -> Selection:
    """The first `subset` rows (or a seeded random sample of them), minus duplicates and bad URLs.

    Selection happens first and filtering second, so `--subset 5000` always accounts for
    exactly 5000 rows: each is either attempted or dropped with a reason.
    """
    if sample and subset is not None:
        total = count_rows(path)
        picked = set(random.Random(seed).sample(range(total), min(subset, total)))
        raw, header_lines = _read_rows(path, picked, None)
    else:
        raw, header_lines = _read_rows(path, None, subset)
    keep: dict[str, list] = {"row": [], "caption": [], "url": []}
    drops: dict[str, list] = {"row": [], "url": [], "reason": [], "detail": []}
    first_row_of_url: dict[str, int] = {}

    def drop(row: int, url: str, reason: str, detail: str) -> None:
        for name, value in zip(drops, (row, url, reason, detail), strict=True):
            drops[name].append(value)

    for row, caption, url in raw:
        if not url:
            drop(row, url, "bad_url", "empty URL")
        elif problem := scheme_problem(url):
            drop(row, url, problem, "only http(s) URLs with a host are fetched")
        elif not caption:
            drop(row, url, "no_caption", "empty caption")
        elif url in first_row_of_url:
            drop(row, url, "duplicate_url", f"same URL as row {first_row_of_url[url]}")
        else:
            first_row_of_url[url] = row
            for name, value in zip(keep, (row, caption, url), strict=True):
                keep[name].append(value)
    rows = pa.table(
        {"row": pa.array(keep["row"], pa.int64()), "caption": keep["caption"], "url": keep["url"]}
    )
    drop_table = pa.table(
        {
            "row": pa.array(drops["row"], pa.int64()),
            "url": pa.array(drops["url"], pa.string()),
            "reason": pa.array(drops["reason"], pa.string()),
            "detail": pa.array(drops["detail"], pa.string()),
        }
    )
    return Selection(rows=rows, drops=drop_table, header_lines=header_lines)


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write a table atomically (temp name, then rename)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
