"""The training loop on a real (small) cache: exact resume, NaN stop, accumulation, fixed eval."""

import json

import cachegen
import pytest
import torch
from safetensors.torch import load_file

from vlpipe.errors import VlpipeError
from vlpipe.train.config import PretrainConfig
from vlpipe.train.metrics_log import read_metrics
from vlpipe.train.pretrain import pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    """48 synthetic captioned images, 32 px with 8 px patches: a real cache in a second or two."""
    return cachegen.captioned_cache(tmp_path_factory.mktemp("train_cache"), n=48, seed=0, val_fraction=0.2)



def _config(cache, out, **kw):
    base = dict(cache=str(cache), out=str(out), steps=6, batch_size=8, lr=1e-3, log_every=1, workers=1,
                live=False, plots=False, eval_batch_size=8)
    return PretrainConfig(**(base | kw))


def _train_losses(run):
    return [(r["step"], r["loss"], r.get("mlm_loss"), r.get("ap_loss"), r.get("mim_loss"))
            for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]


def _weights(run, step):
    return load_file(run / "checkpoints" / f"step_{step:08d}" / "model.safetensors")


def test_resume_after_crash_equals_uninterrupted_run(small_cache, tmp_path):
    full = pretrain(_config(small_cache, tmp_path / "full", ckpt_every=3))

    def crash(info):
        if info.step == 5:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(_config(small_cache, tmp_path / "cut", ckpt_every=3), on_step=crash)
    assert [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")][-1] == 4  # step 4 was logged after the step-3 checkpoint: it must be redone
    # Settings that change what is trained must stay; how it runs (workers, logging) may change.
    with pytest.raises(VlpipeError, match=r"trained with other settings \(lr 0.001 -> 0.002, seed 0 -> 1\)"):
        pretrain(_config(small_cache, tmp_path / "cut", ckpt_every=3, resume=True, lr=2e-3, seed=1))
    redone: list[int] = []
    resumed = pretrain(_config(small_cache, tmp_path / "cut", ckpt_every=3, resume=True, workers=2),
                       on_step=lambda info: redone.append(info.step))
    # A true resume: it goes on from the step-3 checkpoint (a rerun from scratch would give the same
    # losses and weights, since training is deterministic).
    assert redone == [4, 5, 6]
    assert resumed.steps == full.steps == 6
    assert _train_losses(tmp_path / "cut") == _train_losses(tmp_path / "full")
    a, b = _weights(tmp_path / "full", 6), _weights(tmp_path / "cut", 6)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.val == {k: v for k, v in full.val.items() if k != "eval_seconds"} | {
        "eval_seconds": resumed.val["eval_seconds"]}
    # the run really trained: weights moved away from the initialisation of a fresh run
    init = pretrain(_config(small_cache, tmp_path / "zero", steps=1, lr=1e-9, warmup=0))
    assert init.steps == 1
    assert any(not torch.allclose(a[k], _weights(tmp_path / "zero", 1)[k]) for k in a)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(small_cache, tmp_path):
    def poison(info):
        if info.step == 3:
            with torch.no_grad():
                next(info.model.parameters()).fill_(float("nan"))

    with pytest.raises(VlpipeError, match="NaN/inf by step 4.*step_00000002"):
        pretrain(_config(small_cache, tmp_path, steps=8, ckpt_every=2, log_every=3), on_step=poison)
    pointer = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert pointer["step"] == 2
    assert all(torch.isfinite(t).all() for t in _weights(tmp_path, 2).values())


def test_existing_run_needs_resume(small_cache, tmp_path):
    pretrain(_config(small_cache, tmp_path, steps=1))
    with pytest.raises(VlpipeError, match="--resume"):
        pretrain(_config(small_cache, tmp_path, steps=1))


def test_accumulation_counts_optimizer_steps_and_epochs(small_cache, tmp_path):
    seen = []
    result = pretrain(_config(small_cache, tmp_path, steps=None, epochs=2, grad_accum=2, tasks=("mlm", "ap"),
                              warmup=0.5), on_step=lambda info: seen.append([len(i) for i in info.indices]))
    config = json.loads((tmp_path / "config.json").read_text())
    per_epoch = config["steps_per_epoch"]
    # ~38 train samples / batch 8 = 4 micro-batches = 2 optimizer steps per epoch
    assert config["pretrain"]["batch_size"] == 8 and per_epoch == 2
    assert result.steps == config["total_steps"] == 2 * per_epoch == len(seen)
    assert all(sizes == [8, 8] for sizes in seen)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert lrs[0] == pytest.approx(1e-3 / 2)  # warmup is half of the 4 optimizer steps, not of 8 micro-batches
    assert lrs[1] == pytest.approx(1e-3)
    assert "mim_loss" not in result.val and 0 <= result.val["ap_acc"] <= 1


def test_validation_is_fixed_across_runs_and_epochs(small_cache, tmp_path):
    a = pretrain(_config(small_cache, tmp_path / "a", steps=2, lr=1e-9, warmup=0, seed=1, eval_every=1))
    b = pretrain(_config(small_cache, tmp_path / "b", steps=2, lr=1e-9, warmup=0, seed=1, eval_every=1))
    vals = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if r["split"] == "val"]
    assert len(vals) == 2
    # lr ~ 0: same weights at both evaluations, so fixed masks and negatives give identical numbers
    for key in ("mlm_loss", "ap_loss", "mim_loss", "mlm_acc", "mim_top1"):
        assert vals[0][key] == pytest.approx(vals[1][key], rel=1e-5)
        assert a.val[key] == b.val[key]
    assert a.val["samples"] == b.val["samples"] > 0


def test_loader_modes_train_identically_across_epochs_and_leave_no_workers(small_cache, tmp_path):
    """The threads loader keeps its threads for the whole run (several epochs) and stops them at the end."""
    import threading

    # 48 samples, ~38 in train: 8 steps of batch 8 run through two epochs.
    threads = pretrain(_config(small_cache, tmp_path / "threads", steps=8, loader_mode="threads", workers=2))
    inline = pretrain(_config(small_cache, tmp_path / "inline", steps=8, loader_mode="inline"))
    assert threads.steps == inline.steps == 8
    assert _train_losses(tmp_path / "threads") == _train_losses(tmp_path / "inline")
    a, b = _weights(tmp_path / "threads", 8), _weights(tmp_path / "inline", 8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not [t for t in threading.enumerate() if t.name.startswith("vlpipe-gather")]


def test_jpeg_cache_trains_the_same_decoded_by_the_loader_or_on_the_device(tmp_path):
    """--jpeg-decode device hands compressed batches to the loop, which decodes them with torchvision
    (on the CPU here, nvJPEG on CUDA): the same pixels as the loader's threads, so the same run."""
    cache = cachegen.captioned_cache(tmp_path / "jpeg", n=48, seed=0, val_fraction=0.2, codec="jpeg")
    for decode in ("cpu", "device"):
        pretrain(_config(cache, tmp_path / decode, steps=4, jpeg_decode=decode, workers=2))
    assert _train_losses(tmp_path / "cpu") == _train_losses(tmp_path / "device")
    a, b = _weights(tmp_path / "cpu", 4), _weights(tmp_path / "device", 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "device/config.json").read_text())["pretrain"]["jpeg_decode"] == "device"


def test_resume_from_a_state_missing_trainer_fields_is_a_clear_error(small_cache, tmp_path):
    pretrain(_config(small_cache, tmp_path, steps=2, ckpt_every=1))
    state_file = tmp_path / "checkpoints" / "step_00000002" / "state.json"
    state = json.loads(state_file.read_text())
    del state["sampler"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(VlpipeError, match=r"step_00000002/state.json: not a valid checkpoint \(missing or bad 'sampler'\)"):
        pretrain(_config(small_cache, tmp_path, steps=2, ckpt_every=1, resume=True))


def test_a_cache_without_validation_samples_trains_with_one_warning_naming_it(tmp_path, capsys):
    cache = cachegen.captioned_cache(tmp_path / "noval", n=24, seed=1, val_fraction=0.0)
    result = pretrain(_config(cache, tmp_path / "run", steps=2))
    assert result.steps == 2 and result.val == {}
    lines = capsys.readouterr().err.splitlines()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and str(cache) in warnings[0] and "--val-fraction" in warnings[0]


def test_cpu_threads_are_set_for_the_run_recorded_and_given_back(small_cache, tmp_path):
    """The process-wide torch thread count is the run's while it trains and the caller's again after."""
    seen = []
    torch.set_num_threads(2)  # the fixture's 1 comes back after the test
    pretrain(_config(small_cache, tmp_path / "one", steps=2, cpu_threads=1),
             on_step=lambda info: seen.append(torch.get_num_threads()))
    assert seen == [1, 1] and torch.get_num_threads() == 2
    record = json.loads((tmp_path / "one" / "config.json").read_text())
    # auto on the CPU: the inline loader, no gather threads beside torch's
    assert record["threads"] == {"torch_threads": 1, "loader_mode": "inline", "loader_threads": 0}
    assert record["pretrain"]["loader_mode"] == "auto"
