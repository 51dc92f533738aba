"""`vlpipe train pretrain`, `vlpipe train finetune`, `vlpipe plot` and `vlpipe report`: a thin shell
over `vlpipe.train`.

Every option defaults to "not given" so that a `--config` file's values survive unless a flag
overrides them; the real defaults live in `vlpipe.train.config.PretrainConfig`.
"""

from __future__ import annotations

import json
from typing import Any

import click

from vlpipe.errors import VlpipeError


def _split_pairs(value: str) -> list[str]:
    """Split at commas outside brackets: `a=1,b=[2,3]` -> `a=1`, `b=[2,3]`."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(value):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return [p for p in parts if p.strip()]


def _parse_pairs(values: tuple[str, ...], what: str, convert: Any = str) -> dict[str, Any]:
    """`KEY=VALUE` strings (repeatable or comma-separated; a list value in brackets) -> dict."""
    out: dict[str, Any] = {}
    for item in (part for value in values for part in _split_pairs(value)):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise VlpipeError(f"{what}: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = convert(raw.strip())
        except ValueError as exc:
            raise VlpipeError(f"{what}: bad value in {item!r} ({exc})") from exc
    return out


def _model_value(raw: str) -> Any:
    """Model overrides: numbers as numbers, true/false as booleans, [1,2,3] as a list, anything else as text."""
    if raw.startswith("["):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list: {exc.msg}") from None
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


@click.group()
def train() -> None:
    """Pretrain a vision-language model on a cache, or fine-tune it on a labelled cache."""


@train.command("pretrain", short_help="Pretrain with MLM, alignment prediction and contrastive MIM.")
@click.option("--cache", type=click.Path(path_type=str), default=None,
              help="Cache directory from `vlpipe build-cache`. Required (here or in --config).")
@click.option("--out", type=click.Path(path_type=str), default=None,
              help="Run directory: checkpoints/, metrics.jsonl, plots/, config.json. Required (here or in --config).")
@click.option("--config", "config_file", type=click.Path(path_type=str), default=None,
              help="A .json or .toml file with any of these settings (keys are the option names with "
                   "underscores); flags given on the command line override it.")
@click.option("--preset", type=click.Choice(["tiny", "base", "vilbert"]), default=None,
              help="Model size. tiny: seconds on a CPU; base: ViT-B/16 + BERT-base; vilbert: ViLBERT's layout. "
                   "[default: tiny]")
@click.option("--model", "model_options", multiple=True, metavar="KEY=VALUE",
              help="Model overrides, e.g. --model text_layers=4,vision_hidden=384 or "
                   "--model coattn_text_layers=[1,2,3,4,5,6] (see docs/model.md).")
@click.option("--tasks", default=None, help="Comma-separated tasks: mlm (masked words), ap (alignment "
              "prediction), mim (contrastive masked patches). [default: mlm,ap,mim]")
@click.option("--task-weights", multiple=True, metavar="TASK=W", help="Loss weights, e.g. mim=0.5. [default: all 1]")
@click.option("--steps", type=int, default=None, help="Optimizer steps to train (exclusive with --epochs).")
@click.option("--epochs", type=float, default=None, help="Epochs over the train split (fractions allowed).")
@click.option("--batch-size", type=int, default=None,
              help="Samples per micro-batch per process; global batch = this x --grad-accum x processes. [default: 64]")
@click.option("--grad-accum", type=int, default=None, help="Micro-batches per optimizer step. [default: 1]")
@click.option("--lr", type=float, default=None, help="Peak AdamW learning rate. [default: 1e-4]")
@click.option("--warmup", type=float, default=None,
              help="Linear warmup: < 1 a fraction of the optimizer steps, >= 1 a number of them; cosine decay "
                   "after. [default: 0.05]")
@click.option("--min-lr-ratio", type=float, default=None, help="Final lr as a fraction of --lr. [default: 0.1]")
@click.option("--weight-decay", type=float, default=None, help="AdamW decay on matrices. [default: 0.01]")
@click.option("--grad-clip", type=float, default=None, help="Max global gradient norm, 0 = off. [default: 1.0]")
@click.option("--mlm-prob", type=float, default=None, help="Share of real tokens masked for MLM. [default: 0.15]")
@click.option("--mim-prob", type=float, default=None, help="Share of patches masked for MIM. [default: 0.15]")
@click.option("--mim-tau", type=float, default=None, help="InfoNCE temperature of MIM. [default: 0.1]")
@click.option("--ema-decay", type=float, default=None, help="EMA teacher momentum per optimizer step. [default: 0.996]")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default=None,
              help="auto: bf16 autocast on GPU, fp32 on CPU. [default: auto]")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the training step. [default: off]")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (under torchrun: auto). [default: auto]")
@click.option("--seed", type=int, default=None, help="Seeds init, data order and training masks. [default: 0]")
@click.option("--eval-every", type=int, default=None, help="Evaluate every N optimizer steps; 0 = only at the end. [default: 0]")
@click.option("--eval-batch-size", type=int, default=None, help="Validation batch size. [default: 64]")
@click.option("--ckpt-every", type=int, default=None, help="Checkpoint every N optimizer steps; 0 = only at the end. [default: 0]")
@click.option("--log-every", type=int, default=None, help="Log train metrics every N optimizer steps. [default: 10]")
@click.option("--resume", is_flag=True, default=None,
              help="Continue the run in --out from its latest checkpoint (same settings), exactly.")
@click.option("--text-init", default=None, metavar="PATH|minilm",
              help="Initialise the text stream from BERT weights (a file/folder, or minilm, which needs the cache "
                   "built with --tokenizer bert-uncased).")
@click.option("--vision-init", default=None, metavar="PATH", help="Initialise the image stream from a timm/open_clip ViT.")
@click.option("--workers", type=int, default=None, help="Loader threads/processes. [default: 2]")
@click.option("--loader-mode", type=click.Choice(["threads", "processes", "inline"]), default=None,
              help="How the loader gathers batches. [default: threads]")
@click.option("--live/--no-live", default=None, help="Rich live view on a terminal. [default: on]")
@click.option("--tensorboard/--no-tensorboard", default=None, help="Also log to RUN_DIR/tensorboard (if installed).")
def pretrain(config_file: str | None, model_options: tuple[str, ...], task_weights: tuple[str, ...],
             compile_: bool | None, **options: Any) -> None:
    """Pretrain with MLM, alignment prediction and contrastive MIM on a cache.

    \b
    Examples:
      vlpipe train pretrain --cache cache/cc --out runs/tiny --steps 2000
      vlpipe train pretrain --config run.toml --lr 3e-4
      torchrun --nproc-per-node 8 -m vlpipe.cli.main train pretrain --cache ... --preset base
    """
    from vlpipe.train.config import load_config
    from vlpipe.train.trainer import pretrain as run

    if model_options:
        options["model_overrides"] = _parse_pairs(model_options, "--model", _model_value)
    if task_weights:
        options["task_weights"] = _parse_pairs(task_weights, "--task-weights", float)
    options["compile"] = compile_
    result = run(load_config(config_file, **options))
    click.echo(f"trained {result.steps} steps in {result.seconds:.0f} s -> {result.run_dir}")
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
@click.option("--cache", type=click.Path(path_type=str), default=None,
              help="Labelled cache from `vlpipe build-cache` (Hateful Memes, MM-IMDB, Food-101, generic). "
                   "Required (here or in --config).")
@click.option("--out", type=click.Path(path_type=str), default=None,
              help="Run directory: one seed-S/ sub-run per seed and summary.json (mean ± std over seeds). "
                   "Required (here or in --config).")
@click.option("--config", "config_file", type=click.Path(path_type=str), default=None,
              help="A .json or .toml file (plain keys or a [finetune] table); flags override it.")
@click.option("--init", default=None, metavar="PRETRAIN_RUN|none",
              help="Start from a `vlpipe train pretrain` run's latest checkpoint (every shared weight; the "
                   "pretraining heads are dropped, the classifier starts fresh) and use its model config. "
                   "[default: none = from scratch]")
@click.option("--preset", type=click.Choice(["tiny", "base", "vilbert"]), default=None,
              help="Model size when training from scratch. [default: tiny]")
@click.option("--model", "model_options", multiple=True, metavar="KEY=VALUE",
              help="Model overrides, e.g. --model dropout=0.2 (see docs/model.md).")
@click.option("--task", type=click.Choice(["binary", "multiclass", "multilabel"]), default=None,
              help="Loss and metrics. [default: the cache manifest's labels.task]")
@click.option("--fusion", type=click.Choice(["product", "concat"]), default=None,
              help="How the head joins pooled text and image: product (ViLBERT) or concatenation. [default: product]")
@click.option("--metric", default=None,
              help="Validation metric for early stopping and the best checkpoint: auroc or accuracy (binary), "
                   "top1/top5 (multiclass), macro_f1_tuned/micro_f1_tuned/macro_f1 (multilabel). "
                   "[default: auroc / top1 / macro_f1_tuned]")
@click.option("--epochs", type=int, default=None, help="Maximum epochs over the train split. [default: 10]")
@click.option("--patience", type=int, default=None,
              help="Stop after this many epochs without a better validation metric; 0 = never. [default: 3]")
@click.option("--seed", "seeds", multiple=True, metavar="S[,S...]",
              help="Seeds, one sub-run each: --seed 0 --seed 1 or --seed 0,1,2. [default: 0]")
@click.option("--class-weighted/--no-class-weighted", default=None,
              help="Weight the loss by the train split's label counts (imbalanced data). [default: off]")
@click.option("--batch-size", type=int, default=None, help="Samples per micro-batch. [default: 32]")
@click.option("--grad-accum", type=int, default=None, help="Micro-batches per optimizer step. [default: 1]")
@click.option("--lr", type=float, default=None, help="Peak AdamW learning rate. [default: 1e-4]")
@click.option("--warmup", type=float, default=None,
              help="Linear warmup: < 1 a fraction of the optimizer steps, >= 1 a number of them. [default: 0.1]")
@click.option("--weight-decay", type=float, default=None, help="AdamW decay on matrices. [default: 0.01]")
@click.option("--grad-clip", type=float, default=None, help="Max global gradient norm, 0 = off. [default: 1.0]")
@click.option("--head-dropout", type=float, default=None, help="Dropout in the classifier head. [default: 0.1]")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default=None,
              help="auto: bf16 autocast on GPU, fp32 on CPU. [default: auto]")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model. [default: off]")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N. [default: auto]")
@click.option("--eval-batch-size", type=int, default=None, help="Validation/test batch size. [default: 64]")
@click.option("--log-every", type=int, default=None, help="Log train loss every N optimizer steps. [default: 10]")
@click.option("--resume", is_flag=True, default=None,
              help="Continue every seed's sub-run from its latest checkpoint (same settings), exactly.")
@click.option("--workers", type=int, default=None, help="Loader threads/processes. [default: 2]")
@click.option("--live/--no-live", default=None, help="Rich live view on a terminal. [default: on]")
@click.option("--tensorboard/--no-tensorboard", default=None, help="Also log to seed-S/tensorboard (if installed).")
def finetune(config_file: str | None, model_options: tuple[str, ...], seeds: tuple[str, ...],
             compile_: bool | None, **options: Any) -> None:
    """Fine-tune a classifier on a labelled cache, from scratch or from a pretraining run.

    \b
    Examples:
      vlpipe train finetune --cache cache/hm --out runs/hm-scratch --seed 0 --seed 1 --seed 2
      vlpipe train finetune --cache cache/hm --out runs/hm-pre --init runs/cc --seed 0 --seed 1 --seed 2
      vlpipe report runs/hm-scratch runs/hm-pre
    """
    from vlpipe.train.finetune import finetune as run
    from vlpipe.train.finetune import load_finetune_config

    if model_options:
        options["model_overrides"] = _parse_pairs(model_options, "--model", _model_value)
    try:
        options["seeds"] = tuple(int(p) for v in seeds for p in v.split(",") if p.strip()) or None
    except ValueError:
        raise VlpipeError(f"--seed: expected integers, got {', '.join(seeds)}") from None
    options["compile"] = compile_
    result = run(load_finetune_config(config_file, **options))
    s = result.summary
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

    from vlpipe.train.report import build_report

    result = build_report(list(runs), out)
    table = Table(title="fine-tuning: mean ± std over seeds")
    for name in result.header:
        table.add_column(name)
    for row in result.rows:
        table.add_row(*row)
    Console().print(table)
    click.echo(f"wrote {result.markdown} and {result.png}")
