"""The cache: format, writer, verifier and the zero-copy reader.

Names are resolved lazily (PEP 562): `build-cache` worker processes import `vlpipe.cache.shard`,
and an eager import of the reader here would make each of them pay ~6 s to import torch for nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Manifest": "vlpipe.cache.format",
    "load_manifest": "vlpipe.cache.format",
    "CacheDataset": "vlpipe.cache.reader",
    "CacheLoader": "vlpipe.cache.loader",
    "CacheSampler": "vlpipe.cache.sampler",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vlpipe.cache' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
