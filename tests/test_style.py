"""The code base stays `ruff` clean: CI fails on a lint error just as on a failing test."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    result = subprocess.run([ruff, "check", "vlpipe", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_modules_are_small_documented_and_named_once():
    """The layout rules of docs/architecture.md: every module says its job in an opening docstring and
    stays under 400 lines, and no two share a file name (a package's __init__.py and config.py aside),
    so a name says one thing."""
    modules = sorted((ROOT / "vlpipe").rglob("*.py"))
    assert len(modules) > 50
    undocumented = [str(m.relative_to(ROOT)) for m in modules if not m.read_text().lstrip().startswith('"""')]
    assert not undocumented, undocumented
    long = {str(m.relative_to(ROOT)): n for m in modules if (n := len(m.read_text().splitlines())) > 400}
    assert not long, long
    names: dict[str, list[str]] = {}
    for m in modules:
        names.setdefault(m.name, []).append(str(m.relative_to(ROOT)))
    shared = {n: paths for n, paths in names.items() if len(paths) > 1 and n not in ("__init__.py", "config.py")}
    assert not shared, shared
