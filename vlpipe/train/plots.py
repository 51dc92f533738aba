"""PNG plots of a run that a person reads without the code, drawn from the run directory alone.

The curves come from `metrics.jsonl` (so `vlpipe plot RUN_DIR` works any time); `config.json`, when
there, gives the chance levels of the accuracy plots (the vocabulary size, the batch and patch
counts). Every axis is labelled in words and every task abbreviation is spelled out in its title.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from vlpipe.errors import VlpipeError
from vlpipe.train.masking import TASKS, mim_count
from vlpipe.train.metrics_log import ACCURACY_NAME, METRICS_FILE, read_metrics
from vlpipe.utils.atomic import atomic_path

PLOTS_DIR = "plots"
CONFIG_FILE = "config.json"
STEP_LABEL = "optimizer step"
# Per task: the title that spells the abbreviation out, the loss's name, the accuracy's name.
TASK_WORDS = {
    "total": ("Total loss: the weighted sum of the task losses, MLM (masked words), AP (alignment) and "
              "MIM (masked patches)", "total loss", None),
    "mlm": ("MLM, masked language modelling: predict the hidden words of the caption",
            "MLM loss (cross-entropy)", "masked-word accuracy"),
    "ap": ("AP, alignment prediction: does the caption describe the image?",
           "AP loss (binary cross-entropy)", "alignment accuracy"),
    "mim": ("MIM, masked image modelling: pick each hidden patch's target among all in the batch",
            "MIM loss (InfoNCE)", "masked-patch top-1 accuracy"),
}
SPLIT_LABELS = (("train", "-", "training (mean of each logging window)"), ("val", "o-", "validation"))
# Fine-tuning runs log these per split (vlpipe/train/finetune.py); pretraining runs never do.
CLASSIFICATION_METRICS = {
    "accuracy": "accuracy", "auroc": "AUROC (area under the ROC curve)", "top1": "top-1 accuracy",
    "top5": "top-5 accuracy", "macro_f1": "macro-F1 at threshold 0.5", "micro_f1": "micro-F1 at threshold 0.5",
    "macro_f1_tuned": "macro-F1 at the threshold chosen on validation",
}


def plot_run(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Write `plots/<task>.png` (loss and accuracy, train and val), `plots/loss.png` and, for a
    fine-tuning run, `plots/metrics.png`; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    metrics = run / METRICS_FILE
    if not metrics.exists():
        raise VlpipeError(f"{metrics} does not exist; is {run} a training run directory?")
    records = read_metrics(metrics)
    if not records:
        raise VlpipeError(f"{metrics} has no records yet")
    figures = run_figures(records, pretraining_chance(_read_config(run / CONFIG_FILE)), plt)
    out_dir = run / PLOTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures:
        try:
            with atomic_path(out_dir / name) as tmp:  # no temporary left if saving fails
                fig.savefig(tmp, dpi=100, format="png")
        finally:
            plt.close(fig)
        written.append(out_dir / name)
    return written


def pretraining_chance(config: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """What guessing scores on each accuracy, with the reason shown in the legend.

    AP: half of the pairs get another sample's caption. MLM: a uniform guess over the vocabulary
    (a guess of the commonest words does better, but that needs the data's word counts). MIM: a
    masked patch picks one target among the masked patches of the batch's aligned pairs
    (`masking.mim_infonce`), for the training batch size. MLM and MIM need the run's config.json.
    """
    levels = {"ap": (0.5, "chance 0.5: half the captions are swapped")}
    model, run = config.get("model", {}), config.get("pretrain", {})
    vocab = model.get("text", {}).get("vocab_size")
    if vocab:
        levels["mlm"] = (1 / vocab, f"chance 1/{vocab}: a uniform guess over the vocabulary")
    vision, batch = model.get("vision", {}), run.get("batch_size")
    if vision.get("image_size") and vision.get("patch_size") and batch and run.get("mim_prob"):
        per_image = mim_count((vision["image_size"] // vision["patch_size"]) ** 2, run["mim_prob"])
        candidates = per_image * math.ceil(batch / 2)
        levels["mim"] = (1 / candidates, f"chance 1/{candidates}: one of the batch's masked patches")
    return levels


def run_figures(records: list[dict], chance: dict[str, tuple[float, str]], plt: Any) -> list[tuple[str, Any]]:
    """The figures of a run by file name: one per task with a loss (loss and accuracy side by side)
    and, for a fine-tuning run, the validation metrics."""

    def series(split: str, name: str) -> tuple[list[int], list[float]]:
        rows = [r for r in records if r.get("split") == split and r.get(name) is not None]
        return [r["step"] for r in rows], [r[name] for r in rows]

    figures = []
    for task in ("total", *TASKS):
        loss_name = "loss" if task == "total" else f"{task}_loss"
        if not any(loss_name in r for r in records):
            continue
        title, loss_label, acc_label = TASK_WORDS[task]
        panels = [(loss_name, loss_label)] + ([(ACCURACY_NAME[task], acc_label)] if acc_label else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, (name, label) in zip(axes[0], panels, strict=True):
            for split, style, split_label in SPLIT_LABELS:
                steps, values = series(split, name)
                if steps:
                    ax.plot(steps, values, style, label=split_label, markersize=4)
            if name != loss_name and task in chance:
                level, why = chance[task]
                ax.axhline(level, color="grey", linestyle="--", linewidth=1, label=why)
            ax.set_xlabel(STEP_LABEL)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle(title)
        fig.tight_layout()
        figures.append(("loss.png" if task == "total" else f"{task}.png", fig))
    names = [n for n in CLASSIFICATION_METRICS if any(r.get("split") == "val" and n in r for r in records)]
    if names:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for name in names:
            steps, values = series("val", name)
            ax.plot(steps, values, "o-", label=CLASSIFICATION_METRICS[name], markersize=4)
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel("score on the validation split")
        ax.set_title("Fine-tuning: validation scores (higher is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        figures.append(("metrics.png", fig))
    return figures


def _read_config(path: Path) -> dict[str, Any]:
    """The run's config.json, or nothing when it is missing (the chance levels that need it are left out)."""
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VlpipeError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise VlpipeError(f"{path}: expected a JSON object")
    return config
