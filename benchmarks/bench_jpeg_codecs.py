"""Which JPEG encoder and decoder a JPEG cache should use: speed, GIL release, size and fidelity.

    .venv/bin/python benchmarks/bench_jpeg_codecs.py [--images 240] [--seconds 2] [--rounds 3]

The images are what a raw cache of real photographs stores: random crops (side >= 256 px, aspect
3:4 to 4:3) of the colour photographs bundled with scikit-image and matplotlib, each made
upright RGB, resized and center-cropped to 224 px by `vlpipe.imaging` exactly as `build-cache`
does. Every JPEG is compared with those pixels (mean absolute error in grey levels, PSNR in dB).

- Encoders (one thread, as a build worker runs them): Pillow, simplejpeg and OpenCV at the same
  quality, with 4:4:4 and 4:2:0 chroma, plus a quality sweep of the fastest one. Each encoder is
  run twice on every image to check that it is deterministic (a rebuild must be byte-identical).
- Decoders (on the q90 bytes of each chroma mode): simplejpeg (into a reused buffer), Pillow,
  `torchvision.io.decode_jpeg` on the CPU and `cv2.imdecode`, each followed by the patchify copy
  into a (B, P, D) batch row as the loader does, with 1 and then 2 threads on the 2 cores.
  threads-2 / threads-1 near 2 means the decoder releases the GIL; near 1 means it does not. As a
  second check, less sensitive to other load, a pure-Python loop runs beside one decoding thread:
  its progress against running alone is near 1 when the decoder releases the GIL, near 0 when not.

Rounds interleave every variant so that slow phases of a shared machine spread over all of them;
figures are medians over rounds [min-max]. Raw JSON goes to benchmarks/results/jpeg_codecs.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
import torch
import torchvision
from PIL import Image, features
from torchvision.io import decode_jpeg

from vlpipe.imaging import patchify, resize_center_crop

SIZE, PATCH = 224, 16
QUALITY = 90
SUBSAMPLING = ("4:4:4", "4:2:0")
RESULTS = Path(__file__).resolve().parent / "results" / "jpeg_codecs.json"
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")


def photographs() -> list[np.ndarray]:
    """The colour photographs that ship with scikit-image and matplotlib (offline), as RGB arrays."""
    import matplotlib.cbook
    import skimage.data

    photos = [np.asarray(getattr(skimage.data, name)())[:, :, :3] for name in SKIMAGE_PHOTOS]
    photos += list(skimage.data.stereo_motorcycle()[:2])  # two views of one scene, left and right
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
        photos.append(np.asarray(Image.open(fh).convert("RGB")))
    return photos


def raw_pixels(count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` (224, 224, 3) images: random crops of the photographs through the cache's own resize."""
    rng = np.random.default_rng(seed)
    photos = photographs()
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        aspect = rng.uniform(0.75, 4 / 3)
        h = int(rng.integers(min(256, height), height + 1))
        w = min(width, max(256, int(h * aspect)))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        out.append(resize_center_crop(Image.fromarray(np.ascontiguousarray(photo[y : y + h, x : x + w])), SIZE))
    return out


# ---- encoders -------------------------------------------------------------------------------------

_PIL_SUB = {"4:4:4": 0, "4:2:0": 2}
_CV2_SUB = {"4:4:4": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, "4:2:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420}


def pillow_encoder(quality: int, sub: str, optimize: bool = False) -> Callable[[np.ndarray], bytes]:
    def encode(img: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality, subsampling=_PIL_SUB[sub], optimize=optimize)
        return buf.getvalue()
    return encode


def simplejpeg_encoder(quality: int, sub: str) -> Callable[[np.ndarray], bytes]:
    code = sub.replace(":", "")
    return lambda img: simplejpeg.encode_jpeg(img, quality=quality, colorspace="RGB", colorsubsampling=code)


def cv2_encoder(quality: int, sub: str) -> Callable[[np.ndarray], bytes]:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, _CV2_SUB[sub]]

    def encode(img: np.ndarray) -> bytes:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
        assert ok
        return buf.tobytes()
    return encode


def encoders() -> dict[str, Callable[[np.ndarray], bytes]]:
    out: dict[str, Callable[[np.ndarray], bytes]] = {}
    for sub in SUBSAMPLING:
        out[f"pillow q{QUALITY} {sub}"] = pillow_encoder(QUALITY, sub)
        out[f"pillow q{QUALITY} {sub} optimize"] = pillow_encoder(QUALITY, sub, optimize=True)
        out[f"simplejpeg q{QUALITY} {sub}"] = simplejpeg_encoder(QUALITY, sub)
        out[f"opencv q{QUALITY} {sub}"] = cv2_encoder(QUALITY, sub)
    return out


def fidelity(raw: list[np.ndarray], encoded: list[bytes]) -> dict[str, float]:
    """Bytes per image, mean absolute error (levels) and PSNR (dB, over all pixels) against the raw pixels."""
    errors = [np.abs(simplejpeg.decode_jpeg(e).astype(np.int16) - r).mean() for r, e in zip(raw, encoded, strict=True)]
    mse = statistics.fmean(float(((simplejpeg.decode_jpeg(e).astype(np.float64) - r) ** 2).mean())
                           for r, e in zip(raw, encoded, strict=True))
    size = statistics.fmean(len(e) for e in encoded)
    return {"bytes_per_image": size, "raw_bytes_per_image": SIZE * SIZE * 3, "share_of_raw": size / (SIZE * SIZE * 3),
            "mae": float(np.mean(errors)), "mae_worst_image": float(np.max(errors)),
            "psnr_db": float(10 * np.log10(255**2 / mse))}


# ---- decoders -------------------------------------------------------------------------------------


def _into_row(row: np.ndarray, hwc: np.ndarray) -> None:
    row[...] = patchify(hwc, PATCH)


def simplejpeg_decoder() -> Callable[[bytes, np.ndarray], None]:
    local = threading.local()

    def decode(data: bytes, row: np.ndarray) -> None:
        scratch = getattr(local, "scratch", None)
        if scratch is None:
            scratch = local.scratch = np.empty((SIZE, SIZE, 3), np.uint8)
        simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=scratch)
        _into_row(row, scratch)
    return decode


def pillow_decoder() -> Callable[[bytes, np.ndarray], None]:
    def decode(data: bytes, row: np.ndarray) -> None:
        img = Image.open(io.BytesIO(data))
        img.load()
        _into_row(row, np.asarray(img))
    return decode


def torchvision_decoder() -> Callable[[bytes, np.ndarray], None]:
    g = SIZE // PATCH

    def decode(data: bytes, row: np.ndarray) -> None:
        chw = decode_jpeg(torch.frombuffer(data, dtype=torch.uint8))
        # (3, H, W) -> patches (g*g, p*p*3), one copy
        torch.from_numpy(row).view(g, g, PATCH, PATCH, 3).copy_(chw.view(3, g, PATCH, g, PATCH).permute(1, 3, 2, 4, 0))
    return decode


def cv2_decoder() -> Callable[[bytes, np.ndarray], None]:
    flag = getattr(cv2, "IMREAD_COLOR_RGB", None)

    def decode(data: bytes, row: np.ndarray) -> None:
        arr = np.frombuffer(data, np.uint8)
        img = cv2.imdecode(arr, flag) if flag is not None else cv2.cvtColor(cv2.imdecode(arr, cv2.IMREAD_COLOR),
                                                                            cv2.COLOR_BGR2RGB)
        _into_row(row, img)
    return decode


DECODERS = {"simplejpeg": simplejpeg_decoder, "pillow": pillow_decoder, "torchvision-cpu": torchvision_decoder,
            "opencv": cv2_decoder}


def decode_rate(decode: Callable[[bytes, np.ndarray], None], encoded: list[bytes], threads: int,
                seconds: float) -> float:
    """Images/s of `threads` threads decoding at once, each into its own (64, P, D) batch."""
    stop = threading.Event()
    counts = [0] * threads

    def work(slot: int) -> None:
        batch = np.empty((64, (SIZE // PATCH) ** 2, PATCH * PATCH * 3), np.uint8)
        i = slot * 7
        while not stop.is_set():
            for k in range(8):
                decode(encoded[(i + k) % len(encoded)], batch[(i + k) % 64])
            i += 8
            counts[slot] += 8

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - start)


def python_progress(seconds: float, busy: Callable[[threading.Event], None] | None) -> float:
    """Iterations/s of a pure-Python loop while `busy` runs in another thread (None: alone)."""
    stop = threading.Event()
    other = threading.Thread(target=busy, args=(stop,)) if busy is not None else None
    if other is not None:
        other.start()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(1000):
            pass
        count += 1
    stop.set()
    if other is not None:
        other.join()
    return count / (time.perf_counter() - start)


def gil_free_share(decode: Callable[[bytes, np.ndarray], None], encoded: list[bytes], seconds: float) -> float:
    """How much a Python thread still gets done while another thread decodes without pause, against
    alone: near 1 when the decoder releases the GIL (2 cores), near 0 when it holds it."""
    def decoding(stop: threading.Event) -> None:
        batch = np.empty((8, (SIZE // PATCH) ** 2, PATCH * PATCH * 3), np.uint8)
        i = 0
        while not stop.is_set():
            decode(encoded[i % len(encoded)], batch[i % 8])
            i += 1
    alone = python_progress(seconds / 2, None)
    return python_progress(seconds / 2, decoding) / alone


def encode_rate(encode: Callable[[np.ndarray], bytes], raw: list[np.ndarray], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        encode(raw[count % len(raw)])
        count += 1
    return count / (time.perf_counter() - start)


def summary(rates: list[float]) -> dict[str, float]:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def machine() -> dict[str, object]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "load_before": load, "numpy": np.__version__, "pillow": Image.__version__,
            "pillow_libjpeg_turbo": features.version("jpg"), "simplejpeg": simplejpeg.__version__,
            "opencv": cv2.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--seconds", type=float, default=2.0, help="Per variant and round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # decode_jpeg is single-threaded; keep torch's pool from competing
    # torchvision 0.29 deprecates its image codecs (TorchCodec takes over); frombuffer warns that our
    # bytes are read-only, which decode_jpeg never writes to.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
    warnings.filterwarnings("ignore", message="The given buffer is not writable")
    cv2.setNumThreads(1)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    info = machine()
    raw = raw_pixels(args.images)

    report: dict[str, object] = {"images": len(raw), "image_size": SIZE, "quality": QUALITY, "started": started,
                                 "machine": info, "encoders": {}, "quality_sweep": {}, "decoders": {}}
    encs = encoders()
    encoded = {name: [enc(img) for img in raw] for name, enc in encs.items()}
    for name, enc in encs.items():
        deterministic = all(enc(img) == e for img, e in zip(raw[:32], encoded[name], strict=False))
        report["encoders"][name] = {**fidelity(raw, encoded[name]), "deterministic": deterministic}  # type: ignore[index]
    for sub in SUBSAMPLING:
        for q in (75, 85, 90, 95):
            enc = simplejpeg_encoder(q, sub)
            report["quality_sweep"][f"q{q} {sub}"] = fidelity(raw, [enc(img) for img in raw])  # type: ignore[index]

    enc_rates: dict[str, list[float]] = {name: [] for name in encs}
    dec_rates: dict[str, list[float]] = {}
    decoders = {name: make() for name, make in DECODERS.items()}
    for _ in range(args.rounds):
        for name, enc in encs.items():
            enc_rates[name].append(encode_rate(enc, raw, args.seconds / 2))
        for sub in SUBSAMPLING:
            data = encoded[f"simplejpeg q{QUALITY} {sub}"]
            for name, decode in decoders.items():
                for threads in (1, 2):
                    key = f"{name} {sub} threads-{threads}"
                    dec_rates.setdefault(key, []).append(decode_rate(decode, data, threads, args.seconds))
                dec_rates.setdefault(f"{name} {sub} gil-free", []).append(gil_free_share(decode, data, args.seconds))
    for name, rates in enc_rates.items():
        report["encoders"][name]["images_per_s"] = summary(rates)  # type: ignore[index]
    for key, rates in dec_rates.items():
        report["decoders"][key] = summary(rates)  # type: ignore[index]
    for sub in SUBSAMPLING:
        for name in DECODERS:
            one, two = (report["decoders"][f"{name} {sub} threads-{t}"]["median"] for t in (1, 2))  # type: ignore[index]
            report["decoders"][f"{name} {sub} scaling"] = two / one  # type: ignore[index]
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["load_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print_tables(report)


def print_tables(report: dict) -> None:
    print(f"{report['images']} images, {report['image_size']} px, machine {report['machine']}")
    print("\n| encoder | images/s [min-max] | bytes/image | share of raw | MAE | worst MAE | PSNR dB | deterministic |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in report["encoders"].items():
        s = r["images_per_s"]
        print(f"| {name} | {s['median']:,.0f} [{s['min']:,.0f}-{s['max']:,.0f}] | {r['bytes_per_image']:,.0f} | "
              f"{r['share_of_raw']:.3f} | {r['mae']:.2f} | {r['mae_worst_image']:.2f} | {r['psnr_db']:.2f} | "
              f"{r['deterministic']} |")
    print("\n| simplejpeg quality | bytes/image | share of raw | MAE | worst MAE | PSNR dB |\n|---|---|---|---|---|---|")
    for name, r in report["quality_sweep"].items():
        print(f"| {name} | {r['bytes_per_image']:,.0f} | {r['share_of_raw']:.3f} | {r['mae']:.2f} | "
              f"{r['mae_worst_image']:.2f} | {r['psnr_db']:.2f} |")
    print("\n| decoder + patchify | chroma | 1 thread, images/s | 2 threads, images/s | 2 / 1 | Python thread "
          "progress while decoding |\n|---|---|---|---|---|---|")
    for sub in SUBSAMPLING:
        for name in DECODERS:
            one, two = (report["decoders"][f"{name} {sub} threads-{t}"] for t in (1, 2))
            free = report["decoders"][f"{name} {sub} gil-free"]
            print(f"| {name} | {sub} | {one['median']:,.0f} [{one['min']:,.0f}-{one['max']:,.0f}] | "
                  f"{two['median']:,.0f} [{two['min']:,.0f}-{two['max']:,.0f}] | "
                  f"{report['decoders'][f'{name} {sub} scaling']:.2f} | {free['median']:.2f} |")


if __name__ == "__main__":
    main()
