"""DDP through torchrun on the CPU (gloo, 2 processes): disjoint data, identical weights after a step."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlpipe.train.distributed import DistInfo, init_distributed

WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    from safetensors.torch import save_file
    torch.set_num_threads(1)
    from vlpipe.train.config import PretrainConfig
    from vlpipe.train.pretrain import pretrain

    cache, out, record = sys.argv[1:4]
    rank = int(os.environ["RANK"])

    def hook(info):
        json.dump([int(i) for t in info.indices for i in t], open(f"{record}/indices{rank}.json", "w"))
        save_file({n: p.detach().clone() for n, p in info.model.named_parameters()},
                  f"{record}/weights{rank}.safetensors")

    result = pretrain(PretrainConfig(cache=cache, out=out, steps=1, batch_size=6, workers=1, live=False,
                                     plots=False, device="cpu", lr=1e-3, warmup=0), on_step=hook)
    json.dump({"steps": result.steps, "val": result.val}, open(f"{record}/result{rank}.json", "w"))
''')


FINETUNE_WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    from safetensors.torch import save_file
    torch.set_num_threads(1)
    from vlpipe.train.config import FinetuneConfig
    from vlpipe.train.finetune import finetune

    cache, out, record = sys.argv[1:4]
    rank = int(os.environ["RANK"])
    seen = []

    def hook(info):
        seen.append([int(i) for t in info.indices for i in t])
        save_file({n: p.detach().clone() for n, p in info.model.named_parameters()},
                  f"{record}/weights{rank}-{info.step}.safetensors")

    result = finetune(FinetuneConfig(cache=cache, out=out, epochs=2, batch_size=4, workers=1, live=False,
                                     plots=False, device="cpu", lr=1e-3, warmup=0, seeds=(0,)), on_step=hook)
    json.dump({"seen": seen, "summary": result.summary}, open(f"{record}/result{rank}.json", "w"))
''')


def test_single_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info, device = init_distributed("cpu")
    assert info == DistInfo() and info.is_main and not info.enabled and device.type == "cpu"


def _torchrun_two(worker: str, tmp_path: Path) -> Path:
    """Run `worker` (a script's source) under torchrun with 2 CPU processes on tmp_path/cache, writing
    tmp_path/run; returns the folder where the workers record what each rank saw."""
    script = tmp_path / "worker.py"
    script.write_text(worker)
    record = tmp_path / "record"
    record.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
         str(tmp_path / "cache"), str(tmp_path / "run"), str(record)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return record


@pytest.mark.slow
def test_two_cpu_processes_shard_data_and_stay_identical(tmp_path):
    import json

    from vlpipe.cache.writer import build_cache
    from vlpipe.demo.synth import make_dataset

    captions = make_dataset(tmp_path / "src", n=40, seed=1, image_size=32)
    build_cache(captions, tmp_path / "cache", image_size=32, patch_size=8, max_len=16, tokenizer="wordpiece:200",
                val_fraction=0.1, processes=1, quiet=True)
    record = _torchrun_two(WORKER, tmp_path)
    seen = [set(json.loads((record / f"indices{r}.json").read_text())) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 6 and not seen[0] & seen[1]
    w0, w1 = (load_file(record / f"weights{r}.safetensors") for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    # rank 0 wrote the checkpoint; it holds exactly those weights
    saved = load_file(tmp_path / "run" / "checkpoints" / "step_00000001" / "model.safetensors")
    params = {k.removeprefix("module."): v for k, v in w0.items()}  # the hook may see the DDP wrapper
    assert params and params.keys() <= saved.keys()  # every trained parameter is in the checkpoint
    assert all(torch.equal(saved[k], params[k]) for k in params)
    results = [json.loads((record / f"result{r}.json").read_text()) for r in (0, 1)]
    assert results[0]["steps"] == results[1]["steps"] == 1
    assert results[0]["val"]["samples"] > 0 and results[1]["val"] == {}  # only rank 0 evaluates


@pytest.mark.slow
def test_finetuning_runs_ddp_too(tmp_path):
    """`torchrun ... train finetune` trains one run on disjoint shares, not two runs over one folder."""
    import json

    from PIL import Image

    from vlpipe.cache.writer import build_cache

    rows = []
    (tmp_path / "img").mkdir()
    for i in range(40):
        Image.new("RGB", (16, 16), (200 if i % 2 else 20, 90, 90)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "caption": f"picture {i}", "label": i % 2})
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_cache(tmp_path / "labels.jsonl", tmp_path / "cache", image_size=16, patch_size=8, max_len=8,
                tokenizer="wordpiece:60", label_column="label", val_fraction=0.2, processes=1, quiet=True)
    record = _torchrun_two(FINETUNE_WORKER, tmp_path)
    results = [json.loads((record / f"result{r}.json").read_text()) for r in (0, 1)]
    per_epoch = len(results[0]["seen"]) // 2  # 2 epochs
    seen = [{i for step in r["seen"][:per_epoch] for i in step} for r in results]
    assert seen[0] and seen[1] and not seen[0] & seen[1]  # within an epoch, each rank trains on its own share
    steps = sorted(int(p.stem.split("-")[1]) for p in record.glob("weights0-*.safetensors"))
    assert steps and steps == sorted(int(p.stem.split("-")[1]) for p in record.glob("weights1-*.safetensors"))
    for step in steps:  # gradients are averaged: both ranks hold the same weights after every step
        w0, w1 = (load_file(record / f"weights{r}-{step}.safetensors") for r in (0, 1))
        assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert results[0]["summary"]["seeds"] == [0] and results[1]["summary"] == {}  # rank 0 reports, once
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["runs"]["0"]["steps"] == steps[-1]
    assert (tmp_path / "run" / "seed-0" / "best.safetensors").exists()
