"""`vlpipe fetch`: caption/URL lists -> img2dataset -> verified webdataset shards + drop records.

Importing this package is cheap; `fetch_tsv`/`fetch_cc` import img2dataset on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlpipe.fetch.normalize import VerifyConfig
from vlpipe.fetch.safety import UrlPolicy
from vlpipe.fetch.tally import fetch_report, format_report
from vlpipe.fetch.url_lists import parse_subset

if TYPE_CHECKING:
    from vlpipe.fetch.download import DownloadConfig
    from vlpipe.fetch.pipeline import FetchConfig

__all__ = [
    "DownloadConfig", "FetchConfig", "UrlPolicy", "VerifyConfig",
    "fetch_cc", "fetch_report", "fetch_tsv", "format_report", "parse_subset",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    # img2dataset (and albumentations, cv2) take seconds to import: only pay when fetching.
    if name in ("fetch_cc", "fetch_tsv", "FetchConfig"):
        from vlpipe.fetch import pipeline

        return getattr(pipeline, name)
    if name == "DownloadConfig":
        from vlpipe.fetch import download

        return download.DownloadConfig
    raise AttributeError(name)
