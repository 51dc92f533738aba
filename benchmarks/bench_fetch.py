"""Loopback throughput of `vlpipe fetch` against bare img2dataset on the same input, interleaved.

    python benchmarks/bench_fetch.py --images 4000 --rounds 3

A local HTTP server (its own process, so it does not compete with this one for the GIL) serves
`--images` distinct URLs of photo-sized JPEGs. Each round runs bare `img2dataset.download` (its
usual settings: keep_ratio resize to 256, re-encode JPEG) and `fetch_tsv` (original bytes, URL
guard, decode + verify + normalize to 256) on the same list, alternating which goes first, each
into a fresh folder. Figures are images attempted per second of wall time, whole run included
(process start-up, img2dataset import, shard bookkeeping), and the ratio vlpipe / bare.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402


def make_photos(count: int = 16, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """Photo-like JPEGs (smooth gradients plus noise, ~60 KB) so decode/encode costs are realistic."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    photos = []
    for i in range(count):
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2 + i * 15) % 256, (xx + yy) % 256], axis=-1)
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def serve(port_queue: multiprocessing.Queue) -> None:
    photos = make_photos()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = photos[int(self.path.rsplit("/", 1)[-1]) % len(photos)]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        # socketserver's default listen backlog is 5: with 2 x 64 threads connecting at once the
        # kernel drops SYNs, and a retransmitted SYN (1 s, 3 s, 7 s ...) stalls or times out a
        # download in either pipeline. A real web server listens with a backlog of hundreds.
        request_queue_size = 1024

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port_queue.put(server.server_address[1])
    server.serve_forever()


def run_bare(parquet: Path, out: Path, processes: int, threads: int, shard_size: int) -> float:
    from img2dataset import download

    start = time.perf_counter()
    download(
        url_list=str(parquet), input_format="parquet", url_col="url", caption_col="caption",
        output_folder=str(out), output_format="webdataset", processes_count=processes,
        thread_count=threads, number_sample_per_shard=shard_size, image_size=256,
        resize_mode="keep_ratio", resize_only_if_bigger=True, timeout=10, enable_wandb=False,
    )  # fmt: skip
    return time.perf_counter() - start


def run_vlpipe(tsv: Path, out: Path, processes: int, threads: int, shard_size: int) -> float:
    from vlpipe.fetch import DownloadConfig, FetchConfig, UrlPolicy, fetch_tsv

    config = FetchConfig(
        shard_size=shard_size,
        policy=UrlPolicy(allow_private_network=True),
        download=DownloadConfig(processes=processes, threads=threads, timeout=10),
    )
    start = time.perf_counter()
    fetch_tsv(str(tsv), out, download_dir=out.parent / "dl", config=config)
    return time.perf_counter() - start


def kept_count(out: Path) -> int:
    return sum(json.loads(p.read_text())["successes"] for p in out.glob("[0-9]*_stats.json"))


def drop_messages(out: Path) -> dict[str, int]:
    """Error message -> count over the run's shards (both pipelines write img2dataset's parquet)."""
    counts: Counter[str] = Counter()
    for path in out.glob("[0-9]*.parquet"):
        counts.update(m for m in pq.read_table(path, columns=["error_message"]).column(0).to_pylist() if m)
    return dict(counts.most_common())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args()

    queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(queue,), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{queue.get(timeout=60)}"
    work = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    urls = [f"{base}/img/{i}" for i in range(args.images)]
    captions = [f"synthetic photo number {i}" for i in range(args.images)]
    tsv = work / "list.tsv"
    tsv.write_text("".join(f"{c}\t{u}\n" for c, u in zip(captions, urls, strict=True)))
    parquet = work / "list.parquet"
    pq.write_table(pa.table({"caption": captions, "url": urls}), parquet)

    runners = {"bare img2dataset": lambda out: run_bare(parquet, out, args.processes, args.threads, args.shard_size),
               "vlpipe fetch": lambda out: run_vlpipe(tsv, out, args.processes, args.threads, args.shard_size)}  # fmt: skip
    load_at_start = os.getloadavg()  # other work on the machine; at the end it would include ours
    rates: dict[str, list[float]] = {name: [] for name in runners}
    kept: dict[str, list[int]] = {name: [] for name in runners}
    drops: dict[str, list[dict[str, int]]] = {name: [] for name in runners}
    try:
        for round_index in range(args.rounds):
            order = list(runners) if round_index % 2 == 0 else list(reversed(runners))
            for name in order:
                out = work / f"{name.replace(' ', '-')}-{round_index}"
                seconds = runners[name](out)
                rates[name].append(args.images / seconds)
                kept[name].append(kept_count(out))
                drops[name].append(drop_messages(out))
                print(f"round {round_index} {name:<18} {seconds:7.1f} s  {args.images / seconds:8.1f} images/s"
                      f"  kept {kept[name][-1]}  drops {drops[name][-1]}", flush=True)  # fmt: skip
                shutil.rmtree(out)
    finally:
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in rates.items()}
    ratio = medians["vlpipe fetch"] / medians["bare img2dataset"]
    print(f"\n{args.images} images over loopback, {args.processes} processes x {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds:")  # fmt: skip
    for name, value in medians.items():
        print(f"  {name:<18} {value:8.1f} images/s   kept per round {kept[name]}")
    print(f"  vlpipe / bare      {ratio:8.3f}  (target >= 0.90)")
    if args.json:
        args.json.write_text(json.dumps({"images": args.images, "rates": rates, "medians": medians,
                                         "ratio": ratio, "kept": kept, "drops": drops,
                                         "load_average_at_start": load_at_start}, indent=2))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
