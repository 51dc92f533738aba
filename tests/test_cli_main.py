"""The `vlpipe` entry point: a user's mistake or the machine's refusal is one line and exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlpipe.cli.main import describe_os_error, main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code), capsys.readouterr().err


def test_an_os_error_is_one_line_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A file where the output folder should go: mkdir fails with ENOTDIR, for real.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _run(["demo", "--out", str(blocker / "demo"), "--size", "200"], capsys)
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {blocker / 'demo'}: Not a directory")


def test_vlpipe_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("VLPIPE_DEBUG", "1")
    with pytest.raises(NotADirectoryError):
        main(["demo", "--out", str(blocker / "demo"), "--size", "200"])


def test_user_errors_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["demo", "--size", "50"], capsys)
    assert code == 1 and err.startswith("error: --size 50") and err.count("\n") == 1
    code, err = _run(["no-such-command"], capsys)
    assert code == 2 and "No such command" in err


def test_describe_os_error_names_both_paths_of_a_rename() -> None:
    assert describe_os_error(PermissionError(13, "Permission denied", "/a")) == "/a: Permission denied"
    assert describe_os_error(OSError(18, "Invalid cross-device link", "/a", None, "/b")) == (
        "/a -> /b: Invalid cross-device link")
    assert describe_os_error(OSError("no errno")) == "no errno"


def test_describe_os_error_shows_the_asked_for_name_and_what_is_wrong(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(FileExistsError) as info:  # what mkdir(exist_ok=True) raises for a file
        afile.mkdir(parents=True, exist_ok=True)
    assert describe_os_error(info.value) == f"{afile}: exists and is not a folder"
    # a crash-safe write's temporary name is reported as the file the user named
    missing = FileNotFoundError(2, "No such file or directory", "/proc/.tmp-10710-x.png")
    assert describe_os_error(missing) == "/proc/x.png: No such file or directory"
