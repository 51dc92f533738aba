"""Where fetch's CPU goes: one shard through img2dataset's Downloader, bare vs vlpipe, in one process.

    .venv/bin/python benchmarks/profile_fetch_shard.py --images 1000 [--profile]

`bench_fetch.py` times whole runs (2 processes x 64 threads); this isolates one shard in this
process, against the same loopback server, so the CPU seconds of each side can be compared and,
with `--profile`, the calls on the thread that runs img2dataset's resizer (our `Normalizer`) listed.
Each side runs twice; the second run is the one reported (imports and first-use costs excluded).
It also times the per-image steps on one 640x480 photo of the server's set: decode, area
downscale, JPEG encode, and vlpipe's whole `normalize`.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import os
import pstats
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from bench_fetch import make_photos, serve  # noqa: E402
from img2dataset.downloader import Downloader  # noqa: E402
from img2dataset.resizer import Resizer  # noqa: E402
from img2dataset.writer import WebDatasetSampleWriter  # noqa: E402
from PIL import Image  # noqa: E402


def _shard_file(work: Path, urls: list[str]) -> str:
    path = work / "shard.arrow"
    table = pa.table({"url": urls, "caption": [f"caption {i}" for i in range(len(urls))],
                      "row": list(range(len(urls)))})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return str(path)


def _downloader(which: str, out: Path, final: Path, images: int) -> Downloader:
    common = dict(sample_writer_class=WebDatasetSampleWriter, thread_count=64, save_caption=True,
                  output_folder=str(out), column_list=["url", "caption", "row"], timeout=10,
                  number_sample_per_shard=images, oom_shard_count=5, compute_hash="sha256",
                  verify_hash_type=None, encode_format="jpg", retries=0, user_agent_token="vlpipe",
                  disallowed_header_directives=["noai"])
    if which == "bare":
        resizer = Resizer(image_size=256, resize_mode="keep_ratio", resize_only_if_bigger=True)
        return Downloader(resizer=resizer, extract_exif=True, **common)
    from vlpipe.fetch.download import VerifyingDownloader
    from vlpipe.fetch.normalize import VerifyConfig
    from vlpipe.fetch.safety import UrlPolicy

    return VerifyingDownloader(policy=UrlPolicy(allow_private_network=True), verify=VerifyConfig(),
                               final_dir=str(final), resizer=None, extract_exif=False, **common)


def shard_cpu(which: str, base_url: str, images: int, profile: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="vlpipe-prof-"))
    try:
        out, final = work / "out", work / "final"
        out.mkdir()
        final.mkdir()
        downloader = _downloader(which, out, final, images)
        urls = [f"{base_url}/img/{i}" for i in range(images)]
        for attempt in range(2):
            shard = _shard_file(work, urls)
            profiler = cProfile.Profile() if profile and attempt == 1 else None
            wall, cpu = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            downloader((0, shard))
            if profiler:
                profiler.disable()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            for path in [*out.iterdir(), *final.iterdir()]:
                if path.is_file():
                    path.unlink()
        print(f"{which:6s} one shard of {images}: wall {wall:.2f} s ({images / wall:.0f} img/s), "
              f"process CPU {cpu:.2f} s")
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def per_image_steps() -> None:
    from vlpipe.fetch.normalize import VerifyConfig, normalize

    data = make_photos()[3]
    img = Image.open(io.BytesIO(data))
    img.load()
    small = img.resize((341, 256), Image.Resampling.BICUBIC)
    cv2.setNumThreads(1)  # as in vlpipe's download processes

    def encode() -> None:
        small.save(io.BytesIO(), format="JPEG", quality=95)

    steps = {
        "PIL decode 640x480": lambda: Image.open(io.BytesIO(data)).load(),
        "Pillow bicubic downscale to 341x256": lambda: img.resize((341, 256), Image.Resampling.BICUBIC),
        "OpenCV INTER_AREA downscale (1 thread)": lambda: cv2.resize(np.asarray(img), (341, 256),
                                                                      interpolation=cv2.INTER_AREA),
        "JPEG encode q95": encode,
        "vlpipe normalize() in all": lambda: normalize(data, VerifyConfig()),
    }
    for name, step in steps.items():
        step()
        start = time.perf_counter()
        for _ in range(200):
            step()
        print(f"{name:42s} {(time.perf_counter() - start) / 200 * 1e3:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--profile", action="store_true", help="cProfile the vlpipe side's second run")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue = ctx.Queue()
    server = ctx.Process(target=serve, args=(ports,), daemon=True)
    server.start()
    try:
        base_url = f"http://127.0.0.1:{ports.get(timeout=60)}"
        for which in ("bare", "vlpipe"):
            shard_cpu(which, base_url, args.images, args.profile and which == "vlpipe")
        per_image_steps()
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
