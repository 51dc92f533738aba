"""Checkpoints: safetensors + JSON only, atomic, exact round trip of weights, optimizer and RNG."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from vlpipe.errors import VlpipeError
from vlpipe.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, start_run_dir


class Tied(nn.Module):
    """Embedding and output layer share a weight, as the MLM head does."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 4)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 11, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(torch.relu(self.mid(self.emb(x))))


def _trained(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(2):
        model(torch.arange(11)).logsumexp(-1).sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _save(run, step, model, opt, **kw):
    return save_checkpoint(run, step, model=model, extra={"teacher": model}, optimizer=opt, state={"micro": step},
                           config={"x": 1}, **kw)


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    model, opt = _trained(0)
    torch.manual_seed(123)
    path = _save(tmp_path, 7, model, opt)
    expected_rng = torch.rand(3)
    fresh, fresh_opt = _trained(1)
    state = load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert state["step"] == 7 and state["micro"] == 7
    assert torch.equal(torch.rand(3), expected_rng)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert fresh.out.weight is fresh.emb.weight  # still tied after loading
    sa, sb = opt.state_dict(), fresh_opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for pid, entries in sa["state"].items():
        for name, value in entries.items():
            assert torch.equal(value, sb["state"][pid][name])
    # one more identical update from both gives identical weights
    for m, o in ((model, opt), (fresh, fresh_opt)):
        m(torch.arange(11)).sum().backward()
        o.step()
    assert torch.equal(model.mid.weight, fresh.mid.weight)


def test_files_are_safetensors_and_json(tmp_path):
    model, opt = _trained(0)
    path = _save(tmp_path, 1, model, opt)
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json", "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json",
        "teacher.safetensors"]
    assert any(k.endswith("exp_avg") for k in load_file(path / "optimizer.safetensors"))
    json.loads((path / "state.json").read_text())
    assert json.loads((path / "config.json").read_text()) == {"x": 1}


def test_latest_pointer_and_pruning(tmp_path):
    model, opt = _trained(0)
    assert latest_checkpoint(tmp_path) is None
    for step in (1, 2, 3):
        _save(tmp_path, step, model, opt, keep_last=2)
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest.json", "step_00000002", "step_00000003"]


def test_failed_write_leaves_previous_checkpoint_current(tmp_path, monkeypatch):
    model, opt = _trained(0)
    _save(tmp_path, 1, model, opt)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("vlpipe.train.checkpoint.save_file", broken)
    with pytest.raises(OSError):
        _save(tmp_path, 2, model, opt)
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest.json", "step_00000001"]


def test_mismatched_model_is_a_clear_error(tmp_path):
    model, opt = _trained(0)
    path = _save(tmp_path, 1, model, opt)
    with pytest.raises(VlpipeError, match="does not match the model"):
        load_checkpoint(path, model=nn.Linear(4, 4), optimizer=None)
    (tmp_path / "checkpoints" / "latest.json").write_text('{"checkpoint": "step_99"}')
    assert latest_checkpoint(tmp_path) == path  # a pointer at nothing: the newest complete checkpoint
    (path / "state.json").unlink()
    with pytest.raises(VlpipeError, match="missing or incomplete, and no other complete checkpoint"):
        latest_checkpoint(tmp_path)


@pytest.mark.parametrize("pointer", ['[1]', '{"checkpoint": 5}', '{"step": 1}', '{"checkpoint": "../../elsewhere"}',
                                     '{"checkpoint": "step_00', '\xff'])
def test_bad_latest_pointer_is_a_clear_error(tmp_path, pointer):
    model, opt = _trained(0)
    _save(tmp_path, 1, model, opt)
    latest = tmp_path / "checkpoints" / "latest.json"
    latest.write_bytes(pointer.encode("latin-1"))
    with pytest.raises(VlpipeError, match=r"latest.json is not a valid checkpoint pointer \(") as exc:
        latest_checkpoint(tmp_path)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(("file", "damage", "message"), [
    ("state.json", lambda p: p.write_text('{"step": 1, '), "state.json: not a valid checkpoint"),
    ("state.json", lambda p: p.write_text('[1]'), r"state.json: not a valid checkpoint \(expected an object"),
    ("state.json", lambda p: p.write_text('{"step": 1, "optimizer": {}}'),
     "optimizer.safetensors: not a valid checkpoint"),
    # no optimizer section: state.json is the broken file, not optimizer.safetensors
    ("state.json", lambda p: p.write_text('{"step": 4}'), r"state.json: not a valid checkpoint \(no 'optimizer'"),
    ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:100]), "model.safetensors: not a valid checkpoint"),
    ("model.safetensors", lambda p: p.unlink(), "model.safetensors: not a valid checkpoint"),
    ("teacher.safetensors", lambda p: p.write_bytes(b""), "teacher.safetensors: not a valid checkpoint"),
    ("optimizer.safetensors", lambda p: p.write_bytes(p.read_bytes()[:-10]),
     "optimizer.safetensors: not a valid checkpoint"),
    ("rng.safetensors", lambda p: p.write_bytes(p.read_bytes()[:20]), "rng.safetensors: not a valid checkpoint"),
])
def test_damaged_checkpoint_names_the_file(tmp_path, file, damage, message):
    model, opt = _trained(0)
    path = _save(tmp_path, 1, model, opt)
    damage(path / file)
    fresh, fresh_opt = _trained(1)
    with pytest.raises(VlpipeError, match=message) as exc:
        load_checkpoint(path, model=fresh, extra={"teacher": fresh}, optimizer=fresh_opt)
    assert "\n" not in str(exc.value)


def test_weights_of_another_shape_are_one_line(tmp_path):
    model, opt = _trained(0)
    path = _save(tmp_path, 1, model, opt)
    other = Tied()
    other.mid = nn.Linear(4, 5)  # same names, other shapes
    with pytest.raises(VlpipeError, match=r"model.safetensors does not match the model \(.*size mismatch") as exc:
        load_checkpoint(path, model=other, optimizer=None)
    assert "\n" not in str(exc.value)


def test_a_fresh_run_starts_only_in_an_empty_folder_or_a_runs_own(tmp_path):
    mine = tmp_path / "crashed"  # a run that died before its first checkpoint
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    (mine / "metrics.jsonl").write_text('{"split": "train", "step": 1}\n')
    assert start_run_dir(mine, resume=False) is None
    assert not (mine / "metrics.jsonl").exists()  # a fresh start has no stale metrics

    theirs = tmp_path / "home"
    theirs.mkdir()
    (theirs / "metrics.jsonl").write_text("precious\n")
    (theirs / "thesis.tex").write_text("precious")
    with pytest.raises(VlpipeError, match=r"--out .*home holds files that are not from a vlpipe run \(thesis.tex\)"):
        start_run_dir(theirs, resume=False)
    assert (theirs / "metrics.jsonl").read_text() == "precious\n"
    assert start_run_dir(tmp_path / "new" / "run", resume=False) is None and (tmp_path / "new" / "run").is_dir()


def test_resume_without_a_checkpoint_starts_fresh_and_says_so(tmp_path, capsys):
    assert start_run_dir(tmp_path / "typo", resume=True) is None
    assert capsys.readouterr().err == f"--resume: no checkpoint in {tmp_path / 'typo'}; starting a fresh run\n"


def test_a_missing_extra_module_file_is_an_error_naming_it(tmp_path):
    """Resuming a MIM run without its teacher would train against another teacher and diverge."""
    model, opt = _trained(0)
    path = _save(tmp_path, 1, model, opt)
    (path / "teacher.safetensors").unlink()
    fresh, fresh_opt = _trained(1)
    with pytest.raises(VlpipeError, match=r"teacher.safetensors is missing: the checkpoint is incomplete"):
        load_checkpoint(path, model=fresh, extra={"teacher": fresh}, optimizer=fresh_opt)


def test_rewriting_a_step_keeps_the_old_copy_until_the_new_one_is_in(tmp_path, monkeypatch):
    """A crash between moving the old copy aside and renaming the new one in must lose nothing:
    latest.json then names a missing folder, and resuming falls back to the newest complete one."""
    import os

    model, opt = _trained(0)
    _save(tmp_path, 1, model, opt)
    first = _save(tmp_path, 2, model, opt)
    real_replace = os.replace

    def crash_on_the_new_copy(src, dst):
        if os.path.basename(dst) == first.name and "old" not in os.path.basename(src):
            raise OSError("simulated crash")  # the new copy's rename into place
        real_replace(src, dst)

    monkeypatch.setattr("vlpipe.train.checkpoint.os.replace", crash_on_the_new_copy)
    with pytest.raises(OSError, match="simulated crash"):
        _save(tmp_path, 2, model, opt)
    monkeypatch.setattr("vlpipe.train.checkpoint.os.replace", real_replace)
    assert not first.exists()  # moved aside, the new copy never came in
    found = latest_checkpoint(tmp_path)
    assert found == first and (found / "state.json").exists()  # the old copy was put back
    fresh, fresh_opt = _trained(1)
    assert load_checkpoint(found, model=fresh, extra={"teacher": fresh}, optimizer=fresh_opt)["step"] == 2
