"""Model config: presets, override routing, JSON round-trip, validation messages."""

from __future__ import annotations

import json

import pytest

from vlpipe.errors import VlpipeError
from vlpipe.model import PRESETS, ModelConfig, make_config


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_validate_and_roundtrip_through_json(preset):
    cfg = make_config(preset)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg  # lists from JSON come back as tuples


def test_override_forms_are_routed():
    cfg = make_config("tiny", vocab_size=777, max_len=20, image_size=48, patch_size=16, pixel_mean=[0.1, 0.2, 0.3],
                      text_layers=3, vision={"heads": 4}, coattn_hidden=32, heads_align="concat", mim_dim=8,
                      dropout=0.0, grad_checkpointing=True)
    assert (cfg.text.vocab_size, cfg.text.max_len, cfg.text.layers) == (777, 20, 3)
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.heads) == (48, 16, 4)
    assert cfg.vision.pixel_mean == (0.1, 0.2, 0.3) and cfg.vision.num_patches == 9 and cfg.vision.patch_dim == 768
    assert cfg.coattn.hidden == 32 and cfg.heads.align == "concat" and cfg.heads.mim_dim == 8
    assert cfg.text.dropout == cfg.vision.dropout == cfg.coattn.dropout == cfg.heads.dropout == 0.0
    assert cfg.vision.attn_dropout == 0.1 and cfg.grad_checkpointing
    assert make_config("tiny").text.layers == 2  # presets are not mutated by overrides


@pytest.mark.parametrize("bad, message", [
    ({"layers": 3}, "section prefix"),
    ({"vision_depth": 3}, "vision.depth"),
    ({"coattn_text_layers": (5,)}, "within 0..2"),
    ({"coattn_image_layers": (1, 2)}, "same length"),
    ({"text_heads": 5}, "divisible"),
    ({"vision_act": "relu"}, "act"),
])
def test_bad_configs_name_the_problem(bad, message):
    with pytest.raises(VlpipeError, match=message):
        make_config("tiny", **bad)
