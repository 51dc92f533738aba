"""`vlpipe train pretrain` and `vlpipe plot` through the real CLI entry point."""

import json

import cachegen
import pytest

from vlpipe.cli.main import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_help_explains_every_option(capsys):
    code, out, _ = _run(["train", "pretrain", "--help"], capsys)
    assert code == 0
    for flag in ("--cache", "--out", "--preset", "--tasks", "--steps", "--epochs", "--batch-size", "--lr",
                 "--compile", "--resume", "--text-init", "--vision-init", "--config", "--grad-accum"):
        assert flag in out


def test_bad_input_is_one_error_line(tmp_path, capsys):
    code, _, err = _run(["train", "pretrain", "--cache", str(tmp_path), "--out", str(tmp_path / "r")], capsys)
    assert code == 1 and err.startswith("error: ") and "steps" in err and "Traceback" not in err
    code, _, err = _run(["train", "pretrain", "--cache", str(tmp_path), "--out", str(tmp_path / "r"),
                         "--steps", "1"], capsys)
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err
    code, _, err = _run(["plot", str(tmp_path)], capsys)
    assert code == 1 and "metrics.jsonl" in err


@pytest.mark.slow
def test_pretrain_from_config_file_with_flag_override_then_plot(tmp_path, capsys):
    import torch

    from vlpipe.cache.writer import build_cache
    from vlpipe.demo.synth import make_dataset

    torch.set_num_threads(1)
    captions = make_dataset(tmp_path / "src", n=24, seed=2, image_size=32)
    build_cache(captions, tmp_path / "cache", image_size=32, patch_size=8, max_len=16, tokenizer="wordpiece:200",
                val_fraction=0.2, processes=1, quiet=True)
    config = tmp_path / "run.toml"
    config.write_text(f'cache = "{tmp_path / "cache"}"\nsteps = 50\nbatch_size = 4\nworkers = 1\nlive = false\n')
    code, out, err = _run(["train", "pretrain", "--config", str(config), "--out", str(tmp_path / "run"),
                           "--steps", "2", "--tasks", "mlm,ap", "--task-weights", "ap=0.5",
                           "--model", "text.layers=1"], capsys)
    assert code == 0, err
    assert "trained 2 steps" in out and "val ap_acc" in out
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["pretrain"]["steps"] == 2 and saved["pretrain"]["batch_size"] == 4
    assert saved["pretrain"]["task_weights"] == {"ap": 0.5} and saved["model"]["text"]["layers"] == 1
    assert (tmp_path / "run" / "plots" / "mlm.png").exists()
    (tmp_path / "run" / "plots" / "mlm.png").unlink()
    code, out, _ = _run(["plot", str(tmp_path / "run")], capsys)
    assert code == 0 and "mlm.png" in out and (tmp_path / "run" / "plots" / "mlm.png").exists()


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """An 8-sample captions cache: enough for the checks that only run once a cache is opened."""
    return cachegen.captioned_cache(tmp_path_factory.mktemp("cli-train"), n=8, seed=2, val_fraction=0.25)


def _one_error_line(code, err, *needles):
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize(("flags", "message"), [
    (["--device", "foo"], "--device foo: expected auto, cpu, cuda or cuda:N"),
    (["--warmup", "-5"], "--warmup -5.0: must be >= 0"),
    (["--grad-clip", "-1"], "--grad-clip -1.0: must be >= 0"),
    (["--min-lr-ratio", "-2"], "--min-lr-ratio -2.0: must be >= 0"),
    (["--eval-every", "-1"], "--eval-every -1: must be >= 0"),
    (["--ckpt-every", "-1"], "--ckpt-every -1: must be >= 0"),
    (["--task-weights", "foo=1"], "--task-weights foo=1.0: unknown task(s) foo"),
    (["--batch-size", "0"], "--batch-size 0: must be >= 1"),
    (["--betas", "0.9"], "--betas 0.9: expected 2 comma-separated values"),
])
def test_pretrain_flags_out_of_range(tmp_path, capsys, flags, message):
    code, _, err = _run(["train", "pretrain", "--cache", str(tmp_path), "--out", str(tmp_path / "r"), "--steps", "1",
                         *flags], capsys)
    _one_error_line(code, err, message)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--head-dropout", "2"], "--head-dropout 2.0: must be < 1"),
    (["--patience", "-1"], "--patience -1: must be >= 0"),
    (["--seed", "1,1"], "--seed 1,1: must be distinct, got [1, 1]"),
    (["--device", "cuda:x"], "--device cuda:x: expected auto, cpu, cuda or cuda:N"),
])
def test_finetune_flags_out_of_range(tmp_path, capsys, flags, message):
    code, _, err = _run(["train", "finetune", "--cache", str(tmp_path), "--out", str(tmp_path / "r"), *flags], capsys)
    _one_error_line(code, err, message)
    assert "lr" not in err.partition(message)[2]  # the patience check no longer mentions lr
    assert not (tmp_path / "r").exists()


def test_config_file_with_a_string_number(tmp_path, capsys):
    config = tmp_path / "x.json"
    config.write_text(json.dumps({"cache": str(tmp_path), "out": str(tmp_path / "r"), "batch_size": "8", "steps": 1}))
    code, _, err = _run(["train", "pretrain", "--config", str(config)], capsys)
    _one_error_line(code, err, "x.json: batch_size must be an integer, got '8'")
    config.write_text(json.dumps({"cache": str(tmp_path), "out": str(tmp_path / "r"), "epochs": "1"}))
    code, _, err = _run(["train", "finetune", "--config", str(config)], capsys)
    _one_error_line(code, err, "x.json: epochs must be an integer, got '1'")


@pytest.mark.parametrize(("override", "message"), [
    ("text.layers=abc", "--model text.layers=abc: text.layers must be an integer, got 'abc'"),
    ("text.layers=-2", "--model text.layers=-2: text.layers must be >= 0, got -2"),
    ("vision.heads=0", "--model vision.heads=0: vision.heads must be >= 1, got 0"),
    ("vision.dropout=1.5", "vision.dropout must be < 1, got 1.5"),
    ("heads.align=3", "heads.align must be one of product or concat, got 3"),
    ("grad_checkpointing=2", "grad_checkpointing must be true or false, got 2"),
    ("coattn.text_layers=[1,", "--model coattn.text_layers=[1,: not a JSON list"),
    # the older spellings are refused with the dotted one
    ("text_layers=2", "unknown model option 'text_layers'; write it as text.layers"),
    ("dropout=0.0", "unknown model option 'dropout'; set each section's own: vision.dropout, text.dropout"),
    # a list in brackets reaches the model config whole (tiny has 2 text layers: 3 is out of range)
    ("coattn.text_layers=[3],vision.dropout=0.0", "coattn.text_layers [3] must be increasing and within 0..2"),
])
def test_bad_model_override_names_the_option(tiny_cache, tmp_path, capsys, override, message):
    code, _, err = _run(["train", "pretrain", "--cache", str(tiny_cache), "--out", str(tmp_path / "r"), "--steps", "1",
                         "--model", override, "--no-live", "--device", "cpu"], capsys)
    _one_error_line(code, err, message)
    assert not (tmp_path / "r").exists()


def test_resume_from_a_damaged_checkpoint_is_one_error_line(tiny_cache, tmp_path, capsys):
    run = tmp_path / "r"
    argv = ["train", "pretrain", "--cache", str(tiny_cache), "--out", str(run), "--steps", "1", "--batch-size", "2",
            "--no-live", "--device", "cpu", "--workers", "1", "--no-compile"]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    latest = run / "checkpoints" / "latest.json"
    good = latest.read_text()
    for pointer in ("[1]", '{"checkpoint": 5}'):
        latest.write_text(pointer)
        code, _, err = _run([*argv, "--resume"], capsys)
        _one_error_line(code, err, "latest.json is not a valid checkpoint pointer")
    latest.write_text(good)
    step = run / "checkpoints" / json.loads(good)["checkpoint"]
    (step / "state.json").write_text('{"step": 1, ')
    code, _, err = _run([*argv, "--resume"], capsys)
    _one_error_line(code, err, "state.json: not a valid checkpoint (")
    (step / "state.json").unlink()
    code, _, err = _run([*argv, "--resume"], capsys)
    _one_error_line(code, err, "missing or incomplete")


def test_plot_with_a_damaged_metrics_file(tmp_path, capsys):
    record = b'{"split": "train", "step": 1, "loss": 1.0}\n'
    (tmp_path / "metrics.jsonl").write_bytes(record + b"\xff\xfe\n" + record)
    code, _, err = _run(["plot", str(tmp_path)], capsys)
    _one_error_line(code, err, "metrics.jsonl:2: not UTF-8 text")
    (tmp_path / "metrics.jsonl").write_bytes(record + b"[1, 2]\n" + record)
    code, _, err = _run(["plot", str(tmp_path)], capsys)
    _one_error_line(code, err, "metrics.jsonl:2: expected a JSON object")


def test_model_options_split_at_commas_outside_brackets():
    from vlpipe.cli.options import split_pairs

    assert split_pairs("text.layers=4,coattn.text_layers=[1,2,3], heads.align=concat") == [
        "text.layers=4", "coattn.text_layers=[1,2,3]", "heads.align=concat"]
