"""`vlpipe demo`: the local server, the settings, the verdict, and the whole pipeline end to end (the CI gate)."""

from __future__ import annotations

import io
import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from vlpipe.cli.main import main
from vlpipe.demo.run import DemoConfig, run_demo
from vlpipe.demo.server import BROKEN, DemoServer
from vlpipe.demo.synth import make_dataset, read_captions
from vlpipe.demo.verdict import AP_GATE, judge, splits_text
from vlpipe.errors import VlpipeError

# What fetch must do with each broken URL the server answers (reason codes of vlpipe.fetch).
EXPECTED_DROPS = {"http_404": 1, "http_500": 1, "undecodable": 2, "empty": 1, "too_small": 1, "bad_aspect": 1}


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], b""


def test_server_serves_the_images_and_the_broken_urls(tmp_path: Path) -> None:
    captions = make_dataset(tmp_path / "data", 4, image_size=64)
    with DemoServer(captions.parent) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        row = read_captions(captions)[2]
        status, content_type, body = _get(server.url(row["image"]))
        assert status == 200 and content_type == "image/jpeg"
        assert body == (captions.parent / row["image"]).read_bytes()
        assert _get(server.url("images/999999.jpg"))[0] == 404
        answers = {path: _get(server.url(path)) for path in BROKEN}
        rows = server.broken_rows()
    assert answers["/broken/missing.jpg"][0] == 404
    assert answers["/broken/server-error.jpg"][0] == 500
    assert answers["/broken/html-page.jpg"][1] == "image/jpeg"
    assert answers["/broken/html-page.jpg"][2].startswith(b"<!doctype html>")
    assert answers["/broken/empty.jpg"][2] == b""
    assert answers["/broken/truncated.jpg"][2][:2] == b"\xff\xd8"
    for path, size in (("/broken/one-pixel.png", (1, 1)), ("/broken/strip.jpg", (960, 64))):
        with Image.open(io.BytesIO(answers[path][2])) as im:
            assert im.size == size
    assert [url.split(":", 2)[2].split("/", 1)[1] for _, url in rows] == [p.lstrip("/") for p in BROKEN]


@pytest.mark.parametrize(("change", "message"), [
    ({"size": 50}, "size must be >= 200, got 50"), ({"steps": 0}, "steps must be >= 1"),
    ({"image_size": 60, "patch_size": 16}, "--image-size 60 is not a multiple of --patch-size 16"),
    ({"patch_size": 0}, "patch_size must be >= 1"), ({"image_size": -64}, "image_size must be >= 1"),
    ({"lr": 0.0}, "lr must be > 0"), ({"bench_seconds": 0.0}, "bench_seconds must be > 0"),
    ({"downstream_sizes": (400, 201, 600)}, "each must be an even number"),
    ({"finetune_seeds": (1, 1)}, "seeds must be distinct"),
])
def test_config_rejects_impossible_settings(change: dict, message: str) -> None:
    with pytest.raises(VlpipeError, match=message):
        DemoConfig(live=False, **change)


def _cli(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capfd.readouterr()
    return int(exc.value.code or 0), out.out, out.err


@pytest.mark.parametrize(("flags", "message"), [
    (["--size", "50"], "--size 50: must be >= 200"), (["--lr", "0"], "--lr 0.0: must be > 0"),
    (["--downstream-sizes", "3,4,4"], "--downstream-sizes 3,4,4: each must be an even number"),
    (["--finetune-seeds", "1"], "--finetune-seeds 1: "),
])
def test_cli_errors_name_the_flag_before_anything_is_written(flags: list[str], message: str, tmp_path: Path,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capfd, "demo", "--out", str(tmp_path / "demo"), *flags)
    assert code == 1 and err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "demo").exists()


def _summary(ap: float, down: dict | None) -> dict:
    summary = {"train": {"val_ap_accuracy": ap, "chance_ap_accuracy": 0.5, "val_samples": 296}}
    return summary | ({"downstream": down} if down is not None else {})


def _down(pretrained: list[float], scratch: list[float], shortcuts: tuple[float, float] = (0.5, 0.5)) -> dict:
    def init(values: list[float]) -> dict:
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return {"mean": mean, "std": std, "seeds": [0, 1, 2], "values": values}

    p, s = init(pretrained), init(scratch)
    return {"pretrained": p, "scratch": s, "gap": p["mean"] - s["mean"], "spread": p["std"] + s["std"],
            "chance": 0.5, "split": "test", "metric": "accuracy",
            "shortcuts": {"caption_only": shortcuts[0], "image_only": shortcuts[1]}}


def test_verdict_against_chance_the_gate_and_the_seed_spread() -> None:
    below = judge(_summary(0.480, None))  # what `--steps 300` gave: it must not pass silently
    assert not below["ok"] and not below["alignment_learned"]
    assert below["line"].startswith("verdict: FAILED") and "did NOT learn alignment" in below["line"]
    assert "chance 0.50" in below["line"] and str(AP_GATE) in below["line"]
    near = judge(_summary(0.56, None))  # 0.5 + 3 standard errors of 296 samples is 0.587
    assert not near["ok"]
    partly = judge(_summary(0.70, None))
    assert partly["ok"] and "partly" in partly["line"]
    good = judge(_summary(0.93, _down([0.62, 0.60, 0.64], [0.50, 0.51, 0.50])))
    assert good["ok"] and good["pretraining_helped"] and good["line"].startswith("verdict: learned")
    assert "gap +0.117" in good["line"] and "seed spread" in good["line"]
    within_spread = judge(_summary(0.93, _down([0.56, 0.50, 0.62], [0.50, 0.51, 0.50])))  # gap 0.057 < 0.066
    assert not within_spread["ok"] and "pretraining did NOT help" in within_spread["line"]
    shortcut = judge(_summary(0.93, _down([0.62, 0.60, 0.64], [0.50, 0.51, 0.50], shortcuts=(0.66, 0.5))))
    assert not shortcut["ok"]  # a caption-only classifier did better: the task was not the one intended
    assert splits_text({"train": 2704, "val": 296}) == "2,704 train / 296 val"


def test_refuses_to_clear_a_folder_that_is_not_its_own(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "precious.npy").write_bytes(b"data")
    with pytest.raises(VlpipeError, match="holds other files"):
        run_demo(DemoConfig(out=str(tmp_path), live=False))
    assert (tmp_path / "cache" / "precious.npy").read_bytes() == b"data"


@pytest.mark.slow
def test_a_demo_that_does_not_learn_says_so_and_exits_non_zero(tmp_path: Path,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    code, stdout, err = _cli(capfd, "demo", "--out", str(out), "--size", "200", "--steps", "2", "--no-downstream",
                             "--bench-seconds", "0.05", "--bench-rounds", "1", "--no-live")
    assert code == 3, err
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("verdict: FAILED - did NOT learn alignment"), stdout
    assert json.loads((out / "summary.json").read_text())["verdict"]["ok"] is False
    # img2dataset's chatter is in the log, not on the console; its per-shard stats are not left in staging.
    for chatter in ("bwm-ng", "failed to resize", "Sharding file"):
        assert chatter not in stdout + err
    assert "bwm-ng" in (out / "fetch.log").read_text()
    assert not list((out / "raw").rglob("vlpipe_staging/*_stats.json"))
    assert " train / " in stdout and " MB in " in stdout and "MiB" not in stdout


def _fresh_and_trained_retrieval(run: Path, cache: Path, n: int) -> tuple[dict, dict]:
    """R@K of the demo's pretrained run (vlpipe eval) and of a fresh model of the same architecture."""
    import torch

    from vlpipe.cache.reader import CacheDataset
    from vlpipe.eval import EvalConfig, evaluate_run
    from vlpipe.eval.retrieval import pair_scores, retrieval_metrics, same_caption
    from vlpipe.model import build_model

    trained = evaluate_run(run, EvalConfig(cache=str(cache), max_samples=n))["retrieval"]
    dataset = CacheDataset(cache, split="val")
    batch = {k: v.clone() for k, v in dataset.__getitems__(list(range(n))).items()}
    torch.manual_seed(0)
    from vlpipe.eval.evaluate import load_run_model

    fresh = build_model(load_run_model(run)[0].config)
    scores = pair_scores(fresh, batch["images"], batch["input_ids"], batch["lengths"], batch_size=256,
                         device=torch.device("cpu"))
    return trained, retrieval_metrics(scores, same_caption(batch["input_ids"], batch["lengths"]))


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_demo_default_configuration_learns_alignment_and_pretraining_helps(tmp_path: Path) -> None:
    """The CI gate: the default demo, every stage real, ends with validation AP accuracy >= 0.85, and
    pretraining helps the downstream task beyond the seed spread, chance and both shortcuts."""
    config = DemoConfig(out=str(tmp_path / "demo"), live=False)
    summary = run_demo(config)
    out = Path(config.out)

    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    fetch, cache, train, bench = (summary[k] for k in ("fetch", "cache", "train", "bench"))
    assert fetch["attempted"] == config.size + len(BROKEN)
    assert fetch["kept"] == config.size
    assert fetch["dropped"] == EXPECTED_DROPS

    assert cache["samples"] == config.size and sum(cache["splits"].values()) == config.size
    assert cache["splits"]["val"] > 0.05 * config.size
    assert cache["bytes"] > config.size * (config.image_size**2) * 3

    # Alignment: chance 0.5 (half the validation pairs are mismatched), no shortcut (a caption alone
    # or an image alone says nothing about whether they belong together), gate 0.85.
    assert train["steps"] == config.steps
    assert train["val_ap_accuracy"] >= AP_GATE, train["val"]
    assert train["val_mlm_accuracy"] > 0.5, train["val"]
    assert {Path(p).name for p in train["plots"]} >= {"ap.png", "mlm.png", "loss.png"}
    assert all(Path(p).stat().st_size > 0 for p in train["plots"])

    # Downstream: chance 0.5 (half of each split is true); the strongest shortcuts (caption-only and
    # image-only logistic regressions) within 3 standard errors of chance on the test split; the
    # pretrained init beats scratch by more than the seed spread (the two standard deviations added),
    # every pretrained seed beats every scratch seed, and it beats the best shortcut by >= 0.05.
    down = summary["downstream"]
    n_test = config.downstream_sizes[2]
    assert down["splits"] == dict(zip(("train", "val", "test"), config.downstream_sizes, strict=True))
    for name, accuracy in down["shortcuts"].items():
        assert abs(accuracy - down["chance"]) <= 3 * math.sqrt(0.25 / n_test), (name, accuracy)
    pre, scratch = down["pretrained"], down["scratch"]
    assert pre["init_loaded"] > 0 and scratch["init_loaded"] == 0
    assert down["gap"] > down["spread"], down
    assert min(pre["values"]) > max(scratch["values"]), down
    assert pre["mean"] > max(down["chance"], *down["shortcuts"].values()) + 0.05, down
    assert summary["verdict"]["ok"] and summary["verdict"]["pretraining_helped"], summary["verdict"]
    assert Path(down["report"]["png"]).read_bytes()[:4] == b"\x89PNG"
    assert "(+" in Path(down["report"]["markdown"]).read_text()  # the gap is in the report's table

    # Zero-shot retrieval (vlpipe eval) on 100 validation samples: chance R@1 is about 0.01. The
    # demo's model, which learned alignment, scores 10x that at R@1; a fresh model of the same
    # architecture stays within 3 standard errors of chance at R@10 (about 0.10).
    trained, fresh = _fresh_and_trained_retrieval(out / "run", out / "cache", 100)
    for direction in ("image_to_text", "text_to_image"):
        assert trained[direction]["r1"] >= 10 * trained["chance"][direction]["r1"], trained
        level = fresh["chance"][direction]["r10"]
        assert fresh[direction]["r10"] <= level + 3 * math.sqrt(level * (1 - level) / 100), fresh

    # Figures present and consistent; how fast is a benchmark's claim (benchmarks/RESULTS.md), not a test's.
    assert bench["baseline_samples_per_s"] > 0 and bench["vlpipe_samples_per_s"] > 0
    assert bench["speedup"] == pytest.approx(bench["vlpipe_samples_per_s"] / bench["baseline_samples_per_s"])
    with Image.open(summary["contact_sheet"]) as sheet:
        assert sheet.size[0] > 200
