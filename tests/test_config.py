"""Run config: files, overrides, validation."""

import json

import pytest

from vlpipe.errors import VlpipeError
from vlpipe.train.config import PretrainConfig, load_config


def test_toml_file_then_flag_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[pretrain]\ncache = "c"\nout = "o"\nsteps = 10\nlr = 0.002\ntasks = "mlm,ap"\n'
                    '[pretrain.model_overrides]\ntext_layers = 3\n')
    cfg = load_config(path, lr=None, batch_size=8)
    assert cfg.lr == 0.002 and cfg.batch_size == 8 and cfg.tasks == ("mlm", "ap") and cfg.steps == 10
    assert cfg.model_overrides == {"text_layers": 3}
    # --epochs on the command line replaces steps from the file instead of conflicting with it
    cfg = load_config(path, epochs=2.0)
    assert cfg.epochs == 2.0 and cfg.steps is None


def test_json_roundtrip(tmp_path):
    cfg = PretrainConfig(cache="c", out="o", steps=3, tasks=("mim",))
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert load_config(path) == cfg


@pytest.mark.parametrize(("values", "message"), [
    ({"cache": "c", "out": "o"}, "exactly one of 'steps' or 'epochs'"),
    ({"cache": "c", "out": "o", "steps": 1, "epochs": 1}, "exactly one"),
    ({"cache": "c", "out": "o", "steps": 1, "tasks": "mlm,itm"}, "tasks must be"),
    ({"cache": "c", "out": "o", "steps": 1, "lr_max": 3}, "unknown setting"),
    ({"out": "o", "steps": 1}, "'cache'"),
    ({"cache": "c", "out": "o", "steps": 1, "precision": "fp16"}, "precision"),
])
def test_bad_configs_raise_one_line(tmp_path, values, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(values))
    with pytest.raises(VlpipeError, match=message):
        load_config(path)


def test_bad_files(tmp_path):
    with pytest.raises(VlpipeError, match="does not exist"):
        load_config(tmp_path / "missing.json")
    broken = tmp_path / "broken.toml"
    broken.write_text("steps = = 3")
    with pytest.raises(VlpipeError, match="not valid TOML"):
        load_config(broken)
    yaml = tmp_path / "x.yaml"
    yaml.write_text("a: 1")
    with pytest.raises(VlpipeError, match=".json or .toml"):
        load_config(yaml)
