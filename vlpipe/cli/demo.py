"""`vlpipe demo`: the whole pipeline offline on the embedded dataset (see vlpipe.demo.run)."""

from __future__ import annotations

import click

from vlpipe.demo.run import DemoConfig

_DEFAULTS = DemoConfig()


@click.command("demo")
@click.option("--out", default=_DEFAULTS.out, show_default=True, type=click.Path(file_okay=False),
              help="Folder for everything the demo writes (the drawn images are reused on reruns).")
@click.option("--size", default=_DEFAULTS.size, show_default=True, type=int,
              help="Number of captioned images to draw and serve.")
@click.option("--steps", default=_DEFAULTS.steps, show_default=True, type=int,
              help="Training steps of the tiny model (the main share of the demo's time).")
@click.option("--batch-size", default=_DEFAULTS.batch_size, show_default=True, type=int,
              help="Training and benchmark batch size.")
@click.option("--lr", default=_DEFAULTS.lr, show_default=True, type=float, help="Peak learning rate.")
@click.option("--image-size", default=_DEFAULTS.image_size, show_default=True, type=int,
              help="Pixels per side the model sees (the cache's --image-size).")
@click.option("--patch-size", default=_DEFAULTS.patch_size, show_default=True, type=int,
              help="Pixels per side of an image patch.")
@click.option("--processes", default=_DEFAULTS.processes, show_default=True, type=int,
              help="Processes/threads for fetch, cache building, training and the benchmark.")
@click.option("--bench-seconds", default=_DEFAULTS.bench_seconds, show_default=True, type=float,
              help="Seconds per pipeline and round in the loader benchmark.")
@click.option("--seed", default=_DEFAULTS.seed, show_default=True, type=int,
              help="Seed of the drawn images and of training.")
@click.option("--no-live", is_flag=True, help="No live progress views (for logs and CI).")
def demo(out: str, size: int, steps: int, batch_size: int, lr: float, image_size: int, patch_size: int,
         processes: int, bench_seconds: float, seed: int, no_live: bool) -> None:
    """Run fetch, build-cache, train pretrain and bench dataloader offline on an embedded dataset.

    Draws captioned images (shapes, colours, positions, counts over photos and textures), serves
    them with some broken links from a local server on 127.0.0.1, and runs every stage for real.
    Prints and writes OUT/summary.json: kept/dropped images, cache size, validation alignment
    accuracy against chance, MLM accuracy, the loader speed-up, and where plots are.
    """
    from vlpipe.demo.run import run_demo

    run_demo(DemoConfig(out=out, size=size, steps=steps, batch_size=batch_size, lr=lr, image_size=image_size,
                        patch_size=patch_size, processes=processes, bench_seconds=bench_seconds, seed=seed,
                        live=not no_live))
