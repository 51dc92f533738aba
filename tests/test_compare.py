"""`vlpipe report`: summaries are checked before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlpipe.cli.main import main
from vlpipe.errors import VlpipeError
from vlpipe.train.compare import build_report


def _summary(run: Path, **changes) -> Path:
    summary = {"task": "binary", "metric": "auroc", "init_loaded": 0, "init": None, "seeds": [0, 1],
               "mean": {"val": {"accuracy": 0.8, "auroc": 0.75, "n": 6.0}, "test": {"accuracy": 0.7, "auroc": None}},
               "std": {"val": {"accuracy": 0.1, "auroc": 0.05, "n": 0.0}, "test": {"accuracy": 0.0, "auroc": None}}}
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps(summary | changes))
    return run


def test_report_of_valid_summaries(tmp_path):
    a = _summary(tmp_path / "runs" / "a")
    b = _summary(tmp_path / "runs" / "b", mean={"val": {"accuracy": 0.9}}, std={"val": {"accuracy": 0.0}})
    report = build_report([a, b], tmp_path / "out")
    assert report.markdown.read_text().count("| val | accuracy | 0.800 ± 0.100 | 0.900 ± 0.000 |") == 1
    assert report.png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("changes", "message"), [
    ({"mean": "x"}, r"summary.json: 'mean' must be an object of splits \(test, val\), got \"x\""),
    ({"std": {"val": [1]}}, r"summary.json: std.val must be an object of metrics, got \[1\]"),
    ({"mean": {"test": {"auroc": "x"}}}, "summary.json: mean.test.auroc must be a number or null, got \"x\""),
    ({"std": {"val": {"accuracy": True}}}, "summary.json: std.val.accuracy must be a number or null, got true"),
    ({"seeds": 2}, "summary.json: 'seeds' must be a list, got 2"),
])
def test_bad_summary_is_named_and_no_report_folder_is_left(tmp_path, changes, message):
    run = _summary(tmp_path / "runs" / "a", **changes)
    with pytest.raises(VlpipeError, match=message):
        build_report([run], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_report_with_a_bad_summary_is_one_error_line(tmp_path, capsys):
    run = _summary(tmp_path / "runs" / "a", mean={"val": {"accuracy": "0.8"}})
    with pytest.raises(SystemExit) as exc:
        main(["report", str(run), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.startswith("error: ") and "mean.val.accuracy must be a number" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_report_out_that_is_a_file_is_refused(tmp_path):
    run = _summary(tmp_path / "runs" / "a")
    (tmp_path / "out").write_text("x")
    with pytest.raises(VlpipeError, match="is a file, not a folder"):
        build_report([run], tmp_path / "out")
