"""The demo's downstream task: is this statement true of the image? Both modalities needed, by construction.

Why this task: pretraining must be shown to help a task it never trained on, where neither the
image nor the text alone says anything about the answer. Each image of the synthetic world
(vlpipe/demo/synth.py, drawn from seeds the pretraining set never uses) gets one statement:

- true (half of each split, independent of the scene): a fresh wording of the scene's facts;
- false: the same facts with exactly one changed (a colour, a shape, the count, the place, or
  which object is left/above), a hard negative that a bag of words cannot tell from a true one.

Every change maps the scene's facts onto another possible scene's facts with the same
distribution (a uniform colour stays uniform, two objects swap places, two becomes three), so the
statements of both labels are identically distributed and the label is independent of the image:
a caption-only or image-only classifier is at chance (`shortcut_accuracy` measures both). The
wording never mentions the background or a count's arrangement, which a changed count would skew.

Layout written by `make_statements(out_dir, sizes)`:
    out_dir/images/train-000000.jpg ...
    out_dir/statements.jsonl  {"key", "image", "caption", "label": "true"|"false", "split", "changed",
                              "facts": what the image shows, "claimed": what the caption says}
    out_dir/dataset.json      the generation options; a rerun with the same options is a no-op
`vlpipe build-cache out_dir/statements.jsonl --label-column label` reads it (generic format).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlpipe.demo.backgrounds import BackgroundMaker
from vlpipe.demo.synth import (
    COLOURS,
    COUNT_TEMPLATES,
    NUMBER_WORDS,
    PAIR_TEMPLATES,
    PLACE_WORDS,
    PLACES,
    SHAPES,
    SINGLE_TEMPLATES,
    Scene,
    make_scene,
    noun,
    pick,
)
from vlpipe.errors import VlpipeError
from vlpipe.utils.atomic import atomic_open, write_json_atomic

FILE = "statements.jsonl"
SPLITS = ("train", "val", "test")
STREAM = 1  # image i of this set is drawn from seed (seed, STREAM, i): never one of the pretraining images
CHANCE_ACCURACY = 0.5  # exactly half of each split is true
# Which facts a false statement may change, per kind of scene.
CHANGEABLE = {"single": ("colour", "shape", "place"), "count": ("colour", "shape", "count"),
              "pair": ("colour", "shape", "relation")}


def scene_facts(scene: Scene, side: int) -> dict[str, Any]:
    """What a statement about `scene` may claim: colour and shape of each object, and the place
    (single), the count (count) or which object is left of / above the other (pair: `first`)."""
    objects = [(o.colour, o.shape) for o in scene.objects]
    if scene.kind == "single":
        x, y = scene.objects[0].center
        place = min(PLACES, key=lambda p: (PLACES[p][0] * side - x) ** 2 + (PLACES[p][1] * side - y) ** 2)
        return {"kind": "single", "objects": objects, "place": place}
    if scene.kind == "count":
        return {"kind": "count", "objects": objects[:1], "count": len(objects)}
    (x0, y0), (x1, y1) = (o.center for o in scene.objects)
    horizontal = abs(x1 - x0) > abs(y1 - y0)
    first_is_0 = x0 < x1 if horizontal else y0 < y1
    ordered = objects if first_is_0 else objects[::-1]
    return {"kind": "pair", "objects": ordered, "axis": "horizontal" if horizontal else "vertical"}


def falsify(rng: np.random.Generator, facts: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The facts with exactly one changed, and which; the result is a possible scene's facts, so
    false statements are distributed like true ones."""
    changed = str(pick(rng, CHANGEABLE[facts["kind"]]))
    out = {**facts, "objects": list(facts["objects"])}
    which = int(rng.integers(len(out["objects"])))
    colour, shape = out["objects"][which]
    if changed == "colour":  # never another object's colour: a pair's two colours always differ
        taken = {c for c, _ in out["objects"]}
        out["objects"][which] = (str(pick(rng, [c for c in COLOURS if c not in taken])), shape)
    elif changed == "shape":
        out["objects"][which] = (colour, str(pick(rng, [s for s in SHAPES if s != shape])))
    elif changed == "place":
        out["place"] = str(pick(rng, [p for p in PLACES if p != facts["place"]]))
    elif changed == "count":
        out["count"] = 5 - facts["count"]  # two <-> three
    else:  # relation: the objects swap places
        out["objects"].reverse()
    return out, changed


def render(rng: np.random.Generator, facts: dict[str, Any]) -> str:
    """One sentence claiming `facts`, worded with the pretraining captions' templates and synonyms."""
    (colour, shape), kind = facts["objects"][0], facts["kind"]
    if kind == "single":
        place = str(pick(rng, PLACE_WORDS[facts["place"]]))
        return str(pick(rng, SINGLE_TEMPLATES)).format(obj=noun(rng, shape, colour), place=place,
                                                        Place=place[0].upper() + place[1:])
    if kind == "count":
        return str(pick(rng, COUNT_TEMPLATES)).format(num=NUMBER_WORDS[facts["count"]],
                                                       objs=noun(rng, shape, colour, plural=True), arr="")
    a, b = facts["objects"]  # a is left of / above b; say it either way round
    relation = ("to the left of", "to the right of") if facts["axis"] == "horizontal" else ("above", "below")
    if rng.random() < 0.5:
        a, b, relation = b, a, relation[::-1]
    return str(pick(rng, PAIR_TEMPLATES)).format(a=noun(rng, a[1], a[0]), rel=relation[0], b=noun(rng, b[1], b[0]))


def make_statements(out_dir: str | Path, sizes: Mapping[str, int], seed: int = 0, image_size: int = 128,
                    jpeg_quality: int = 90) -> Path:
    """Draw the images and write one statement each; returns the path of `statements.jsonl`.

    `sizes` maps each split (train, val, test) to its number of samples, each an even number so
    that exactly half is true. Sample i of a split depends only on (seed, split, i). The jsonl is
    written last and atomically: a folder without it is incomplete.
    """
    if set(sizes) != set(SPLITS) or any(n < 2 or n % 2 for n in sizes.values()):
        raise VlpipeError(f"make_statements: sizes must give an even number >= 2 for each of {', '.join(SPLITS)}, "
                          f"got {dict(sizes)}")
    out = Path(out_dir)
    path = out / FILE
    options = {"generator": "vlpipe.demo.statements", "version": 2, "sizes": {s: sizes[s] for s in SPLITS},
               "seed": seed, "image_size": image_size, "jpeg_quality": jpeg_quality}
    stamp = out / "dataset.json"
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()) == options:
        return path
    if out.exists() and any(out.iterdir()) and not stamp.exists():
        raise VlpipeError(f"{out} is not empty and was not written by make_statements; choose another folder")
    path.unlink(missing_ok=True)
    stamp.unlink(missing_ok=True)
    shutil.rmtree(out / "images", ignore_errors=True)
    (out / "images").mkdir(parents=True)

    backgrounds = BackgroundMaker()
    rows = []
    for split_id, split in enumerate(SPLITS):
        for i in range(sizes[split]):
            rng = np.random.default_rng([seed, STREAM, split_id, i])
            image, scene = make_scene(rng, backgrounds, image_size)
            facts = scene_facts(scene, image_size)
            true = i % 2 == 0  # balanced, and independent of the scene drawn from `rng`
            claimed, changed = (facts, None) if true else falsify(rng, facts)
            rel = f"images/{split}-{i:06d}.jpg"
            image.save(out / rel, format="JPEG", quality=jpeg_quality)
            rows.append({"key": f"{split}-{i:06d}", "image": rel, "caption": render(rng, claimed),
                         "label": "true" if true else "false", "split": split, "changed": changed,
                         "facts": facts, "claimed": claimed})
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)
    write_json_atomic(stamp, options)
    return path


def read_statements(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a `statements.jsonl` written by `make_statements`."""
    path = Path(path)
    if not path.is_file():
        raise VlpipeError(f"{path}: no statements file; run make_statements first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def shortcut_accuracy(path: str | Path, pixels: int = 16) -> dict[str, float]:
    """Test accuracy of the strongest single-modality shortcuts, trained on the train split.

    caption only: logistic regression on word unigrams and bigrams of the statement; image only:
    logistic regression on the image downscaled to `pixels` x `pixels` RGB. Both should be at
    `CHANCE_ACCURACY`: that is what makes the task need both modalities.
    """
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = read_statements(path)
    root = Path(path).parent
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]

    def images(part: list[dict[str, Any]]) -> np.ndarray:
        out = []
        for r in part:
            with Image.open(root / r["image"]) as im:
                out.append(np.asarray(im.convert("RGB").resize((pixels, pixels), Image.Resampling.BOX)).ravel())
        return np.stack(out).astype(np.float32) / 255

    labels = {split: np.array([r["label"] == "true" for r in part]) for split, part in (("train", train),
                                                                                         ("test", test))}
    text = make_pipeline(CountVectorizer(ngram_range=(1, 2)), LogisticRegression(max_iter=2000))
    text.fit([r["caption"] for r in train], labels["train"])
    image = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    image.fit(images(train), labels["train"])
    return {"caption_only": float(text.score([r["caption"] for r in test], labels["test"])),
            "image_only": float(image.score(images(test), labels["test"]))}
