"""Labelled downstream datasets for `build-cache`: Hateful Memes, MM-IMDB, UPMC Food-101, generic.

Each reader turns the dataset's own files into rows of (key, image path, text, raw label, split),
read from local files only. The shared steps then fix the label vocabulary (from the train split,
so a model never has to predict a class it was not trained on), map labels to ids, report ids
that occur twice, carve `val` out of `train` by key hash where the dataset has no dev set, and cut
the rows into `labeled` shards that vlpipe/cache/sources.py turns into samples.

Bad files and rows that make the labels untrustworthy raise a one-line VlpipeError naming the
file and line; single samples that cannot be cached (missing image, missing label outside the
test split, duplicate id) are skipped with a reason and land in skipped.parquet.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from vlpipe.cache.format import MISSING_LABEL, LabelSpec, split_of
from vlpipe.cache.sources import (
    CAPTION_COLUMN_CANDIDATES,
    CAPTION_FILE_EXTENSIONS,
    IMAGE_COLUMN_CANDIDATES,
    Source,
    SourceShard,
    _csv_records,
    _pick_column,
    _read_rows,
    _read_text,
)
from vlpipe.errors import VlpipeError

FORMATS = ("hateful-memes", "mmimdb", "food101", "generic")
HATEFUL_FILES = ("train", "dev", "dev_seen", "dev_unseen", "test", "test_seen", "test_unseen")
HATEFUL_NAMES = ("not_hateful", "hateful")
LABEL_COLUMN_CANDIDATES = ("label", "labels")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test"}
# Generic multi-label values written as one CSV cell: "Drama|Comedy".
MULTI_LABEL_SEPARATOR = "|"


class RawRow(NamedTuple):
    key: str
    image: Path
    text: str | None
    label: Any  # as found in the file: int, str, list of str, or None when absent
    split: str
    where: str  # "file:line" (or file and id) for error messages and duplicate reports
    problem: tuple[str, str] | None = None  # (reason, detail) when the sample is known bad already


def detect_format(root: Path) -> str | None:
    """The downstream layout of folder `root`, or None when it looks like none of them."""
    if not root.is_dir():
        return None
    if (root / "train.jsonl").is_file() and (root / "img").is_dir():
        return "hateful-memes"
    if (root / "split.json").is_file():
        return "mmimdb"
    if _food_csv(root, "train") is not None:
        return "food101"
    return None


def open_downstream(
    src: str | os.PathLike[str],
    format: str,
    *,
    shard_size: int = 1000,
    val_fraction: float = 0.05,
    image_column: str | None = None,
    caption_column: str | None = None,
    label_column: str | None = None,
    multi_label: bool = False,
    split_column: str | None = None,
) -> Source:
    """Read a labelled dataset in `format` (one of FORMATS) and list its shards."""
    root = Path(src).expanduser().resolve()
    if not root.exists():
        raise VlpipeError(f"{src}: no such file or directory")
    if format != "generic" and (label_column or multi_label or split_column):
        raise VlpipeError("--label-column, --multi-label and --split-column apply to --format generic only")
    if format == "hateful-memes":
        rows, task, names = _hateful_rows(root), "binary", HATEFUL_NAMES
    elif format == "mmimdb":
        rows, task, names = _mmimdb_rows(root), "multilabel", None
    elif format == "food101":
        rows, task, names = _food_rows(root), "multiclass", None
    elif format == "generic":
        rows = _generic_rows(root, image_column, caption_column, label_column, split_column, multi_label)
        task, names = ("multilabel" if multi_label else None), None
    else:
        raise VlpipeError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    if not rows:
        raise VlpipeError(f"{root}: the {format} dataset lists no samples")
    spec, labels = _label_ids(rows, task, names, root)
    table = _with_problems(rows, labels, val_fraction, spec.multilabel)
    base = root if root.is_dir() else root.parent
    shards = [
        SourceShard(f"{format}[{i}:{i + len(chunk)}]", "labeled", str(base), tuple(chunk))
        for i in range(0, len(table), shard_size)
        for chunk in [table[i : i + shard_size]]
    ]
    return Source(base, format, shards, labels=spec)


# ---- Hateful Memes: {train,dev,test}[_seen|_unseen].jsonl + img/ ----------------------------------


def _hateful_rows(root: Path) -> list[RawRow]:
    files = [root / f"{name}.jsonl" for name in HATEFUL_FILES if (root / f"{name}.jsonl").is_file()]
    if not files:
        raise VlpipeError(f"{root}: no Hateful Memes files ({', '.join(n + '.jsonl' for n in HATEFUL_FILES)})")
    rows = []
    for path in files:
        split = SPLIT_NAMES[path.stem.split("_")[0]]
        names, lines = _rows_of(path)
        if "img" not in names:
            raise VlpipeError(f"{path}: no 'img' field; expected objects like "
                              '{"id", "img": "img/NNNNN.png", "label", "text"}')
        if split != "test" and "label" not in names:
            raise VlpipeError(f"{path}: no 'label' field (only test files may lack labels)")
        for lineno, obj in lines:
            where = f"{path}:{lineno}"
            if not obj.get("img"):
                raise VlpipeError(f"{path}:{lineno}: empty 'img' (image path)")
            image = Path(str(obj["img"]))
            key = str(obj["id"]) if obj.get("id") not in (None, "") else image.stem
            label = obj.get("label")
            if label is not None and (isinstance(label, bool) or str(label).strip() not in ("0", "1")):
                raise VlpipeError(f"{path}:{lineno}: label {label!r} is not 0 or 1")
            rows.append(RawRow(key, root / image, _text(obj.get("text")), None if label is None else int(label),
                               split, where))
    return rows


# ---- MM-IMDB: <id>.jpeg + <id>.json (plot, genres) + split.json -----------------------------------


def _mmimdb_rows(root: Path) -> list[RawRow]:
    split_path = root / "split.json"
    try:
        splits = json.loads(split_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VlpipeError(f"{split_path}: missing (MM-IMDB needs its split file)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VlpipeError(f"{split_path}: malformed JSON ({exc})") from None
    if not isinstance(splits, dict) or "train" not in splits:
        raise VlpipeError(f'{split_path}: expected {{"train": [ids], "dev": [ids], "test": [ids]}}')
    # The original release keeps the files under dataset/; a flattened copy keeps them beside split.json.
    folder = root / "dataset" if (root / "dataset").is_dir() else root
    rows = []
    for name, ids in splits.items():
        if name not in SPLIT_NAMES or not isinstance(ids, list):
            raise VlpipeError(f"{split_path}: {name!r} is not a split (train, dev, test) with a list of ids")
        for key in map(str, ids):
            where = f"{split_path}[{name}] id {key}"
            meta_path = folder / f"{key}.json"
            meta = _read_json_object(meta_path)
            genres = meta.get("genres") if meta else None
            if genres is not None and not (isinstance(genres, list) and all(isinstance(g, str) for g in genres)):
                raise VlpipeError(f"{meta_path}: 'genres' must be a list of strings")
            image = next((folder / f"{key}.{ext}" for ext in ("jpeg", "jpg", "png")
                          if (folder / f"{key}.{ext}").is_file()), folder / f"{key}.jpeg")
            problem = None if meta is not None else ("missing_metadata", f"{meta_path}: no such file")
            rows.append(RawRow(key, image, _text(meta.get("plot")) if meta else None, genres,
                               SPLIT_NAMES[name], where, problem))
    return rows


def _read_json_object(path: Path) -> dict[str, Any] | None:
    """A per-movie JSON file, or None when it is absent (the sample is then skipped, not fatal)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VlpipeError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise VlpipeError(f"{path}: expected a JSON object with 'plot' and 'genres'")
    return obj


# ---- UPMC Food-101: {train,test}_titles.csv (image_name,text,label) + images/{split}/<label>/ ---------


def _food_csv(root: Path, split: str) -> Path | None:
    for folder in (root, root / "texts"):
        if (folder / f"{split}_titles.csv").is_file():
            return folder / f"{split}_titles.csv"
    return None


def _food_rows(root: Path) -> list[RawRow]:
    rows = []
    for split in ("train", "test"):
        path = _food_csv(root, split)
        if path is None:
            if split == "train":
                raise VlpipeError(f"{root}: no train_titles.csv (looked in {root} and {root / 'texts'})")
            continue
        try:
            # Line endings untouched (a title's quoted "\r\n" stays as written); records split by the
            # csv module, each numbered by the line it starts on; an unterminated quote is an error.
            lines = list(_csv_records(path, _read_text(path)))
        except UnicodeDecodeError as exc:
            raise VlpipeError(f"{path}: not a readable UTF-8 CSV file ({exc})") from None
        for lineno, cells in lines:
            if lineno == 1 and cells[0].strip().lower() in ("image_name", "image", "img"):
                continue  # the original files have no header; tolerate one
            if len(cells) < 3:
                raise VlpipeError(f"{path}:{lineno}: expected image_name,text,label; found {len(cells)} column(s)")
            name, text, label = cells[0].strip(), ",".join(cells[1:-1]), cells[-1].strip()
            if not label:
                raise VlpipeError(f"{path}:{lineno}: empty label")
            # The path under images/ is the key: file names need not be unique across splits.
            key = f"{split}/{label}/{Path(name).with_suffix('').as_posix()}"
            rows.append(RawRow(key, root / "images" / split / label / name, _text(text), label,
                               split, f"{path}:{lineno}"))
    return rows


# ---- generic: jsonl/csv/tsv with image, text, label(s) and optional split columns -------------------


def _generic_rows(path: Path, image_column: str | None, caption_column: str | None, label_column: str | None,
                  split_column: str | None, multi_label: bool) -> list[RawRow]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in CAPTION_FILE_EXTENSIONS)
        if len(found) != 1:
            raise VlpipeError(f"{path}: --format generic needs one .jsonl, .csv or .tsv file; "
                              f"found {len(found)} here, pass the one to use as SRC")
        path = found[0]
    names, lines = _rows_of(path)
    image_col = _pick_column(names, image_column, IMAGE_COLUMN_CANDIDATES, "image", path)
    text_col = _pick_column(names, caption_column, CAPTION_COLUMN_CANDIDATES, "caption", path)
    label_col = _pick_column(names, label_column, LABEL_COLUMN_CANDIDATES, "label", path)
    split_col = split_column if split_column is not None else next((n for n in names if n.lower() == "split"), None)
    if split_col is not None and split_col not in names:
        raise VlpipeError(f"{path}: no column {split_col!r}; columns are {', '.join(names)}")
    key_col = next((n for n in names if n.lower() in ("key", "id")), None)
    rows = []
    for lineno, row in lines:
        where = f"{path}:{lineno}"
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
        rows.append(RawRow(key, path.parent / image, _text(row.get(text_col)), label, split, where))
    # No split column: train/val by key hash (done with the other hash splits in _with_problems).
    return rows


# ---- shared steps --------------------------------------------------------------------------------


def _rows_of(path: Path) -> tuple[list[str], Any]:
    try:
        return _read_rows(path)
    except UnicodeDecodeError as exc:
        raise VlpipeError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _text(value: Any) -> str | None:
    """A string, or MM-IMDB's list of plot outlines joined (truncation to max_len keeps the first)."""
    if value is None:
        return None
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def _label_name(value: Any) -> str:
    return str(value).strip()


def _sorted_names(names: set[str]) -> tuple[str, ...]:
    """Sorted, numerically when every name is an integer (so "10" comes after "9")."""
    if names and all(n.lstrip("-").isdigit() for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def _label_ids(rows: list[RawRow], task: str | None, names: tuple[str, ...] | None,
               origin: Path) -> tuple[LabelSpec, list[Any]]:
    """The label vocabulary and each row's label as an id, a tuple of ids, or None (absent).

    The vocabulary is the labels of the train split (all rows when there is none), sorted. A
    val/test label outside it is an error for single-label data (no correct answer exists for
    the model); for multi-label data the unknown name is dropped from that row and counted.
    """
    multilabel = task == "multilabel"
    preset = names is not None  # a fixed vocabulary (Hateful Memes): the rows already hold ids
    if names is None:
        pool = [r for r in rows if r.split == "train"] or rows
        found: set[str] = set()
        for r in pool:
            if r.label is not None:
                found.update(map(_label_name, r.label) if multilabel else [_label_name(r.label)])
        names = _sorted_names(found)
        if not names:
            raise VlpipeError(f"{origin}: no labels found in the train split")
    if task is None:
        task = "binary" if len(names) == 2 else "multiclass"
    if task != "multilabel" and len(names) < 2:
        raise VlpipeError(f"{origin}: only one label ({names[0]!r}) in the train split; "
                          "a classifier needs at least two")
    index = {n: i for i, n in enumerate(names)}
    unknown: Counter[str] = Counter()
    ids: list[Any] = []
    for r in rows:
        if r.label is None:
            ids.append(None)
        elif multilabel:
            known = [index[n] for n in map(_label_name, r.label) if n in index]
            unknown.update(n for n in map(_label_name, r.label) if n not in index)
            ids.append(tuple(sorted(set(known))))
        elif preset:
            ids.append(int(r.label))
        elif _label_name(r.label) in index:
            ids.append(index[_label_name(r.label)])
        else:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise VlpipeError(f"{r.where}: label {r.label!r} is not among the {len(names)} labels of the train "
                              f"split ({shown}); fix the row or remove it")
    return LabelSpec(task, tuple(names), tuple(sorted(unknown.items()))), ids


def _with_problems(rows: list[RawRow], ids: list[Any], val_fraction: float, multilabel: bool) -> list[tuple]:
    """Final shard rows: hash `val` out of train where the dataset has no dev set, and mark skips.

    A duplicate id keeps its first occurrence (files in train, dev, test order) and every later
    one is skipped as `duplicate_id`, naming both places, so a leak from train into test shows up
    in the build summary and skipped.parquet instead of silently inflating test scores.
    """
    has_dev = any(r.split == "val" for r in rows)
    first: dict[str, RawRow] = {}
    table = []
    for r, label in zip(rows, ids, strict=True):
        split = split_of(r.key, val_fraction) if r.split == "train" and not has_dev else r.split
        problem = None
        if r.key in first:
            seen = first[r.key]
            problem = ("duplicate_id", f"{r.where} ({r.split}) repeats id {r.key} of {seen.where} ({seen.split}); "
                                       "kept the first")
        elif r.problem is not None:
            problem = r.problem
        elif label is None and r.split != "test":
            problem = ("missing_label", f"{r.where}: no label (only test samples may be unlabeled)")
        elif label is None and multilabel:
            # A multi-hot row has no "unknown" value; an all-zero row would claim "no genre".
            problem = ("missing_label", f"{r.where}: no labels (multi-label samples must list theirs)")
        first.setdefault(r.key, r)
        table.append((r.key, str(r.image), r.text, MISSING_LABEL if label is None else label, split, problem))
    return table
