"""Names that more than one stage spells: one definition, so fetch output and the cache agree.

They live here, not in either stage: fetch runs first and must not import the cache package,
and the cache must not depend on fetch internals.
"""

from __future__ import annotations


def shard_name(index: int) -> str:
    """Five digits, so that shards (fetch's NNNNN.tar, the cache's shards/NNNNN/) sort in build order."""
    return f"{index:05d}"
