"""`vlpipe demo`: the whole pipeline offline on the embedded dataset (see vlpipe.demo.run).

The options are generated from `DemoConfig`'s declarations, so a bad value is refused naming its
flag before anything is drawn or fetched.
"""

from __future__ import annotations

from typing import Any

import click

from vlpipe.cli.options import cli_options
from vlpipe.demo.run import DemoConfig

# The exit status when every stage ran but a learning stage failed its purpose (the verdict line
# says which); 1 stays the status of an error that stopped the demo.
DID_NOT_LEARN = 3


@click.command("demo")
@cli_options(DemoConfig)
def demo(config_file: str | None, **flags: Any) -> None:
    """Run fetch, build-cache, train pretrain, a downstream task and bench dataloader offline.

    Draws captioned images (shapes, colours, positions, counts over photos and textures), serves
    them with some broken links from a local server on 127.0.0.1, and runs every stage for real:
    pretrains the tiny model, then fine-tunes a true/false-statement task (which needs image and
    text together) from scratch and from that pretraining run, over several seeds. Prints and
    writes OUT/summary.json: kept/dropped images, cache size, validation alignment accuracy
    against chance, the downstream gap between the two inits against the seed spread, chance and
    single-modality shortcuts, the loader speed-up, where plots and the report are, and a verdict.
    Exits with status 3 when alignment or the downstream gap was not learned.
    """
    from vlpipe.demo.run import run_demo
    from vlpipe.settings import load_settings

    summary = run_demo(load_settings(DemoConfig, config_file, flags))
    if not summary["verdict"]["ok"]:
        click.get_current_context().exit(DID_NOT_LEARN)
