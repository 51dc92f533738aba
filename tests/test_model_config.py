"""Model config: presets, override routing, JSON round-trip, validation messages."""

from __future__ import annotations

import json

import pytest

from vlpipe.errors import VlpipeError
from vlpipe.model import PRESETS, ModelConfig, make_config
from vlpipe.model.config import check_override_keys, every_dropout


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_validate_and_roundtrip_through_json(preset):
    cfg = make_config(preset)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg  # lists from JSON come back as tuples


def test_dotted_overrides_reach_their_section():
    cfg = make_config("tiny", {"text.vocab_size": 777, "text.max_len": 20, "vision.image_size": 48,
                               "vision.patch_size": 16, "vision.pixel_mean": [0.1, 0.2, 0.3], "text.layers": 3,
                               "vision.heads": 4, "coattn.hidden": 32, "heads.align": "concat", "heads.mim_dim": 8,
                               **every_dropout(0.0, ("dropout",)), "grad_checkpointing": True})
    assert (cfg.text.vocab_size, cfg.text.max_len, cfg.text.layers) == (777, 20, 3)
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.heads) == (48, 16, 4)
    assert cfg.vision.pixel_mean == (0.1, 0.2, 0.3) and cfg.vision.num_patches == 9 and cfg.vision.patch_dim == 768
    assert cfg.coattn.hidden == 32 and cfg.heads.align == "concat" and cfg.heads.mim_dim == 8
    assert cfg.text.dropout == cfg.vision.dropout == cfg.coattn.dropout == cfg.heads.dropout == 0.0
    assert cfg.vision.attn_dropout == 0.1 and cfg.grad_checkpointing
    assert make_config("tiny").text.layers == 2  # presets are not mutated by overrides


@pytest.mark.parametrize("bad, message", [
    ({"layers": 3}, "options are dotted"),
    ({"vision.depth": 3}, "unknown model option vision.depth; valid: vision.image_size"),
    ({"text_layers": 3}, "write it as text.layers"),
    ({"vocab_size": 3}, "write it as text.vocab_size"),
    ({"dropout": 0.0}, "set each section's own: vision.dropout, text.dropout, coattn.dropout, heads.dropout"),
    ({"coattn.text_layers": (5,)}, "within 0..2"),
    ({"coattn.image_layers": (1, 2)}, "same length"),
    ({"text.heads": 5}, "divisible"),
    ({"vision.act": "relu"}, "vision.act must be one of gelu, gelu_tanh or quick_gelu"),
    ({"text.heads": 0}, "text.heads must be >= 1, got 0"),
    ({"vision.dropout": 1.0}, "vision.dropout must be < 1, got 1.0"),
    ({"vision.pixel_mean": [0.5, 0.5]}, "vision.pixel_mean must be a list of 3 numbers"),
])
def test_bad_configs_name_the_problem(bad, message):
    with pytest.raises(VlpipeError, match=message):
        make_config("tiny", bad)


def test_override_keys_are_checked_on_their_own_before_a_model_is_built():
    """`--model` values are checked when the settings are read, naming the option, not at build time."""
    check_override_keys({"text.layers": 4, "coattn.text_layers": [1, 2]})
    with pytest.raises(ValueError, match="text.layers must be an integer, got 'x'"):
        check_override_keys({"text.layers": "x"})
