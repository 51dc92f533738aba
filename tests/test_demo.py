"""`vlpipe demo`: the local server, the settings, and the whole pipeline end to end (the CI gate)."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from vlpipe.demo.run import DemoConfig, run_demo
from vlpipe.demo.server import BROKEN, DemoServer
from vlpipe.demo.synth import make_dataset, read_captions
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
    ({"size": 50}, "--size 50"), ({"steps": 0}, "--steps"), ({"image_size": 60, "patch_size": 16}, "not a multiple"),
    ({"patch_size": 0}, "--patch-size must be positive"), ({"image_size": -64}, "--image-size must be positive"),
    ({"lr": 0.0}, "--lr must be positive"), ({"bench_seconds": 0.0}, "--bench-seconds"),
])
def test_config_rejects_impossible_settings(change: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(VlpipeError, match=message):
        run_demo(DemoConfig(out=str(tmp_path), live=False, **change))
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_refuses_to_clear_a_folder_that_is_not_its_own(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "precious.npy").write_bytes(b"data")
    with pytest.raises(VlpipeError, match="holds other files"):
        run_demo(DemoConfig(out=str(tmp_path), live=False))
    assert (tmp_path / "cache" / "precious.npy").read_bytes() == b"data"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_default_configuration_learns_alignment(tmp_path: Path) -> None:
    """The CI gate: the default demo, every stage real, ends with validation AP accuracy >= 0.85."""
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

    assert train["steps"] == config.steps
    assert train["val_ap_accuracy"] >= 0.85, train["val"]
    assert train["val_mlm_accuracy"] > 0.5, train["val"]
    assert {Path(p).name for p in train["plots"]} >= {"ap.png", "mlm.png", "loss.png"}
    assert all(Path(p).stat().st_size > 0 for p in train["plots"])

    # Figures present and consistent; how fast is a benchmark's claim (benchmarks/RESULTS.md), not a test's.
    assert bench["baseline_samples_per_s"] > 0 and bench["vlpipe_samples_per_s"] > 0
    assert bench["speedup"] == pytest.approx(bench["vlpipe_samples_per_s"] / bench["baseline_samples_per_s"])
    with Image.open(summary["contact_sheet"]) as sheet:
        assert sheet.size[0] > 200
