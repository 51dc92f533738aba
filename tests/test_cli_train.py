"""`vlpipe train pretrain` and `vlpipe plot` through the real CLI entry point."""

import json

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
                           "--model", "text_layers=1"], capsys)
    assert code == 0, err
    assert "trained 2 steps" in out and "val ap_acc" in out
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["pretrain"]["steps"] == 2 and saved["pretrain"]["batch_size"] == 4
    assert saved["pretrain"]["task_weights"] == {"ap": 0.5} and saved["model"]["text"]["layers"] == 1
    assert (tmp_path / "run" / "plots" / "mlm.png").exists()
    (tmp_path / "run" / "plots" / "mlm.png").unlink()
    code, out, _ = _run(["plot", str(tmp_path / "run")], capsys)
    assert code == 0 and "mlm.png" in out and (tmp_path / "run" / "plots" / "mlm.png").exists()
