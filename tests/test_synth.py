"""The embedded captioned-image set: deterministic, complete, and its captions tell the truth."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlpipe.demo.synth import (
    COLOUR_WORDS,
    COLOURS,
    NUMBER_WORDS,
    SHAPE_WORDS,
    make_dataset,
    read_captions,
    write_cc_tsv,
)
from vlpipe.errors import VlpipeError

N = 60


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synth"), N, seed=3, image_size=96)


def _scenes(captions_path: Path) -> list[dict]:
    return [json.loads(line) for line in (captions_path.parent / "scenes.jsonl").read_text().splitlines()]


def test_counts_and_files(dataset: Path) -> None:
    rows = read_captions(dataset)
    assert len(rows) == N
    assert len(_scenes(dataset)) == N
    assert sorted(p.name for p in (dataset.parent / "images").iterdir()) == [f"{i:06d}.jpg" for i in range(N)]
    assert [r["image"] for r in rows] == [f"images/{i:06d}.jpg" for i in range(N)]
    assert all(r["caption"] and "\t" not in r["caption"] and "\n" not in r["caption"] for r in rows)


def test_jpegs_decode_at_requested_size(dataset: Path) -> None:
    for row in read_captions(dataset):
        with Image.open(dataset.parent / row["image"]) as im:
            assert im.format == "JPEG"
            im.load()
            assert im.size == (96, 96) and im.mode == "RGB"


def test_deterministic_and_prefix_stable(dataset: Path, tmp_path: Path) -> None:
    small = make_dataset(tmp_path / "a", 10, seed=3, image_size=96)
    other = make_dataset(tmp_path / "b", 10, seed=4, image_size=96)
    big_rows, small_rows = read_captions(dataset), read_captions(small)
    assert small_rows == big_rows[:10]
    for row in small_rows:
        assert (small.parent / row["image"]).read_bytes() == (dataset.parent / row["image"]).read_bytes()
    assert read_captions(other) != small_rows


def test_captions_match_pixels(dataset: Path) -> None:
    """The pixel at each object's centre has the colour the scene (and the caption) names."""
    palette_names = list(COLOURS)
    palette = np.array([COLOURS[c] for c in palette_names], dtype=np.float32)
    checked = 0
    for scene in _scenes(dataset):
        arr = np.asarray(Image.open(dataset.parent / scene["image"]).convert("RGB"), dtype=np.float32)
        for obj in scene["objects"]:
            x, y = (round(v) for v in obj["center"])
            pixel = arr[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)
            nearest = palette_names[int(np.argmin(((palette - pixel) ** 2).sum(axis=1)))]
            assert nearest == obj["colour"], (scene["image"], obj, pixel)
            checked += 1
    assert checked > N


def test_caption_states_the_drawn_facts(dataset: Path) -> None:
    checked: Counter[str] = Counter()  # every positional check below must have run at least once
    for scene in _scenes(dataset):
        caption = scene["caption"].lower()
        for obj in scene["objects"]:
            assert any(w in caption for w in COLOUR_WORDS[obj["colour"]]), scene
            assert any(s in caption for pair in SHAPE_WORDS[obj["shape"]] for s in pair), scene
        if scene["kind"] == "count":
            assert NUMBER_WORDS[len(scene["objects"])] in caption.split()
        if scene["kind"] == "single":
            x, y = scene["objects"][0]["center"]
            if "left" in caption:
                assert x < 96 / 2
                checked["left"] += 1
            if "right" in caption:
                assert x > 96 / 2
                checked["right"] += 1
            if "top" in caption:
                assert y < 96 / 2
                checked["top"] += 1
            if "bottom" in caption:
                assert y > 96 / 2
                checked["bottom"] += 1
        if scene["kind"] == "pair":
            a, b = scene["objects"]  # drawn first-left/above; the caption may say it either way round
            mentions = [(caption.find(f"{w} "), c) for c, ws in COLOUR_WORDS.items() for w in ws]
            first = min((pos, c) for pos, c in mentions if pos >= 0)[1]
            first_obj, second_obj = (a, b) if a["colour"] == first else (b, a)
            if " above " in caption:
                assert first_obj["center"][1] < second_obj["center"][1]
                checked["above"] += 1
            if " below " in caption:
                assert first_obj["center"][1] > second_obj["center"][1]
                checked["below"] += 1
            if "left of" in caption:
                assert first_obj["center"][0] < second_obj["center"][0]
                checked["left of"] += 1
            if "right of" in caption:
                assert first_obj["center"][0] > second_obj["center"][0]
                checked["right of"] += 1
    assert set(checked) == {"left", "right", "top", "bottom", "above", "below", "left of", "right of"}, checked


def test_random_pairs_differ_in_key_facts(dataset: Path) -> None:
    """A random other caption is a negative that a model can tell apart: the facts differ."""
    scenes = _scenes(dataset)
    rng = np.random.default_rng(0)
    same = 0
    for i in range(N):
        j = (i + 1 + int(rng.integers(N - 1))) % N
        facts = [{(o["colour"], o["shape"]) for o in scenes[k]["objects"]} | {scenes[k]["kind"]} for k in (i, j)]
        same += facts[0] == facts[1]
    assert same / N < 0.1


def test_rerun_is_a_noop_and_refuses_foreign_folders(dataset: Path, tmp_path: Path) -> None:
    before = dataset.stat().st_mtime_ns
    assert make_dataset(dataset.parent, N, seed=3, image_size=96) == dataset
    assert dataset.stat().st_mtime_ns == before
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(VlpipeError, match="not empty"):
        make_dataset(tmp_path / "foreign", 5)
    with pytest.raises(VlpipeError, match="at least 1"):
        make_dataset(tmp_path / "x", 0)


def test_write_cc_tsv_is_headerless_caption_url(dataset: Path, tmp_path: Path) -> None:
    extra = [("a broken link", "http://127.0.0.1:1/missing.jpg"), ("html", "http://127.0.0.1:1/page.jpg")]
    count = write_cc_tsv(dataset, "http://127.0.0.1:9/", tmp_path / "cc.tsv", extra_rows=extra)
    lines = (tmp_path / "cc.tsv").read_text().splitlines()
    assert count == len(lines) == N + 2
    fields = [line.split("\t") for line in lines]
    assert all(len(f) == 2 for f in fields)
    good = [f for f in fields if f[1].startswith("http://127.0.0.1:9/images/")]
    assert [f[0] for f in good] == [r["caption"] for r in read_captions(dataset)]
    assert [tuple(f) for f in fields if tuple(f) in extra] == extra
    assert tuple(fields[0]) not in extra and tuple(fields[-1]) not in extra
