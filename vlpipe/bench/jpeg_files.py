"""The JPEG side of the benchmark: the files the decoding baselines read.

The torchvision-style and seed-recipe rows open one JPEG file per sample and the webdataset row
streams tar shards, so all need real JPEG bytes. With `--source RAW_DIR` (img2dataset webdataset output) the
tars are used as they are and their JPEG members are extracted once into a temporary folder
(outside any timing), because the seed code read loose files, not tar members. Without a source the
cache's own images are un-patchified and re-encoded as JPEG quality 95 (img2dataset's default) into
temporary files and tars: this approximates the real files (same pixels and size class, but
224 px squares instead of 256 px shorter sides), so the command always works on a cache alone.

The seed-recipe row reads JPEGs that were resized before training, as the seed project's were:
with `presize_to`, every file is also center-cropped and resized to that square (bicubic) and saved
as JPEG q95 beside the others, once, outside any timing.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vlpipe.cache.format import Manifest
from vlpipe.cache.info import shard_captions, shard_images
from vlpipe.errors import VlpipeError
from vlpipe.imaging import unpatchify

# Enough samples for stable per-sample figures; the baselines' speed does not depend on how many
# files there are once they are in the page cache, and extracting millions would take hours.
DEFAULT_MAX_SOURCE_SAMPLES = 4096
# img2dataset's default encode quality.
REENCODE_QUALITY = 95
SAMPLES_PER_TAR = 1000


@dataclass
class JpegSource:
    """Loose JPEGs + captions for the file-based rows, tar shards for webdataset, and where they came from."""

    jpeg_paths: list[Path]
    captions: list[str]
    shard_paths: list[Path]
    origin: str
    # Mean bytes read per sample: the JPEG file (torchvision rows) and the jpg+txt+json members (webdataset).
    jpeg_bytes_per_sample: float
    shard_bytes_per_sample: float
    # The same images pre-resized to a square for the seed-recipe row (empty unless asked for).
    presized_paths: list[Path] = field(default_factory=list)
    presized_bytes_per_sample: float = 0.0


def prepare_source(
    manifest: Manifest, cache_dir: Path, source: Path | None, work_dir: Path, max_samples: int,
    presize_to: int | None = None,
) -> JpegSource:
    """Extract (or re-encode) up to `max_samples` JPEGs into `work_dir` for the decoding baselines.

    `presize_to`: also write each image center-cropped and resized to that many pixels square.
    """
    if source is None:
        jpegs = _reencode_cache(manifest, cache_dir, work_dir, max_samples)
    else:
        jpegs = _extract_shards(source, work_dir, max_samples)
    if presize_to is not None:
        jpegs.presized_paths = _presize(jpegs.jpeg_paths, presize_to, work_dir / f"jpeg-{presize_to}px")
        jpegs.presized_bytes_per_sample = float(np.mean([p.stat().st_size for p in jpegs.presized_paths]))
    return jpegs


def _presize(paths: list[Path], size: int, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    presized = []
    for path in paths:
        with Image.open(path) as img:
            square = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
        target = out / path.name
        square.save(target, "JPEG", quality=REENCODE_QUALITY)
        presized.append(target)
    return presized


def _extract_shards(source: Path, work_dir: Path, max_samples: int) -> JpegSource:
    if not source.is_dir():
        raise VlpipeError(f"{source}: --source must be an img2dataset output folder of .tar shards")
    shards = sorted(source.glob("*.tar"))
    if not shards:
        raise VlpipeError(f"{source}: no .tar shards found (expected img2dataset webdataset output)")
    out = work_dir / "jpeg"
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    captions: list[str] = []
    used: list[Path] = []
    member_bytes = 0
    samples_seen = 0
    for shard in shards:
        # Whole shards only, and only as many as the extracted samples need: webdataset then
        # streams exactly the data the file-based rows read, and a CC3M-sized source is not read
        # end to end just to benchmark.
        if len(paths) >= max_samples:
            break
        used.append(shard)
        for sample in _tar_samples(shard):
            samples_seen += 1
            member_bytes += sum(len(v) for v in sample.values())
            if len(paths) < max_samples and "jpg" in sample and "txt" in sample:
                path = out / f"{len(paths):08d}.jpg"
                path.write_bytes(sample["jpg"])
                paths.append(path)
                captions.append(sample["txt"].decode("utf-8"))
    if not paths:
        raise VlpipeError(f"{source}: the tar shards hold no samples with both a .jpg and a .txt member")
    return JpegSource(
        jpeg_paths=paths, captions=captions, shard_paths=used,
        origin=f"extracted from {source} ({len(paths)} samples, {len(used)} of {len(shards)} shards)",
        jpeg_bytes_per_sample=float(np.mean([p.stat().st_size for p in paths])),
        shard_bytes_per_sample=member_bytes / max(1, samples_seen),
    )


def _tar_samples(shard: Path) -> Iterator[dict[str, bytes]]:
    """A webdataset tar's samples: consecutive members with the same key (`KEY.jpg`, `KEY.txt`, ...)."""
    key, sample = None, {}
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or "." not in name:
                    continue
                # As webdataset does: the key is everything before the first dot of the file name.
                member_key, ext = name.split(".", 1)
                if member_key != key and sample:
                    yield sample
                    sample = {}
                key = member_key
                handle = tar.extractfile(member)
                if handle is not None:
                    sample[ext] = handle.read()
    except tarfile.TarError as exc:
        raise VlpipeError(f"{shard}: not a readable tar file ({exc})") from None
    if sample:
        yield sample


def _reencode_cache(manifest: Manifest, cache_dir: Path, work_dir: Path, max_samples: int) -> JpegSource:
    out = work_dir / "jpeg"
    tars = work_dir / "shards"
    out.mkdir(parents=True, exist_ok=True)
    tars.mkdir(parents=True, exist_ok=True)
    patch = manifest.image.patch_size
    paths: list[Path] = []
    captions: list[str] = []
    for shard in manifest.shards:
        if len(paths) >= max_samples:
            break
        # Checked reads: a truncated or garbage shard file is a one-line error naming it, not numpy's
        # or Arrow's parser error.
        images = shard_images(manifest, cache_dir, shard)
        captions_of_shard = shard_captions(cache_dir, shard)
        for row in range(min(shard.num_samples, max_samples - len(paths))):
            buf = io.BytesIO()
            Image.fromarray(unpatchify(np.asarray(images[row]), patch)).save(buf, "JPEG", quality=REENCODE_QUALITY)
            path = out / f"{len(paths):08d}.jpg"
            path.write_bytes(buf.getvalue())
            paths.append(path)
            captions.append(captions_of_shard[row])
    shard_paths, shard_bytes = _write_tars(paths, captions, tars)
    return JpegSource(
        jpeg_paths=paths, captions=captions, shard_paths=shard_paths,
        origin=(f"re-encoded from the cache as JPEG q{REENCODE_QUALITY} ({len(paths)} samples; "
                "approximates the original files, pass --source for the real ones)"),
        jpeg_bytes_per_sample=float(np.mean([p.stat().st_size for p in paths])),
        shard_bytes_per_sample=shard_bytes / len(paths),
    )


def _write_tars(paths: list[Path], captions: list[str], out: Path) -> tuple[list[Path], int]:
    """img2dataset-style shards (KEY.jpg, KEY.txt, KEY.json) of the re-encoded files."""
    shard_paths: list[Path] = []
    member_bytes = 0
    for start in range(0, len(paths), SAMPLES_PER_TAR):
        shard = out / f"{start // SAMPLES_PER_TAR:05d}.tar"
        with tarfile.open(shard, "w") as tar:
            for i in range(start, min(start + SAMPLES_PER_TAR, len(paths))):
                key = f"{i:09d}"
                members = {
                    "jpg": paths[i].read_bytes(),
                    "txt": captions[i].encode("utf-8"),
                    "json": json.dumps({"key": key, "caption": captions[i], "status": "success"}).encode(),
                }
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                    member_bytes += len(data)
        shard_paths.append(shard)
    return shard_paths, member_bytes
