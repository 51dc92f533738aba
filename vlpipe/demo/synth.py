"""An embedded captioned-image set whose captions are true: shapes, colours, positions, counts.

Why synthetic: the demo and the learning tests must run offline in minutes, and a model can only
show that it learned vision-language alignment if the captions really describe the images. Each
caption is built from the same scene description that draws the image, so it is faithful by
construction; wording varies (templates and synonyms) so the text stream sees real language.

Designed to be learnable by a tiny model at 64-96 px: objects are large, fills are saturated and
far apart in hue, backgrounds are muted, and the facts a caption states (colour, shape, position
or relation, count) differ between two random samples almost always, so "does this caption belong
to this image?" has a clear answer.

Layout written by `make_dataset(out_dir, n)`:
    out_dir/images/000000.jpg ...
    out_dir/captions.jsonl   {"image": "images/000000.jpg", "caption": "..."} per line, written last
    out_dir/scenes.jsonl     what was drawn, same order: objects with shape, colour, centre, size
    out_dir/dataset.json     the generation options; a rerun with the same options is a no-op
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlpipe.demo.backgrounds import BackgroundMaker
from vlpipe.errors import VlpipeError
from vlpipe.utils.atomic import atomic_open, write_json_atomic

# Saturated fills, roughly 60 degrees apart in hue so JPEG and downscaling never confuse them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 25),
    "orange": (255, 145, 0),
    "yellow": (250, 235, 20),
    "green": (20, 175, 45),
    "blue": (25, 70, 235),
    "purple": (150, 30, 205),
}
COLOUR_WORDS: dict[str, tuple[str, ...]] = {name: (name,) for name in COLOURS} | {"purple": ("purple", "violet")}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
SHAPE_WORDS: dict[str, tuple[tuple[str, str], ...]] = {  # (singular, plural)
    "circle": (("circle", "circles"), ("disc", "discs")),
    "square": (("square", "squares"),),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"),),
    "cross": (("cross", "crosses"), ("plus sign", "plus signs")),
}
NUMBER_WORDS = {2: "two", 3: "three"}
# Where a lone object sits, as a fraction of the image side (x, y), and how captions say it.
PLACES: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5), "left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73),
}
PLACE_WORDS: dict[str, tuple[str, ...]] = {
    "center": ("in the center", "in the middle", "in the centre of the image"),
    "left": ("on the left", "on the left side", "at the left of the image"),
    "right": ("on the right", "on the right side", "at the right of the image"),
    "top": ("at the top", "near the top", "at the top of the image"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom of the image"),
}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "photo": ("over a photo", "on a photographic background", "in front of a photograph"),
    "gradient": ("on a gradient background", "on a smooth gradient"),
    "noise": ("on a noisy background", "on a mottled background"),
}
SINGLE_TEMPLATES = ("{obj} {place}", "a photo of {obj} {place}", "there is {obj} {place}",
                    "an image with {obj} {place}", "{Place}, {obj}")
COUNT_TEMPLATES = ("{num} {objs}{arr}", "a picture of {num} {objs}{arr}", "there are {num} {objs}{arr}",
                   "an image showing {num} {objs}{arr}")
PAIR_TEMPLATES = ("{a} {rel} {b}", "a photo of {a} {rel} {b}", "there is {a} {rel} {b}")


@dataclass
class DrawnObject:
    """One drawn shape, recorded so tests (and people) can check captions against pixels."""

    shape: str
    colour: str
    center: tuple[float, float]  # pixels, (x, y), y growing downward
    size: float  # pixels: the side of the square the shape fills


@dataclass
class Scene:
    """What an image shows; the caption is derived from it and nothing else."""

    kind: str  # "single" | "count" | "pair"
    objects: list[DrawnObject] = field(default_factory=list)
    background: str = "photo"
    caption: str = ""


def pick(rng: np.random.Generator, options: tuple | list):
    """One of `options`, uniformly (the one way this module draws a word or a template)."""
    return options[int(rng.integers(len(options)))]


def _jittered(rng: np.random.Generator, fx: float, fy: float, size: float, side: int) -> tuple[float, float]:
    """A centre near (fx, fy) * side, kept so the whole shape stays inside the image."""
    half = size / 2 + 1
    x = float(np.clip((fx + rng.uniform(-0.04, 0.04)) * side, half, side - half))
    y = float(np.clip((fy + rng.uniform(-0.04, 0.04)) * side, half, side - half))
    return (x, y)


def _layout(rng: np.random.Generator, side: int) -> tuple[str, list[DrawnObject], dict[str, str]]:
    """Choose a scene kind and place its objects; returns facts the caption will state."""
    kind = str(rng.choice(["single", "count", "pair"], p=[0.4, 0.3, 0.3]))
    colour, shape = str(pick(rng, list(COLOURS))), str(pick(rng, SHAPES))
    if kind == "single":
        place = str(pick(rng, list(PLACES)))
        size = rng.uniform(0.38, 0.48) * side
        center = _jittered(rng, *PLACES[place], size, side)
        return kind, [DrawnObject(shape, colour, center, size)], {"place": place}
    if kind == "count":
        count = int(rng.integers(2, 4))
        arrangement = str(pick(rng, ["row", "column"] + (["triangle"] if count == 3 else [])))
        size = rng.uniform(0.26, 0.3) * side if count == 3 else rng.uniform(0.3, 0.36) * side
        if arrangement == "triangle":
            spots = [(0.5, 0.27), (0.26, 0.72), (0.74, 0.72)]
        else:
            steps = [0.28, 0.72] if count == 2 else [0.18, 0.5, 0.82]
            spots = [(s, 0.5) if arrangement == "row" else (0.5, s) for s in steps]
        objects = [DrawnObject(shape, colour, _jittered(rng, fx, fy, size, side), size) for fx, fy in spots]
        return kind, objects, {"count": str(count), "arrangement": arrangement}
    # pair: two objects of different colours, side by side or one above the other
    other_colour = str(pick(rng, [c for c in COLOURS if c != colour]))
    other_shape = str(pick(rng, SHAPES))
    axis = str(pick(rng, ["horizontal", "vertical"]))
    size = rng.uniform(0.34, 0.42) * side
    first, second = ((0.27, 0.5), (0.73, 0.5)) if axis == "horizontal" else ((0.5, 0.27), (0.5, 0.73))
    objects = [DrawnObject(shape, colour, _jittered(rng, *first, size, side), size),
               DrawnObject(other_shape, other_colour, _jittered(rng, *second, size, side), size)]
    return kind, objects, {"axis": axis}


def noun(rng: np.random.Generator, shape: str, colour: str, plural: bool = False) -> str:
    """"a red circle" / "an orange star" / (plural) "red circles", synonyms drawn from `rng`."""
    singular, plural_word = pick(rng, SHAPE_WORDS[shape])
    colour = pick(rng, COLOUR_WORDS[colour])
    if plural:
        return f"{colour} {plural_word}"
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {singular}"


def _caption(rng: np.random.Generator, kind: str, objects: list[DrawnObject], facts: dict[str, str],
             background: str) -> str:
    """A true sentence about the scene; the template and synonyms are drawn from `rng`."""
    first = objects[0]
    if kind == "single":
        place = str(pick(rng, PLACE_WORDS[facts["place"]]))
        text = str(pick(rng, SINGLE_TEMPLATES)).format(obj=noun(rng, first.shape, first.colour), place=place,
                                                        Place=place[0].upper() + place[1:])
    elif kind == "count":
        arrangement = {"row": " in a row", "column": " in a column", "triangle": ""}[facts["arrangement"]]
        text = str(pick(rng, COUNT_TEMPLATES)).format(
            num=NUMBER_WORDS[int(facts["count"])], objs=noun(rng, first.shape, first.colour, plural=True),
            arr=arrangement if rng.random() < 0.6 else "")
    else:
        a, b = objects  # a is left of / above b; say it either way round
        relation = ("to the left of", "to the right of") if facts["axis"] == "horizontal" else ("above", "below")
        if rng.random() < 0.5:
            a, b, relation = b, a, (relation[1], relation[0])
        text = str(pick(rng, PAIR_TEMPLATES)).format(a=noun(rng, a.shape, a.colour), rel=relation[0],
                                                       b=noun(rng, b.shape, b.colour))
    if rng.random() < 0.35:
        text += " " + str(pick(rng, BACKGROUND_WORDS[background]))
    return text


def _polygon(shape: str, cx: float, cy: float, size: float) -> list[tuple[float, float]]:
    """Vertices of the non-circular shapes, each filling about the same area as the circle."""
    r = size / 2
    if shape == "square":
        h = 0.86 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # point up, centroid at the centre
        return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in np.radians([-90, 30, 150])]
    if shape == "star":  # five points; the inner radius keeps the arms wide enough to see at 64 px
        radii = [r if i % 2 == 0 else 0.48 * r for i in range(10)]
        return [(cx + rad * np.cos(a), cy + rad * np.sin(a))
                for rad, a in zip(radii, np.radians(np.arange(10) * 36 - 90), strict=True)]
    if shape == "cross":
        a, w = r, 0.36 * r
        return [(cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w), (cx + a, cy + w),
                (cx + w, cy + w), (cx + w, cy + a), (cx - w, cy + a), (cx - w, cy + w), (cx - a, cy + w),
                (cx - a, cy - w), (cx - w, cy - w)]
    raise ValueError(f"unknown shape {shape!r}")


def draw_object(draw: ImageDraw.ImageDraw, obj: DrawnObject) -> None:
    """Fill the shape with its colour and a thin contrasting outline, so edges survive blur and JPEG."""
    fill = COLOURS[obj.colour]
    outline = (20, 20, 20) if sum(fill) > 330 else (240, 240, 240)
    width = max(1, round(obj.size / 28))
    cx, cy = obj.center
    if obj.shape == "circle":
        r = obj.size / 2
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
    else:
        draw.polygon(_polygon(obj.shape, cx, cy, obj.size), fill=fill, outline=outline, width=width)


def make_scene(rng: np.random.Generator, backgrounds: BackgroundMaker, side: int) -> tuple[Image.Image, Scene]:
    """Draw one image and its faithful caption, deterministic for `rng`'s state."""
    background = backgrounds.make(rng, side)
    kind, objects, facts = _layout(rng, side)
    image = background.image.copy()
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_object(draw, obj)
    caption = _caption(rng, kind, objects, facts, background.kind)
    return image, Scene(kind=kind, objects=objects, background=background.kind, caption=caption)


def make_dataset(out_dir: str | Path, n: int, seed: int = 0, image_size: int = 128,
                 jpeg_quality: int = 90, progress: bool = False) -> Path:
    """Write `n` captioned images to `out_dir` and return the path of its `captions.jsonl`.

    Sample `i` depends only on (seed, i), so the first k samples of a larger set are the same as a
    set of k. `captions.jsonl` is written last and atomically: a folder without it is incomplete.
    A rerun with the same options returns at once; other options replace the folder's images.
    """
    if n < 1:
        raise VlpipeError(f"make_dataset: n must be at least 1, got {n}")
    if image_size < 32:
        raise VlpipeError(f"make_dataset: image_size must be at least 32 px, got {image_size}")
    out = Path(out_dir)
    captions_path = out / "captions.jsonl"
    options = {"generator": "vlpipe.demo.synth", "version": 1, "n": n, "seed": seed,
               "image_size": image_size, "jpeg_quality": jpeg_quality}
    stamp = out / "dataset.json"
    if captions_path.exists() and stamp.exists() and json.loads(stamp.read_text()) == options:
        return captions_path
    if out.exists() and any(out.iterdir()) and not (out / "dataset.json").exists():
        raise VlpipeError(f"{out} is not empty and was not written by make_dataset; choose another folder")
    captions_path.unlink(missing_ok=True)
    (out / "dataset.json").unlink(missing_ok=True)
    shutil.rmtree(out / "images", ignore_errors=True)
    (out / "images").mkdir(parents=True)

    backgrounds = BackgroundMaker()
    rows: list[str] = []
    scenes: list[str] = []
    indices = range(n)
    if progress:
        from rich.progress import track

        indices = track(indices, description="drawing images", total=n)
    for i in indices:
        image, scene = make_scene(np.random.default_rng([seed, i]), backgrounds, image_size)
        rel = f"images/{i:06d}.jpg"
        image.save(out / rel, format="JPEG", quality=jpeg_quality)
        rows.append(json.dumps({"image": rel, "caption": scene.caption}))
        scenes.append(json.dumps({"image": rel, **asdict(scene)}))
    with atomic_open(out / "scenes.jsonl", "w", encoding="utf-8") as fh:
        fh.write("\n".join(scenes) + "\n")
    with atomic_open(captions_path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(rows) + "\n")
    write_json_atomic(out / "dataset.json", options)
    return captions_path


def read_captions(captions_path: str | Path) -> list[dict[str, str]]:
    """The rows of a `captions.jsonl` written by `make_dataset`."""
    path = Path(captions_path)
    if not path.is_file():
        raise VlpipeError(f"{path}: no captions file; run make_dataset first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_cc_tsv(captions_path: str | Path, base_url: str, tsv_path: str | Path,
                 extra_rows: list[tuple[str, str]] = ()) -> int:
    """Write the set as a headerless Conceptual-Captions TSV (`caption<TAB>url`) served at `base_url`.

    `base_url` is where the dataset folder is served (e.g. "http://127.0.0.1:8123"); each image's
    URL is `base_url/images/000123.jpg`. `extra_rows` (e.g. broken URLs) are mixed in at fixed,
    spread-out positions so that a download sees them among the good rows. Returns the row count.
    """
    rows = [(r["caption"], f"{base_url.rstrip('/')}/{r['image']}") for r in read_captions(captions_path)]
    extra = list(extra_rows)
    for k, row in enumerate(extra):
        rows.insert((k + 1) * len(rows) // (len(extra) + 1), row)
    with atomic_open(tsv_path, "w", encoding="utf-8") as fh:
        for caption, url in rows:
            fh.write(f"{caption}\t{url}\n")
    return len(rows)
