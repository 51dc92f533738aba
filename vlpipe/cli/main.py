"""The `vlpipe` command: a thin shell over the library.

Subcommands are imported lazily so that `vlpipe --help` and quick commands do not pay for
importing torch or img2dataset. Each subcommand lives in its own module under `vlpipe/cli/`
and calls a library function with the same name and options.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import sys

import click

from vlpipe import __version__
from vlpipe.errors import VlpipeError
from vlpipe.utils.atomic import TMP_PREFIX

# name -> (module, attribute, one-line help shown in `vlpipe --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "fetch": ("vlpipe.cli.fetch", "fetch", "Download image-text pairs with img2dataset; drop and explain broken images."),
    "build-cache": ("vlpipe.cli.cache", "build_cache", "Tokenize and patchify once into a memory-mapped cache."),
    "cache": ("vlpipe.cli.cache", "cache", "Inspect a cache: verify checksums; show its info and a contact sheet (info --grid); merge parts."),
    "train": ("vlpipe.cli.train", "train", "Pretrain (MLM, alignment, MIM) or fine-tune on a cache."),
    "plot": ("vlpipe.cli.train", "plot", "Redraw the loss/accuracy plots of a run directory."),
    "eval": ("vlpipe.cli.train", "evaluate", "Zero-shot retrieval and a linear probe of a pretraining run (RUN/eval.json)."),
    "report": ("vlpipe.cli.train", "report", "Compare runs: fine-tuning mean ± std per init and fusion, eval results; "
               "Markdown and PNG."),
    "bench": ("vlpipe.cli.bench", "bench", "Measure vlpipe's loader against JPEG-decoding loaders."),
    "demo": ("vlpipe.cli.demo", "demo", "Run the whole pipeline offline on an embedded dataset."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attr, _ = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, _, help_text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vlpipe")
def cli() -> None:
    """vlpipe: data-pipeline-first vision-language pretraining.

    \b
    The pipeline, one command per stage:
      vlpipe fetch cc --subset 200k      download Conceptual Captions (img2dataset)
      vlpipe build-cache SRC --out DIR   tokenize + patchify once, memory-mapped
      vlpipe train pretrain --cache DIR  MLM + alignment + masked-image modelling
      vlpipe bench dataloader --cache DIR
    Try `vlpipe demo` for all of it offline in a few minutes.
    """


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 1, without a traceback."""
    try:
        rc = cli.main(args=argv, prog_name="vlpipe", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except VlpipeError as exc:
        signal_number = getattr(exc, "signal_number", None)
        if signal_number is None:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        # A training run stopped by Ctrl-C or a scheduler's SIGTERM after saving a checkpoint.
        click.echo(f"{exc}\ncontinue it with:\n  {resume_command(argv)}", err=True)
        sys.exit(128 + signal_number)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OSError as exc:
        # The machine said no (permissions, a read-only or full disk, a file where a folder should
        # be): the user's to fix, so one line naming the path. VLPIPE_DEBUG=1 shows the traceback.
        if os.environ.get("VLPIPE_DEBUG"):
            raise
        click.echo(f"error: {describe_os_error(exc)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    # Non-standalone click returns the exit code of `ctx.exit(n)`; commands themselves return None.
    sys.exit(rc if isinstance(rc, int) else 0)


def resume_command(argv: list[str] | None) -> str:
    """The command line that was run, with `--resume` added if it was not there."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return "vlpipe " + " ".join(shlex.quote(a) for a in args)


def describe_os_error(exc: OSError) -> str:
    """`PATH: reason` (both paths for a failed rename), without Python's `[Errno N]` prefix.

    A crash-safe write's temporary name is shown as the file the user asked for, and mkdir's
    "File exists" for a path that is a file says what is actually wrong.
    """
    reason = exc.strerror or str(exc)
    paths = [re.sub(rf"{re.escape(TMP_PREFIX)}\d+-", "", str(p)) for p in (exc.filename, exc.filename2)
             if p is not None]
    if isinstance(exc, FileExistsError) and paths and os.path.exists(paths[0]) and not os.path.isdir(paths[0]):
        reason = "exists and is not a folder"
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


if __name__ == "__main__":
    main()
