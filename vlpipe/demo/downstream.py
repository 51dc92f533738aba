"""The demo's downstream stage: does pretraining help a task it never trained on?

The task (vlpipe/demo/statements.py): is this statement true of the image? Half the statements
change exactly one fact of the scene, so neither the caption nor the image alone tells the answer
(`shortcut_accuracy` measures both single-modality shortcuts on the same splits). The set is small
(a few hundred training samples: the regime where pretraining matters), cached with the
pretraining cache's tokenizer and sizes, and fine-tuned twice with identical settings, from scratch
and from the demo's pretraining run, over several seeds each (`vlpipe.train.finetune`). The
comparison is `vlpipe report`'s (report.md and report.png beside the runs).

Output: OUT/downstream/data (drawn once, reused), OUT/downstream/cache, OUT/downstream/runs/
{scratch,pretrained}, OUT/downstream/runs/report.{md,png}.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console

from vlpipe.demo.statements import CHANCE_ACCURACY, SPLITS, make_statements, shortcut_accuracy

if TYPE_CHECKING:
    from vlpipe.demo.run import DemoConfig

INITS = ("scratch", "pretrained")
SPLIT = "test"  # held out: early stopping and the best epoch are chosen on val
METRIC = "accuracy"
FINETUNE_BATCH_SIZE = 32


def run_downstream(config: DemoConfig, pretrain_cache: Path, run: Path, out: Path, console: Console) -> dict[str, Any]:
    """Draw (or reuse) the statements, cache them, fine-tune from both inits; returns the stage's summary."""
    import torch

    from vlpipe.cache.writer import build_cache
    from vlpipe.model.config import every_dropout
    from vlpipe.train.compare import build_report
    from vlpipe.train.config import FinetuneConfig
    from vlpipe.train.finetune import finetune

    sizes = dict(zip(SPLITS, config.downstream_sizes, strict=True))
    statements = make_statements(out / "data", sizes, seed=config.seed, image_size=config.source_image_size)
    shortcuts = shortcut_accuracy(statements)
    manifest = build_cache(statements, out / "cache", label_column="label", image_size=config.image_size,
                           patch_size=config.patch_size, max_len=config.max_len,
                           tokenizer=str(pretrain_cache / "tokenizer.json"), processes=config.processes,
                           quiet=not config.live)
    torch.set_num_threads(config.processes)
    results: dict[str, Any] = {}
    for name in INITS:
        console.print(f"fine-tuning from {'the pretraining run' if name == 'pretrained' else 'scratch'}, "
                      f"seeds {','.join(map(str, config.finetune_seeds))}")
        result = finetune(FinetuneConfig(
            cache=str(out / "cache"), out=str(out / "runs" / name), init=str(run) if name == "pretrained" else None,
            seeds=config.finetune_seeds, epochs=config.finetune_epochs, lr=config.finetune_lr,
            batch_size=FINETUNE_BATCH_SIZE, workers=config.processes, live=config.live, plots=True,
            model_overrides=every_dropout(config.dropout)))
        results[name] = _init_summary(result.summary, result.out)
    report = build_report([out / "runs" / name for name in INITS], out / "runs")
    scratch, pretrained = results["scratch"], results["pretrained"]
    return {"task": "is this statement true of the image? (hard negatives change one fact)",
            "splits": dict(manifest.splits), "cache": str(out / "cache"), "split": SPLIT, "metric": METRIC,
            "chance": CHANCE_ACCURACY, "shortcuts": shortcuts, **results,
            "gap": pretrained["mean"] - scratch["mean"], "spread": pretrained["std"] + scratch["std"],
            "report": {"markdown": str(report.markdown), "png": str(report.png)}}


def _init_summary(summary: dict[str, Any], run: Path) -> dict[str, Any]:
    """Test accuracy per seed, its mean and sample standard deviation, and test AUROC, of one init."""
    values = [float(r["metrics"][SPLIT][METRIC]) for r in summary["runs"].values()]
    return {"run": str(run), "seeds": summary["seeds"], "values": values, "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "auroc_mean": summary["mean"][SPLIT].get("auroc"), "init_loaded": summary.get("init_loaded", 0)}
