"""CacheSampler: deterministic shuffles, disjoint and covering DDP shards, exact mid-epoch resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlpipe.cache import CacheSampler
from vlpipe.errors import VlpipeError


@pytest.mark.parametrize("n", [1, 2, 7, 10, 101])
@pytest.mark.parametrize("drop_last", [False, True])
def test_two_ranks_disjoint_and_covering(n, drop_last):
    ranks = [list(CacheSampler(n, seed=3, rank=r, world_size=2, drop_last=drop_last)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(CacheSampler(n, world_size=2, drop_last=drop_last))
    if drop_last:
        assert not set(ranks[0]) & set(ranks[1])
        assert len(set(ranks[0]) | set(ranks[1])) == n - n % 2
    else:
        assert set(ranks[0]) | set(ranks[1]) == set(range(n))
        # Only the padding repeats: n is odd -> exactly one sample appears twice.
        assert len(ranks[0]) + len(ranks[1]) - n == n % 2
        if n % 2 == 0:
            assert not set(ranks[0]) & set(ranks[1])


def test_three_ranks_cover_with_padding():
    ranks = [list(CacheSampler(10, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert [len(r) for r in ranks] == [4, 4, 4]
    assert set().union(*ranks) == set(range(10))


def test_shuffle_deterministic_per_seed_and_epoch():
    a, b, c = CacheSampler(50, seed=7), CacheSampler(50, seed=7), CacheSampler(50, seed=8)
    assert list(a) == list(b) and list(a) != list(c)
    assert sorted(a) == list(range(50))
    first = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != first
    assert list(CacheSampler(50, shuffle=False)) == list(range(50))


def test_state_dict_resumes_mid_epoch_exactly():
    sampler = CacheSampler(37, seed=5, rank=1, world_size=2)
    sampler.set_epoch(2)
    expected = sampler.epoch_indices().tolist()
    sampler.advance(8)
    state = json.loads(json.dumps(sampler.state_dict()))  # survives a JSON checkpoint
    resumed = CacheSampler(37, seed=5, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the usual loop line must not restart the resumed epoch
    assert list(resumed) == expected[8:]
    assert [b.tolist() for b in resumed.batches(4)] == [expected[i:i + 4] for i in range(8, len(expected), 4)]


def test_finished_epoch_rolls_over_and_set_epoch_restarts():
    sampler = CacheSampler(6, seed=0)
    sampler.advance(6)
    nxt = list(sampler)
    assert sampler.epoch == 1 and nxt == CacheSampler(6, seed=0).epoch_indices(1).tolist()
    sampler.advance(2)
    sampler.set_epoch(4)
    assert sampler.position == 0 and len(list(sampler)) == 6


def test_batches_drop_last_and_bad_states():
    sampler = CacheSampler(10, shuffle=False)
    assert [len(b) for b in sampler.batches(4)] == [4, 4, 2]
    assert [len(b) for b in sampler.batches(4, drop_last=True)] == [4, 4]
    assert np.concatenate(sampler.batches(3)).tolist() == list(range(10))
    with pytest.raises(VlpipeError, match="seed"):
        CacheSampler(10, seed=1).load_state_dict(CacheSampler(10, seed=2).state_dict())
    with pytest.raises(VlpipeError, match="num_samples"):
        CacheSampler(11).load_state_dict(CacheSampler(10).state_dict())
    with pytest.raises(VlpipeError, match="rank 2"):
        CacheSampler(10, rank=2, world_size=2)
