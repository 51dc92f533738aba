"""`vlpipe report`: summaries are checked before anything is written; runs are grouped by fusion
placement, with the gap to scratch and chance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlpipe.cli.main import main
from vlpipe.errors import VlpipeError
from vlpipe.train.compare import build_report, fusion_variants, placement


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


def test_fusion_variants_and_placement_names():
    assert fusion_variants(2, 1) == {"early": (0,), "middle": (1,), "late": (2,)}
    assert fusion_variants(12, 6) == {"early": (0, 1, 2, 3, 4, 5), "middle": (3, 4, 5, 6, 7, 8),
                                      "late": (7, 8, 9, 10, 11, 12)}
    tiny = {"text": {"layers": 2}, "coattn": {"text_layers": [2]}}
    assert placement(tiny) == "late [2]"
    assert placement({"text": {"layers": 12}, "coattn": {"text_layers": [6, 7, 8, 9, 10, 11]}}) == \
        "[6, 7, 8, 9, 10, 11]"  # the base preset: none of the three
    assert placement(None) == "?" and placement({"text": {}}) == "?"


def _finetune_run(run: Path, init, layers: list[int], accuracies: list[float], cache: Path) -> Path:
    mean, std = float(np.mean(accuracies)), float(np.std(accuracies, ddof=1))
    _summary(run, init=init, init_loaded=10 if init else 0, seeds=[0, 1, 2],
             mean={"test": {"accuracy": mean, "auroc": mean}}, std={"test": {"accuracy": std, "auroc": std}})
    (run / "seed-0").mkdir()
    (run / "seed-0" / "config.json").write_text(json.dumps({
        "finetune": {"cache": str(cache)}, "model": {"text": {"layers": 2}, "coattn": {"text_layers": layers}}}))
    return run


def test_report_groups_by_fusion_and_shows_the_gap_and_chance(tmp_path):
    from vlpipe.cache.writer import build_cache
    from vlpipe.demo.statements import make_statements

    statements = make_statements(tmp_path / "st", {"train": 6, "val": 2, "test": 4}, image_size=64)
    cache = tmp_path / "cache"
    build_cache(statements, cache, label_column="label", image_size=32, patch_size=16, max_len=12,
                tokenizer="wordpiece:100", processes=1, quiet=True)
    runs = tmp_path / "runs"
    given = [_finetune_run(runs / "late-pre", "runs/cc", [2], [0.70, 0.72, 0.74], cache),
             _finetune_run(runs / "early-scratch", None, [0], [0.50, 0.52, 0.54], cache),
             _finetune_run(runs / "late-scratch", None, [2], [0.60, 0.60, 0.60], cache),
             _finetune_run(runs / "early-pre", "runs/cc", [0], [0.80, 0.80, 0.83], cache)]
    report = build_report(given)
    table = report.tables[0]
    assert table.header == ["split", "metric", "early-scratch", "early-pre", "late-pre", "late-scratch", "chance"]
    assert ["", "fusion", "early [0]", "early [0]", "late [2]", "late [2]", ""] in table.rows
    accuracy = next(row for row in table.rows if row[:2] == ["test", "accuracy"])
    # Each pretrained run against the scratch run of its own placement; chance from the cache's test labels.
    assert accuracy[2:] == ["0.520 ± 0.020", "0.810 ± 0.017 (+0.290)", "0.720 ± 0.020 (+0.120)", "0.600 ± 0.000",
                            "0.500"]
    assert "| test | accuracy | 0.520 ± 0.020 | 0.810 ± 0.017 (+0.290) |" in report.markdown.read_text()
    assert report.png.read_bytes()[:4] == b"\x89PNG"


def test_a_run_without_results_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VlpipeError, match="no summary.json .* and no eval.json"):
        build_report([tmp_path / "empty"], tmp_path / "out")
    (tmp_path / "pre").mkdir()
    (tmp_path / "pre" / "eval.json").write_text(json.dumps({"retrieval": {"n": 3}}))
    with pytest.raises(VlpipeError, match="'retrieval' must be an object with n, chance"):
        build_report([tmp_path / "pre"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
