"""`vlpipe train pretrain`, `vlpipe train finetune`, `vlpipe plot`, `vlpipe eval` and `vlpipe report`:
a thin shell over `vlpipe.train` and `vlpipe.eval`.

The options are generated from the settings' declarations (vlpipe/train/config.py,
vlpipe/eval/evaluate.py), so their names, help and shown defaults cannot drift from what the
library does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vlpipe.cli.options import cli_options
from vlpipe.eval.evaluate import EvalConfig
from vlpipe.train.compare import ReportConfig
from vlpipe.train.config import FinetuneConfig, PretrainConfig


@click.group()
def train() -> None:
    """Pretrain a vision-language model on a cache, or fine-tune it on a labelled cache."""


@train.command("pretrain", short_help="Pretrain with MLM, alignment prediction and contrastive MIM.")
@cli_options(PretrainConfig)
def pretrain(config_file: str | None, **flags: Any) -> None:
    """Pretrain with MLM, alignment prediction and contrastive MIM on a cache.

    \b
    Examples:
      vlpipe train pretrain --cache cache/cc --out runs/tiny --steps 2000
      vlpipe train pretrain --config run.toml --lr 3e-4
      torchrun --nproc-per-node 8 -m vlpipe.cli.main train pretrain --cache ... --preset base
    """
    from vlpipe.train.config import load_config
    from vlpipe.train.pretrain import pretrain as run

    result = run(load_config(config_file, **flags))
    done = result.steps - result.start_step
    span = f" ({result.start_step} -> {result.steps})" if result.start_step else ""
    click.echo(f"trained {done} steps{span} in {result.seconds:.0f} s -> {result.run_dir}")
    for name, value in result.val.items():
        click.echo(f"  val {name}: {value:.4f}" if name != "samples" else f"  val {name}: {int(value)}")
    if result.checkpoint is not None:
        click.echo(f"  checkpoint: {result.checkpoint}")


@click.command("plot")
@click.argument("run_dir", type=click.Path(path_type=str))
def plot(run_dir: str) -> None:
    """Redraw RUN_DIR/plots/*.png (loss and accuracy per task, train and val) from metrics.jsonl."""
    from vlpipe.train.plots import plot_run

    for path in plot_run(run_dir):
        click.echo(str(path))


@train.command("finetune", short_help="Fine-tune a classifier on a labelled cache (seeds, mean ± std).")
@cli_options(FinetuneConfig)
def finetune(config_file: str | None, **flags: Any) -> None:
    """Fine-tune a classifier on a labelled cache, from scratch or from a pretraining run.

    \b
    Examples:
      vlpipe train finetune --cache cache/hm --out runs/hm-scratch --seed 0,1,2
      vlpipe train finetune --cache cache/hm --out runs/hm-pre --init runs/cc --seed 0,1,2
      vlpipe report runs/hm-scratch runs/hm-pre
    """
    from vlpipe.train.config import load_finetune_config
    from vlpipe.train.finetune import finetune as run

    result = run(load_finetune_config(config_file, **flags))
    s = result.summary
    if not s:  # not the main process of a torchrun job: that one reports
        return
    if s["init"]:
        click.echo(f"initialised from {s['init']}: {s['init_loaded']} tensors loaded, classifier head fresh")
    click.echo(f"{s['task']} fine-tuning, {len(s['seeds'])} seed(s) -> {result.out}")
    for split, values in s["mean"].items():
        for name, mean in values.items():
            if mean is not None and name != "n":
                click.echo(f"  {split} {name}: {mean:.4f} ± {s['std'][split][name] or 0.0:.4f}")


@click.command("eval")
@click.argument("run", type=click.Path(path_type=str))
@cli_options(EvalConfig)
def evaluate(run: str, config_file: str | None, **flags: Any) -> None:
    """Zero-shot retrieval and a linear probe of a pretraining RUN, written to RUN/eval.json.

    \b
    Retrieval (--cache): every image of the split is scored against every caption by the
    alignment head; R@1/5/10 image->text and text->image, beside chance. N^2 pair forwards.
    Probe (--probe-cache): logistic regression on frozen pooled features (text, image, fused),
    train split -> val split, against the same probe on a randomly initialised model.

    \b
    Examples:
      vlpipe eval runs/cc --cache cache/cc --max-samples 1000
      vlpipe eval runs/cc --probe-cache cache/hm
      vlpipe report runs/cc runs/cc-long          # compare the runs' eval.json
    """
    from vlpipe.eval.evaluate import evaluate_run
    from vlpipe.settings import load_settings
    from vlpipe.train.compare import EVAL_FILE, run_tables

    evaluate_run(run, load_settings(EvalConfig, config_file, flags))
    _print_tables(run_tables([run])[1])
    click.echo(f"wrote {Path(run) / EVAL_FILE}")


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=str))
@cli_options(ReportConfig)
def report(runs: tuple[str, ...], config_file: str | None, **flags: Any) -> None:
    """Compare runs, as Markdown and PNG: fine-tuning runs (each metric as mean ± std over seeds, the
    gap of each initialised run to the run from scratch with the same fusion placement, chance),
    grouped early / middle / late fusion; pretraining runs by their `vlpipe eval` results.

    \b
    Examples:
      vlpipe report runs/hm-scratch runs/hm-pretrained --out reports/hm
      vlpipe report runs/hm-early-* runs/hm-middle-* runs/hm-late-*     # the fusion table
      vlpipe report runs/cc-100k runs/cc-200k                           # after `vlpipe eval` of each
    """
    from vlpipe.settings import load_settings
    from vlpipe.train.compare import build_report

    result = build_report(list(runs), load_settings(ReportConfig, config_file, flags).out)
    _print_tables(result.tables)
    click.echo(f"wrote {result.markdown} and {result.png}")


def _print_tables(tables: list[Any]) -> None:
    """`vlpipe.train.compare.Table`s as rich tables, each with its reading note."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for table in tables:
        shown = Table(title=table.title, caption=table.note, caption_justify="left")
        for name in table.header:
            shown.add_column(name)
        for row in table.rows:
            shown.add_row(*row)
        console.print(shown)
