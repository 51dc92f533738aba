"""Checkpoints a user can open safely: safetensors for every tensor, JSON for everything else.

Layout of `RUN_DIR/checkpoints/step_00001234/`:
  model.safetensors      the trained weights (tied weights stored once, see `safetensors.torch.save_model`)
  teacher.safetensors    the task's other modules, one file each (pretraining's EMA teacher)
  optimizer.safetensors  AdamW moments and step counts, keyed `state.<param>.<name>`
  rng.safetensors        torch CPU (and CUDA) generator states, for dropout
  state.json             optimizer param groups, trainer counters, sampler position, metrics so far
  config.json            the run config and the model config: enough to rebuild the model alone

A checkpoint is written into a `.tmp-` directory and renamed into place, then `latest.json` is
replaced atomically to point at it, so a crash at any moment leaves the previous checkpoint
complete and current. Rewriting a step that exists (the end of a resumed run) moves the old folder
aside first and deletes it only once the new one is in place; should `latest.json` ever name a
folder that is gone, resuming falls back to the newest complete checkpoint. Loading never executes
pickle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from vlpipe.errors import VlpipeError, one_line, shown
from vlpipe.utils.atomic import TMP_PREFIX, write_json_atomic

CHECKPOINTS = "checkpoints"
# What a pretraining or fine-tuning run writes in its folder (plots.PLOTS_DIR, finetune's BEST_FILE
# and RESULT_FILE): a fresh run may start in a folder holding only these.
RUN_ENTRIES = frozenset({"config.json", "metrics.jsonl", "plots", CHECKPOINTS, "best.safetensors", "result.json"})
LATEST = "latest.json"
# What `latest.json` may name: a sibling step directory, never a path that leaves `checkpoints/`.
NAME_PATTERN = re.compile(r"step_\d+")
# Seconds to sleep in the middle of writing a checkpoint: a test hook (tests/test_loop.py kills
# the process then), never set in normal use.
_PAUSE_FOR_TESTS = float(os.environ.get("VLPIPE_TEST_CHECKPOINT_PAUSE", "0") or 0)


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def optimizer_state_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (for safetensors) and JSON-ready values."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `optimizer_state_to_files`: a dict for `optimizer.load_state_dict`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, entries in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(entries)
    # JSON turned tuples such as `betas` into lists; give the optimizer back what it saved.
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch_cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["torch_cpu"])
    if "torch_cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["torch_cuda"])


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    model: nn.Module,
    extra: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    config: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write checkpoint `step` atomically, point `latest.json` at it, prune older ones.

    `extra` are further modules saved as `<name>.safetensors` (pretraining's EMA teacher).
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / checkpoint_name(step)
    tmp = root / f"{TMP_PREFIX}{os.getpid()}-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_model(model, str(tmp / "model.safetensors"))
        if _PAUSE_FOR_TESTS:  # lets a test kill the process while a checkpoint is half written
            time.sleep(_PAUSE_FOR_TESTS)
        for name, module in extra.items():
            save_model(module, str(tmp / f"{name}.safetensors"))
        opt_tensors, opt_meta = optimizer_state_to_files(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng_state(), str(tmp / "rng.safetensors"))
        write_json_atomic(tmp / "state.json", {**state, "step": step, "optimizer": opt_meta})
        write_json_atomic(tmp / "config.json", config)
        for path in tmp.iterdir():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        replaced = root / f"{TMP_PREFIX}old-{final.name}"
        if final.exists():  # rewriting the same step: the old copy stays complete until the new one is in
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json_atomic(root / LATEST, {"checkpoint": final.name, "step": step})
    shutil.rmtree(replaced, ignore_errors=True)
    _prune(root, keep_last, keep=final.name)
    return final


def _prune(root: Path, keep_last: int, keep: str) -> None:
    """Remove all but the newest `keep_last` checkpoints (never the one just written)."""
    if keep_last < 1:
        return
    names = sorted(p.name for p in root.glob("step_*") if p.is_dir())
    for name in names[:-keep_last]:
        if name != keep:
            shutil.rmtree(root / name, ignore_errors=True)


def start_run_dir(run_dir: Path, resume: bool, is_main: bool = True) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run (whose run dir is then made).

    A run dir that already holds checkpoints is refused unless resuming, so a reused `--out` never
    overwrites a finished run; a fresh run starts with no stale metrics.jsonl. Only the main rank
    touches the directory.
    """
    existing = latest_checkpoint(run_dir)
    if existing is None and resume and is_main:
        # Allowed, so a job script can always pass --resume; said, so a mistyped --out is noticed.
        print(f"--resume: no checkpoint in {run_dir}; starting a fresh run", file=sys.stderr)
    if existing is not None and not resume:
        raise VlpipeError(f"{run_dir} already has checkpoints ({existing.name}); "
                          "pass --resume to continue it or choose another --out")
    if existing is None and is_main:
        # A fresh run clears metrics.jsonl and writes beside whatever is there: only in a run's folder.
        refuse_foreign_folder(run_dir, lambda p: p.name in RUN_ENTRIES, "a vlpipe run")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    return existing


def refuse_foreign_folder(folder: Path, is_own: Callable[[Path], bool], kind: str) -> None:
    """Refuse an output folder that holds anything but `kind`'s own entries (or crash-safe temporaries).

    A run writes (and clears) files in its folder; in someone else's folder that would mix or lose
    their files. A missing folder is fine; a file in its place is refused.
    """
    if not folder.is_dir():
        if folder.exists():
            raise VlpipeError(f"--out {folder}: exists and is not a folder")
        return
    foreign = sorted(p.name for p in folder.iterdir() if not (p.name.startswith(TMP_PREFIX) or is_own(p)))
    if foreign:
        listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise VlpipeError(f"--out {folder} holds files that are not from {kind} ({listed}); "
                          "choose an empty or new folder")


def check_same_recipe(checkpoint: Path, section: str, now: dict[str, Any], fixed: Iterable[str]) -> None:
    """Refuse to resume with settings that change what is trained: an exact resume is promised.

    `fixed` names the settings of the run's config (`section` of the checkpoint's config.json) that
    must not change; the rest (device, workers, logging, eval and checkpoint cadence, compile, the
    cache's location) may. Values are compared as JSON has them (tuples are lists there).
    """
    try:
        saved = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))[section]
        changed = [k for k in fixed if k in saved and json.loads(json.dumps(now[k])) != saved[k]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VlpipeError(f"{checkpoint}/config.json: not a valid checkpoint config ({one_line(exc)})") from None
    if changed:
        shown = ", ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in changed)
        raise VlpipeError(f"{checkpoint} was trained with other settings ({shown}); "
                          "resume with the run's own settings, or start a new --out")


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint `latest.json` points at, or None when the run has none yet."""
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.exists():
        return None
    try:
        data = json.loads(pointer.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise VlpipeError(f"{pointer} is not a valid checkpoint pointer ({one_line(exc)})") from exc
    name = data.get("checkpoint") if isinstance(data, dict) else None
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise VlpipeError(f"{pointer} is not a valid checkpoint pointer (expected "
                          f'{{"checkpoint": "step_NNNNNNNN", ...}}, got {shown(data)})')
    path = pointer.parent / name
    if not (path / "state.json").exists():
        # A crash between moving a rewritten step aside and renaming its new copy in: the newest
        # complete checkpoint (or that step's old copy) is where the run really stands.
        path = _newest_complete(pointer.parent)
        if path is None:
            raise VlpipeError(f"{pointer} points at {pointer.parent / name}, which is missing or incomplete, "
                              "and no other complete checkpoint is there")
        print(f"note: {pointer} names {name}, which is missing; resuming from {path.name}", file=sys.stderr)
    return path


def _newest_complete(root: Path) -> Path | None:
    """The complete checkpoint (state.json written last) with the highest step, old copies included."""
    found = []
    for folder in root.iterdir():
        match = re.fullmatch(rf"(?:{re.escape(TMP_PREFIX)}old-)?step_(\d+)", folder.name)
        if match and (folder / "state.json").exists():
            found.append((int(match.group(1)), not folder.name.startswith(TMP_PREFIX), folder))
    if not found:
        return None
    step, final, folder = max(found)
    if not final:  # only the moved-aside copy survived: put it back under its own name
        target = root / checkpoint_name(step)
        os.replace(folder, target)
        folder = target
    return folder


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    extra: dict[str, nn.Module] | None = None,
    optimizer: torch.optim.Optimizer | None,
    device: torch.device | str = "cpu",
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load weights (and optionally optimizer and RNG) in place; returns the trainer state dict.

    Every module in `extra` must have its file: resuming a run with MIM without its teacher's
    weights would silently train against another teacher and diverge from the uninterrupted run.

    A damaged checkpoint (a truncated file after a full disk, a hand-edited state.json) is reported
    as `<file>: not a valid checkpoint (...)` naming the file, not as a parser's traceback.
    """
    path = Path(path)
    state_file = path / "state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VlpipeError(f"{state_file}: not a valid checkpoint ({one_line(exc)})") from exc
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or isinstance(state["step"], bool):
        raise VlpipeError(f"{state_file}: not a valid checkpoint (expected an object with an integer 'step')")
    _load_weights(model, path / "model.safetensors", device)
    for name, module in (extra or {}).items():
        file = path / f"{name}.safetensors"
        if not file.exists():
            raise VlpipeError(f"{file} is missing: the checkpoint is incomplete (this run needs its {name} weights)")
        _load_weights(module, file, device)
    if optimizer is not None:
        # Loaded on the CPU: `load_state_dict` moves moments to each parameter's device itself and
        # keeps the `step` counters where the optimizer implementation expects them.
        file = path / "optimizer.safetensors"
        if not isinstance(state.get("optimizer"), dict):
            raise VlpipeError(f"{state_file}: not a valid checkpoint (no 'optimizer' section)")
        tensors = _read_tensors(file)
        try:
            optimizer.load_state_dict(optimizer_state_from_files(tensors, state["optimizer"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VlpipeError(f"{file}: not a valid checkpoint (the optimizer state does not match: "
                              f"{one_line(exc)})") from exc
    if restore_rng:
        file = path / "rng.safetensors"
        tensors = _read_tensors(file)
        try:
            set_rng_state(tensors)
        except (KeyError, TypeError, RuntimeError) as exc:
            raise VlpipeError(f"{file}: not a valid checkpoint ({one_line(exc)})") from exc
    return state


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint's safetensors file, or a one-line error naming it."""
    try:
        return load_file(str(file))
    except (OSError, SafetensorError) as exc:
        raise VlpipeError(f"{file}: not a valid checkpoint ({one_line(exc)})") from exc


def _load_weights(model: nn.Module, file: Path, device: torch.device | str) -> None:
    try:
        missing, unexpected = load_model(model, str(file), strict=False, device=str(device))
    except (OSError, SafetensorError) as exc:
        raise VlpipeError(f"{file}: not a valid checkpoint ({one_line(exc)})") from exc
    except RuntimeError as exc:  # same names, other shapes: torch's "size mismatch for ..."
        raise VlpipeError(f"{file} does not match the model ({one_line(exc)})") from exc
    if missing or unexpected:
        raise VlpipeError(
            f"{file} does not match the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
