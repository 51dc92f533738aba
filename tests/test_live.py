"""The live view of a run: silent off a terminal, a bar with the latest figures on one."""

from __future__ import annotations

import pytest

from vlpipe.train.live import LiveView, format_stats

RECORD = {"loss": 1.2345, "mlm_loss": 2.5, "mlm_acc": 0.41, "ap_loss": 0.69, "ap_acc": 0.5,
          "samples_per_s": 812.4, "data_wait": 0.012}


def test_format_stats_is_one_compact_line() -> None:
    line = format_stats(RECORD)
    assert line == "loss 1.234  mlm 2.500/0.41  ap 0.690/0.50  812 samples/s  wait 1.2%"


def test_a_log_gets_a_plain_line_every_so_often(capsys: pytest.CaptureFixture[str]) -> None:
    view = LiveView(10, 0, enabled=True, every=3600.0)  # pytest's stderr is no terminal: a log
    view.update(3, RECORD)
    assert capsys.readouterr().err == ""  # not yet an hour since the start
    view.every = 0.0
    view.update(4, RECORD)
    view.show_eval(4, {"accuracy": 0.75, "n": 8})
    view.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("pretrain step 4/10 (40%)") and "ETA" in lines[0] and "loss 1.234" in lines[0]
    assert lines[1] == "step 4: val accuracy 0.7500"


def test_disabled_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    view = LiveView(10, 0, enabled=False, every=0.0)
    view.update(3, RECORD)
    view.show_eval(3, RECORD)
    view.close()
    assert capsys.readouterr().err == ""


def test_progress_fits_80_columns() -> None:
    record = {"loss": 8.2971, "mlm_loss": 5.1, "mlm_acc": 0.12, "ap_loss": 0.69, "ap_acc": 0.5, "mim_loss": 3.3,
              "mim_top1": 0.1, "samples_per_s": 1388.0, "data_wait": 0.012}
    assert format_stats(record, 20) == "loss 8.297"  # the main loss always, secondary fields only if they fit
    assert len(format_stats(record, 50)) <= 50 and "mlm" in format_stats(record, 50)


def test_on_a_terminal_it_shows_progress_and_validation(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats the console as a terminal
    monkeypatch.setenv("COLUMNS", "160")
    view = LiveView(10, 2, enabled=True, title="finetune")
    assert view.enabled
    view.update(5, RECORD)
    view.show_eval(5, RECORD)
    view.close()
    err = capsys.readouterr().err
    assert "finetune" in err and "5/10" in err and "812 samples/s" in err
    assert "validation @ step 5" in err and "2.5000" in err
    assert LiveView(10, 0, enabled=False).enabled is False
