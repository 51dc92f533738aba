"""The cache: format, writer, verifier and the zero-copy reader.

Importing this package stays light (numpy, pyarrow, torch): decoding and tokenizing live in the
writer, which is imported only where a cache is built.
"""

from vlpipe.cache.format import Manifest, load_manifest
from vlpipe.cache.loader import CacheLoader
from vlpipe.cache.reader import CacheDataset
from vlpipe.cache.sampler import CacheSampler

__all__ = ["CacheDataset", "CacheLoader", "CacheSampler", "Manifest", "load_manifest"]
