"""The tiny model really learns on captions that describe their images (CPU, about two minutes per
cache codec: the same demo data from a raw cache and from a JPEG cache)."""

import math

import pytest
import torch

from vlpipe.model.config import every_dropout
from vlpipe.train.config import PretrainConfig
from vlpipe.train.metrics_log import read_metrics
from vlpipe.train.pretrain import pretrain

# The demo's recipe (vlpipe/demo/run.py, DemoConfig): 64 px images in 16 px patches, lr 2e-3, no
# dropout. Alignment prediction first sits on a plateau near chance (the pooled image and text vectors
# must become correlated before the product head sees any signal), then climbs past 0.9 around step
# 2250. 4000 samples give ~400 validation pairs, so one pair moves the accuracy by only 0.0025.
STEPS = 3500


@pytest.fixture(scope="module", params=["raw", "jpeg"])
def trained(tmp_path_factory, request):
    from vlpipe.cache.writer import build_cache
    from vlpipe.demo.synth import make_dataset

    root = tmp_path_factory.mktemp("learning")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one intra-op thread, the loader thread beside it
    try:
        captions = make_dataset(root / "src", n=4000, seed=0, image_size=128)
        manifest = build_cache(captions, root / "cache", image_size=64, patch_size=16, max_len=24,
                               tokenizer="wordpiece:400", val_fraction=0.1, codec=request.param, processes=1,
                               quiet=True)
        result = pretrain(PretrainConfig(
            cache=str(root / "cache"), out=str(root / "run"), preset="tiny", steps=STEPS, batch_size=64, lr=2e-3,
            model_overrides=every_dropout(0.0, ("dropout",)), warmup=0.05, eval_every=STEPS // 4, log_every=50, workers=1,
            live=False, seed=0,
        ))
    finally:
        torch.set_num_threads(before)
    return manifest, result


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_model_learns_words_and_patches(trained):
    manifest, result = trained
    val = result.val
    chance = math.log(manifest.text.vocab_size)
    assert val["mlm_loss"] < 0.35 * chance, (val["mlm_loss"], chance)
    assert val["mlm_acc"] > 0.5, val
    # each masked patch must pick its own teacher target among the masked patches of aligned pairs
    # in a val batch: chance is a few percent
    assert val["mim_top1"] > 0.3, val
    vals = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r["split"] == "val"]
    assert len(vals) == 4 and vals[-1]["mlm_loss"] < vals[0]["mlm_loss"] and vals[-1]["mim_loss"] < vals[0]["mim_loss"]
    plots = {p.name for p in (result.run_dir / "plots").iterdir()}
    assert plots >= {"loss.png", "mlm.png", "ap.png", "mim.png"}


@pytest.mark.slow
def test_tiny_model_learns_alignment(trained):
    _, result = trained
    assert result.val["ap_acc"] >= 0.9, result.val
    vals = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r["split"] == "val"]
    assert vals[-1]["ap_acc"] > vals[0]["ap_acc"] + 0.05  # learned during the run, not a lucky start
