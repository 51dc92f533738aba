"""Zero-shot image-text retrieval with the alignment head, as ViLBERT evaluates a pretrained model.

Every image is paired with every caption of the evaluated samples and the joint model scores each
pair with its alignment head (one logit: does this caption belong to this image?). Image -> text:
for each image, the captions ranked by score; text -> image: for each caption, the images. R@K is
the share of queries whose correct partner is among the K highest scores.

Choices that decide the numbers:
- a caption is correct for an image when its tokens equal the image's own caption's (synthetic and
  template-made data repeat captions; ranking an identical caption above the own one is not wrong),
  so a query may have several correct partners and the best-ranked one counts;
- ties count against the query: a partner scored the same as the best correct one ranks ahead of
  it, so a model that scores every pair alike gets no credit (as top-k in vlpipe/train/scores.py);
- chance is exact, per query, for a random order: 1 - C(N - m, K) / C(N, K) with m correct
  partners among N, averaged over the queries (K / N when every caption is unique).

Cost: N^2 pair forwards of the full model (co-attention joins the streams, so nothing can be
precomputed per image or per caption); `--max-samples` bounds N.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlpipe.model.vilbert import ViLBERT

DIRECTIONS = ("image_to_text", "text_to_image")


@torch.no_grad()
def pair_scores(model: ViLBERT, images: Tensor, input_ids: Tensor, lengths: Tensor, *, batch_size: int,
                device: torch.device, autocast: Callable[[], Any] = contextlib.nullcontext) -> np.ndarray:
    """(N images, N captions) alignment logits of every image with every caption, dropout off.

    Pairs go through the model `batch_size` at a time in row-major order (image i, caption j at
    flat index i * N + j); the inputs are moved to `device` once.
    """
    was_training = model.training
    model.eval()
    n = len(images)
    images, input_ids, lengths = images.to(device), input_ids.to(device), lengths.to(device)
    positions = torch.arange(input_ids.shape[1], device=device)
    out = torch.empty(n * n, dtype=torch.float32, device=device)
    try:
        for start in range(0, n * n, batch_size):
            flat = torch.arange(start, min(n * n, start + batch_size), device=device)
            i, j = flat // n, flat % n
            mask = positions[None, :] < lengths[j, None]
            with autocast():
                o = model(images[i], input_ids[j], mask)
                out[start:start + len(flat)] = model.align_head(o.pooled_text, o.pooled_image).float()
    finally:
        model.train(was_training)
    return out.reshape(n, n).cpu().numpy()


def same_caption(input_ids: Tensor, lengths: Tensor) -> np.ndarray:
    """(N, N) bool: caption i and caption j are the same token sequence (so either fits image i)."""
    ids = input_ids.cpu().numpy()
    n = lengths.cpu().numpy()
    keys = [ids[k, : n[k]].tobytes() for k in range(len(ids))]
    _, group = np.unique(np.array(keys, dtype=object), return_inverse=True)
    return group[:, None] == group[None, :]


def ranks(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """For each query (row): how many wrong candidates score at least as high as its best correct one."""
    best = np.where(correct, scores, -np.inf).max(axis=1)
    return np.sum((scores >= best[:, None]) & ~correct, axis=1)


def chance_recall(correct: np.ndarray, k: int) -> float:
    """Expected R@k of a random order: per query 1 - C(N-m, k)/C(N, k), m = its correct candidates."""
    n = correct.shape[1]
    m = correct.sum(axis=1)
    miss = np.ones(len(m))
    for step in range(min(k, n)):
        miss *= np.clip(n - m - step, 0, None) / (n - step)
    return float(np.mean(1.0 - miss))


def retrieval_metrics(scores: np.ndarray, correct: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
    """R@K both ways and their chance levels: {"image_to_text": {"r1": ...}, "text_to_image": ...,
    "chance": {"image_to_text": {"r1": ...}, ...}}; rows of `scores` are images, columns captions."""
    out: dict[str, Any] = {"chance": {}}
    for direction, s, c in (("image_to_text", scores, correct), ("text_to_image", scores.T, correct.T)):
        r = ranks(s, c)
        out[direction] = {f"r{k}": float(np.mean(r < k)) for k in ks}
        out["chance"][direction] = {f"r{k}": chance_recall(c, k) for k in ks}
    return out
