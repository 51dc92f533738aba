"""benchmarks/bench_peer_loaders.py without its peers: each absent one is named, with how to install it.

The peers (litdata, mosaicml-streaming, ffcv) are benchmark-only extras that CI does not install, so
the script must import without them and say which ones it leaves out and why, instead of failing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_peer_loaders.py"


def test_absent_peers_are_reported_with_how_to_install_them(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("bench_peer_loaders", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # A None entry in sys.modules makes `import name` fail as it does when the package is absent.
    for module in script.PEERS.values():
        monkeypatch.setitem(sys.modules, module, None)
    missing = script.missing_peers()
    assert set(missing) == {"litdata", "mosaicml-streaming", "ffcv"}
    assert missing["litdata"].startswith("litdata does not import (ModuleNotFoundError")
    assert "pip install -e '.[bench]'" in missing["mosaicml-streaming"]
    assert "libturbojpeg0-dev" in missing["ffcv"] and "\n" not in missing["ffcv"]
