"""Masking statistics, negatives and losses of the pretraining tasks, on random tensors."""

import math

import pytest
import torch

from vlpipe.train.masking import (
    EVAL_STREAM,
    TaskSettings,
    TextSpecials,
    choose_negatives,
    hash_uniform,
    mask_patches,
    mask_tokens,
    mim_infonce,
    mlm_loss,
    prepare_batch,
)

SPECIALS = TextSpecials(pad_id=0, cls_id=2, sep_id=3, mask_id=4, vocab_size=500)


def _captions(n: int, max_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random [CLS] w w ... [SEP] [PAD].. captions of random length, words in 10..499."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, max_len + 1, (n,), generator=g)
    ids = torch.randint(10, SPECIALS.vocab_size, (n, max_len), generator=g)
    pos = torch.arange(max_len)[None, :]
    ids = torch.where(pos < lengths[:, None], ids, SPECIALS.pad_id)
    ids[:, 0] = SPECIALS.cls_id
    ids[torch.arange(n), lengths - 1] = SPECIALS.sep_id
    return ids, lengths


def test_hash_uniform_is_uniform_and_deterministic():
    keys = torch.arange(200_000)
    u = hash_uniform(7, 3, 1, keys)
    assert torch.equal(u, hash_uniform(7, 3, 1, keys))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005
    hist = torch.histc(u, bins=10, min=0, max=1) / len(u)
    assert torch.allclose(hist, torch.full((10,), 0.1), atol=0.005)
    assert not torch.equal(u, hash_uniform(7, 4, 1, keys))  # another stream, other numbers
    assert abs(torch.corrcoef(torch.stack([u, hash_uniform(7, 3, 2, keys)]))[0, 1].item()) < 0.01


def test_mlm_masking_statistics_match_15_80_10_10():
    ids, lengths = _captions(20_000, 32)
    index = torch.arange(len(ids))
    masked, positions, labels = mask_tokens(ids, lengths, index, SPECIALS, prob=0.15, seed=0, stream=5)
    real = (ids != SPECIALS.pad_id) & (ids != SPECIALS.cls_id) & (ids != SPECIALS.sep_id)
    used = labels != -100
    chosen = used.sum().item()
    assert abs(chosen / real.sum().item() - 0.15) < 0.005
    # labels are the original ids at the chosen positions, which are never special tokens
    assert torch.equal(labels[used], ids.gather(1, positions)[used])
    assert real.gather(1, positions)[used].all()
    new = masked.gather(1, positions)[used]
    orig = labels[used]
    share_mask = (new == SPECIALS.mask_id).float().mean().item()
    share_kept = (new == orig).float().mean().item()
    share_random = ((new != SPECIALS.mask_id) & (new != orig)).float().mean().item()
    assert abs(share_mask - 0.8) < 0.01
    assert abs(share_kept - (0.1 + 0.1 / SPECIALS.vocab_size)) < 0.01  # a random token may equal the original
    assert abs(share_random - 0.1) < 0.01
    # nothing outside the chosen positions changes
    untouched = torch.ones_like(ids, dtype=torch.bool).scatter(1, positions, ~used)
    assert torch.equal(masked[untouched], ids[untouched])


def test_masks_depend_only_on_seed_stream_and_index():
    ids, lengths = _captions(64, 16)
    index = torch.arange(1000, 1064)
    a = mask_tokens(ids, lengths, index, SPECIALS, prob=0.15, seed=1, stream=EVAL_STREAM)
    perm = torch.randperm(64)
    b = mask_tokens(ids[perm], lengths[perm], index[perm], SPECIALS, prob=0.15, seed=1, stream=EVAL_STREAM)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x[perm], y)  # same sample -> same mask, wherever it sits in the batch
    c = mask_tokens(ids, lengths, index, SPECIALS, prob=0.15, seed=1, stream=3)
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("batch", [2, 3, 8, 65])
def test_negatives_are_half_and_never_own_caption(batch):
    for stream in range(50):
        index = torch.randint(0, 10_000, (batch,))
        donor, negative = choose_negatives(index, seed=0, stream=stream)
        assert negative.sum().item() == batch // 2
        assert (donor[negative] != torch.arange(batch)[negative]).all()
        assert torch.equal(donor[~negative], torch.arange(batch)[~negative])


def test_prepare_batch_swaps_captions_and_limits_mlm_to_aligned():
    ids, lengths = _captions(16, 12, seed=3)
    batch = {"images": torch.zeros(16, 16, 12, dtype=torch.uint8), "input_ids": ids, "lengths": lengths,
             "index": torch.arange(16)}
    out = prepare_batch(batch, SPECIALS, TaskSettings(seed=0), num_patches=16, stream=EVAL_STREAM)
    assert (~out["aligned"]).sum() == 8
    donor, negative = choose_negatives(batch["index"], seed=0, stream=EVAL_STREAM)
    assert torch.equal(out["attention_mask"].sum(1), lengths[donor])
    assert (out["mlm_labels"][~out["aligned"]] == -100).all()
    assert (out["mlm_labels"][out["aligned"]] != -100).any()
    assert out["patch_mask"].sum(1).eq(2).all()  # round(0.15 * 16)
    # a donor caption identical to the own one is a correct description: it stays aligned
    same = batch | {"input_ids": ids[:1].repeat(16, 1), "lengths": lengths[:1].repeat(16)}
    assert prepare_batch(same, SPECIALS, TaskSettings(seed=0), 16, EVAL_STREAM)["aligned"].all()


def test_mask_patches_fixed_count():
    mask, positions = mask_patches(torch.arange(10), 64, prob=0.15, seed=0, stream=1)
    assert mask.sum(1).eq(10).all()
    assert torch.equal(mask.gather(1, positions), torch.ones(10, 10, dtype=torch.bool))


def test_mlm_loss_counts_only_used_slots():
    logits = torch.randn(2, 3, 7)
    labels = torch.tensor([[1, -100, 2], [-100, -100, -100]])
    loss, correct, count = mlm_loss(logits, labels)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert torch.allclose(loss, expected) and count.item() == 2
    loss, _, count = mlm_loss(logits, torch.full((2, 3), -100))
    assert loss.item() == 0 and count.item() == 0


def test_mim_infonce_perfect_match_and_excluded_rows():
    torch.manual_seed(0)
    feats = torch.randn(4, 3, 8)
    aligned = torch.tensor([True, True, False, True])
    loss, correct, count = mim_infonce(feats, feats, aligned, tau=0.01)
    assert count.item() == 9 and correct.item() == 9 and loss.item() < 1e-3
    shuffled = feats[:, torch.tensor([1, 2, 0])]
    loss2, correct2, _ = mim_infonce(feats, shuffled, aligned, tau=0.1)
    assert correct2.item() < 9 and loss2.item() > 1.0
    # uniform random features: loss near ln(number of candidates)
    a, b = torch.randn(64, 4, 16), torch.randn(64, 4, 16)
    loss3, _, _ = mim_infonce(a, b, torch.ones(64, dtype=torch.bool), tau=100.0)
    assert abs(loss3.item() - math.log(256)) < 0.05
    # gradients are finite even with excluded rows
    s = feats.clone().requires_grad_()
    mim_infonce(s, feats, aligned, tau=0.1)[0].backward()
    assert torch.isfinite(s.grad).all() and s.grad[2].abs().sum() == 0
