"""Crash-safe file writes: write to a temporary name in the same directory, then rename.

`os.replace` is atomic on POSIX within one filesystem, so a reader (or a rerun after a crash)
sees either the old file or the complete new one, never a truncated file under the final name.
Temporary names start with `.tmp-` so that cleanup and "is this complete?" checks can ignore them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_PREFIX = ".tmp-"


def tmp_path_for(path: Path) -> Path:
    """A unique temporary sibling of `path` (same directory, so the final rename is atomic)."""
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it is fsynced and renamed to `path`.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(final)
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        # OSError, not only FileNotFoundError: on a read-only or full disk the cleanup fails too,
        # and its error must not bury the one that matters.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """`open()` for writing that only makes the file visible under `path` once it is complete."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks so memory stays flat on multi-GB arrays."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
