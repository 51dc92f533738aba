"""benchmarks/bench_model_step.py runs end to end in its CPU smoke mode and reports sane numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_model_step_smoke():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_model_step.py"), "--smoke", "--no-compile"],
                          capture_output=True, text=True, env=env, timeout=300, check=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    steps = {r["model"]: r for r in rows if r["bench"] == "vit_step"}
    assert set(steps) == {"timm_vit_base_patch16_224", "vlpipe_vit_b16_uint8"}
    assert all(r["samples_per_s"] > 0 and r["loss"] > 0 for r in steps.values())
    base = next(r for r in rows if r["bench"] == "base_compile")
    assert base["graph_breaks"] == 0 and base["graphs"] == 1
