"""Read a captions table (.jsonl, .csv or .tsv) that names image files, one row per sample.

The whole table is read up front, so a malformed line fails the build before any image is
decoded, and cut into shards of `shard_size` rows that name their image files; the image bytes
are read later, in the worker that builds each shard.
"""

from __future__ import annotations

from pathlib import Path

from vlpipe.errors import VlpipeError
from vlpipe.ingest.rows import Row, Source, row_shards
from vlpipe.ingest.tables import CAPTION_COLUMN_CANDIDATES, IMAGE_COLUMN_CANDIDATES, pick_column, read_table


def open_captions(path: Path, shard_size: int, image_column: str | None, caption_column: str | None) -> Source:
    """The captions file `path` as a source; image paths are relative to its folder.

    The key is the `key` or `id` column when a row has one, else the image path without its suffix.
    """
    names, lines = read_table(path)
    image_col = pick_column(names, image_column, IMAGE_COLUMN_CANDIDATES, "image", path)
    caption_col = pick_column(names, caption_column, CAPTION_COLUMN_CANDIDATES, "caption", path)
    key_col = next((n for n in names if n.lower() in ("key", "id")), None)
    url_col = next((n for n in names if n.lower() == "url"), None)
    rows = []
    for lineno, row in lines:
        image = row.get(image_col)
        if not image:
            raise VlpipeError(f"{path}:{lineno}: empty {image_col!r} (image path)")
        rel = Path(str(image))
        key = str(row[key_col]) if key_col and row.get(key_col) not in (None, "") else rel.with_suffix("").as_posix()
        caption = row.get(caption_col)
        url = row.get(url_col) if url_col else None
        rows.append(Row(key, image_path=str(path.parent / rel), caption="" if caption is None else str(caption),
                        url=url or None))
    if not rows:
        raise VlpipeError(f"{path}: captions file has a header but no rows")
    return Source(path.parent, "captions", row_shards(path.name, str(path), rows, shard_size))
