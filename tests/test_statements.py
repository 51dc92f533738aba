"""The demo's downstream task: statements that are true or false by construction, balanced, and with
no single-modality shortcut (a caption-only and an image-only classifier score at chance)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vlpipe.demo.backgrounds import BackgroundMaker
from vlpipe.demo.statements import (
    CHANCE_ACCURACY,
    FILE,
    falsify,
    make_statements,
    read_statements,
    render,
    scene_facts,
    shortcut_accuracy,
)
from vlpipe.demo.synth import COLOUR_WORDS, NUMBER_WORDS, SHAPE_WORDS, make_scene
from vlpipe.errors import VlpipeError

SIZES = {"train": 400, "val": 2, "test": 600}


@pytest.fixture(scope="module")
def statements(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_statements(tmp_path_factory.mktemp("statements"), SIZES, seed=5, image_size=64)


def _differences(facts: dict, claimed: dict) -> list[str]:
    return [k for k in facts if facts[k] != claimed[k]]


def test_every_statement_is_true_or_false_as_labelled(statements: Path) -> None:
    rows = read_statements(statements)
    assert Counter((r["split"], r["label"]) for r in rows) == {
        (s, label): n // 2 for s, n in SIZES.items() for label in ("true", "false")}
    for r in rows:
        facts, claimed = r["facts"], r["claimed"]
        if r["label"] == "true":
            assert claimed == facts and r["changed"] is None
        else:  # exactly one fact changed: an object's colour or shape, the place, the count, or the order
            assert len(_differences(facts, claimed)) == 1, r
            assert r["changed"] in ("colour", "shape", "place", "count", "relation")
            if r["changed"] == "relation":
                assert claimed["objects"] == facts["objects"][::-1]
        # The caption says what is claimed: every object's colour and shape, and the count.
        words = r["caption"].lower()
        for colour, shape in claimed["objects"]:
            assert any(w in words for w in COLOUR_WORDS[colour]), r
            assert any(singular in words for singular, _ in SHAPE_WORDS[shape]), r
        if claimed["kind"] == "count":
            assert NUMBER_WORDS[claimed["count"]] in words.split()
    assert Counter(r["changed"] for r in rows if r["changed"]).keys() == {"colour", "shape", "place", "count",
                                                                          "relation"}


def test_facts_are_read_from_what_was_drawn() -> None:
    backgrounds = BackgroundMaker()
    for i in range(60):
        _, scene = make_scene(np.random.default_rng([9, i]), backgrounds, 96)
        facts = scene_facts(scene, 96)
        if scene.kind == "pair":
            (ax, ay), (bx, by) = (o.center for o in scene.objects)
            first = scene.objects[0] if (ax < bx if facts["axis"] == "horizontal" else ay < by) else scene.objects[1]
            assert facts["objects"][0] == (first.colour, first.shape)
        elif scene.kind == "count":
            assert facts["count"] == len(scene.objects) in (2, 3)
        rng = np.random.default_rng(i)
        claimed, changed = falsify(rng, facts)
        assert len(_differences(facts, claimed)) == 1 and facts == scene_facts(scene, 96)  # not changed in place
        assert render(rng, claimed)


def test_no_single_modality_shortcut(statements: Path) -> None:
    """Chance is 0.5 (half of each split is true). The strongest shortcuts we know, logistic
    regression on caption unigrams + bigrams and on 16x16 pixels, must stay within 3 standard
    errors of chance on 600 test samples (|acc - 0.5| <= 0.061): the task needs both modalities."""
    scores = shortcut_accuracy(statements)
    bound = 3 * math.sqrt(CHANCE_ACCURACY * (1 - CHANCE_ACCURACY) / SIZES["test"])
    assert set(scores) == {"caption_only", "image_only"}
    for name, accuracy in scores.items():
        assert abs(accuracy - CHANCE_ACCURACY) <= bound, (name, accuracy, bound)


def test_deterministic_reused_and_checked(statements: Path, tmp_path: Path) -> None:
    before = statements.stat().st_mtime_ns
    assert make_statements(statements.parent, SIZES, seed=5, image_size=64) == statements
    assert statements.stat().st_mtime_ns == before  # same options: nothing redrawn
    small = {"train": 4, "val": 2, "test": 2}
    a = read_statements(make_statements(tmp_path / "a", small, seed=5, image_size=64))
    assert a == [r for r in read_statements(statements) if r["key"] in {x["key"] for x in a}]
    b = read_statements(make_statements(tmp_path / "b", small, seed=6, image_size=64))
    assert [r["caption"] for r in a] != [r["caption"] for r in b]
    assert json.loads((tmp_path / "a" / "dataset.json").read_text())["sizes"] == small
    with pytest.raises(VlpipeError, match="even number"):
        make_statements(tmp_path / "c", {"train": 3, "val": 2, "test": 2})
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("mine")
    with pytest.raises(VlpipeError, match="not written by make_statements"):
        make_statements(tmp_path / "d", small)
    with pytest.raises(VlpipeError, match="no statements file"):
        read_statements(tmp_path / "d" / FILE)
