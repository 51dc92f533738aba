"""The img2dataset settings: distributor checks (the default one is exercised end to end in test_fetch.py)."""

from __future__ import annotations

import importlib.util

import pytest

from vlpipe.errors import VlpipeError
from vlpipe.fetch.config import DownloadConfig


def test_default_distributor_and_machine_sized_defaults() -> None:
    config = DownloadConfig()
    assert config.distributor == "multiprocessing" and config.processes >= 1 and config.threads > 1


@pytest.mark.parametrize("name", ["dask", "pyspark"])  # pyspark: img2dataset has it, untested here (docs/fetch.md)
def test_unknown_distributor_refused(name: str) -> None:
    with pytest.raises(VlpipeError, match="distributor must be one of multiprocessing or ray"):
        DownloadConfig(distributor=name)


def test_missing_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # img2dataset's ray distributor would silently download nothing without ray installed; ray is
    # in the dev extra, so its absence is simulated where vlpipe looks for it.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(VlpipeError, match=r"pip install 'vlpipe\[ray\]'"):
        DownloadConfig(distributor="ray")
