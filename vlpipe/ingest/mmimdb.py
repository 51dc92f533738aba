"""Read MM-IMDB: split.json listing movie ids, and per movie <id>.jpeg and <id>.json (plot, genres).

Multi-label: each movie has a list of genres. A movie whose JSON file is missing is skipped
(`missing_metadata`), not fatal: the released archive lacks a few.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlpipe.errors import VlpipeError
from vlpipe.ingest.rows import SPLIT_NAMES, Row, text_of

TASK = "multilabel"


def detect(root: Path) -> bool:
    return (root / "split.json").is_file()


def read_rows(root: Path) -> list[Row]:
    """One row per id in split.json, in its order; labels are lists of genre names."""
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
            meta_path = folder / f"{key}.json"
            meta = _read_json_object(meta_path)
            genres = meta.get("genres") if meta else None
            if genres is not None and not (isinstance(genres, list) and all(isinstance(g, str) for g in genres)):
                raise VlpipeError(f"{meta_path}: 'genres' must be a list of strings")
            image = next((folder / f"{key}.{ext}" for ext in ("jpeg", "jpg", "png")
                          if (folder / f"{key}.{ext}").is_file()), folder / f"{key}.jpeg")
            problem = None if meta is not None else ("missing_metadata", f"{meta_path}: no such file")
            rows.append(Row(key, image_path=str(image), caption=text_of(meta.get("plot")) if meta else None,
                            label=genres, split=SPLIT_NAMES[name], where=f"{split_path}[{name}] id {key}",
                            problem=problem))
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
