"""The training loop survives what really stops runs: SIGKILL between checkpoints or in the middle of
writing one, and Ctrl-C / a scheduler's SIGTERM (a checkpoint first). Each is a real `vlpipe train
pretrain` process; `--resume` with the same command must end with exactly the weights of a run
that was never interrupted (the CPU is deterministic)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cachegen
import pytest
import torch
from safetensors.torch import load_file

STEPS, EVERY = 160, 40
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return cachegen.captioned_cache(tmp_path_factory.mktemp("loop"), n=48, seed=3, val_fraction=0.2)


def _command(cache: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vlpipe.cli.main", "train", "pretrain", "--cache", str(cache), "--out", str(out),
            "--steps", str(STEPS), "--ckpt-every", str(EVERY), "--log-every", "1", "--batch-size", "4",
            "--workers", "1", "--no-live", "--device", "cpu", "--no-plots", "--seed", "5", *extra]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors")


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.run(_command(cache, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return _final_weights(out)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before the test could stop it"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.01)


def _resume_and_compare(cache: Path, out: Path, reference: dict[str, torch.Tensor]) -> str:
    proc = subprocess.run(_command(cache, out, "--resume"), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    weights = _final_weights(out)
    assert weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in weights)
    return proc.stdout


def test_sigkill_between_checkpoints_then_resume_is_exact(cache, reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_command(cache, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (out / "checkpoints" / "latest.json").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stdout = _resume_and_compare(cache, out, reference)
    assert f"resuming {out} from step {EVERY} of {STEPS}" in stdout
    assert f"trained {STEPS - EVERY} steps ({EVERY} -> {STEPS})" in stdout


def test_sigkill_while_a_checkpoint_is_written_then_resume_is_exact(cache, reference, tmp_path):
    out = tmp_path / "run"
    # Each checkpoint pauses halfway (model written, teacher and optimizer not yet): the test kills
    # the process inside the second one, after the first is complete.
    proc = subprocess.Popen(_command(cache, out), env=_env(VLPIPE_TEST_CHECKPOINT_PAUSE="2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = out / "checkpoints"
    _wait_for(lambda: (checkpoints / "latest.json").exists() and any(
        p.name.startswith(".tmp-") and (p / "model.safetensors").exists() for p in checkpoints.iterdir()), proc)
    half = next(p for p in checkpoints.iterdir() if p.name.startswith(".tmp-"))
    assert (half / "model.safetensors").exists() and not (half / "state.json").exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _resume_and_compare(cache, out, reference)


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_checkpoints_first_and_says_how_to_resume(cache, reference, tmp_path, number):
    out = tmp_path / "run"
    proc = subprocess.Popen(_command(cache, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(lambda: (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size > 0, proc)
    proc.send_signal(number)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + number, err
    step = int(err.split("interrupted at step ")[1].split(" ")[0])
    assert 0 < step < STEPS and f"saved {out / 'checkpoints' / f'step_{step:08d}'}" in err
    assert "continue it with:" in err and "--resume" in err.splitlines()[-1]
    assert (out / "checkpoints" / f"step_{step:08d}" / "state.json").exists()
    _resume_and_compare(cache, out, reference)
