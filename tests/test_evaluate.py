"""`vlpipe eval`: a real (tiny) pretraining run evaluated by zero-shot retrieval and a linear probe,
its eval.json, the CLI, the errors, and `vlpipe report` of evaluated runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlpipe.cache.writer import build_cache
from vlpipe.cli.main import main
from vlpipe.demo.statements import make_statements
from vlpipe.demo.synth import make_dataset
from vlpipe.errors import VlpipeError
from vlpipe.eval import EVAL_FILE, EvalConfig, evaluate_run
from vlpipe.train.config import PretrainConfig
from vlpipe.train.pretrain import pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GEOMETRY = {"image_size": 32, "patch_size": 8, "max_len": 16, "processes": 1, "quiet": True}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A captions cache, a 3-step pretraining run on it, and a labelled cache with its tokenizer."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evaluate")
    captions = make_dataset(root / "src", 60, seed=2, image_size=64)
    build_cache(captions, root / "cache", tokenizer="wordpiece:200", val_fraction=0.3, **GEOMETRY)
    pretrain(PretrainConfig(cache=str(root / "cache"), out=str(root / "run"), steps=3, batch_size=8, workers=1,
                            live=False, plots=False, eval_batch_size=16))
    statements = make_statements(root / "statements", {"train": 40, "val": 20, "test": 2}, image_size=64)
    build_cache(statements, root / "labelled", label_column="label", tokenizer=str(root / "cache" / "tokenizer.json"),
                **GEOMETRY)
    return {"root": root, "cache": root / "cache", "run": root / "run", "labelled": root / "labelled",
            "statements": statements}


def test_retrieval_and_probe_results_in_eval_json(world: dict[str, Path]) -> None:
    result = evaluate_run(world["run"], EvalConfig(cache=str(world["cache"]),
                                     probe_cache=str(world["labelled"]), max_samples=10, ks=(1, 5)))
    assert json.loads((world["run"] / EVAL_FILE).read_text()) == json.loads(json.dumps(result))
    assert result["checkpoint"] == "step_00000003" and result["device"] == "cpu"
    retrieval = result["retrieval"]
    assert retrieval["n"] == 10 and retrieval["of"] > 10 and retrieval["split"] == "val"
    for direction in ("image_to_text", "text_to_image"):
        assert set(retrieval[direction]) == {"r1", "r5"}
        assert 0 <= retrieval[direction]["r1"] <= retrieval[direction]["r5"] <= 1
        assert retrieval["chance"][direction]["r5"] >= 0.5  # 10 candidates, top 5: at least half by chance
    probe = result["probe"]
    assert probe["task"] == "binary" and (probe["n_train"], probe["n_val"]) == (40, 20)
    assert probe["chance"]["accuracy"] == 0.5
    for weights in ("pretrained", "random_init"):
        assert set(probe[weights]) == {"text", "image", "fused"}
        for metrics in probe[weights].values():
            assert metrics["n"] == 20 and 0 <= metrics["accuracy"] <= 1


def test_the_probe_is_deterministic_for_a_seed(world: dict[str, Path]) -> None:
    def probe(seed: int) -> dict:
        return evaluate_run(world["run"], EvalConfig(probe_cache=str(world["labelled"]), seed=seed))["probe"]

    first, again, other = probe(0), probe(0), probe(1)
    assert first["pretrained"] == again["pretrained"] == other["pretrained"]  # the run's weights: no seed
    assert first["random_init"] == again["random_init"]
    assert first["random_init"] != other["random_init"]  # another random model, other features
    assert "retrieval" not in json.loads((world["run"] / EVAL_FILE).read_text())  # replaced, not merged


def test_bad_inputs_are_named(world: dict[str, Path], tmp_path: Path) -> None:
    run, cache = str(world["run"]), str(world["cache"])
    with pytest.raises(VlpipeError, match="give --cache"):
        EvalConfig()
    with pytest.raises(VlpipeError, match="no checkpoint found"):
        evaluate_run(tmp_path, EvalConfig(cache=cache))
    with pytest.raises(VlpipeError, match="--probe-cache .* has no labels"):
        evaluate_run(run, EvalConfig(probe_cache=cache))
    other = build_cache(world["statements"], tmp_path / "other", label_column="label",
                        tokenizer=str(world["cache"] / "tokenizer.json"), image_size=64, patch_size=16, max_len=16,
                        processes=1, quiet=True)
    assert other.image.image_size == 64
    with pytest.raises(VlpipeError, match=r"--cache .* does not fit the run's model \(vision.image_size 32 vs 64"):
        evaluate_run(run, EvalConfig(cache=str(tmp_path / "other")))
    no_ap = tmp_path / "no-ap"
    pretrain(PretrainConfig(cache=cache, out=str(no_ap), steps=1, batch_size=8, workers=1, live=False, plots=False,
                            tasks=("mlm",)))
    with pytest.raises(VlpipeError, match="without alignment prediction"):
        evaluate_run(no_ap, EvalConfig(cache=cache))


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_cli_eval_then_report(world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = str(world["run"])
    code, _, err = _cli(capsys, "eval", run)
    assert code == 1 and err.startswith("error: ") and "--cache" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(capsys, "eval", run, "--cache", str(world["cache"]), "--max-samples", "1")
    assert code == 1 and "--max-samples 1: must be >= 2" in err
    code, out, err = _cli(capsys, "eval", run, "--cache", str(world["cache"]), "--max-samples", "8",
                          "--probe-cache", str(world["labelled"]), "--k", "1,3")
    assert code == 0, err
    assert "R@1" in out and "R@3" in out and "probe: fused" in out and "eval.json" in out
    assert json.loads((world["run"] / EVAL_FILE).read_text())["retrieval"]["n"] == 8

    code, out, err = _cli(capsys, "report", run, "--out", str(tmp_path / "report"))
    assert code == 0, err
    md = (tmp_path / "report" / "report.md").read_text()
    assert "zero-shot retrieval and linear probe" in md and "| image → text | R@1 |" in md
    assert "| probe: text | accuracy, random init |" in md and "|  | fusion | middle [1] |" in md
    assert (tmp_path / "report" / "report.png").read_bytes()[:4] == b"\x89PNG"
