"""The img2dataset seam: distributor checks (the default one is exercised end to end in test_fetch.py)."""

from __future__ import annotations

import importlib.util

import pytest

from vlpipe.errors import VlpipeError
from vlpipe.fetch.download import DownloadConfig, check_distributor


def test_default_distributor_and_machine_sized_defaults() -> None:
    check_distributor("multiprocessing")
    config = DownloadConfig()
    assert config.distributor == "multiprocessing" and config.processes >= 1 and config.threads > 1


def test_unknown_distributor_refused() -> None:
    with pytest.raises(VlpipeError, match="expected one of multiprocessing, pyspark, ray"):
        check_distributor("dask")


@pytest.mark.parametrize("name", ["ray", "pyspark"])
def test_missing_engine_is_a_clear_error(name: str) -> None:
    # img2dataset's ray distributor would silently download nothing without ray installed.
    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is installed here")
    with pytest.raises(VlpipeError, match=f"pip install {name}"):
        check_distributor(name)
