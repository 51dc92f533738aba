"""Warmup + cosine, counted in optimizer steps."""

import math

import pytest
import torch

from vlpipe.train.schedule import WarmupCosine, warmup_steps_for


def test_warmup_then_cosine_to_floor():
    s = WarmupCosine(base_lr=1.0, total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [s.lr(i) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10], strict=False))  # rising during warmup
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # never rising after
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert s.lr(100) == pytest.approx(0.1) and s.lr(10_000) == pytest.approx(0.1)


def test_warmup_fraction_is_of_optimizer_steps():
    # 1000 optimizer steps (whatever the accumulation): 5% warmup is 50 optimizer steps.
    assert warmup_steps_for(1000, 0.05) == 50
    assert warmup_steps_for(1000, 20) == 20
    assert warmup_steps_for(10, 50) == 10
    assert warmup_steps_for(10, 0.0) == 0


def test_apply_sets_every_group_and_rejects_bad_totals():
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                           {"params": [torch.zeros(1, requires_grad=True)]}], lr=5.0)
    s = WarmupCosine(base_lr=2.0, total_steps=4, warmup_steps=0)
    assert s.apply(opt, 0) == pytest.approx(2.0)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(2.0)] * 2
    with pytest.raises(ValueError):
        WarmupCosine(1.0, 0, 0)
    with pytest.raises(ValueError):
        WarmupCosine(1.0, 5, 6)
