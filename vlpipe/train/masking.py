"""The three pretraining tasks, built on the device from a cache batch.

Every random choice (which tokens/patches to mask, which pairs become negatives, what a masked
token turns into) is a counter-based hash of `(seed, stream, purpose, sample index, position)`
rather than a draw from a stateful generator. That buys three things at once:
- evaluation uses `stream = EVAL_STREAM`, so its masks and negatives are a pure function of the
  global sample `index`: identical in every run, every epoch, on any device or world size;
- training uses the micro-batch counter as the stream, so `--resume` reproduces the exact masks
  without saving generator state;
- everything is vectorized on the device with static shapes (fixed number of MLM slots and masked
  patches per sample), which keeps `torch.compile` free of graph breaks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_MASK32 = 0xFFFFFFFF
_MULT = 0x45D9F3B  # < 2**27, so (x < 2**32) * _MULT never overflows int64

# Purposes keep the different random decisions independent of each other.
_MLM_COUNT, _MLM_POSITION, _MLM_ACTION, _MLM_TOKEN, _AP_NEGATIVE, _MIM_POSITION = range(1, 7)

# The stream used by evaluation: fixed, so eval masks depend only on (seed, index).
EVAL_STREAM = 0x7FFFFFFF

TASKS = ("mlm", "ap", "mim")


def _mix32(x):  # works on Python ints and int64 tensors alike
    """A 32-bit avalanche mix (the 'lowbias' integer hash): every input bit flips ~half the output bits."""
    x = ((x >> 16) ^ x) * _MULT & _MASK32
    x = ((x >> 16) ^ x) * _MULT & _MASK32
    return (x >> 16) ^ x


def hash_uniform(seed: int, stream: int, purpose: int, *keys: torch.Tensor) -> torch.Tensor:
    """Uniform floats in [0, 1) that depend only on the arguments (broadcast over `keys`)."""
    h = _mix32(_mix32(_mix32(seed & _MASK32) ^ (stream & _MASK32)) ^ purpose)
    out: torch.Tensor | int = h
    for key in keys:
        out = _mix32((key & _MASK32) ^ out)
    assert isinstance(out, torch.Tensor)
    # 24 bits fit a float32 mantissa exactly, so the result is never rounded up to 1.0.
    return (out >> 8).to(torch.float32) * (1.0 / (1 << 24))


@dataclass(frozen=True)
class TextSpecials:
    """Token ids the masking must know, taken from the cache manifest (not guessed)."""

    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    vocab_size: int


@dataclass(frozen=True)
class TaskSettings:
    """Which tasks run and how they randomize; part of the run config."""

    tasks: tuple[str, ...] = TASKS
    mlm_prob: float = 0.15
    mim_prob: float = 0.15
    seed: int = 0


def mlm_slots(max_len: int, prob: float) -> int:
    """Static number of MLM prediction slots per caption (an upper bound on masked tokens)."""
    return max(1, math.ceil(prob * max_len))


def mim_count(num_patches: int, prob: float) -> int:
    """Masked patches per image: a fixed count, so every image contributes equally to InfoNCE."""
    return min(num_patches, max(1, round(prob * num_patches)))


def mask_tokens(
    input_ids: torch.Tensor, lengths: torch.Tensor, index: torch.Tensor, specials: TextSpecials,
    *, prob: float, seed: int, stream: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT masking of `prob` of the real tokens; never [CLS], [SEP] or [PAD].

    Returns `(masked_ids, positions, labels)`: `positions` (B, K) are the chosen token positions,
    `labels` (B, K) their original ids or -100 for unused slots. The count per caption is
    `floor(prob * n + u)` (stochastic rounding), so the expected share is exactly `prob` even for
    short captions, and it never exceeds the K static slots. Of the chosen tokens 80% become
    [MASK], 10% a random token and 10% stay unchanged.
    """
    batch, max_len = input_ids.shape
    slots = mlm_slots(max_len, prob)
    pos = torch.arange(max_len, device=input_ids.device)
    idx = index.to(torch.int64)
    candidate = (
        (pos[None, :] < lengths[:, None])
        & (input_ids != specials.cls_id) & (input_ids != specials.sep_id) & (input_ids != specials.pad_id)
    )
    n_candidates = candidate.sum(1)
    u_count = hash_uniform(seed, stream, _MLM_COUNT, idx)
    n_masked = torch.floor(prob * n_candidates + u_count).long().clamp(max=slots)
    score = torch.where(candidate, hash_uniform(seed, stream, _MLM_POSITION, idx[:, None], pos[None, :]), 2.0)
    positions = torch.argsort(score, dim=1, stable=True)[:, :slots]
    used = torch.arange(slots, device=input_ids.device)[None, :] < n_masked[:, None]
    original = input_ids.gather(1, positions)
    action = hash_uniform(seed, stream, _MLM_ACTION, idx[:, None], positions)
    random_token = (hash_uniform(seed, stream, _MLM_TOKEN, idx[:, None], positions) * specials.vocab_size).long()
    replaced = torch.where(
        action < 0.8, torch.full_like(original, specials.mask_id), torch.where(action < 0.9, random_token, original)
    )
    masked_ids = input_ids.scatter(1, positions, torch.where(used, replaced, original))
    labels = torch.where(used, original, torch.full_like(original, -100))
    return masked_ids, positions, labels


def choose_negatives(index: torch.Tensor, *, seed: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick half of the batch to receive another sample's caption.

    Returns `(donor, negative)`: sample `i` is shown caption `donor[i]`; for the negatives the donor
    is the next sample in the batch (`(i + 1) % B`), so it is never the sample itself. Which half is
    negative is hashed from the sample index, so eval negatives are fixed.
    """
    batch = index.shape[0]
    arange = torch.arange(batch, device=index.device)
    negative = torch.zeros(batch, dtype=torch.bool, device=index.device)
    if batch < 2:
        return arange, negative
    order = torch.argsort(hash_uniform(seed, stream, _AP_NEGATIVE, index.to(torch.int64)), stable=True)
    negative[order[: batch // 2]] = True
    donor = torch.where(negative, (arange + 1) % batch, arange)
    return donor, negative


def mask_patches(
    index: torch.Tensor, num_patches: int, *, prob: float, seed: int, stream: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose `mim_count` patches per image; returns `(patch_mask (B, P) bool, positions (B, k))`."""
    count = mim_count(num_patches, prob)
    pos = torch.arange(num_patches, device=index.device)
    score = hash_uniform(seed, stream, _MIM_POSITION, index.to(torch.int64)[:, None], pos[None, :])
    positions = torch.argsort(score, dim=1, stable=True)[:, :count]
    patch_mask = torch.zeros(score.shape, dtype=torch.bool, device=index.device).scatter_(1, positions, True)
    return patch_mask, positions


def prepare_batch(
    batch: dict[str, torch.Tensor], specials: TextSpecials, settings: TaskSettings, num_patches: int, stream: int
) -> dict[str, torch.Tensor]:
    """Turn a cache batch (already on the device) into the inputs and targets of all enabled tasks.

    AP runs first so that MLM masks the caption the model actually sees; `aligned` is False only
    where a sample got a different caption (a donor caption with identical tokens counts as aligned,
    because it *is* a correct description of the image).
    """
    ids, lengths, index = batch["input_ids"], batch["lengths"], batch["index"]
    seed = settings.seed
    aligned = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    if "ap" in settings.tasks:
        donor, negative = choose_negatives(index, seed=seed, stream=stream)
        same_caption = (ids[donor] == ids).all(1)
        ids, lengths = ids[donor], lengths[donor]
        aligned = ~negative | same_caption
    out = {"images": batch["images"], "aligned": aligned}
    if "mlm" in settings.tasks:
        ids, positions, labels = mask_tokens(ids, lengths, index, specials, prob=settings.mlm_prob, seed=seed, stream=stream)
        # ViLBERT: masked-language loss only where the caption describes the image.
        out["mlm_positions"], out["mlm_labels"] = positions, labels.masked_fill(~aligned[:, None], -100)
    if "mim" in settings.tasks:
        out["patch_mask"], out["mim_positions"] = mask_patches(
            index, num_patches, prob=settings.mim_prob, seed=seed, stream=stream
        )
    out["input_ids"] = ids
    out["attention_mask"] = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
    return out


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy over used slots; returns `(mean loss, correct count, slot count)`.

    Averaging by an explicit count (not `ignore_index` mean) keeps a batch without any masked
    token at loss 0 instead of NaN.
    """
    flat_logits, flat_labels = logits.flatten(0, 1).float(), labels.flatten()
    used = flat_labels != -100
    losses = F.cross_entropy(flat_logits, flat_labels.clamp(min=0), reduction="none")
    count = used.sum()
    loss = torch.where(used, losses, 0.0).sum() / count.clamp(min=1)
    correct = ((flat_logits.argmax(-1) == flat_labels) & used).sum()
    return loss, correct, count


def ap_loss(logits: torch.Tensor, aligned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Binary cross-entropy on the alignment logit; returns `(loss, correct count, count)`."""
    target = aligned.to(torch.float32)
    loss = F.binary_cross_entropy_with_logits(logits.float(), target)
    correct = ((logits > 0) == aligned).sum()
    return loss, correct, torch.tensor(aligned.numel(), device=logits.device)


def mim_infonce(
    student: torch.Tensor, teacher: torch.Tensor, aligned: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InfoNCE between student and teacher features of the masked patches of the whole batch.

    `student`, `teacher`: (B, k, D) at the same patch positions. Each student patch must pick its
    own teacher patch among all masked patches of aligned pairs in the batch (cosine similarity /
    tau). Rows of non-aligned pairs are excluded from the loss, as for MLM.
    Returns `(loss, top-1 correct count, row count)`.
    """
    k = student.shape[1]
    s = F.normalize(student.flatten(0, 1).float(), dim=-1)
    t = F.normalize(teacher.flatten(0, 1).float(), dim=-1)
    logits = s @ t.T / tau
    keep = aligned.repeat_interleave(k)
    targets = torch.arange(logits.shape[0], device=logits.device)
    # Non-aligned targets are hidden from every row except their own, so no row is all -inf.
    visible = keep[None, :] | torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(~visible, float("-inf"))
    losses = F.cross_entropy(logits, targets, reduction="none")
    count = keep.sum()
    loss = torch.where(keep, losses, 0.0).sum() / count.clamp(min=1)
    correct = ((logits.argmax(-1) == targets) & keep).sum()
    return loss, correct, count
