"""benchmarks/gpu_check.py: the targets' evaluation, the JSON it leaves, and a failing or hanging check
recorded while the run goes on. The whole `--smoke` run takes about 3 minutes on 2 shared cores, too
long for CI; benchmarks/results/gpu_check_smoke/ holds one (RESULTS.md); these tests cover its pieces."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402  (a script in benchmarks/, imported as the other benchmark tests do)


def _step(rate: float, wait: float, compiled: bool = True) -> dict:
    return {"ok": True, "result": {"preset": "base", "samples_per_s": rate, "data_wait_share": wait,
                                   "compile": compiled, "peak_gpu_mem_gib": 30.0}}


def _seed(eager: float | None, compiled: float | None) -> dict:
    rows = {mode: ({"samples_per_s": rate} if rate else {"error": "OOM"})
            for mode, rate in (("eager", eager), ("compiled", compiled))}
    return {"ok": True, "result": rows}


def test_targets_compare_the_step_with_the_seed_architecture_in_the_same_mode():
    speed, wait = gpu_check.evaluate({"step_mlm_ap_mim": _step(2100, 0.01), "seed_architecture": _seed(1150, 1700)},
                                     smoke=False)
    assert speed["reference"] == 1700 and speed["measured"] == pytest.approx(2100 / 1700) and speed["met"] is True
    assert "base MLM+AP+MIM compiled" in speed["target"]
    assert wait["measured"] == 0.01 and wait["met"] is True and wait["not_evaluated_because"] is None

    speed, wait = gpu_check.evaluate({"step_mlm_ap_mim": _step(1900, 0.03), "seed_architecture": _seed(1150, 1700)},
                                     smoke=True)
    assert speed["met"] is False and wait["met"] is False and speed["smoke"] is True
    # eager against eager, never against the compiled seed figure
    speed, _ = gpu_check.evaluate({"step_mlm_ap_mim": _step(1500, 0.0, compiled=False),
                                   "seed_architecture": _seed(1000, 1700)}, smoke=True)
    assert speed["reference"] == 1000 and speed["met"] is True


def test_targets_not_evaluated_say_why():
    speed, wait = gpu_check.evaluate({"step_mlm_ap_mim": _step(2100, 0.01), "seed_architecture": _seed(1150, None)},
                                     smoke=False)
    assert speed["met"] is None and "compiled step has no figure" in speed["not_evaluated_because"]
    assert wait["met"] is True
    failed = {"step_mlm_ap_mim": {"ok": False, "error": "CUDA out of memory"}, "seed_architecture": _seed(1, 2)}
    for target in gpu_check.evaluate(failed, smoke=False):
        assert target["met"] is None and "step_mlm_ap_mim failed" in target["not_evaluated_because"]


def test_figures_put_each_step_beside_the_seed_step_of_its_mode():
    figures = gpu_check.figures({"step_mlm_ap_mim": _step(2000, 0.01), "step_mlm_ap": _step(2500, 0.0),
                                 "seed_architecture": _seed(1000, 1600)})
    assert figures["step_mlm_ap"]["x_seed_architecture"] == pytest.approx(2500 / 1600)
    assert figures["step_jpeg"] == {"samples_per_s": None, "data_wait_share": None, "peak_gpu_mem_gib": None,
                                    "compile": None, "x_seed_architecture": None}
    assert figures["seed_architecture_samples_per_s"] == {"eager": 1000, "compiled": 1600}


@pytest.mark.parametrize(("full_vs_again", "resumed", "verdict"), [
    (None, 0.0, "bitwise equal"),
    (0.0, 1e-6, "NOT exact"),
    (1e-3, 2e-3, "within run-to-run noise"),
    (1e-6, 1e-2, "BEYOND run-to-run noise"),
])
def test_resume_verdict(full_vs_again, resumed, verdict):
    def compared(diff: float) -> dict:
        return {"bitwise_equal": diff == 0, "model": {"max_abs_diff": diff}, "teacher": {"max_abs_diff": diff / 2}}

    result = {"resumed_vs_uninterrupted": compared(resumed)}
    if full_vs_again is not None:
        result["uninterrupted_vs_uninterrupted"] = compared(full_vs_again)
    assert gpu_check.resume_verdict(result).startswith(verdict)


def test_vocabulary_has_bert_base_size(tmp_path):
    from vlpipe.text import load_tokenizer

    tokenizer = load_tokenizer(str(gpu_check.write_vocab(tmp_path / "vocab.txt")))
    assert tokenizer.vocab_size == gpu_check.BERT_BASE_VOCAB == 30522
    ids, lengths = tokenizer.encode_batch(["a red dog near the river"], 16)
    assert lengths[0] == 8 and tokenizer.unk_id not in ids[0, : lengths[0]].tolist()


def test_every_part_file_and_the_summary_carry_command_environment_and_checks(tmp_path):
    checks = {"data": {"ok": True, "seconds": 1.0, "result": {"samples": 4}},
              "step_mlm_ap_mim": {**_step(2100, 0.01), "seconds": 9.0},
              "step_jpeg": {"ok": False, "seconds": 0, "error": "skipped: the 480 s budget was spent"}}
    env = {"gpu": "NVIDIA H100 80GB HBM3, 81559 MiB, 580.159.04", "torch": "2.11.0+cu130"}
    summary = gpu_check.write_outputs(tmp_path, checks, env, "python3 benchmarks/gpu_check.py --out x", smoke=False,
                                      budget=480, seconds=12.0)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["0_data.json", "1_seed_architecture.json", "2_pretrain_step.json", "3_cuda_checks.json",
                     "4_jpeg.json", "summary.json"]
    part = json.loads((tmp_path / "4_jpeg.json").read_text())
    assert part["command"] == "python3 benchmarks/gpu_check.py --out x" and part["environment"] == env
    assert part["checks"] == {"step_jpeg": checks["step_jpeg"]} and part["smoke"] is False
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["checks"]["step_jpeg"]["error"].startswith("skipped")
    assert summary["targets"][1]["met"] is True and summary["exact_resume"] is None


def test_a_failing_check_is_recorded_and_the_next_one_runs(tmp_path, capsys):
    """No cache in --work: both checks fail in their own processes; each failure is recorded, nothing stops."""
    code = gpu_check.main(["--smoke", "--checks", "nvjpeg_decode,step_jpeg", "--work", str(tmp_path / "w"),
                           "--out", str(tmp_path / "o")])
    assert code == 0
    part = json.loads((tmp_path / "o" / "4_jpeg.json").read_text())
    assert set(part["checks"]) == {"nvjpeg_decode", "step_jpeg"}
    for check in part["checks"].values():
        assert check["ok"] is False and check["error"] == f"RuntimeError: no cache in {tmp_path / 'w'}: the data check did not finish"
    assert part["environment"]["torch"] and "step_jpeg: FAILED" in capsys.readouterr().out
    assert "Traceback" in (tmp_path / "o" / "gpu_check.log").read_text()

    gpu_check.main(["--smoke", "--checks", "data", "--budget-s", "0", "--work", str(tmp_path / "w"),
                    "--out", str(tmp_path / "o2")])
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["checks"] == {"data": {"ok": False, "seconds": 0, "error": "skipped: the 0 s budget was spent"}}


def test_a_check_past_its_limit_is_killed_and_recorded(tmp_path):
    args = argparse.Namespace(work=tmp_path, runs=tmp_path / "runs", smoke=True)
    (tmp_path / "checks").mkdir()
    with open(tmp_path / "log", "w") as log:
        record = gpu_check.run_child("data", 0.3, args, log)
    assert record["ok"] is False and record["error"] == "timed out after 0 s and was killed"
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").glob("*.tar"))


def test_unknown_check_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown check"):
        gpu_check.main(["--checks", "seed,data", "--work", str(tmp_path), "--out", str(tmp_path / "o")])
