"""Window accumulation and metrics.jsonl handling."""

import pytest
import torch

from vlpipe.errors import VlpipeError
from vlpipe.train.metrics_log import Accumulator, MetricsWriter, read_metrics


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


def _file_with(tmp_path, middle: bytes, last: bytes = b'{"split": "train", "step": 3, "loss": 1.0}\n'):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"split": "train", "step": 1, "loss": 1.0}\n' + middle + last)
    return path


@pytest.mark.parametrize(("middle", "message"), [
    (b'{"split": "tr\n', r"metrics.jsonl:2: not valid JSON \("),
    (b"\xff\xfe\n", "metrics.jsonl:2: not UTF-8 text"),
    (b"[1, 2]\n", r"metrics.jsonl:2: expected a JSON object \(a metrics record\), got list"),
    (b'{"split": "train", "loss": 1.0}\n', "metrics.jsonl:2: 'step' must be an integer, got null"),
    (b'{"step": 2}\n', "metrics.jsonl:2: 'split' must be a string"),
    (b'{"split": "val", "step": 2, "loss": "x"}\n', "metrics.jsonl:2: 'loss' must be a number or null, got \"x\""),
])
def test_a_bad_line_before_the_last_names_file_and_line(tmp_path, middle, message):
    with pytest.raises(VlpipeError, match=message):
        read_metrics(_file_with(tmp_path, middle))


def test_torn_last_line_is_skipped_even_mid_character_and_blank_lines_are_ignored(tmp_path):
    path = _file_with(tmp_path, b"\n", last=b'{"split": "train", "step": 3, "loss": 1.0}\n{"x": "caf\xc3')
    assert [r["step"] for r in read_metrics(path)] == [1, 3]
    path = _file_with(tmp_path, b'{"split": "val", "step": 2, "auroc": null}\n', last=b"[1, 2]\n")
    with pytest.raises(VlpipeError, match="metrics.jsonl:3: expected a JSON object"):  # valid JSON is no torn line
        read_metrics(path)


def test_truncate_after_refuses_a_damaged_file_instead_of_dropping_lines(tmp_path):
    path = _file_with(tmp_path, b"garbage\n")
    with pytest.raises(VlpipeError, match="metrics.jsonl:2"):
        MetricsWriter(tmp_path).truncate_after(1)
    assert b"garbage" in path.read_bytes()


def test_unreadable_metrics_file_is_a_clear_error(tmp_path):
    (tmp_path / "metrics.jsonl").mkdir()
    with pytest.raises(VlpipeError, match="metrics.jsonl: cannot read"):
        read_metrics(tmp_path / "metrics.jsonl")
