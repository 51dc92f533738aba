"""Read Hateful Memes: {train,dev,test}[_seen|_unseen].jsonl objects naming images under img/.

Labels are 0 (not hateful) and 1 (hateful) in every split but test, whose files may lack them.
"""

from __future__ import annotations

from pathlib import Path

from vlpipe.errors import VlpipeError
from vlpipe.ingest.rows import SPLIT_NAMES, Row, text_of
from vlpipe.ingest.tables import read_table

FILES = ("train", "dev", "dev_seen", "dev_unseen", "test", "test_seen", "test_unseen")
# A fixed vocabulary: the files hold the ids themselves.
NAMES = ("not_hateful", "hateful")
TASK = "binary"


def detect(root: Path) -> bool:
    return (root / "train.jsonl").is_file() and (root / "img").is_dir()


def read_rows(root: Path) -> list[Row]:
    """Every file's rows in FILES order, labels as ints 0/1 (None where absent)."""
    files = [root / f"{name}.jsonl" for name in FILES if (root / f"{name}.jsonl").is_file()]
    if not files:
        raise VlpipeError(f"{root}: no Hateful Memes files ({', '.join(n + '.jsonl' for n in FILES)})")
    rows = []
    for path in files:
        split = SPLIT_NAMES[path.stem.split("_")[0]]
        names, lines = read_table(path)
        if "img" not in names:
            raise VlpipeError(f"{path}: no 'img' field; expected objects like "
                              '{"id", "img": "img/NNNNN.png", "label", "text"}')
        if split != "test" and "label" not in names:
            raise VlpipeError(f"{path}: no 'label' field (only test files may lack labels)")
        for lineno, obj in lines:
            if not obj.get("img"):
                raise VlpipeError(f"{path}:{lineno}: empty 'img' (image path)")
            image = Path(str(obj["img"]))
            key = str(obj["id"]) if obj.get("id") not in (None, "") else image.stem
            label = obj.get("label")
            if label is not None and (isinstance(label, bool) or str(label).strip() not in ("0", "1")):
                raise VlpipeError(f"{path}:{lineno}: label {label!r} is not 0 or 1")
            rows.append(Row(key, image_path=str(root / image), caption=text_of(obj.get("text")),
                            label=None if label is None else int(label), split=split, where=f"{path}:{lineno}"))
    return rows
