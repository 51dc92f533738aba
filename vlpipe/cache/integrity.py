"""Before training: are the cache's files still the bytes its manifest recorded? (sha256, remembered)

Training reads the arrays blind, which is what makes it fast, so a flipped byte (a bad disk, a
half-finished copy, a hand edit) would otherwise train silently on wrong pixels or tokens. Hashing
costs about 0.4 GB/s per core on the 2-core test machine (`hashlib.sha256`; minutes for a
CC3M-size raw cache), so each file is hashed once and remembered: a record per cache (keyed by the
manifest's own sha256) in `$XDG_CACHE_HOME/vlpipe/verified/` lists every file's size and
modification time when it last matched. A later run hashes only the files that changed since
(`auto`), every file (`always`), or none (`never`). Files are hashed in parallel threads
(`hashlib` releases the GIL on large buffers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from vlpipe.cache.format import MANIFEST, load_manifest
from vlpipe.errors import VlpipeError
from vlpipe.utils.atomic import write_json_atomic

CheckMode = Literal["auto", "always", "never"]
_CHUNK = 4 << 20


def record_dir() -> Path:
    """Where verification records live: per user, outside the cache (which may be read-only)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vlpipe" / "verified"


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def check_files(cache_dir: str | os.PathLike[str], mode: CheckMode = "auto", quiet: bool = False) -> int:
    """Raise a one-line VlpipeError naming the first file whose sha256 differs from the manifest's.

    Returns how many files were hashed (0 when every file is unchanged since it was last verified).
    """
    if mode == "never":
        return 0
    root = Path(cache_dir)
    manifest = load_manifest(root)
    expected = {root / manifest.text.tokenizer_file: manifest.text.tokenizer_sha256}
    for shard in manifest.shards:
        expected.update({root / entry.path: entry.sha256 for entry in shard.files.values()})
    key = hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()
    record_file = record_dir() / f"{key}.json"
    try:
        known = json.loads(record_file.read_text(encoding="utf-8")) if mode == "auto" else {}
    except (OSError, ValueError):
        known = {}
    stamps = {path: _stamp(path) for path in expected}
    todo = [path for path in expected if known.get(str(path)) != stamps[path]]
    if todo:
        _hash_all(root, todo, expected, quiet)
        record = {**{k: v for k, v in known.items() if Path(k) in expected}, **{str(p): stamps[p] for p in todo}}
        with contextlib.suppress(OSError):  # a read-only home: the check ran, it is just not remembered
            write_json_atomic(record_file, record)
    return len(todo)


def _hash_all(root: Path, todo: list[Path], expected: dict[Path, str], quiet: bool) -> None:
    total = sum(p.stat().st_size for p in todo)
    console = Console(stderr=True, quiet=quiet)
    columns = (TextColumn(f"checking {len(todo)} cache file(s) against the manifest"), BarColumn(), DownloadColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("sha256", total=total)

        def digest(path: Path) -> tuple[Path, str]:
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
                    progress.advance(bar, len(chunk))
            return path, h.hexdigest()

        with ThreadPoolExecutor(max(1, min(len(todo), os.cpu_count() or 1))) as pool:
            for path, found in pool.map(digest, todo):
                if found != expected[path]:
                    raise VlpipeError(f"{path}: its sha256 differs from {root / MANIFEST} (the file changed after "
                                      f"the cache was built); rebuild the cache, or see `vlpipe cache verify {root}`")
