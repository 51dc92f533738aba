"""Plots are drawn from metrics.jsonl alone."""

import pytest
from PIL import Image

from vlpipe.errors import VlpipeError
from vlpipe.train.metrics_log import MetricsWriter
from vlpipe.train.plots import plot_run


def test_plot_run_writes_pngs_per_task(tmp_path):
    w = MetricsWriter(tmp_path)
    for step in range(1, 6):
        w.write({"split": "train", "step": step, "loss": 3.0 / step, "mlm_loss": 2.0 / step, "mlm_acc": step / 10,
                 "ap_loss": 0.7, "ap_acc": 0.5})
    w.write({"split": "val", "step": 5, "loss": 1.0, "mlm_loss": 0.5, "mlm_acc": 0.4, "ap_loss": 0.6, "ap_acc": 0.6})
    paths = plot_run(tmp_path)
    assert sorted(p.name for p in paths) == ["ap.png", "loss.png", "mlm.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 300


def test_plot_run_without_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(VlpipeError, match="metrics.jsonl does not exist"):
        plot_run(tmp_path)


@pytest.mark.parametrize(("line", "message"), [
    (b"\xff\xfe not utf-8\n", "metrics.jsonl:2: not UTF-8 text"),
    (b"[1, 2]\n", "metrics.jsonl:2: expected a JSON object"),
])
def test_plot_run_with_a_damaged_metrics_file_names_the_line_and_writes_nothing(tmp_path, line, message):
    record = b'{"split": "train", "step": 1, "loss": 1.0}\n'
    (tmp_path / "metrics.jsonl").write_bytes(record + line + record)
    with pytest.raises(VlpipeError, match=message):
        plot_run(tmp_path)
    assert not (tmp_path / "plots").exists()

