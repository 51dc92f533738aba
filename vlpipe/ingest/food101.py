"""Read UPMC Food-101: {train,test}_titles.csv (image_name,text,label) and images/{split}/<label>/.

The CSV files are in [texts/]; the original ones have no header (one is tolerated). Single-label,
101 classes; there is no dev set, so val is hashed out of train.
"""

from __future__ import annotations

from pathlib import Path

from vlpipe.errors import VlpipeError
from vlpipe.ingest.rows import Row, text_of
from vlpipe.ingest.tables import csv_records, read_text

TASK = "multiclass"


def detect(root: Path) -> bool:
    return _titles_csv(root, "train") is not None


def read_rows(root: Path) -> list[Row]:
    """train then test rows in file order; labels are the class names as written."""
    rows = []
    for split in ("train", "test"):
        path = _titles_csv(root, split)
        if path is None:
            if split == "train":
                raise VlpipeError(f"{root}: no train_titles.csv (looked in {root} and {root / 'texts'})")
            continue
        try:
            # Line endings untouched (a title's quoted "\r\n" stays as written); records split by the
            # csv module, each numbered by the line it starts on; an unterminated quote is an error.
            lines = list(csv_records(path, read_text(path)))
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
            rows.append(Row(key, image_path=str(root / "images" / split / label / name), caption=text_of(text),
                            label=label, split=split, where=f"{path}:{lineno}"))
    return rows


def _titles_csv(root: Path, split: str) -> Path | None:
    for folder in (root, root / "texts"):
        if (folder / f"{split}_titles.csv").is_file():
            return folder / f"{split}_titles.csv"
    return None
