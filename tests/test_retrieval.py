"""Zero-shot retrieval: ranks and R@K against hand-computed values and a brute-force reference."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import pytest
import torch

from vlpipe.eval.retrieval import chance_recall, pair_scores, ranks, retrieval_metrics, same_caption
from vlpipe.model import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ranks_and_recall_on_a_fixed_score_matrix() -> None:
    # Rows: images 0-3; columns: captions 0-3; the correct caption is the diagonal.
    scores = np.array([[0.9, 0.1, 0.2, 0.3],    # own caption first: rank 0
                       [0.5, 0.4, 0.6, 0.1],    # 0.5 and 0.6 ahead: rank 2
                       [0.7, 0.7, 0.7, 0.7],    # all tied: ties count against, rank 3
                       [0.2, 0.3, 0.9, 0.8]])   # 0.9 ahead: rank 1
    correct = np.eye(4, dtype=bool)
    assert ranks(scores, correct).tolist() == [0, 2, 3, 1]
    # Text -> image, caption j ranks column j: [0.9, 0.5, 0.7, 0.2] own 0.9 -> 0; [0.1, 0.4, 0.7, 0.3]
    # 0.7 ahead -> 1; [0.2, 0.6, 0.7, 0.9] 0.9 ahead -> 1; [0.3, 0.1, 0.7, 0.8] own 0.8 first -> 0.
    assert ranks(scores.T, correct.T).tolist() == [0, 1, 1, 0]
    metrics = retrieval_metrics(scores, correct, ks=(1, 2, 4))
    assert metrics["image_to_text"] == {"r1": 0.25, "r2": 0.5, "r4": 1.0}
    assert metrics["text_to_image"] == {"r1": 0.5, "r2": 1.0, "r4": 1.0}
    assert metrics["chance"]["image_to_text"] == pytest.approx({"r1": 0.25, "r2": 0.5, "r4": 1.0})


def test_repeated_captions_count_as_correct_and_chance_accounts_for_them() -> None:
    ids = torch.tensor([[2, 5, 6, 3, 0], [2, 7, 3, 0, 0], [2, 5, 6, 3, 9], [2, 7, 3, 0, 0]])
    lengths = torch.tensor([4, 3, 4, 3])  # caption 2 equals caption 0 up to its length (the 9 is padding)
    same = same_caption(ids, lengths)
    assert same.tolist() == [[True, False, True, False], [False, True, False, True],
                             [True, False, True, False], [False, True, False, True]]
    scores = np.array([[0.1, 0.5, 0.9, 0.2]] * 4)  # every image prefers caption 2
    assert ranks(scores, same).tolist() == [0, 1, 0, 1]  # images 0 and 2: caption 2 is theirs too
    # Exact chance with m = 2 correct of n = 4: 1 - C(2, k) / C(4, k).
    assert chance_recall(same, 1) == pytest.approx(0.5)
    assert chance_recall(same, 2) == pytest.approx(1 - comb(2, 2) / comb(4, 2))
    assert chance_recall(np.eye(10, dtype=bool), 3) == pytest.approx(0.3)


def test_pair_scores_and_metrics_match_a_brute_force_reference() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", {"vision.image_size": 32, "vision.patch_size": 8, "text.vocab_size": 50,
                                 "text.max_len": 8})
    n, patches, dim = 7, 16, 8 * 8 * 3
    images = torch.randint(0, 256, (n, patches, dim), dtype=torch.uint8)
    ids = torch.randint(5, 50, (n, 8))
    lengths = torch.tensor([8, 3, 5, 8, 2, 6, 3])
    ids[6] = ids[1]  # a repeated caption: either fits images 1 and 6
    fast = pair_scores(model, images, ids, lengths, batch_size=5, device=torch.device("cpu"))

    model.eval()
    slow = np.zeros((n, n), dtype=np.float32)
    with torch.no_grad():
        for i, j in itertools.product(range(n), range(n)):
            mask = torch.arange(8)[None, :] < lengths[j]
            out = model(images[i : i + 1], ids[j : j + 1], mask)
            slow[i, j] = float(model.align_head(out.pooled_text, out.pooled_image))
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-5)

    correct = same_caption(ids, lengths)
    assert correct[1, 6] and correct[6, 1] and correct.sum() == n + 2
    expected = {}
    for name, s, c in (("image_to_text", slow, correct), ("text_to_image", slow.T, correct.T)):
        hits = {k: 0 for k in (1, 3, 5)}
        for q in range(n):
            best = max(s[q, j] for j in range(n) if c[q, j])
            ahead = sum(1 for j in range(n) if not c[q, j] and s[q, j] >= best)
            for k in hits:
                hits[k] += ahead < k
        expected[name] = {f"r{k}": v / n for k, v in hits.items()}
    metrics = retrieval_metrics(fast, correct, ks=(1, 3, 5))
    assert metrics["image_to_text"] == pytest.approx(expected["image_to_text"])
    assert metrics["text_to_image"] == pytest.approx(expected["text_to_image"])
    # Chance of R@1: 1/7 for the 5 images with one correct caption, 2/7 for images 1 and 6.
    assert metrics["chance"]["image_to_text"]["r1"] == pytest.approx((5 * 1 / 7 + 2 * 2 / 7) / 7)


def test_pair_scores_leaves_a_training_model_training() -> None:
    model = build_model("tiny", {"vision.image_size": 32, "vision.patch_size": 8, "text.vocab_size": 50,
                                 "text.max_len": 8})
    model.train()
    scores = pair_scores(model, torch.zeros(3, 16, 192, dtype=torch.uint8), torch.full((3, 8), 7),
                         torch.tensor([8, 8, 8]), batch_size=4, device=torch.device("cpu"))
    assert model.training and scores.shape == (3, 3)
    assert np.allclose(scores, scores[0, 0])  # identical inputs, dropout off: identical scores
