"""Window accumulation and metrics.jsonl handling."""

import pytest
import torch

from vlpipe.train.metrics import Accumulator, MetricsWriter, read_metrics


def _step(loss, correct, count):
    t = torch.tensor
    return {"loss": t(loss), "mlm_loss": t(loss), "mlm_correct": t(correct), "mlm_count": t(count),
            "ap_loss": t(0.5), "ap_correct": t(3), "ap_count": t(4)}


def test_accumulator_weights_losses_by_counts():
    acc = Accumulator()
    acc.add(_step(1.0, 1, 2))
    acc.add(_step(4.0, 6, 8))
    s = acc.summary()
    assert s["mlm_loss"] == pytest.approx((1.0 * 2 + 4.0 * 8) / 10)
    assert s["mlm_acc"] == pytest.approx(0.7)
    assert s["ap_acc"] == pytest.approx(0.75)
    assert s["loss"] == pytest.approx(2.5)
    assert "mim_loss" not in s
    acc.reset()
    assert acc.summary() == {}


def test_writer_appends_truncates_and_skips_torn_lines(tmp_path):
    w = MetricsWriter(tmp_path)
    for step in (1, 2, 3, 4):
        w.write({"split": "train", "step": step, "loss": float(step)})
    with open(w.path, "a") as fh:
        fh.write('{"split": "tr')  # a crash in the middle of a line
    assert [r["step"] for r in read_metrics(w.path)] == [1, 2, 3, 4]
    w.truncate_after(2)
    assert [r["step"] for r in read_metrics(w.path)] == [1, 2]
