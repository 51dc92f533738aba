"""The text stream: padding semantics and token-type defaults."""

from __future__ import annotations

import torch

from vlpipe.model import build_model

torch.set_num_threads(2)


def model():
    torch.manual_seed(0)
    return build_model("tiny", {"text.vocab_size": 100, "text.max_len": 10, "vision.image_size": 16, "vision.patch_size": 8}).eval()


def test_text_stream_ignores_padding_content():
    m = model()
    ids = torch.randint(5, 100, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    other = ids.clone()
    other[0, 6:] = 7
    a, b = m.text(ids, mask), m.text(other, mask)
    torch.testing.assert_close(a[0, :6], b[0, :6])
    torch.testing.assert_close(a[1], b[1])
    # Shorter sequences give the same result as padded ones at the real positions.
    torch.testing.assert_close(m.text(ids[:1, :6], mask[:1, :6])[0], a[0, :6], atol=1e-5, rtol=1e-5)


def test_token_types_default_to_zero():
    m = model()
    ids = torch.randint(5, 100, (2, 10))
    torch.testing.assert_close(m.text(ids), m.text(ids, token_type_ids=torch.zeros_like(ids)))
