"""Read a .jsonl, .csv or .tsv table strictly: every row with the line it starts on, or a FILE:LINE error.

Captions files and the labelled datasets written as tables (Hateful Memes, Food-101, generic) are
read here. Records are split only where the format ends them, line endings are kept as written, and
a malformed record (unterminated quote, wrong number of fields, broken JSON) is an error naming its
line rather than a row silently cut, padded or merged into the next.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

from vlpipe.errors import VlpipeError

TABLE_EXTENSIONS = (".jsonl", ".csv", ".tsv")
IMAGE_COLUMN_CANDIDATES = ("image", "img", "file", "filename", "file_name", "path", "image_path")
CAPTION_COLUMN_CANDIDATES = ("caption", "text", "txt")


def read_table(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Column names and (line number, row) pairs of a .jsonl/.csv/.tsv file.

    Records are split only where the format ends them: JSON Lines at "\\n" (not at the other
    characters `str.splitlines` breaks on, such as U+2028 or form feed, which are valid inside a
    caption), CSV/TSV by the csv module (so a quoted field may span lines). A row's line number
    is the line it starts on.
    """
    try:
        text = read_text(path)
    except UnicodeDecodeError as exc:
        raise VlpipeError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise VlpipeError(f"{path}: captions file is empty")
    if path.suffix.lower() == ".jsonl":
        return _jsonl_rows(path, text)
    return _delimited_rows(path, text, "\t" if path.suffix.lower() == ".tsv" else ",")


def read_text(path: Path) -> str:
    """The whole file, decoded but with its line endings untouched (UnicodeDecodeError if not UTF-8).

    `newline=""` matters: universal-newline translation would turn a quoted CSV caption's "\\r\\n"
    into "\\n", and the csv module must see the raw ending to tell a record's end from a newline
    inside a quoted field.
    """
    if not path.stat().st_size:
        return ""
    with path.open(encoding="utf-8-sig", errors="strict", newline="") as fh:
        return fh.read()


def csv_records(path: Path, text: str, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
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


def pick_column(names: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str:
    """The column the user named (--<what>-column), else the first of `candidates` present (any case)."""
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


def _jsonl_rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
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
    return names, rows


def _delimited_rows(path: Path, text: str, delimiter: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header's names and every later record as a dict; each must have one field per name."""
    records = csv_records(path, text, delimiter)
    _, names = next(records, (0, []))
    rows = []
    for lineno, cells in records:
        if len(cells) != len(names):
            raise VlpipeError(f"{path}:{lineno}: expected {len(names)} fields, got {len(cells)}")
        rows.append((lineno, dict(zip(names, cells, strict=True))))
    return names, rows
