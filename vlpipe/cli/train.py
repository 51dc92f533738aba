"""`vlpipe train pretrain`, `vlpipe train finetune`, `vlpipe plot` and `vlpipe report`: a thin shell
over `vlpipe.train`.

The options are generated from the settings' declarations (vlpipe/train/config.py), so their
names, help and shown defaults cannot drift from what the library does.
"""

from __future__ import annotations

from typing import Any

import click

from vlpipe.cli.options import cli_options
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


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", type=click.Path(path_type=str), default=None,
              help="Folder for report.md and report.png. [default: the first run's parent folder]")
def report(runs: tuple[str, ...], out: str | None) -> None:
    """Compare fine-tuning runs: each metric as mean ± std over seeds, as Markdown and PNG.

    \b
    Example:
      vlpipe report runs/hm-scratch runs/hm-pretrained --out reports/hm
    """
    from rich.console import Console
    from rich.table import Table

    from vlpipe.train.compare import build_report

    result = build_report(list(runs), out)
    table = Table(title="fine-tuning: mean ± std over seeds")
    for name in result.header:
        table.add_column(name)
    for row in result.rows:
        table.add_row(*row)
    Console().print(table)
    click.echo(f"wrote {result.markdown} and {result.png}")
