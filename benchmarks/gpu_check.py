"""Prove the GPU path in one run: vlpipe's pretraining step against the seed's architecture
measured beside it, the data-wait share, the CUDA-only tests, exact resume, and nvJPEG.

    bash benchmarks/gpu_check.sh                           # on the GPU machine (installs the carried wheels)
    python benchmarks/gpu_check.py --out DIR               # the same, once vlpipe's dependencies are there
    python benchmarks/gpu_check.py --smoke --out DIR       # CPU, toy sizes, a few minutes: checks the script

Every check runs in its own process, one after the other, so a crash, an out-of-memory error or a
hang (killed at the check's time limit) costs that check alone and the GPU is empty for the next:

 0 data               synthetic CC-like img2dataset shards -> a raw and a JPEG cache (224 px, 16 px
                      patches, 64 tokens, a vocabulary of BERT-base's 30,522 tokens)
 1 seed_architecture  benchmarks/seed_architecture_step.py, batch 128, text length 64, eager + compiled
 2 step_mlm_ap_mim    vlpipe `base`, MLM + AP + contrastive MIM (EMA teacher), bf16, compiled, batch 128,
                      fed by CacheLoader (threads) from the raw cache: samples/s, peak memory, data wait
   step_mlm_ap        the same with MLM + AP only: like for like with the seed architecture
 3 cuda_tests         `pytest -m cuda` over the test modules that hold such tests
   exact_resume       a `base` run SIGKILLed after a checkpoint and resumed vs an uninterrupted run
 4 nvjpeg_decode      batched nvJPEG decode (vlpipe/cache/device_decode.py) at batch 256
   step_jpeg          check 2's step fed from the JPEG cache, decoded on the GPU: the data-wait share

It writes into --out (default $OUT): one JSON per part (`0_data.json` ... `4_jpeg.json`), each with
the GPU, the versions, the exact command and every check's result or error; `summary.json` with the
targets of the issue evaluated (met / not met / not evaluated, and why); `gpu_check.log`, all output.
Checks that would start after --budget-s are skipped and say so. `--smoke` runs every check on the
CPU at toy sizes (tiny preset, fp32, no compile, nvJPEG replaced by torchvision's CPU decode): its
verdicts test the script, not the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
SEED_ANCHOR_H200 = 1677  # seed architecture, compiled, L 64, H200: results/anchors/seed-architecture-step-h200.jsonl
SPEEDUP_TARGET, DATA_WAIT_TARGET = 1.2, 0.02
BERT_BASE_VOCAB = 30522
PARTS = {0: "data", 1: "seed_architecture", 2: "pretrain_step", 3: "cuda_checks", 4: "jpeg"}
# (check, part, time limit in seconds), in the order they run: the targets' measurements first.
CHECKS = [("data", 0, 150), ("seed_architecture", 1, 210), ("step_mlm_ap_mim", 2, 180), ("step_mlm_ap", 2, 170),
          ("cuda_tests", 3, 100), ("exact_resume", 3, 150), ("nvjpeg_decode", 4, 60), ("step_jpeg", 4, 150)]
NEEDS_DATA = {name for name, _, _ in CHECKS} - {"data", "seed_architecture"}


@dataclass(frozen=True)
class Sizes:
    samples: int
    per_shard: int
    image_size: int
    patch_size: int
    max_len: int
    preset: str
    batch: int
    window: int  # optimizer steps per logging window; the first window (compilation) is not measured
    windows: int
    compile: bool
    precision: str
    workers: int
    seed_size: str
    seed_steps: int
    seed_warm: int
    resume_batch: int
    resume_steps: int
    resume_ckpt_every: int
    decode_batch: int
    decode_rounds: int


FULL = Sizes(4096, 256, 224, 16, 64, "base", 128, 10, 3, True, "bf16", 4, "base", 10, 3, 32, 8, 4, 256, 20)
SMOKE = Sizes(96, 32, 64, 8, 16, "tiny", 8, 2, 2, False, "fp32", 2, "tiny", 2, 1, 8, 12, 3, 16, 2)


# -- the checks (each runs in a child process: gpu_check.py --check NAME) ----------------------------------


def check_data(s: Sizes, work: Path, runs: Path) -> dict[str, Any]:
    from bench_dataloader import make_shards_parallel

    from vlpipe.cache.format import load_manifest
    from vlpipe.cache.writer import build_cache

    cpus, raw, result = os.cpu_count() or 1, work / "raw", {}
    began = time.perf_counter()
    if len(list(raw.glob("*.tar"))) != -(-s.samples // s.per_shard):  # a rerun reuses the shards
        make_shards_parallel(raw, s.samples, s.per_shard, cpus)
    result["generate_s"] = round(time.perf_counter() - began, 1)
    vocab = write_vocab(work / "vocab.txt")
    for codec in ("raw", "jpeg"):
        began = time.perf_counter()
        build_cache(raw, work / f"cache-{codec}", codec=codec, image_size=s.image_size, patch_size=s.patch_size,
                    max_len=s.max_len, tokenizer=str(vocab), val_fraction=0.03, processes=cpus, quiet=True)
        manifest = load_manifest(work / f"cache-{codec}")
        size = sum(f.stat().st_size for f in (work / f"cache-{codec}").rglob("*") if f.is_file())
        result[f"cache_{codec}"] = {"build_s": round(time.perf_counter() - began, 1), "bytes": size,
                                    "splits": manifest.splits, "vocab_size": manifest.text.vocab_size}
    return {**result, "samples": s.samples, "shards": -(-s.samples // s.per_shard), "processes": cpus,
            "image_size": s.image_size, "patch_size": s.patch_size, "max_len": s.max_len}


def write_vocab(path: Path) -> Path:
    """A WordPiece vocab.txt of BERT-base's size: the captions' words, then filler, so that the model's
    embedding table and MLM head are as large as the seed architecture's."""
    from bench_dataloader import WORDS

    from vlpipe.text.specs import BERT_SPECIAL_TOKENS

    tokens = list(dict.fromkeys([*BERT_SPECIAL_TOKENS, *sorted(WORDS), *"abcdefghijklmnopqrstuvwxyz"]))
    tokens += [f"[unused{i}]" for i in range(BERT_BASE_VOCAB - len(tokens))]
    path.write_text("\n".join(tokens) + "\n")
    return path


def check_seed_architecture(s: Sizes, work: Path, runs: Path) -> dict[str, Any]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    modes = ["eager", "compiled"] if s.compile else ["eager"]
    cmd = [sys.executable, str(ROOT / "benchmarks/seed_architecture_step.py"), "--batch", str(s.batch),
           *[a for mode in modes for a in ("--run", f"{mode}:{s.max_len}")], "--steps", str(s.seed_steps),
           "--warm", str(s.seed_warm), "--device", device, "--size", s.seed_size,
           "--precision", "bf16" if device == "cuda" else "fp32"]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    result: dict[str, Any] = {"command": shlex.join(["python3", *cmd[1:]]), "returncode": proc.returncode,
                              "lines": lines}
    for mode in ("eager", "compiled"):
        row = next((r for r in lines if r.get("bench") == f"seedarch_{mode}_L{s.max_len}"), None)
        result[mode] = row if row is not None else {"error": "not run: --smoke runs eager only"}
    if proc.returncode != 0 or not any("samples_per_s" in r for r in lines):
        raise RuntimeError(f"seed_architecture_step.py exited {proc.returncode}: {lines[-1:] or 'no output'}")
    return result


def check_step(s: Sizes, runs: Path, cache: Path, tasks: tuple[str, ...], name: str) -> dict[str, Any]:
    from bench_pretrain_step import measure_pretrain

    run = runs / name
    shutil.rmtree(run, ignore_errors=True)
    try:
        return measure_pretrain(cache, run, preset=s.preset, batch_size=s.batch, window=s.window, windows=s.windows,
                                precision=s.precision, compile=s.compile, workers=s.workers, tasks=tasks)
    finally:  # a base checkpoint is 4.5 GB
        shutil.rmtree(run, ignore_errors=True)


def check_cuda_tests(s: Sizes, work: Path, runs: Path) -> dict[str, Any]:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "pytest.mark.cuda" in p.read_text(encoding="utf-8"))
    junit = work / "cuda_tests.xml"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-q", f"--junitxml={junit}", *files]
    proc = subprocess.run(cmd, cwd=ROOT, check=False)
    tests = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}",
                      "outcome": outcome.tag if outcome is not None else "passed",
                      "message": (outcome.get("message") or "")[:300] if outcome is not None else None})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failure", "error", "skipped")}
    return {"command": shlex.join(["python3", *cmd[1:]]), "returncode": proc.returncode, **counts, "tests": tests}


def check_exact_resume(s: Sizes, work: Path, runs: Path) -> dict[str, Any]:
    from vlpipe.train.checkpoint import checkpoint_name, latest_checkpoint

    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "vlpipe.cli.main", "train", "pretrain", "--cache", str(work / "cache-raw"),
                "--out", str(out), "--preset", s.preset, "--steps", str(s.resume_steps), "--batch-size",
                str(s.resume_batch), "--ckpt-every", str(s.resume_ckpt_every), "--keep-checkpoints", "1",
                "--log-every", "1", "--eval-max-batches", "1", "--no-live", "--no-plots", "--workers", "2", *extra]

    for name in ("full", "cut", "again"):
        shutil.rmtree(runs / f"resume-{name}", ignore_errors=True)
    try:
        subprocess.run(command(runs / "resume-full"), cwd=ROOT, check=True)
        # Killed once a step after the first checkpoint is logged: that step is lost and must be redone.
        cut = subprocess.Popen(command(runs / "resume-cut"), cwd=ROOT)
        while cut.poll() is None and not _past_checkpoint(runs / "resume-cut"):
            time.sleep(0.01)
        killed = cut.poll() is None
        if killed:
            cut.send_signal(signal.SIGKILL)
        cut.wait()
        kept = latest_checkpoint(runs / "resume-cut")
        if not killed or kept is None or kept.name == checkpoint_name(s.resume_steps):
            raise RuntimeError(f"the run to be killed ended first (exit {cut.returncode}); raise resume_steps")
        killed_after = max(_train_losses(runs / "resume-cut"), default=0)
        subprocess.run(command(runs / "resume-cut", "--resume"), cwd=ROOT, check=True)
        result: dict[str, Any] = {"command_uninterrupted": shlex.join(["python3", *command(runs / "resume-full")[1:]]),
                                  "killed_with": "SIGKILL", "steps": s.resume_steps,
                                  "killed_after_logged_step": killed_after,
                                  "resumed_from": kept.name if kept else None,
                                  "resumed_vs_uninterrupted": compare_runs(runs / "resume-full", runs / "resume-cut")}
        if not result["resumed_vs_uninterrupted"]["bitwise_equal"]:
            # Is it the resume, or does CUDA differ run to run anyway? Two uninterrupted runs tell.
            subprocess.run(command(runs / "resume-again"), cwd=ROOT, check=True)
            result["uninterrupted_vs_uninterrupted"] = compare_runs(runs / "resume-full", runs / "resume-again")
        result["verdict"] = resume_verdict(result)
        return result
    finally:
        for name in ("full", "cut", "again"):
            shutil.rmtree(runs / f"resume-{name}", ignore_errors=True)


def _past_checkpoint(run: Path) -> bool:
    """A checkpoint exists and a later step has been logged."""
    from vlpipe.train.checkpoint import latest_checkpoint

    kept = latest_checkpoint(run)
    return kept is not None and max(_train_losses(run), default=0) > int(kept.name.rpartition("_")[2])


def _train_losses(run: Path) -> dict[int, float]:
    """Logged training loss by step (metrics.jsonl; a resumed run has dropped what followed its checkpoint)."""
    from vlpipe.train.metrics_log import read_metrics

    path = run / "metrics.jsonl"
    return {r["step"]: r["loss"] for r in read_metrics(path) if r["split"] == "train"} if path.exists() else {}


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """Final weights (student and EMA teacher) and logged training losses of two runs."""
    from safetensors.torch import load_file

    from vlpipe.train.checkpoint import latest_checkpoint

    ca, cb = latest_checkpoint(a), latest_checkpoint(b)
    if ca is None or cb is None or ca.name != cb.name:
        raise RuntimeError(f"final checkpoints differ: {ca} vs {cb}")
    result: dict[str, Any] = {"checkpoint": ca.name, "bitwise_equal": True}
    for stem in ("model", "teacher"):
        if not (ca / f"{stem}.safetensors").exists():
            continue
        wa, wb = load_file(ca / f"{stem}.safetensors"), load_file(cb / f"{stem}.safetensors")
        if wa.keys() != wb.keys():
            raise RuntimeError(f"{stem}.safetensors: other tensors in {ca} and {cb}")
        diffs = {k: float((wa[k].double() - wb[k].double()).abs().max()) if wa[k].numel() else 0.0 for k in wa}
        worst = max(diffs, key=diffs.__getitem__)
        unequal = sum(not wa[k].equal(wb[k]) for k in wa)
        result[stem] = {"tensors": len(wa), "tensors_not_equal": unequal, "max_abs_diff": diffs[worst],
                        "worst_tensor": worst}
        result["bitwise_equal"] &= unequal == 0
    la, lb = (_train_losses(run) for run in (a, b))
    result["train_losses_equal"] = la == lb
    result["max_abs_train_loss_diff"] = max((abs(x - y) for x, y in zip(la.values(), lb.values(), strict=False)),
                                            default=None)
    return result


def resume_verdict(result: dict[str, Any]) -> str:
    resumed = result["resumed_vs_uninterrupted"]
    if resumed["bitwise_equal"]:
        return "bitwise equal: the resumed run ends with exactly the uninterrupted run's weights"
    noise = result.get("uninterrupted_vs_uninterrupted")
    worst = max(resumed[k]["max_abs_diff"] for k in ("model", "teacher") if k in resumed)
    if noise is None:
        return f"not bitwise equal (max |diff| {worst:.3g}); no second uninterrupted run to compare"
    floor = max(noise[k]["max_abs_diff"] for k in ("model", "teacher") if k in noise)
    if noise["bitwise_equal"]:
        return (f"NOT exact: two uninterrupted runs are bitwise equal but the resumed run differs "
                f"(max |diff| {worst:.3g}): resume loses state on this device")
    within = worst <= 4 * floor
    return (f"{'within' if within else 'BEYOND'} run-to-run noise: two uninterrupted runs already differ by up "
            f"to {floor:.3g} (non-deterministic CUDA kernels, e.g. atomic adds in backward passes), the resumed "
            f"run by {worst:.3g} (criterion: at most 4x that)")


def check_nvjpeg_decode(s: Sizes, work: Path, runs: Path) -> dict[str, Any]:
    import torch

    from vlpipe.cache.device_decode import decode_batch
    from vlpipe.cache.reader import CacheDataset

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ds = CacheDataset(work / "cache-jpeg", split=None)
    b = s.decode_batch
    batches = [ds.gather(list(range(i * b, (i + 1) * b)), out=ds.new_batch(b, pin_memory=device == "cuda",
                                                                              encoded=True))
               for i in range(min(4, len(ds) // b))]

    def rate(target: str, rounds: int) -> float:
        for batch in batches[:2]:
            decode_batch(ds, batch, target)  # warm-up: nvJPEG's handles and buffers
        if target == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        for i in range(rounds):
            decode_batch(ds, batches[i % len(batches)], target)
        if target == "cuda":
            torch.cuda.synchronize()
        return b * rounds / (time.perf_counter() - began)

    sizes = [int(x["jpeg_offsets"][-1]) for x in batches]
    return {"device": device, "decoder": "nvJPEG (torchvision.io.decode_jpeg, device='cuda')" if device == "cuda"
            else "torchvision.io.decode_jpeg on the CPU (libjpeg-turbo): no GPU in this run",
            "batch": b, "rounds": s.decode_rounds, "mean_jpeg_bytes": sum(sizes) / (b * len(sizes)),
            "samples_per_s": rate(device, s.decode_rounds),
            "host_cpu_samples_per_s": rate("cpu", 2)}  # context: the same call decoding on the host


def run_check(name: str, s: Sizes, work: Path, runs: Path) -> dict[str, Any]:
    from vlpipe.train.masking import TASKS

    if name in NEEDS_DATA and not (work / "cache-raw" / "manifest.json").exists():
        raise RuntimeError(f"no cache in {work}: the data check did not finish")
    if name.startswith("step_"):
        tasks = ("mlm", "ap") if name == "step_mlm_ap" else TASKS
        return check_step(s, runs, work / ("cache-jpeg" if name == "step_jpeg" else "cache-raw"), tasks, name)
    checks = {"data": check_data, "seed_architecture": check_seed_architecture, "cuda_tests": check_cuda_tests,
              "exact_resume": check_exact_resume, "nvjpeg_decode": check_nvjpeg_decode}
    return checks[name](s, work, runs)


# -- the driver --------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """GPU, versions and host, read without creating a CUDA context in the driver."""
    import torch

    from vlpipe.bench.system import machine_info

    gpu = None
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False)
        gpu = smi.stdout.strip() or smi.stderr.strip()
    versions = {}
    for name in ("torchvision", "timm", "transformers", "simplejpeg", "pydantic", "tokenizers", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"gpu": gpu, "cuda_available": torch.cuda.is_available(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), **versions,
            "host": machine_info()}


def run_child(name: str, limit: float, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Run one check in its own process (and session, so a timeout kills everything it started)."""
    out = args.work / "checks" / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--check", name, "--work", str(args.work),
           "--runs", str(args.runs), *(["--smoke"] if args.smoke else [])]
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=limit)
        error = None if out.exists() else f"exited {proc.returncode} without a result (see gpu_check.log)"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        error = f"timed out after {limit:.0f} s and was killed"
    record = json.loads(out.read_text()) if out.exists() else {"ok": False, "error": error}
    return {"seconds": round(time.perf_counter() - began, 1), **record}


def evaluate(checks: dict[str, dict[str, Any]], smoke: bool) -> list[dict[str, Any]]:
    """The issue's targets, each met / not met, or not evaluated with the reason."""
    def result(name: str) -> dict[str, Any] | None:
        check = checks.get(name) or {}
        return check.get("result") if check.get("ok") else None

    def target(text: str, value: float | None, reference: float | None, threshold: float, met: bool | None,
               why: str | None) -> dict[str, Any]:
        return {"target": text, "measured": value, "reference": reference, "threshold": threshold,
                "met": met, "not_evaluated_because": why if met is None else None}

    step, seed = result("step_mlm_ap_mim"), result("seed_architecture")
    mode = "compiled" if step is None or step.get("compile") else "eager"
    seed_rate = (seed or {}).get(mode, {}).get("samples_per_s")
    ratio = step["samples_per_s"] / seed_rate if step and seed_rate else None
    missing = "step_mlm_ap_mim failed or did not run" if step is None else (
        f"the seed architecture's {mode} step has no figure" if not seed_rate else None)
    targets = [
        target(f"vlpipe {(step or {}).get('preset', 'base')} MLM+AP+MIM {mode} >= {SPEEDUP_TARGET}x the seed architecture's {mode} MLM+AP step, "
               f"same run (anchor: {SEED_ANCHOR_H200} samples/s compiled on an H200)",
               ratio, seed_rate, SPEEDUP_TARGET, None if ratio is None else ratio >= SPEEDUP_TARGET, missing),
        target("data wait < 2% of step time, raw cache (step_mlm_ap_mim)", step and step["data_wait_share"], None,
               DATA_WAIT_TARGET, None if step is None else step["data_wait_share"] < DATA_WAIT_TARGET,
               "step_mlm_ap_mim failed or did not run"),
    ]
    for t in targets:
        t["smoke"] = smoke
    return targets


def figures(checks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline numbers of every check that ran, side by side (None where it did not)."""
    def get(name: str, *keys: str) -> Any:
        value: Any = (checks.get(name) or {}).get("result")
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    rows = {name: {k: get(name, k) for k in ("samples_per_s", "data_wait_share", "peak_gpu_mem_gib", "compile")}
            for name in ("step_mlm_ap_mim", "step_mlm_ap", "step_jpeg")}
    for row in rows.values():  # against the seed architecture's step in the same mode (compiled or eager)
        seed = get("seed_architecture", "compiled" if row["compile"] else "eager", "samples_per_s")
        row["x_seed_architecture"] = row["samples_per_s"] / seed if seed and row["samples_per_s"] else None
    return {"seed_architecture_samples_per_s": {m: get("seed_architecture", m, "samples_per_s")
                                                for m in ("eager", "compiled")},
            **rows, "nvjpeg_decode_samples_per_s": get("nvjpeg_decode", "samples_per_s")}


def write_outputs(out: Path, checks: dict[str, dict[str, Any]], env: dict[str, Any], command: str, smoke: bool,
                  budget: float, seconds: float) -> dict[str, Any]:
    """One JSON per part and the summary; returns the summary."""
    from vlpipe.utils.atomic import write_json_atomic

    note = ("CPU smoke run at toy sizes (tiny preset, fp32, no compile, no nvJPEG): it shows that the script runs; "
            "its figures and verdicts are NOT measurements of the targets") if smoke else "GPU run"
    for part, title in PARTS.items():
        members = {name: checks[name] for name, p, _ in CHECKS if p == part and name in checks}
        write_json_atomic(out / f"{part}_{title}.json", {"part": part, "title": title, "smoke": smoke, "note": note,
                                                          "command": command, "environment": env, "checks": members})
    resume = (checks.get("exact_resume") or {}).get("result") or {}
    tests = (checks.get("cuda_tests") or {}).get("result") or {}
    summary = {"smoke": smoke, "note": note, "command": command, "environment": env, "budget_s": budget,
               "seconds": round(seconds, 1),
               "checks": {n: {"ok": c.get("ok"), "seconds": c.get("seconds"), "error": c.get("error")}
                          for n, c in checks.items()},
               "targets": evaluate(checks, smoke), "figures": figures(checks),
               "cuda_tests": {k: tests.get(k) for k in ("passed", "failure", "error", "skipped")} if tests else None,
               "exact_resume": resume.get("verdict")}
    write_json_atomic(out / "summary.json", summary)
    return summary


def drive(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "checks").mkdir(exist_ok=True)
    command = shlex.join(["python3", "benchmarks/gpu_check.py", *argv])
    began, checks = time.perf_counter(), {}
    wanted = args.checks.split(",") if args.checks else [name for name, _, _ in CHECKS]
    unknown = set(wanted) - {name for name, _, _ in CHECKS}
    if unknown:
        raise SystemExit(f"--checks: unknown check(s) {', '.join(sorted(unknown))}")
    with open(args.out / "gpu_check.log", "a", buffering=1) as log:
        env = environment()
        for name, _, limit in CHECKS:
            if name not in wanted:
                continue
            left = args.budget_s - (time.perf_counter() - began)
            if left < 15:
                checks[name] = {"ok": False, "seconds": 0, "error": f"skipped: the {args.budget_s:.0f} s budget was spent"}
            else:
                print(f"== {name} (limit {min(limit, left):.0f} s)", file=log, flush=True)
                checks[name] = run_child(name, min(limit, left), args, log)
            status = "ok" if checks[name]["ok"] else f"FAILED: {checks[name]['error']}"
            line = f"[{time.perf_counter() - began:5.0f} s] {name}: {status} ({checks[name]['seconds']} s)"
            print(line, flush=True)
            print(line, file=log, flush=True)
    return write_outputs(args.out, checks, env, command, args.smoke, args.budget_s, time.perf_counter() - began)


def child(args: argparse.Namespace) -> int:
    sizes = SMOKE if args.smoke else FULL
    record: dict[str, Any]
    try:
        record = {"ok": True, "error": None, "result": run_check(args.check, sizes, args.work, args.runs)}
    except Exception as exc:  # recorded, so that the driver goes on with the next check
        traceback.print_exc()
        record = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    (args.work / "checks" / f"{args.check}.json").write_text(json.dumps({**record, "sizes": asdict(sizes)}, default=str))
    return 0 if record["ok"] else 1


def default_runs(work: Path, smoke: bool) -> Path:
    """Run directories go to /dev/shm when it has room: a base checkpoint is 4.5 GB, fsynced to disk otherwise."""
    shm = Path("/dev/shm")
    if not smoke and shm.is_dir() and shutil.disk_usage(shm).free > 40 * 2**30:
        return shm / "vlpipe-gpu-check-runs"
    return work / "runs"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="where the JSON goes (default: $OUT)")
    parser.add_argument("--smoke", action="store_true", help="CPU, toy sizes: checks that the script works")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vlpipe-gpu-check"),
                        help="data and caches, reused by a rerun (default: %(default)s)")
    parser.add_argument("--runs", type=Path, help="run directories (default: /dev/shm if it has room, else WORK/runs)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="checks that would start later are skipped")
    parser.add_argument("--checks", help="comma-separated subset, e.g. seed_architecture,step_mlm_ap_mim")
    parser.add_argument("--check", help=argparse.SUPPRESS)  # the child process of one check
    args = parser.parse_args(argv)
    args.runs = args.runs or default_runs(args.work, args.smoke)
    if args.smoke:  # on a small shared CPU, torch's intra-op threads beside the loader's only contend (5x slower)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.runs.mkdir(parents=True, exist_ok=True)
    if args.check:
        return child(args)
    if args.out is None:
        parser.error("give --out DIR (or set OUT)")
    summary = drive(args, argv)
    print(json.dumps({"targets": summary["targets"], "cuda_tests": summary["cuda_tests"],
                      "exact_resume": summary["exact_resume"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
