"""The shared layers: the co-attention layer masks text padding and attends in both directions."""

from __future__ import annotations

import torch

from vlpipe.model import build_model

torch.set_num_threads(2)


def model():
    torch.manual_seed(0)
    return build_model("tiny", {"text.vocab_size": 100, "text.max_len": 10, "vision.image_size": 16, "vision.patch_size": 8}).eval()


def test_coattention_masks_text_padding_for_image_queries():
    m = model()
    layer = m.coattn[0]
    t = torch.randn(2, 10, m.config.text.hidden)
    v = torch.randn(2, 5, m.config.vision.hidden)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[:, 4:] = False
    t2 = t.clone()
    t2[:, 4:] = torch.randn(2, 6, m.config.text.hidden)
    ta, va = layer(t, v, mask)
    tb, vb = layer(t2, v, mask)
    torch.testing.assert_close(va, vb)
    torch.testing.assert_close(ta[:, :4], tb[:, :4])
    # Both directions really attend: changing the image changes the text and vice versa.
    tc, _ = layer(t, torch.randn_like(v), mask)
    _, vd = layer(torch.randn_like(t), v, None)
    assert not torch.allclose(ta, tc) and not torch.allclose(va, vd)
