"""Plots are drawn from the run directory alone and read without the code: words on the axes,
abbreviations spelled out, a dashed chance line on every accuracy plot."""

import matplotlib
import pytest
from PIL import Image

from vlpipe.errors import VlpipeError
from vlpipe.train.metrics_log import MetricsWriter, read_metrics
from vlpipe.train.plots import plot_run, pretraining_chance, run_figures

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

# What the loop writes into config.json for a run on the demo's geometry: 64 px images in 16 px
# patches (16 patches, 2 masked at mim_prob 0.15), batch 64 (32 aligned pairs), 400 words.
DEMO_CONFIG = {"pretrain": {"batch_size": 64, "mim_prob": 0.15},
               "model": {"vision": {"image_size": 64, "patch_size": 16}, "text": {"vocab_size": 400}}}


def _pretrain_records(tmp_path):
    w = MetricsWriter(tmp_path)
    for step in range(1, 6):
        w.write({"split": "train", "step": step, "loss": 3.0 / step, "mlm_loss": 2.0 / step, "mlm_acc": step / 10,
                 "ap_loss": 0.7, "ap_acc": 0.5, "mim_loss": 4.0 / step, "mim_top1": step / 20})
    w.write({"split": "val", "step": 5, "loss": 1.0, "mlm_loss": 0.5, "mlm_acc": 0.4, "ap_loss": 0.6, "ap_acc": 0.6,
             "mim_loss": 1.0, "mim_top1": 0.3})
    w.close()
    return read_metrics(tmp_path / "metrics.jsonl")


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


def test_every_axis_is_labelled_in_words_with_the_task_spelled_out_and_a_chance_line(tmp_path):
    figures = dict(run_figures(_pretrain_records(tmp_path), pretraining_chance(DEMO_CONFIG), plt))
    try:
        assert sorted(figures) == ["ap.png", "loss.png", "mim.png", "mlm.png"]
        spelled = {"mlm.png": "masked language modelling", "ap.png": "alignment prediction",
                   "mim.png": "masked image modelling", "loss.png": "MLM (masked words), AP (alignment)"}
        for name, words in spelled.items():
            assert words in figures[name].get_suptitle()
        labels = {"mlm.png": ["MLM loss (cross-entropy)", "masked-word accuracy"],
                  "ap.png": ["AP loss (binary cross-entropy)", "alignment accuracy"],
                  "mim.png": ["MIM loss (InfoNCE)", "masked-patch top-1 accuracy"], "loss.png": ["total loss"]}
        for name, fig in figures.items():
            assert [ax.get_ylabel() for ax in fig.axes] == labels[name]
            assert all(ax.get_xlabel() == "optimizer step" for ax in fig.axes)
            texts = " ".join(t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts())
            assert "_" not in texts  # no metric key names such as ap_acc or mim_top1
        # the accuracy panel's dashed line, at the level guessing scores
        for name, level in (("ap.png", 0.5), ("mlm.png", 1 / 400), ("mim.png", 1 / (2 * 32))):
            accuracy = figures[name].axes[1]
            dashed = [line for line in accuracy.get_lines() if line.get_linestyle() == "--"]
            assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(level)
            assert "chance" in dashed[0].get_label()
        assert not any(line.get_linestyle() == "--" for line in figures["mlm.png"].axes[0].get_lines())
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_without_config_only_the_alignment_chance_is_drawn_and_a_damaged_config_is_named(tmp_path):
    assert set(pretraining_chance({})) == {"ap"}
    _pretrain_records(tmp_path)
    assert sorted(p.name for p in plot_run(tmp_path)) == ["ap.png", "loss.png", "mim.png", "mlm.png"]
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(VlpipeError, match="config.json: not valid JSON"):
        plot_run(tmp_path)


def test_fine_tuning_scores_are_named_in_words(tmp_path):
    w = MetricsWriter(tmp_path)
    w.write({"split": "val", "step": 2, "accuracy": 0.6, "auroc": 0.7})
    w.write({"split": "val", "step": 4, "accuracy": 0.7, "auroc": 0.8})
    w.close()
    paths = plot_run(tmp_path)
    assert [p.name for p in paths] == ["metrics.png"]
    figures = dict(run_figures(read_metrics(tmp_path / "metrics.jsonl"), {}, plt))
    ax = figures["metrics.png"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["accuracy", "AUROC (area under the ROC curve)"]
    assert ax.get_ylabel() == "score on the validation split"
    plt.close(figures["metrics.png"])


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

