"""Seeded, resumable, DDP-aware order of sample indices.

The sampler owns *which* samples an epoch visits and in what order; the loader owns *when* they
count as consumed. The position only moves through `advance()`, which `CacheLoader` calls as it
hands a batch to the training loop (not when it prefetches one), so a `state_dict()` taken inside
the loop body describes exactly the batches the model has seen and a resumed run continues with
the identical remaining sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from vlpipe.errors import VlpipeError


class CacheSampler:
    """Per-epoch permutation of `range(num_samples)`, sharded over DDP ranks.

    Sharding follows torch's `DistributedSampler`: the epoch order is cut into `world_size`
    interleaved slices (rank r takes positions r, r + world_size, ...), so ranks are disjoint.
    Every rank must run the same number of steps, so when `num_samples` is not divisible by
    `world_size` the order is either padded by repeating its first samples (`drop_last=False`:
    every sample is covered, a few twice) or cut to a multiple (`drop_last=True`: nothing
    repeated, up to `world_size - 1` samples skipped this epoch; a different few each epoch when
    shuffling).

    A fully consumed epoch rolls over to the next one when iteration starts again, so a loop
    that forgets `set_epoch` still sees a fresh shuffle each epoch.
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if num_samples < 0:
            raise VlpipeError(f"num_samples must be >= 0, got {num_samples}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise VlpipeError(f"rank {rank} is not valid for world_size {world_size}")
        self.num_samples = int(num_samples)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.position = 0
        self._cache_key: tuple[int, int] | None = None
        self._cache_order: np.ndarray | None = None

    def __len__(self) -> int:
        """Samples this rank visits per epoch (equal on every rank)."""
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation; a *different* epoch starts at its beginning.

        Setting the epoch the sampler is already in keeps the position, so the usual
        `for epoch in range(start, n): sampler.set_epoch(epoch)` loop after `load_state_dict`
        resumes mid-epoch instead of restarting it.
        """
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.position = 0

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's full index order for `epoch` (default: the current one), int64."""
        epoch = self.epoch if epoch is None else int(epoch)
        key = (epoch, len(self))
        if self._cache_key != key:
            self._cache_order = self._rank_order(epoch)
            self._cache_key = key
        assert self._cache_order is not None
        return self._cache_order

    def _rank_order(self, epoch: int) -> np.ndarray:
        n = self.num_samples
        if self.shuffle:
            # Seeding with (seed, epoch) gives independent streams per epoch that every rank
            # reproduces identically, without any communication.
            order = np.random.default_rng([self.seed, epoch]).permutation(n).astype(np.int64)
        else:
            order = np.arange(n, dtype=np.int64)
        total = len(self) * self.world_size
        if total > n:
            order = np.resize(order, total)  # np.resize repeats from the start: the padding
        order = order[:total]
        return order[self.rank :: self.world_size]

    def remaining(self) -> np.ndarray:
        """Indices of the current epoch not yet consumed, rolling over a finished epoch first."""
        if self.position >= len(self) and len(self) > 0:
            self.epoch += 1
            self.position = 0
        return self.epoch_indices()[self.position :]

    def __iter__(self) -> Iterator[int]:
        """Yield the remaining indices of the epoch; iteration alone does not consume them."""
        return iter(self.remaining().tolist())

    def batches(self, batch_size: int, drop_last: bool = False) -> list[np.ndarray]:
        """The remaining indices cut into batches (the last one short unless `drop_last`)."""
        if batch_size < 1:
            raise VlpipeError(f"batch_size must be >= 1, got {batch_size}")
        rest = self.remaining()
        stop = len(rest) - len(rest) % batch_size if drop_last else len(rest)
        return [rest[i : i + batch_size] for i in range(0, stop, batch_size)]

    def advance(self, count: int) -> None:
        """Mark `count` more indices of this epoch as consumed (called by the loader on delivery)."""
        self.position = min(self.position + int(count), len(self))

    def state_dict(self) -> dict[str, Any]:
        """Plain-JSON state: enough to resume mid-epoch exactly, plus the settings it depends on."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_samples": self.num_samples,
            "world_size": self.world_size,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore epoch and position; refuse a state made for a different order.

        The rank is not stored: every rank has the same position, so any rank's state (usually
        rank 0's checkpoint) restores all of them.
        """
        for name in ("seed", "shuffle", "num_samples", "world_size", "drop_last"):
            if name in state and state[name] != getattr(self, name):
                raise VlpipeError(
                    f"sampler state was saved with {name}={state[name]!r} but this sampler has "
                    f"{name}={getattr(self, name)!r}; resuming would visit a different order"
                )
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise VlpipeError(f"sampler state position {position} is outside 0..{len(self)}")
        self.epoch = int(state["epoch"])
        self.position = position
