"""The tiny model really learns vision-language pretraining on captions that describe their images.

One pretraining run per cache codec (CPU, a few minutes each: the same demo data from a raw cache and
from a JPEG cache, which must learn alike) on the demo's synthetic captioned photos; each check states
its chance level and its strongest shortcut next to its threshold, and must beat the shortcut:
- alignment prediction: chance 0.5 (half the pairs get another sample's caption), and neither
  stream alone can tell a swapped caption from the right one;
- masked patches (MIM): the student sees the mask token plus the patch's position embedding, so a
  matcher that knows only the position picks the right target among the candidates at that
  position; that position-only level is computed here from the evaluation's own masks;
- masked words (MLM): the templated captions make most words guessable from their neighbours, so
  overall MLM accuracy says little about vision. The control that does: accuracy on the colour
  words with the matched image against a shuffled image (text alone: about the colour prior).
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_model
from tokenizers import Tokenizer

from vlpipe.cache.reader import CacheDataset
from vlpipe.demo.synth import COLOUR_WORDS
from vlpipe.model import ModelConfig, build_model
from vlpipe.model.config import every_dropout
from vlpipe.train.config import PretrainConfig
from vlpipe.train.masking import EVAL_STREAM, TaskSettings, TextSpecials, prepare_batch
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
            model_overrides=every_dropout(0.0, ("dropout",)), warmup=0.05, eval_every=STEPS // 4, log_every=50,
            workers=1, live=False, seed=0,
        ))
    finally:
        torch.set_num_threads(before)
    return manifest, result, root / "cache"


def _trained_model(result) -> torch.nn.Module:
    """The run's final student, rebuilt from its own checkpoint (config.json + model.safetensors)."""
    saved = json.loads((result.checkpoint / "config.json").read_text())
    model = build_model(ModelConfig.from_dict(saved["model"]))
    load_model(model, str(result.checkpoint / "model.safetensors"))
    return model.eval()


def _val_batches(cache, batch_size: int = 64):
    val = CacheDataset(cache, split="val")
    for start in range(0, len(val), batch_size):
        raw = val.__getitems__(list(range(start, min(len(val), start + batch_size))))
        yield {k: v.clone() for k, v in raw.items()}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_model_learns_words_and_patches(trained):
    manifest, result, _ = trained
    val = result.val
    chance = math.log(manifest.text.vocab_size)
    assert val["mlm_loss"] < 0.35 * chance, (val["mlm_loss"], chance)
    vals = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r["split"] == "val"]
    assert len(vals) == 4 and vals[-1]["mlm_loss"] < vals[0]["mlm_loss"] and vals[-1]["mim_loss"] < vals[0]["mim_loss"]
    plots = {p.name for p in (result.run_dir / "plots").iterdir()}
    assert plots >= {"loss.png", "mlm.png", "ap.png", "mim.png"}


@pytest.mark.slow
def test_masked_patches_beat_the_position_only_matcher(trained):
    """Chance: 1 / (masked patches of aligned pairs in the batch), a few percent. Shortcut: knowing only
    the masked patch's position, pick among the candidates at that position: 1 / (their number)."""
    manifest, result, cache = trained
    t = manifest.text
    specials = TextSpecials(t.pad_id, t.cls_id, t.sep_id, t.mask_id, t.vocab_size)
    config = PretrainConfig(cache=str(cache), out="unused", steps=1)  # the run's masking settings
    settings = TaskSettings(config.tasks, config.mlm_prob, config.mim_prob, config.eval_seed)
    position_only, chance, rows = 0.0, 0.0, 0
    for batch in _val_batches(cache, config.eval_batch_size):  # exactly the evaluation's batches and masks
        inputs = prepare_batch(batch, specials, settings, manifest.image.num_patches, stream=EVAL_STREAM)
        positions, aligned = inputs["mim_positions"], inputs["aligned"]
        candidates = positions[aligned].flatten()
        for p in candidates.tolist():
            position_only += 1.0 / int((candidates == p).sum())
            chance += 1.0 / len(candidates)
            rows += 1
    position_only, chance = position_only / rows, chance / rows
    top1 = result.val["mim_top1"]
    print(f"MIM top-1 {top1:.3f}, position-only {position_only:.3f}, chance {chance:.3f}")
    assert 0.1 < position_only < 0.5 and chance < 0.05, (position_only, chance)
    assert top1 >= position_only + 0.2, f"MIM top-1 {top1:.3f} vs position-only {position_only:.3f}, chance {chance:.3f}"


@pytest.mark.slow
def test_masked_colour_words_use_the_image(trained):
    """Chance: 1/6 colours. Shortcut: the caption's other words (a shuffled image leaves only those)."""
    manifest, result, cache = trained
    tokenizer = Tokenizer.from_file(str(cache / "tokenizer.json"))
    colour_ids = {tokenizer.token_to_id(w) for words in COLOUR_WORDS.values() for w in words} - {None}
    assert len(colour_ids) >= 6  # every colour is one token of the vocabulary
    ids_of = torch.tensor(sorted(colour_ids))
    model = _trained_model(result)
    correct = {"matched": 0, "shuffled": 0}
    total = 0
    with torch.no_grad():
        for batch in _val_batches(cache):
            ids, lengths = batch["input_ids"], batch["lengths"]
            where = torch.isin(ids, ids_of)
            masked = ids.masked_fill(where, manifest.text.mask_id)
            attention = torch.arange(ids.shape[1])[None] < lengths[:, None]
            for name, images in (("matched", batch["images"]), ("shuffled", batch["images"].roll(1, 0))):
                out = model(images, masked, attention)
                guess = model.mlm_head(out.text).argmax(-1)
                correct[name] += int((guess[where] == ids[where]).sum())
            total += int(where.sum())
    matched, shuffled = correct["matched"] / total, correct["shuffled"] / total
    print(f"colour words ({total}): matched image {matched:.3f}, shuffled image {shuffled:.3f}")
    assert total > 300
    assert matched >= shuffled + 0.3 and matched >= 0.6, f"colour words: matched {matched:.3f}, shuffled {shuffled:.3f}"


@pytest.mark.slow
def test_tiny_model_learns_alignment(trained):
    """Chance 0.5; neither stream alone can tell a swapped caption from the image's own."""
    _, result, _ = trained
    assert result.val["ap_acc"] >= 0.9, result.val
    vals = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r["split"] == "val"]
    assert vals[-1]["ap_acc"] > vals[0]["ap_acc"] + 0.05  # learned during the run, not a lucky start
