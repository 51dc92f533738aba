"""Run settings: files, flags over files, validation messages that name the file key or the flag."""

import json

import pytest

from vlpipe.errors import VlpipeError
from vlpipe.train.config import PretrainConfig, load_config


def test_toml_file_then_flag_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[pretrain]\ncache = "c"\nout = "o"\nsteps = 10\nlr = 0.002\ntasks = "mlm,ap"\n'
                    '[pretrain.model_overrides]\n"text.layers" = 3\n')
    cfg = load_config(path, lr=None, batch_size=8)
    assert cfg.lr == 0.002 and cfg.batch_size == 8 and cfg.tasks == ("mlm", "ap") and cfg.steps == 10
    assert cfg.model_overrides == {"text.layers": 3}
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
    ({"cache": "c", "out": "o", "steps": 1, "tasks": ["mlm", "itm"]}, "tasks must be a list of names from mlm, ap, mim"),
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


@pytest.mark.parametrize(("values", "message"), [
    ({"batch_size": "8"}, "bad.json: batch_size must be an integer, got '8'"),
    ({"batch_size": True}, "bad.json: batch_size must be an integer, got True"),  # a bool is no number
    ({"steps": "2"}, "bad.json: steps must be an integer or null, got '2'"),
    ({"lr": "1e-3"}, "bad.json: lr must be a number, got '1e-3'"),
    ({"tasks": 5}, "bad.json: tasks must be a list of names from mlm, ap, mim, got 5"),
    ({"betas": 0.9}, r"bad.json: betas must be a list of 2 numbers, got 0.9"),
    ({"betas": [0.9]}, r"bad.json: betas must be a list of 2 numbers"),
    ({"model_overrides": "x"}, "bad.json: model_overrides must be a table/object of settings, got 'x'"),
    ({"model_overrides": {"text_layers": 3}}, "bad.json: model_overrides: unknown model option 'text_layers'; "
                                              "write it as text.layers"),
    ({"task_weights": {"mlm": "1"}}, "bad.json: task_weights must be a table/object mapping names to numbers"),
    ({"compile": "yes"}, "bad.json: compile must be true or false, got 'yes'"),
])
def test_wrong_types_in_a_file_name_the_file_and_the_key(tmp_path, values, message):
    with pytest.raises(VlpipeError, match=message):
        _load_with(tmp_path, values)


def _load_with(tmp_path, values):
    """Load a config file holding a valid minimum plus `values`."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"cache": "c", "out": "o", "steps": 1} | values))
    return load_config(path)


def test_types_are_checked_for_configs_built_in_python_too():
    with pytest.raises(VlpipeError, match="config: epochs must be a number or null, got '1'"):
        PretrainConfig(cache="c", out="o", epochs="1")  # type: ignore[arg-type]


def test_int_counts_as_float_and_lists_become_tuples(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"cache": "c", "out": "o", "epochs": 2, "lr": 1, "betas": [0.8, 0.9],
                                "tasks": ["mlm"]}))
    cfg = load_config(path)
    assert cfg.lr == 1 and cfg.epochs == 2 and cfg.betas == (0.8, 0.9) and cfg.tasks == ("mlm",)


@pytest.mark.parametrize(("values", "message"), [
    ({"device": "foo"}, "bad.json: device: expected auto, cpu, cuda or cuda:N"),
    ({"device": "cuda:x"}, "bad.json: device: expected auto, cpu, cuda or cuda:N"),
    ({"warmup": -5}, "warmup must be >= 0, got -5"),
    ({"grad_clip": -1}, "grad_clip must be >= 0, got -1"),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
    ({"min_lr_ratio": -2}, "min_lr_ratio must be >= 0, got -2"),
    ({"min_lr_ratio": 2}, "min_lr_ratio must be <= 1, got 2"),
    ({"eval_every": -1}, "eval_every must be >= 0"),
    ({"ckpt_every": -1}, "ckpt_every must be >= 0"),
    ({"eval_max_batches": -1}, "eval_max_batches must be >= 0"),
    ({"task_weights": {"foo": 1}}, "task_weights: unknown task"),
    ({"task_weights": {"mim": -1}}, r"task_weights: must be numbers >= 0, got \{'mim': -1.0\}"),
    ({"lr": 0}, "bad.json: lr must be > 0, got 0"),
    ({"lr": float("inf")}, "bad.json: lr must be a finite number, got inf"),
    ({"mim_tau": 0}, "bad.json: mim_tau must be > 0, got 0"),
    ({"betas": [0.9, 1.5]}, r"betas: must be two numbers in \[0, 1\)"),
    ({"loader_mode": "fork"}, "loader_mode must be one of auto, threads or inline"),
    ({"workers": -1}, "workers must be >= 0"),
])
def test_out_of_range_settings_are_refused(tmp_path, values, message):
    with pytest.raises(VlpipeError, match=message):
        _load_with(tmp_path, values)


@pytest.mark.cuda
def test_cuda_device_needs_cuda():
    import torch

    if torch.cuda.is_available():
        with pytest.raises(VlpipeError, match=r"--device cuda:\d+: this machine has"):
            load_config(cache="c", out="o", steps=1, device=f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(VlpipeError, match="--device cuda: CUDA is not available"):
            load_config(cache="c", out="o", steps=1, device="cuda")


@pytest.mark.parametrize(("flags", "message"), [
    ({"batch_size": 0}, "--batch-size 0: must be >= 1"),
    ({"lr": -1.0}, "--lr -1.0: must be > 0"),
    ({"tasks": ("mlm", "itm")}, "--tasks mlm,itm: must be a list of names from mlm, ap, mim"),
    ({"model_overrides": {"vision_hidden": 32}}, "--model vision_hidden=32: unknown model option 'vision_hidden'; "
                                                 "write it as vision.hidden"),
])
def test_flags_are_named_as_typed(flags, message):
    """A bad value from the command line names the flag the user typed, not the setting's key."""
    with pytest.raises(VlpipeError, match=message):
        load_config(**{"cache": "c", "out": "o", "steps": 1, **flags})


def test_file_values_survive_unless_a_flag_is_given(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"cache": "c", "out": "o", "steps": 5, "lr": 0.5}))
    assert load_config(path, lr=None, seed=3).lr == 0.5  # an unset flag (None) keeps the file's value
    assert load_config(path, lr=0.25).lr == 0.25


def test_fixed_settings_are_declared_on_the_settings():
    """What a resume must keep is a property of each setting, declared beside it."""
    fixed = PretrainConfig.fixed_settings()
    assert {"lr", "batch_size", "tasks", "seed", "steps", "model_overrides"} <= set(fixed)
    assert not {"workers", "device", "eval_every", "resume", "live"} & set(fixed)
