"""`vlpipe fetch`: caption/URL lists -> img2dataset -> verified webdataset shards + drop records.

Importing this package is cheap; `fetch_tsv`/`fetch_cc` import img2dataset on first use.
"""

from __future__ import annotations

from typing import Any

from vlpipe.fetch.config import DownloadConfig, FetchConfig, UrlPolicy, VerifyConfig
from vlpipe.fetch.tally import fetch_report, format_report
from vlpipe.fetch.url_lists import parse_subset

__all__ = [
    "DownloadConfig", "FetchConfig", "UrlPolicy", "VerifyConfig",
    "fetch_cc", "fetch_report", "fetch_tsv", "format_report", "parse_subset",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    # img2dataset (and albumentations, cv2) take seconds to import: only pay when fetching.
    if name in ("fetch_cc", "fetch_tsv"):
        from vlpipe.fetch import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
