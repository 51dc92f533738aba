"""`vlpipe train pretrain` and `vlpipe plot`: a thin shell over `vlpipe.train`.

Every option defaults to "not given" so that a `--config` file's values survive unless a flag
overrides them; the real defaults live in `vlpipe.train.config.PretrainConfig`.
"""

from __future__ import annotations

from typing import Any

import click

from vlpipe.errors import VlpipeError


def _parse_pairs(values: tuple[str, ...], what: str, convert: Any = str) -> dict[str, Any]:
    """`KEY=VALUE` strings (repeatable or comma-separated) -> dict."""
    out: dict[str, Any] = {}
    for item in (part for value in values for part in value.split(",") if part.strip()):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise VlpipeError(f"{what}: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = convert(raw.strip())
        except ValueError as exc:
            raise VlpipeError(f"{what}: bad value in {item!r} ({exc})") from exc
    return out


def _model_value(raw: str) -> Any:
    """Model overrides: numbers as numbers, true/false as booleans, anything else as text."""
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


@click.group()
def train() -> None:
    """Pretrain a vision-language model on a cache (fine-tuning comes later)."""


@train.command("pretrain")
@click.option("--cache", type=click.Path(path_type=str), default=None, help="Cache directory from `vlpipe build-cache`.")
@click.option("--out", type=click.Path(path_type=str), default=None,
              help="Run directory: checkpoints/, metrics.jsonl, plots/, config.json.")
@click.option("--config", "config_file", type=click.Path(path_type=str), default=None,
              help="A .json or .toml file with any of these settings (keys are the option names with "
                   "underscores); flags given on the command line override it.")
@click.option("--preset", type=click.Choice(["tiny", "base", "vilbert"]), default=None,
              help="Model size. tiny: seconds on a CPU; base: ViT-B/16 + BERT-base; vilbert: ViLBERT's layout. "
                   "[default: tiny]")
@click.option("--model", "model_options", multiple=True, metavar="KEY=VALUE",
              help="Model overrides, e.g. --model text_layers=4,vision_hidden=384 (see docs/model.md).")
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
@click.option("--eval-every", type=int, default=None, help="Evaluate every N optimizer steps; 0 = only at the end.")
@click.option("--eval-batch-size", type=int, default=None, help="Validation batch size. [default: 64]")
@click.option("--ckpt-every", type=int, default=None, help="Checkpoint every N optimizer steps; 0 = only at the end.")
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
