"""Crash-safe writes: the final name holds the old file or the complete new one, never a torn one."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlpipe.utils.atomic import TMP_PREFIX, atomic_open, atomic_path, write_json_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError, match="crash"), atomic_open(target) as fh:
        fh.write('{"v": 2, "tor')
        raise RuntimeError("crash")
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_the_original_error_survives_a_cleanup_that_fails(tmp_path: Path) -> None:
    # The temporary name ends up a non-empty folder, so removing it fails too (as on a read-only
    # disk); the caller must still see the error that happened first.
    with pytest.raises(ValueError, match="first"), atomic_path(tmp_path / "x.bin") as tmp:
        tmp.mkdir()
        (tmp / "inner").write_text("y")
        raise ValueError("first")
    assert not (tmp_path / "x.bin").exists()


def test_parent_folders_are_created_and_the_file_appears_complete(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.txt"
    with atomic_open(target) as fh:
        fh.write("done")
        assert not target.exists()  # invisible until complete
    assert target.read_text() == "done"
