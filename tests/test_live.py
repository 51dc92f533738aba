"""The live view of a run: silent off a terminal, a bar with the latest figures on one."""

from __future__ import annotations

import pytest

from vlpipe.train.live import LiveView, format_stats

RECORD = {"loss": 1.2345, "mlm_loss": 2.5, "mlm_acc": 0.41, "ap_loss": 0.69, "ap_acc": 0.5,
          "samples_per_s": 812.4, "data_wait": 0.012}


def test_format_stats_is_one_compact_line() -> None:
    line = format_stats(RECORD)
    assert line == "loss 1.234  mlm 2.500/0.41  ap 0.690/0.50  812 samples/s  wait 1.2%"


def test_silent_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    view = LiveView(10, 0, enabled=True)
    assert not view.enabled  # pytest's stderr is no terminal
    view.update(3, RECORD)
    view.show_eval(3, RECORD)
    view.close()
    assert capsys.readouterr().err == ""


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
