"""Fine-tuning on real tiny caches: learning an image-AND-text task, --init from a pretrain run,
several seeds, exact resume, and the class-weighted loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlpipe.cache.format import load_manifest
from vlpipe.cache.writer import build_cache
from vlpipe.errors import VlpipeError
from vlpipe.model import build_model
from vlpipe.model.config import every_dropout
from vlpipe.train.classifier import (
    PRETRAIN_HEADS,
    Classifier,
    label_weights,
    load_shared_weights,
    loss_terms,
    pretrain_checkpoint,
)
from vlpipe.train.config import FinetuneConfig, PretrainConfig, load_finetune_config
from vlpipe.train.distributed import DistInfo
from vlpipe.train.finetune import FinetuneTask, finetune
from vlpipe.train.metrics_log import read_metrics
from vlpipe.train.model_setup import model_config_for_finetune
from vlpipe.train.pretrain import pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CACHE_OPTS = {"image_size": 32, "patch_size": 8, "max_len": 10, "quiet": True, "processes": 1}
WORDS = ["cat", "dog", "sun", "tree", "car", "boat", "hat", "cup"]
NO_DROPOUT = every_dropout(0.0, ("dropout",))



def xor_memes(root: Path, n_train: int, n_dev: int, n_test: int, seed: int = 0) -> Path:
    """A Hateful Memes folder whose label needs both streams: red image XOR the word "not".

    Colours are noisy reds and blues, texts a few random words around "is fine" / "is not fine",
    so neither modality alone predicts better than chance.
    """
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    counter = 0

    def rows(count: int, with_label: bool = True) -> list[dict]:
        nonlocal counter
        out = []
        for _ in range(count):
            red, neg = bool(rng.integers(2)), bool(rng.integers(2))
            base = np.array([200, 40, 40] if red else [40, 40, 200], dtype=np.int16)
            pixels = np.clip(base + rng.integers(-30, 31, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            name = f"img/{counter:05d}.png"
            Image.fromarray(pixels).save(root / name)
            words = " ".join(rng.choice(WORDS, size=2))
            row = {"id": counter, "img": name, "text": f"{words} is {'not ' if neg else ''}fine"}
            if with_label:
                row["label"] = int(red != neg)
            out.append(row)
            counter += 1
        return out

    for file, count in (("train.jsonl", n_train), ("dev.jsonl", n_dev), ("test.jsonl", n_test)):
        (root / file).write_text("".join(json.dumps(r) + "\n" for r in rows(count)))
    return root


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """A labelled XOR cache and a small captions cache that shares its tokenizer (for pretraining)."""
    root = tmp_path_factory.mktemp("finetune")
    memes = build_cache(xor_memes(root / "memes", 192, 48, 32), root / "memes-cache", tokenizer="wordpiece:60",
                        **CACHE_OPTS)
    assert memes.labels is not None and memes.splits == {"train": 192, "val": 48, "test": 32}
    captions = root / "captions.tsv"
    lines = ["image\tcaption"]
    (root / "pics").mkdir()
    for i in range(24):
        Image.new("RGB", (32, 32), (10 * i, 100, 200 - 5 * i)).save(root / "pics" / f"{i}.png")
        lines.append(f"{root / 'pics' / f'{i}.png'}\t{WORDS[i % 8]} is {'not ' if i % 3 else ''}fine")
    captions.write_text("\n".join(lines) + "\n")
    build_cache(captions, root / "cc-cache", tokenizer=str(root / "memes-cache" / "tokenizer.json"),
                val_fraction=0.25, **CACHE_OPTS)
    return root / "memes-cache", root / "cc-cache"


def _config(cache, out, **kw) -> FinetuneConfig:
    base = dict(cache=str(cache), out=str(out), epochs=2, batch_size=16, lr=1e-3, log_every=4, workers=1,
                live=False, plots=False, patience=0, model_overrides=NO_DROPOUT)
    return FinetuneConfig(**(base | kw))


@pytest.mark.slow
def test_learns_a_task_that_needs_image_and_text(caches, tmp_path):
    memes, _ = caches
    result = finetune(_config(memes, tmp_path / "run", epochs=12, patience=4, metric="accuracy", plots=True))
    run = result.summary["runs"]["0"]
    assert run["metrics"]["val"]["accuracy"] >= 0.9, run
    assert run["metrics"]["test"]["n"] == 32 and run["metrics"]["test"]["accuracy"] >= 0.8
    assert (tmp_path / "run" / "seed-0" / "plots" / "metrics.png").exists()
    val = [r for r in read_metrics(tmp_path / "run" / "seed-0" / "metrics.jsonl") if r["split"] == "val"]
    assert val[0]["accuracy"] < 0.9  # it had to learn it


def test_init_loads_every_shared_weight_and_the_head_starts_fresh(caches, tmp_path):
    memes, cc = caches
    pre = pretrain(PretrainConfig(cache=str(cc), out=str(tmp_path / "pre"), steps=2, batch_size=8, workers=1,
                                  live=False, plots=False, eval_batch_size=8, lr=1e-3))
    saved = load_file(pre.checkpoint / "model.safetensors")
    shared = [k for k in saved if not k.startswith(tuple(f"{h}." for h in PRETRAIN_HEADS))]
    assert len(shared) < len(saved)  # the pretraining heads are in the file but not shared

    config = _config(memes, tmp_path / "ft", init=str(tmp_path / "pre"))
    checkpoint = pretrain_checkpoint(config.init)
    model_cfg = model_config_for_finetune(config, load_manifest(memes), checkpoint)
    torch.manual_seed(0)
    model = Classifier(build_model(model_cfg), 1, "product", 0.1)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    loaded = load_shared_weights(model, checkpoint)
    assert loaded == len(shared) == len(model.backbone.state_dict())
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], saved[k]) for k in shared)
    assert all(torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())

    result = finetune(config)
    assert result.summary["init_loaded"] == len(shared)
    assert json.loads((tmp_path / "ft" / "seed-0" / "config.json").read_text())["init_loaded"] == len(shared)
    # A directory that is not a pretrain run is refused with a clear message.
    bad = FinetuneConfig(cache=str(memes), out=str(tmp_path / "x"), init=str(tmp_path / "nothing"))
    with pytest.raises(VlpipeError, match="no checkpoint found"):
        finetune(bad)


def _losses(run: Path) -> list[tuple]:
    return [(r["split"], r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl")]


def test_seeds_summary_and_exact_resume(caches, tmp_path):
    memes, _ = caches
    full = finetune(_config(memes, tmp_path / "full", seeds=(0, 1)))
    s = full.summary
    assert s["seeds"] == [0, 1] and set(s["runs"]) == {"0", "1"}
    accs = [s["runs"][k]["metrics"]["val"]["accuracy"] for k in ("0", "1")]
    assert s["mean"]["val"]["accuracy"] == pytest.approx(np.mean(accs))
    assert s["std"]["val"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    assert json.loads((tmp_path / "full" / "summary.json").read_text()) == s

    def crash(info):
        if info.run_dir.name == "seed-1" and info.step == 15:  # in seed 1's second epoch (12 steps per epoch)
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(_config(memes, tmp_path / "cut", seeds=(0, 1)), on_step=crash)
    with pytest.raises(VlpipeError, match="--resume"):
        finetune(_config(memes, tmp_path / "cut", seeds=(0, 1)))
    with pytest.raises(VlpipeError, match=r"trained with other settings \(lr 0.001 -> 0.002\)"):
        finetune(_config(memes, tmp_path / "cut", seeds=(0, 1), resume=True, lr=2e-3))
    steps: list[tuple[int, int]] = []
    resumed = finetune(_config(memes, tmp_path / "cut", seeds=(0, 1), resume=True),
                       on_step=lambda info: steps.append((int(info.run_dir.name[5:]), info.step)))
    # A true resume: the finished seed takes no step, seed 1 goes on after its epoch-1 checkpoint
    # (a rerun from scratch would give the same figures, since training is deterministic).
    assert steps[0] == (1, 13) and all(seed == 1 for seed, _ in steps)
    for seed in ("0", "1"):
        assert resumed.summary["runs"][seed]["metrics"] == s["runs"][seed]["metrics"]
        a = load_file(tmp_path / "full" / f"seed-{seed}" / "best.safetensors")
        b = load_file(tmp_path / "cut" / f"seed-{seed}" / "best.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert _losses(tmp_path / "cut" / f"seed-{seed}") == _losses(tmp_path / "full" / f"seed-{seed}")


def test_class_weighted_loss_and_ignored_labels():
    logits = torch.tensor([[0.3], [-1.0], [2.0]])
    labels = torch.tensor([1, 0, -1])
    total, norm = loss_terms("binary", logits, labels, torch.tensor([3.0]))
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[:2, 0], labels[:2].float(),
                                                               pos_weight=torch.tensor([3.0]))
    assert float(total / norm) == pytest.approx(float(ref))
    logits = torch.randn(4, 3)
    labels = torch.tensor([2, 0, -1, 1])
    w = label_weights("multiclass", [10, 5, 5], 20, torch.device("cpu"))
    assert w.tolist() == pytest.approx([20 / 30, 20 / 15, 20 / 15])
    total, norm = loss_terms("multiclass", logits, labels, w)
    ref = torch.nn.functional.cross_entropy(logits, labels, weight=w, ignore_index=-1)
    assert float(total / norm) == pytest.approx(float(ref))
    multi = torch.tensor([[1, 0], [0, 0]], dtype=torch.uint8)
    w = label_weights("multilabel", [1, 0], 2, torch.device("cpu"))
    assert w.tolist() == [1.0, 1.0]
    total, norm = loss_terms("multilabel", torch.zeros(2, 2), multi, w)
    assert float(total / norm) == pytest.approx(float(np.log(2)))


def test_cli_finetune_then_report(caches, tmp_path, capsys):
    from vlpipe.cli.main import main

    memes, _ = caches

    def cli(*argv):
        with pytest.raises(SystemExit) as exc:
            main(list(argv))
        out = capsys.readouterr()
        return exc.value.code, out.out, out.err

    common = ["--cache", str(memes), "--epochs", "1", "--batch-size", "32", "--workers", "1", "--no-live",
              "--lr", "1e-3"]
    code, out, err = cli("train", "finetune", *common, "--out", str(tmp_path / "runs" / "a"), "--seed", "0,1")
    assert code == 0, err
    assert "binary fine-tuning, 2 seed(s)" in out and "val auroc:" in out and "±" in out
    assert (tmp_path / "runs" / "a" / "seed-1" / "plots" / "metrics.png").exists()
    code, _, err = cli("train", "finetune", *common, "--out", str(tmp_path / "runs" / "b"), "--seed", "3",
                       "--fusion", "concat", "--class-weighted", "--task", "multiclass")
    assert code == 0, err
    code, out, err = cli("report", str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b"))
    assert code == 0, err
    md = (tmp_path / "runs" / "report.md").read_text()
    a = json.loads((tmp_path / "runs" / "a" / "summary.json").read_text())
    row = next(line for line in md.splitlines() if line.startswith("| test | accuracy |"))
    assert f"{a['mean']['test']['accuracy']:.3f} ± {a['std']['test']['accuracy']:.3f}" in row
    assert "| test | top1 |" in md  # run b was trained as a two-class multiclass task
    assert (tmp_path / "runs" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in out
    code, _, err = cli("report", str(tmp_path / "runs"))
    assert code == 1 and err.startswith("error: ") and "summary.json" in err
    code, _, err = cli("train", "finetune", "--cache", str(tmp_path), "--out", str(tmp_path / "c"))
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err


def colour_tags(root: Path, n: int) -> Path:
    """A generic jsonl: colour (red/green/blue) as the class, and tags colour + "not" for multi-label."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    rows = []
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    for i in range(n):
        name, neg = list(colours)[i % 3], bool(rng.integers(2))
        Image.new("RGB", (32, 32), colours[name]).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "text": f"{WORDS[i % 8]} is {'not ' if neg else ''}fine",
                     "colour": name, "tags": [name] + (["not"] if neg else []),
                     "split": ["train", "train", "train", "val", "test"][i % 5]})
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "data.jsonl"


def test_multilabel_threshold_from_val_and_multiclass_metrics(caches, tmp_path):
    src = colour_tags(tmp_path / "src", 90)
    multi = build_cache(src, tmp_path / "tags", label_column="tags", multi_label=True,
                        tokenizer="wordpiece:60", **CACHE_OPTS)
    assert multi.labels["task"] == "multilabel"
    result = finetune(_config(tmp_path / "tags", tmp_path / "ml", class_weighted=True, batch_size=8))
    run = result.summary["runs"]["0"]
    val, test = run["metrics"]["val"], run["metrics"]["test"]
    assert run["metric"] == "macro_f1_tuned" and 0.01 <= val["threshold"] <= 0.99
    assert test["threshold"] == val["threshold"]  # chosen on val, applied to test
    assert {"macro_f1", "micro_f1", "macro_f1_tuned", "micro_f1_tuned"} <= set(test)

    build_cache(src, tmp_path / "colour", label_column="colour", tokenizer="wordpiece:60", **CACHE_OPTS)
    result = finetune(_config(tmp_path / "colour", tmp_path / "mc", class_weighted=True, batch_size=8,
                              fusion="concat", epochs=3, lr=2e-3))
    test = result.summary["runs"]["0"]["metrics"]["test"]
    assert result.summary["task"] == "multiclass" and test["top5"] == 1.0  # 3 classes: top-5 covers all
    assert test["top1"] >= 0.8  # the colour is trivially visible
    with pytest.raises(VlpipeError, match="does not fit"):
        finetune(_config(tmp_path / "colour", tmp_path / "bad", task="binary"))


@pytest.mark.parametrize(("values", "message"), [
    ({"epochs": "1"}, "ft.json: epochs must be an integer, got '1'"),
    ({"seeds": 0}, "ft.json: seeds must be a list of integers, got 0"),
    ({"seeds": [1, 1]}, r"ft.json: seeds: must be distinct, got \[1, 1\]"),
    ({"head_dropout": "0.1"}, "ft.json: head_dropout must be a number, got '0.1'"),
    ({"head_dropout": 2}, "ft.json: head_dropout must be < 1, got 2"),
    ({"head_dropout": 1}, "ft.json: head_dropout must be < 1, got 1"),
    ({"patience": -1}, "ft.json: patience must be >= 0, got -1$"),
    ({"lr": 0}, "ft.json: lr must be > 0, got 0$"),
    ({"lr": float("inf")}, "ft.json: lr must be a finite number, got inf$"),
    ({"device": "foo"}, "ft.json: device: expected auto, cpu, cuda or cuda:N"),
    ({"warmup": -1}, "warmup must be >= 0"),
    ({"grad_clip": -1}, "grad_clip must be >= 0"),
    ({"min_lr_ratio": 2}, "min_lr_ratio must be <= 1"),
])
def test_bad_finetune_config_files_name_the_setting(tmp_path, values, message):
    path = tmp_path / "ft.json"
    path.write_text(json.dumps({"cache": "c", "out": "o"} | values))
    with pytest.raises(VlpipeError, match=message):
        load_finetune_config(path)


def test_finetune_config_from_a_file_keeps_lists_as_tuples(tmp_path):
    path = tmp_path / "ft.json"
    path.write_text(json.dumps({"cache": "c", "out": "o", "seeds": [1, 2], "betas": [0.8, 0.9], "init": "none"}))
    cfg = load_finetune_config(path, head_dropout=0.0)
    assert cfg.seeds == (1, 2) and cfg.betas == (0.8, 0.9) and cfg.init is None and cfg.head_dropout == 0.0


@pytest.mark.parametrize("pointer", ["[1]", '{"checkpoint": 5}'])
def test_init_with_a_bad_latest_pointer_is_a_clear_error(caches, tmp_path, pointer):
    memes, _ = caches
    run = tmp_path / "pre"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.json").write_text(pointer)
    with pytest.raises(VlpipeError, match=r"latest.json is not a valid checkpoint pointer \(expected"):
        finetune(_config(memes, tmp_path / "ft", init=str(run)))
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize(("model", "message"), [
    ('"x"', "'model' must be an object, got str"),
    ('{"vision": 5}', "config.json: model option: vision must be a table"),
    ('{"vision": {"depth": "x"}}', "config.json: "),
])
def test_init_with_a_damaged_model_config_is_a_clear_error(caches, tmp_path, model, message):
    memes, _ = caches
    step = tmp_path / "pre" / "checkpoints" / "step_00000001"
    step.mkdir(parents=True)
    (step / "state.json").write_text("{}")
    (step / "model.safetensors").write_bytes(b"")  # never read: the config is checked first
    (step / "config.json").write_text(f'{{"model": {model}}}')
    (step.parent / "latest.json").write_text('{"checkpoint": "step_00000001"}')
    with pytest.raises(VlpipeError, match=message) as info:
        finetune(_config(memes, tmp_path / "ft", init=str(tmp_path / "pre")))
    assert "\n" not in str(info.value) and not (tmp_path / "ft").exists()


def test_out_must_be_empty_or_a_finetuning_runs_own(caches, tmp_path):
    memes, _ = caches
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "important.txt").write_text("data")
    (foreign / "seed-0").mkdir()  # a fine-tuning run's own entry does not make the folder ours
    with pytest.raises(VlpipeError, match=r"--out .*foreign holds files that are not from a vlpipe "
                                          r"fine-tuning run \(important.txt\)"):
        finetune(_config(memes, foreign))
    assert sorted(p.name for p in foreign.iterdir()) == ["important.txt", "seed-0"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(VlpipeError, match="exists and is not a folder"):
        finetune(_config(memes, afile))


@pytest.mark.parametrize(("accuracies", "stops_after"), [
    # At its starting level (chance) for 5 epochs, one of them a lucky 0.55 (within the noise of a
    # 48-sample split: 2 standard errors = 0.144), then learning: patience counts only once the model
    # has left its starting level, so the run is not stopped at chance (it used to stop at epoch 5).
    ([0.5, 0.55, 0.5, 0.5, 0.5, 0.8, 0.9, 0.9, 0.9, 0.9], 10),
    ([0.5, 0.7, 0.7, 0.7, 0.7], 5),  # left its starting level, then 3 epochs without a better one: stops
    ([0.5, 0.6, 0.7, 0.7, 0.8], None),  # still improving: runs on
])
def test_early_stopping_waits_until_the_model_leaves_its_starting_level(caches, tmp_path, accuracies, stops_after):
    memes, _ = caches
    task = FinetuneTask(_config(memes, tmp_path / "es", patience=3, metric="accuracy", warmup=0.0), 0,
                        torch.device("cpu"), DistInfo())
    assert task.noise == pytest.approx(2 * (0.25 / 48) ** 0.5)
    task.cadence(steps_per_epoch=10)
    stopped = [task.after_eval({"accuracy": a}, epoch) for epoch, a in enumerate(accuracies, start=1)]
    assert (stopped.index(True) + 1 if True in stopped else None) == stops_after
    assert task.state["best"] == max(accuracies)


def test_early_stopping_does_not_count_epochs_inside_warmup(caches, tmp_path):
    memes, _ = caches
    task = FinetuneTask(_config(memes, tmp_path / "es", patience=1, metric="accuracy", warmup=0.5, epochs=10), 0,
                        torch.device("cpu"), DistInfo())
    task.cadence(steps_per_epoch=10)  # warmup: 50 of 100 steps = 5 epochs
    stopped = [task.after_eval({"accuracy": a}, epoch) for epoch, a in enumerate([0.5, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7], 1)]
    assert stopped == [False] * 5 + [True, True]
