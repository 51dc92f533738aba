"""Reproduce the dataloader figures: data -> cache -> `bench_dataloader` -> JSON + Markdown.

    .venv/bin/python benchmarks/bench_dataloader.py                  # synthetic CC-like shards
    .venv/bin/python benchmarks/bench_dataloader.py --raw RAW_DIR    # your img2dataset output
    .venv/bin/python benchmarks/bench_dataloader.py --jpeg --cold    # + the JPEG twin, + cold rows

Without --raw it writes 4000 synthetic img2dataset-style samples (4 tar shards of KEY.jpg/.txt/.json)
that imitate Conceptual Captions as img2dataset stores it, the same recipe as the loader anchors:
JPEG quality 95, even keys "keep_ratio" (shorter side 256, aspect 2:3 to 1.85:1), odd keys
"border" (256x256 with black padding), content cut from the photos bundled with scikit-image plus
gradients, shapes and mild noise, captions of 8-20 words. Then it builds the cache (224 px, patch
16, max_len 64; with --jpeg also its JPEG twin, q95), runs the benchmark and writes `dataloader.json` and
`dataloader.md` (the table, the machine, the date and the exact command) into --out (`--name` changes
the file names). Data and caches are kept in --work and reused.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry",
          "hubble_deep_field", "retina", "coins", "moon", "brick", "grass", "gravel")
WORDS = ("a", "man", "woman", "dog", "cat", "car", "street", "city", "tree", "river", "beach", "mountain",
         "house", "people", "child", "sitting", "standing", "walking", "in", "on", "at", "the", "of", "with",
         "near", "under", "over", "red", "blue", "green", "old", "new", "small", "large", "view", "sunset",
         "morning", "night", "building", "road", "field", "water", "sky", "snow", "family")
SAMPLES_PER_SHARD = 1000


def _photos() -> list[np.ndarray]:
    import skimage.data

    photos = []
    for name in PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        photos.append(np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3])
    return photos


def _synthetic_image(rng: np.random.Generator, photos: list[np.ndarray], index: int) -> Image.Image:
    """A photo crop, rescaled to img2dataset's output geometry, with shapes, gradient and noise."""
    photo = photos[rng.integers(len(photos))]
    aspect = float(rng.uniform(2 / 3, 1.85))
    h, w = photo.shape[:2]
    ch = int(rng.integers(min(h, w) // 3, min(h, w)))
    cw = min(w, int(ch * aspect))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(np.ascontiguousarray(photo[top:top + ch, left:left + cw]))
    if index % 2 == 0:  # keep_ratio: shorter side 256
        scale = 256 / min(crop.size)
        img = crop.resize((max(256, round(crop.width * scale)), max(256, round(crop.height * scale))),
                          Image.Resampling.BICUBIC)
    else:  # border: fit into 256x256, pad black
        crop.thumbnail((256, 256), Image.Resampling.BICUBIC)
        img = Image.new("RGB", (256, 256))
        img.paste(crop, ((256 - crop.width) // 2, (256 - crop.height) // 2))
    draw = ImageDraw.Draw(img, "RGBA")
    for _ in range(int(rng.integers(1, 4))):
        x, y = int(rng.integers(0, img.width)), int(rng.integers(0, img.height))
        r = int(rng.integers(10, 60))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)) + (120,))
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))
    arr = np.asarray(img, np.float32)
    gradient = np.linspace(-12, 12, arr.shape[1], dtype=np.float32)[None, :, None]
    arr = arr + gradient + rng.normal(0, 3, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_shards(out: Path, samples: int, seed: int = 0) -> None:
    """img2dataset-style webdataset output: NNNNN.tar with KEY.jpg, KEY.txt, KEY.json."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = _photos()
    for shard in range(-(-samples // SAMPLES_PER_SHARD)):
        first = shard * SAMPLES_PER_SHARD
        write_shard(out, shard, range(first, min(samples, first + SAMPLES_PER_SHARD)), rng, photos)


def make_shards_parallel(out: Path, samples: int, per_shard: int, processes: int, seed: int = 0) -> None:
    """The same recipe as `make_shards`, one shard per process at a time, each shard with its own
    generator (so other draws than `make_shards`): seconds instead of a minute on a many-core machine."""
    from concurrent.futures import ProcessPoolExecutor

    if not 0 < per_shard <= 10_000:  # a key holds the position in its shard in 4 digits
        raise ValueError(f"per_shard must be 1..10000, got {per_shard}")
    out.mkdir(parents=True, exist_ok=True)
    shards = -(-samples // per_shard)
    with ProcessPoolExecutor(max(1, min(processes, shards))) as pool:
        jobs = [pool.submit(_write_seeded_shard, out, shard, range(shard * per_shard, min(samples, (shard + 1) * per_shard)),
                            seed) for shard in range(shards)]
        for job in jobs:
            job.result()


def _write_seeded_shard(out: Path, shard: int, indices: range, seed: int) -> None:
    write_shard(out, shard, indices, np.random.default_rng([seed, shard]), _photos())


def write_shard(out: Path, shard: int, indices: range, rng: np.random.Generator, photos: list[np.ndarray]) -> None:
    """Shard `shard` of samples `indices`: KEY = 5-digit shard + 4-digit position in the shard."""
    path = out / f"{shard:05d}.tar"
    tmp = path.with_name(f".tmp-{path.name}")
    with tarfile.open(tmp, "w") as tar:
        for position, i in enumerate(indices):
            buf = io.BytesIO()
            img = _synthetic_image(rng, photos, i)
            img.save(buf, "JPEG", quality=95)
            key = f"{shard:05d}{position:04d}"
            caption = " ".join(rng.choice(WORDS, int(rng.integers(8, 21))))
            meta = {"key": key, "caption": caption, "status": "success", "width": img.width,
                    "height": img.height, "url": f"http://example.invalid/{key}.jpg"}
            for ext, data in (("jpg", buf.getvalue()), ("txt", caption.encode()),
                              ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)  # a half-written shard never looks complete on a rerun


def _markdown(report: dict, command: str, started: str, finished: str) -> str:
    from vlpipe.bench import BASELINE

    machine = report["machine"]
    lines = [
        "| pipeline | workers | samples/s [min-max] | read B/sample | stored B/sample | read MB/s | % of disk "
        "| CPU cores | peak RSS MB | PSS MB | x baseline | % of ceiling | % of copy bound | % of np.take | other load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['pipeline']} | {r['workers']} | **{r['samples_per_s']:,.0f}** [{r['samples_per_s_min']:,.0f}-"
            f"{r['samples_per_s_max']:,.0f}] | {r['read_bytes_per_sample']:,} | {r['stored_bytes_per_sample']:,} | "
            f"{r['read_mb_per_s']:,.1f} | {_percent(r['share_of_disk_read'])} | {r['cpu_cores']:.2f} | "
            f"{r['peak_rss_mb']:,.0f} | {r['pss_mb'] if r['pss_mb'] is not None else '-'} | "
            f"{r['ratio_to_baseline']:.2f} | {_percent(r['share_of_ceiling'])} | "
            f"{_percent(r['share_of_copy_bound'])} | {_percent(r['share_of_np_take_ceiling'])} | "
            f"{r['other_load_cores']:.2f} |")
    ceilings, bounds, takes = (
        ", ".join(f"{k.replace('_', ' ')} {v['samples_per_s']:,.0f}/s [{v['min']:,.0f}-{v['max']:,.0f}]"
                  for k, v in machine[key].items()) or "not measured"
        for key in ("ceiling", "ceiling_with_consumer_copy", "np_take_ceiling"))
    disk = machine.get("disk_sequential_read")
    disk_line = ("" if disk is None else
                 f"Disk sequential read (same run, cold: {disk['what']}): **{disk['mb_per_s']:,.0f} MB/s** "
                 f"[{disk['min']:,.0f}-{disk['max']:,.0f}] over {disk['bytes'] / 1e6:,.0f} MB, at most "
                 f"{100 * disk['cached_share_before']:.1f}% of it cached when a read began.\n")
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    settings = machine["settings"]
    other = [r["other_load_cores"] for r in report["results"]]
    skipped = "".join(f" {name} not run: {reason}." for name, reason in machine["skipped"].items())
    return "\n".join([
        "## Dataloader benchmark", "",
        f"Command: `{command}`, {started} to {finished}.", "",
        f"Settings: batch {settings['batch_size']}, {settings['workers']} worker(s), {settings['rounds']} interleaved "
        f"round(s) x {settings['seconds']} s, modes {', '.join(settings['modes'])}. `x baseline` is samples/s over "
        f"the like-for-like baseline's ({BASELINE}).{skipped}",
        "",
        f"Host load: the other processes on the machine used {min(other):.2f}-{max(other):.2f} CPU cores during the "
        "timed windows (`other load`, per row the largest of its rounds); ratios within the run are what count.",
        "",
        f"Machine: {machine['cpu']}, {machine['usable_cpus']} usable CPU(s) of {machine['logical_cpus']}, "
        f"{machine['memory_gb']} GB RAM, {machine['os']}, Python {machine['python']}, "
        f"1-min load before the run {machine['load_average_1m']}.", "",
        f"Versions: {versions}.", "",
        f"Data: {machine['data']['cache_samples']} samples, {machine['data']['image_size']} px, "
        f"baseline JPEGs {machine['data']['jpeg_source']}, mean JPEG {machine['data']['mean_jpeg_bytes']:,} B. "
        f"Page cache: {machine['page_cache_note']}.", "",
        *lines, "",
        *(f"- `{r['pipeline']}`: {r['description']}" for r in report["results"]), "",
        f"Random-gather ceiling (same run): {ceilings}.", "",
        f"Copy bound (the ceiling's gathers plus the consumer's copy every row pays, same run): {bounds}.", "",
        f"np.take gathers (the method of the team's anchor figures, benchmarks/results/anchors; a reference, "
        f"not a bound, same run): {takes}.", "",
        disk_line,
    ])


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, help="img2dataset webdataset folder (default: synthesize one)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vlpipe-bench",
                        help="data + cache folder, reused between runs (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where results go")
    parser.add_argument("--samples", type=int, default=4000, help="synthetic samples (without --raw)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="default: all usable CPUs")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="also run every vlpipe row cold (files evicted first)")
    parser.add_argument("--jpeg", action="store_true", help="also build the JPEG twin (q95) and run its rows")
    parser.add_argument("--name", default="dataloader", help="result file names: NAME.json, NAME.md")
    parser.add_argument("--modes", default=None, help="comma-separated vlpipe modes (default: all)")
    parser.add_argument("--baselines", default=None, help="comma-separated JPEG loaders (default: all)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from rich.console import Console

    from vlpipe.bench import BASELINES, VLPIPE_MODES, bench_dataloader
    from vlpipe.bench.table import render, to_json
    from vlpipe.cache.writer import build_cache

    console = Console(stderr=True)
    raw = args.raw
    if raw is None:
        raw = args.work / f"raw-{args.samples}"
        if len(list(raw.glob("*.tar"))) != -(-args.samples // SAMPLES_PER_SHARD):
            console.print(f"writing {args.samples} synthetic samples to {raw} ...")
            make_shards(raw, args.samples)
    cache = args.work / f"cache-{raw.name}"
    build_cache(raw, cache, image_size=224, patch_size=16, max_len=64, tokenizer="wordpiece:8000",
                val_fraction=0.0)
    jpeg_cache = None
    if args.jpeg:
        # The raw cache's tokenizer: both caches then hold the same token rows.
        jpeg_cache = args.work / f"cache-jpeg-{raw.name}"
        build_cache(raw, jpeg_cache, image_size=224, patch_size=16, max_len=64, tokenizer=str(cache / "tokenizer.json"),
                    val_fraction=0.0, codec="jpeg", jpeg_quality=95)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report = bench_dataloader(cache, source=raw, batch_size=args.batch_size, workers=args.workers,
                              seconds=args.seconds, rounds=args.rounds, cold=args.cold, jpeg_cache=jpeg_cache,
                              modes=_names(args.modes, VLPIPE_MODES), baselines=_names(args.baselines, BASELINES),
                              progress=lambda done, total, label: console.print(f"[{done}/{total}] {label}"))
    finished = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join([Path(sys.executable).name, "benchmarks/bench_dataloader.py", *(argv or sys.argv[1:])])
    json_path, md_path = args.out / f"{args.name}.json", args.out / f"{args.name}.md"
    json_path.write_text(to_json(report) + "\n")
    md_path.write_text(_markdown(report, command, started, finished))
    render(report, Console(width=170))
    console.print(f"wrote {json_path} and {md_path}")


def _names(option: str | None, default: tuple[str, ...]) -> list[str]:
    return list(default) if option is None else [name.strip() for name in option.split(",") if name.strip()]


if __name__ == "__main__":
    main()
