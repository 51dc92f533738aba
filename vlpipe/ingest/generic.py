"""Read a generic labelled table: .jsonl/.csv/.tsv rows with image, text, label(s) and an optional split.

For labelled data in no known layout. Columns are found by name or given with --image-column,
--caption-column, --label-column and --split-column; with --multi-label a row's labels are a JSON
list or names joined by '|'. Without a split column every row is train and val is hashed out of it.
"""

from __future__ import annotations

from pathlib import Path

from vlpipe.errors import VlpipeError
from vlpipe.ingest.rows import SPLIT_NAMES, Row, text_of
from vlpipe.ingest.tables import (
    CAPTION_COLUMN_CANDIDATES,
    IMAGE_COLUMN_CANDIDATES,
    TABLE_EXTENSIONS,
    pick_column,
    read_table,
)

LABEL_COLUMN_CANDIDATES = ("label", "labels")
# Multi-label values written as one CSV cell: "Drama|Comedy".
MULTI_LABEL_SEPARATOR = "|"


def read_rows(path: Path, image_column: str | None, caption_column: str | None, label_column: str | None,
              split_column: str | None, multi_label: bool) -> list[Row]:
    """The rows of table `path` (or of the one table in folder `path`); image paths relative to it."""
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in TABLE_EXTENSIONS)
        if len(found) != 1:
            raise VlpipeError(f"{path}: --format generic needs one .jsonl, .csv or .tsv file; "
                              f"found {len(found)} here, pass the one to use as SRC")
        path = found[0]
    names, lines = read_table(path)
    image_col = pick_column(names, image_column, IMAGE_COLUMN_CANDIDATES, "image", path)
    text_col = pick_column(names, caption_column, CAPTION_COLUMN_CANDIDATES, "caption", path)
    label_col = pick_column(names, label_column, LABEL_COLUMN_CANDIDATES, "label", path)
    split_col = split_column if split_column is not None else next((n for n in names if n.lower() == "split"), None)
    if split_col is not None and split_col not in names:
        raise VlpipeError(f"{path}: no column {split_col!r}; columns are {', '.join(names)}")
    key_col = next((n for n in names if n.lower() in ("key", "id")), None)
    rows = []
    for lineno, row in lines:
        if not row.get(image_col):
            raise VlpipeError(f"{path}:{lineno}: empty {image_col!r} (image path)")
        image = Path(str(row[image_col]))
        key = str(row[key_col]) if key_col and row.get(key_col) not in (None, "") else image.with_suffix("").as_posix()
        split = "train"
        if split_col is not None:
            value = str(row.get(split_col) or "").strip().lower()
            if value not in SPLIT_NAMES:
                raise VlpipeError(f"{path}:{lineno}: split {row.get(split_col)!r} is not one of train, val, dev, test")
            split = SPLIT_NAMES[value]
        label = row.get(label_col)
        if isinstance(label, str) and not label.strip():
            label = None
        if isinstance(label, list) and not multi_label:
            raise VlpipeError(f"{path}:{lineno}: label is a list; pass --multi-label for multi-label data")
        if multi_label and label is not None and not isinstance(label, list):
            label = [p for p in str(label).split(MULTI_LABEL_SEPARATOR) if p.strip()]
        rows.append(Row(key, image_path=str(path.parent / image), caption=text_of(row.get(text_col)), label=label,
                        split=split, where=f"{path}:{lineno}"))
    return rows
