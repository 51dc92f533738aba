"""Small inputs for the ingest and cache tests, laid out the way their tools write them.

Every img2dataset-style sample is (key, bytes, extension, caption), with the images that break
naive decoders; `write_layout` lays a list of them out the way img2dataset does (webdataset tars,
parquet with image bytes, or NNNNN/ folders), side files included, so the readers are tested
against the shapes they meet in the wild. `hateful`, `mmimdb` and `food` write the labelled
downstream datasets in their released layouts; `read_labelled` reads a built cache back with
json, pyarrow and numpy only.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

LAYOUTS = ("webdataset", "parquet", "files")


class Item(NamedTuple):
    key: str
    data: bytes
    ext: str
    caption: str | None


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random colour field with some edges: JPEG-friendly but not trivial to resize."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(img).copy()
    arr[height // 3 : height // 3 + 3, :, :] = 255
    return Image.fromarray(arr)


def exif_rotated_jpeg() -> bytes:
    """Stored 48 wide x 32 high, left half red, right half blue; EXIF 6 = show rotated 90 deg clockwise.

    Displayed upright it is 32 wide x 48 high with red on TOP and blue at the BOTTOM.
    """
    arr = np.zeros((32, 48, 3), np.uint8)
    arr[:, :24] = (220, 20, 20)
    arr[:, 24:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())


def png16() -> bytes:
    """16-bit greyscale at about 40% of full scale: naive conversion clips it to white."""
    arr = np.full((40, 40), 26000, np.uint16)
    arr[:, 20:] = 13000
    return _encode(Image.fromarray(arr), "PNG")


def cmyk_jpeg() -> bytes:
    """Pure cyan ink: must come out with little red and lots of green and blue."""
    return _encode(Image.new("CMYK", (40, 40), (255, 0, 0, 0)), "JPEG", quality=95)


def palette_transparent_png() -> bytes:
    """Palette image whose left half is the transparent index: must be white, not black."""
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0, 30, 160, 40] + [0] * (254 * 3))
    img.paste(1, (20, 0, 40, 40))
    return _encode(img, "PNG", transparency=0)


def la_png() -> bytes:
    """Grey+alpha: the left half is fully transparent (white when composited), the right half dark grey."""
    arr = np.zeros((40, 40, 2), np.uint8)
    arr[:, :, 0] = 60
    arr[:, 20:, 1] = 255
    return _encode(Image.fromarray(arr), "PNG")


def rgba_png() -> bytes:
    arr = np.zeros((40, 40, 4), np.uint8)
    arr[..., :3] = (10, 10, 200)
    arr[20:, :, 3] = 255  # top half transparent -> white
    return _encode(Image.fromarray(arr), "PNG")


def grey_jpeg() -> bytes:
    return _encode(Image.fromarray(np.full((40, 56), 90, np.uint8)), "JPEG", quality=95)


def hard_items() -> list[Item]:
    """Ten samples: plain and large JPEGs, the awkward modes, an undecodable file, a missing caption."""
    return [
        Item("000000000", _encode(photo(64, 48, 0), "JPEG", quality=90), "jpg", "a red and blue photo"),
        Item("000000001", exif_rotated_jpeg(), "jpg", "red on top, blue below"),
        Item("000000002", png16(), "png", "a sixteen bit grey card"),
        Item("000000003", cmyk_jpeg(), "jpg", "cyan ink printed"),
        Item("000000004", palette_transparent_png(), "png", "a green logo on transparency"),
        Item("000000005", la_png(), "png", "grey with alpha"),
        Item("000000006", rgba_png(), "png", "blue half, clear half"),
        Item("000000007", grey_jpeg(), "jpg", "a flat grey picture"),
        Item("000000008", b"this is not an image at all" * 4, "jpg", "broken bytes"),
        Item("000000009", _encode(photo(200, 150, 9), "JPEG", quality=90), "jpg", None),
        Item("000000010", _encode(photo(300, 180, 10), "JPEG", quality=90), "jpg", "a large wide photo"),
    ]


def photo_items(n: int, start: int = 0, size: tuple[int, int] = (48, 40)) -> list[Item]:
    return [
        Item(f"{i:09d}", _encode(photo(*size, seed=i), "JPEG", quality=90), "jpg", f"photo number {i} of a scene")
        for i in range(start, start + n)
    ]


PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")


def real_photo_items(n: int, min_side: int = 160) -> list[Item]:
    """`n` JPEG sources cut from the colour photographs bundled with scikit-image (offline): random
    crops of at least `min_side` px, aspect 3:4 to 4:3, for the codec's fidelity checks."""
    import skimage.data

    photos = [np.asarray(getattr(skimage.data, name)())[:, :, :3] for name in PHOTO_NAMES]
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        h = int(rng.integers(min_side, height + 1))
        w = min(width, max(min_side, int(h * rng.uniform(0.75, 4 / 3))))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        crop = Image.fromarray(np.ascontiguousarray(photo[y : y + h, x : x + w]))
        items.append(Item(f"{i:09d}", _encode(crop, "JPEG", quality=95), "jpg", f"a photograph, crop {i}"))
    return items


def _meta(item: Item) -> dict:
    return {"key": item.key, "url": f"http://127.0.0.1/img/{item.key}.{item.ext}", "caption": item.caption,
            "status": "success", "error_message": None}


def write_layout(root: Path, layout: str, shards: list[list[Item]]) -> Path:
    """Write `shards` as img2dataset output in `layout` under `root` (created); returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for index, items in enumerate(shards):
        name = f"{index:05d}"
        metas = [_meta(it) for it in items]
        if layout == "webdataset":
            with tarfile.open(root / f"{name}.tar", "w") as tar:
                for it in items:
                    parts = [(it.ext, it.data), ("json", json.dumps(_meta(it)).encode())]
                    if it.caption is not None:
                        parts.insert(1, ("txt", it.caption.encode()))
                    for ext, data in parts:
                        info = tarfile.TarInfo(f"{it.key}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        elif layout == "parquet":
            table = pa.table({
                "key": [it.key for it in items],
                "jpg": pa.array([it.data for it in items], pa.binary()),
                "txt": [it.caption for it in items],
                **{col: [m[col] for m in metas] for col in ("url", "caption", "status", "error_message")},
            })
            pq.write_table(table, root / f"{name}.parquet")
        else:
            folder = root / name
            folder.mkdir()
            for it in items:
                (folder / f"{it.key}.{it.ext}").write_bytes(it.data)
                if it.caption is not None:
                    (folder / f"{it.key}.txt").write_text(it.caption)
                (folder / f"{it.key}.json").write_text(json.dumps(_meta(it)))
        if layout != "parquet":
            # img2dataset's metadata side file: no image bytes, one row per attempted sample.
            pq.write_table(pa.table({c: [m[c] for m in metas] for c in ("key", "url", "caption", "status")}),
                           root / f"{name}.parquet")
        (root / f"{name}_stats.json").write_text(json.dumps({"count": len(items), "successes": len(items)}))
    return root


def captioned_cache(root: Path, n: int, seed: int, val_fraction: float, codec: str = "raw") -> Path:
    """A real 32 px / 8 px-patch cache of `n` synthetic captioned images (the demo's generator),
    built in a second or two: for tests that train or only need a cache to open."""
    from vlpipe.cache.writer import build_cache
    from vlpipe.demo.synth import make_dataset

    captions = make_dataset(root / "src", n=n, seed=seed, image_size=32)
    build_cache(captions, root / "cache", image_size=32, patch_size=8, max_len=16, tokenizer="wordpiece:200",
                val_fraction=val_fraction, codec=codec, processes=1, quiet=True)
    return root / "cache"


def jpeg_cache(root: Path, n: int = 30, shards: int = 3) -> tuple[Path, np.ndarray, list[bytes]]:
    """A real 32 px / 8 px-patch JPEG cache of `n` cut photographs in `shards` shards (rows of different
    sizes), and what it holds by global sample number, read with numpy and simplejpeg only: each
    sample's (16, 192) patches as decoded, and its JPEG bytes."""
    import simplejpeg

    from vlpipe.cache.writer import build_cache

    items = real_photo_items(n, min_side=64)
    per = -(-n // shards)
    src = write_layout(root / "src", "webdataset", [items[i : i + per] for i in range(0, n, per)])
    build_cache(src, root / "cache", image_size=32, patch_size=8, max_len=16, tokenizer="wordpiece:200",
                val_fraction=0.3, codec="jpeg", processes=1, quiet=True)
    m = json.loads((root / "cache/manifest.json").read_text())
    patches, encoded = [], []
    for shard in m["shards"]:
        data = np.load(root / "cache" / shard["files"]["jpeg"]["path"])
        offsets = np.load(root / "cache" / shard["files"]["jpeg_offsets"]["path"])
        for start, end in zip(offsets[:-1], offsets[1:], strict=True):
            encoded.append(data[start:end].tobytes())
            img = simplejpeg.decode_jpeg(encoded[-1])
            patches.append(img.reshape(4, 8, 4, 8, 3).transpose(0, 2, 1, 3, 4).reshape(16, 192))
    return root / "cache", np.stack(patches), encoded


# ---- labelled downstream datasets ------------------------------------------------------------------

LABELLED_OPTS = {"image_size": 16, "patch_size": 8, "max_len": 12, "tokenizer": "wordpiece:120", "quiet": True,
                 "processes": 1}


def image(seed: int, fmt: str = "PNG") -> bytes:
    return _encode(photo(24, 20, seed), fmt)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_labelled(cache: Path) -> tuple[dict, list[dict], np.ndarray]:
    """Manifest, meta rows and labels of every shard concatenated, with json/pyarrow/numpy only."""
    m = json.loads((cache / "manifest.json").read_text())
    meta, labels = [], []
    for shard in m["shards"]:
        meta += pq.read_table(cache / shard["files"]["meta"]["path"]).to_pylist()
        labels.append(np.load(cache / shard["files"]["labels"]["path"]))
    return m, meta, np.concatenate(labels)


def skipped(cache: Path) -> list[tuple[str, str]]:
    return [(r["key"], r["reason"]) for r in pq.read_table(cache / "skipped.parquet").to_pylist()]


def hateful(root: Path) -> Path:
    """Hateful Memes: 6 train, 2 dev_seen (id 3 also in train: a leak), 3 unlabelled test_unseen."""
    (root / "img").mkdir(parents=True)
    for i in range(10):
        (root / "img" / f"{i:05d}.png").write_bytes(image(i))
    write_jsonl(root / "train.jsonl", [{"id": i, "img": f"img/{i:05d}.png", "label": i % 2, "text": f"meme {i}"}
                                       for i in range(6)])
    write_jsonl(root / "dev_seen.jsonl", [{"id": i, "img": f"img/{i:05d}.png", "label": 1, "text": f"dev {i}"}
                                          for i in (6, 3)])
    write_jsonl(root / "test_unseen.jsonl", [{"id": i, "img": f"img/{i:05d}.png", "text": f"test meme {i}"}
                                             for i in (7, 8, 9)])
    return root


GENRES = {"10": ["Drama", "Comedy"], "11": ["Action"], "12": ["Comedy"], "13": ["Drama", "Action"],
          "14": ["Comedy", "Romance"], "20": ["Drama"], "30": ["Action", "News"], "31": ["Comedy"]}


def mmimdb(root: Path) -> Path:
    """MM-IMDB with GENRES under dataset/; movie 15 has an image but no JSON file."""
    folder = root / "dataset"
    folder.mkdir(parents=True)
    for i, key in enumerate(GENRES):
        (folder / f"{key}.jpeg").write_bytes(image(i, "JPEG"))
        plot = [f"plot of movie {key}", "a second outline"] if i % 2 else f"plot of movie {key}"
        (folder / f"{key}.json").write_text(json.dumps({"plot": plot, "genres": GENRES[key], "title": key}))
    (folder / "15.jpeg").write_bytes(image(15, "JPEG"))  # no 15.json
    (root / "split.json").write_text(json.dumps({"train": ["10", "11", "12", "13", "14", "15"], "dev": ["20"],
                                                 "test": ["30", "31"]}))
    return root


def food(root: Path, test_label: str = "sushi") -> Path:
    """UPMC Food-101: 12 train rows over 3 classes, 2 test rows (the second labelled `test_label`)."""
    (root / "texts").mkdir(parents=True)
    rows = {"train": [(f"{lab}_{i}.jpg", f"recipe for {lab}, number {i}", lab)
                      for lab in ("pizza", "sushi", "apple_pie") for i in range(4)],
            "test": [("pizza_9.jpg", "best pizza", "pizza"), (f"{test_label}_9.jpg", "rolls", test_label)]}
    for split, items in rows.items():
        with (root / "texts" / f"{split}_titles.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows(items)
        for k, (name, _text, lab) in enumerate(items):
            folder = root / "images" / split / lab
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(image(k, "JPEG"))
    return root


def generic_images(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"p{i}.png").write_bytes(image(i))
