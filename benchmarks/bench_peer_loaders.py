"""vlpipe's loader against the loaders people would pick instead, on the same images, in one run.

    .venv/bin/python benchmarks/bench_peer_loaders.py                       # 4000 synthetic CC-like samples
    .venv/bin/python benchmarks/bench_peer_loaders.py --rounds 5 --seconds 5

Every row delivers the same thing, batch 64, on `--workers` (default 2) cores: uint8 224-px images
and the cache's token ids, shuffled, through the benchmark's consumer (vlpipe/bench/measure.py):
- `vlpipe-threads` (raw cache) and `vlpipe-jpeg-threads` (its JPEG twin, q95, decoded by the
  loader's threads), exactly as `vlpipe bench dataloader` runs them;
- `torchvision-uint8`: that benchmark's like-for-like baseline (the 256-px source JPEGs);
- `litdata`: `litdata.optimize` of the JPEG cache's own bytes (its JPEG serializer stores a
  `JpegImageFile`'s file as it is), read by `StreamingDataset` + `StreamingDataLoader` from a local
  folder; litdata decodes with torchvision's `decode_jpeg`;
- `mosaicml-streaming`: MDS shards (`jpeg` encoding, the same bytes) read by `StreamingDataset(local=)`
  through a torch DataLoader; MDS decodes with PIL, turned into a tensor as torchvision does;
- `ffcv`: a `.beton` with `RGBImageField(write_mode="jpg", jpeg_quality=95)`, which re-encodes the
  cache's pixels with OpenCV (FFCV has no way to store given JPEG bytes; OpenCV's default chroma is
  4:2:0), read by `ffcv.loader.Loader` (random order, os_cache); FFCV decodes with libjpeg-turbo's
  fast integer IDCT (TJFLAG_FASTDCT). `ffcv-444`: the same with the cache's 4:4:4 chroma (FFCV's
  OpenCV encode given IMWRITE_JPEG_SAMPLING_FACTOR_444), to tell the chroma's share of a difference.
The peers' DataLoaders keep their workers between epochs (`persistent_workers=True`), as one would
for speed; the torchvision row samples endlessly (no epoch end at all) and vlpipe's epochs chain
with their start-up inside the timing. Only the vlpipe and torchvision rows are in vlpipe's dependencies; the peers are the `bench` extra
(ffcv by hand, see benchmarks/README.md). A peer that does not import is left out, and the JSON says
why. Rounds are interleaved (every row once per round) so a shared machine's slow phases spread over
all rows. Peer data sets are written once into --work (outside any timing) and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The import name of each peer, and how to get it.
PEERS = {"litdata": "litdata", "mosaicml-streaming": "streaming", "ffcv": "ffcv"}
INSTALL = {"litdata": "pip install -e '.[bench]'", "mosaicml-streaming": "pip install -e '.[bench]'",
           "ffcv": "OS packages libturbojpeg0-dev libopencv-dev pkg-config, then pip install ffcv (benchmarks/README.md)"}
IMAGE_SIZE, PATCH, MAX_LEN, QUALITY = 224, 16, 64, 95


def missing_peers() -> dict[str, str]:
    """Peer name -> why it cannot run here (not installed, or its import fails), for those that cannot."""
    missing = {}
    for name, module in PEERS.items():
        try:
            importlib.import_module(module)
        except Exception as exc:  # a peer's import can fail in any way (a missing C library, a bad pin)
            missing[name] = f"{name} does not import ({type(exc).__name__}: {exc}); install: {INSTALL[name]}"
    return missing


def _batches(make_loader: Callable[[], Iterable[Any]], to_dict: Callable[[Any], dict[str, Any]]
             ) -> Iterator[dict[str, Any]]:
    """Epoch after epoch of one loader, as training iterates it; closing the generator drops the loader
    (and with it its workers)."""
    loader = make_loader()
    try:
        while True:
            for batch in loader:
                yield to_dict(batch)
    finally:
        del loader


# ---- the peer data sets, written once from the JPEG cache ------------------------------------------


def cache_rows(jpeg_cache: Path) -> Iterator[tuple[bytes, np.ndarray, int]]:
    """(JPEG bytes, token row, length) of every sample of a JPEG cache, in order."""
    from vlpipe.cache.format import load_manifest

    manifest = load_manifest(jpeg_cache)
    for shard in manifest.shards:
        data = np.load(shard.path(jpeg_cache, "jpeg"), mmap_mode="r")
        offsets = np.load(shard.path(jpeg_cache, "jpeg_offsets"))
        tokens = np.load(shard.path(jpeg_cache, "tokens"))
        lengths = np.load(shard.path(jpeg_cache, "lengths"))
        for row in range(shard.num_samples):
            yield bytes(data[offsets[row]:offsets[row + 1]]), tokens[row], int(lengths[row])


def write_loose(jpeg_cache: Path, out: Path) -> int:
    """The cache's JPEGs as files (a JpegImageFile with a file name is what litdata and MDS store as is)."""
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    tokens, lengths = [], []
    for count, (jpeg, row, length) in enumerate(cache_rows(jpeg_cache), start=1):
        path = out / f"{count - 1:08d}.jpg"
        if not path.exists():
            path.write_bytes(jpeg)
        tokens.append(row)
        lengths.append(length)
    np.save(out / "tokens.npy", np.stack(tokens))
    np.save(out / "lengths.npy", np.asarray(lengths, np.int64))
    return count


class _LooseSample:
    """Sample i of the loose files: an opened JpegImageFile (not decoded), its token row and length."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tokens = np.load(folder / "tokens.npy")
        self.lengths = np.load(folder / "lengths.npy")

    def __call__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        return {"image": Image.open(self.folder / f"{index:08d}.jpg"), "tokens": self.tokens[index],
                "length": int(self.lengths[index])}


def build_litdata(loose: Path, n: int, out: Path) -> Path:
    import multiprocessing

    import litdata

    if not (out / "index.json").exists():
        before = multiprocessing.get_start_method()
        try:
            litdata.optimize(fn=_LooseSample(loose), inputs=list(range(n)), output_dir=str(out), chunk_bytes="64MB",
                             num_workers=1, mode="overwrite")
        finally:
            # optimize() sets the process-wide start method to spawn (force=True); every loader timed
            # afterwards must start its workers as it would have without this build.
            multiprocessing.set_start_method(before, force=True)
    return out


def build_mds(loose: Path, n: int, out: Path) -> Path:
    from streaming import MDSWriter

    if not (out / "index.json").exists():
        sample = _LooseSample(loose)
        columns = {"image": "jpeg", "tokens": f"ndarray:uint16:{MAX_LEN}", "length": "int"}
        with MDSWriter(out=str(out), columns=columns, size_limit="64mb") as writer:
            for i in range(n):
                writer.write(sample(i))
    return out


class _FfcvSource:
    """What FFCV's writer indexes: (HWC uint8 pixels, token row, length), pixels decoded from the cache."""

    def __init__(self, loose: Path, n: int) -> None:
        self.loose, self.n, self.sample = loose, n, _LooseSample(loose)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        item = self.sample(index)
        return np.asarray(item["image"].convert("RGB")), item["tokens"], item["length"]


def _encode_444(pixels: np.ndarray, quality: int) -> np.ndarray:
    """FFCV's own JPEG encode (OpenCV, BGR) with full-resolution chroma, as the JPEG cache stores it."""
    import cv2

    ok, data = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
                            [int(cv2.IMWRITE_JPEG_QUALITY), quality,
                             int(cv2.IMWRITE_JPEG_SAMPLING_FACTOR), int(cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)])
    if not ok:
        raise ValueError("OpenCV could not encode an image as JPEG")
    return data.reshape(-1)


def build_ffcv(loose: Path, n: int, out: Path, full_chroma: bool = False) -> Path:
    from unittest import mock

    from ffcv.fields import IntField, NDArrayField, RGBImageField, rgb_image
    from ffcv.writer import DatasetWriter

    path = out / "data.beton"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        partial = out / ".tmp-data.beton"
        fields = {"image": RGBImageField(write_mode="jpg", jpeg_quality=QUALITY),
                  "tokens": NDArrayField(np.dtype("uint16"), (MAX_LEN,)), "length": IntField()}
        # The writer's forked workers inherit the replaced encoder.
        encoder = mock.patch.object(rgb_image, "encode_jpeg", _encode_444) if full_chroma else contextlib.nullcontext()
        with encoder:
            DatasetWriter(str(partial), fields, num_workers=1).from_indexed_dataset(_FfcvSource(loose, n))
        partial.replace(path)
    return path


# ---- the peer rows ----------------------------------------------------------------------------------


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _bytes_per_sample(files: Iterable[Path], n: int) -> float:
    return sum(p.stat().st_size for p in files) / n


def litdata_pipeline(folder: Path, n: int, batch_size: int, workers: int) -> Any:
    from litdata import StreamingDataLoader, StreamingDataset

    from vlpipe.bench.pipelines import Pipeline

    def open_(seed: int) -> Iterator[dict[str, Any]]:
        def make() -> Iterable[Any]:
            dataset = StreamingDataset(str(folder), shuffle=True, seed=seed)
            return StreamingDataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True,
                                       persistent_workers=True)

        return _batches(make, lambda b: {"images": b["image"], "input_ids": b["tokens"], "lengths": b["length"]})

    files = _files(folder)
    per_sample = _bytes_per_sample(files, n)
    return Pipeline("litdata", "litdata optimize (JPEG serializer, the cache's bytes) -> StreamingDataset + "
                    "StreamingDataLoader, local folder, shuffled; decode_jpeg -> uint8 CHW", workers, per_sample, 3,
                    open_, stored_bytes_per_sample=per_sample, files=files)


class _MdsToTensors:
    """MDS yields PIL images; the row hands over what the others do (uint8 CHW tensors, as PILToTensor)."""

    def __init__(self) -> None:
        from torchvision import transforms

        self.to_tensor = transforms.PILToTensor()

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        import torch

        with sample["image"] as img:
            return {"images": self.to_tensor(img), "input_ids": torch.from_numpy(sample["tokens"].astype(np.int64)),
                    "lengths": sample["length"]}


def mds_pipeline(folder: Path, n: int, batch_size: int, workers: int) -> Any:
    from streaming import StreamingDataset
    from torch.utils.data import DataLoader

    from vlpipe.bench.pipelines import Pipeline

    convert = _MdsToTensors()

    class Images(StreamingDataset):
        def __getitem__(self, index: int) -> dict[str, Any]:
            return convert(super().__getitem__(index))

    def open_(seed: int) -> Iterator[dict[str, Any]]:
        def make() -> Iterable[Any]:
            from streaming.base.util import clean_stale_shared_memory

            # A dataset of an earlier window leaves its shared-memory names behind; MDS refuses to reuse them.
            clean_stale_shared_memory()
            dataset = Images(local=str(folder), shuffle=True, shuffle_seed=seed, batch_size=batch_size)
            return DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True,
                              persistent_workers=True)

        return _batches(make, lambda batch: batch)

    files = _files(folder)
    per_sample = _bytes_per_sample(files, n)
    return Pipeline("mosaicml-streaming", "MDS (jpeg encoding, the cache's bytes) -> StreamingDataset(local) + torch "
                    "DataLoader, shuffled; PIL decode -> uint8 CHW", workers, per_sample, 3, open_,
                    stored_bytes_per_sample=per_sample, files=files)


def ffcv_pipeline(path: Path, n: int, batch_size: int, workers: int, full_chroma: bool = False) -> Any:
    import warnings

    from ffcv.fields.decoders import IntDecoder, NDArrayDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    from vlpipe.bench.pipelines import Pipeline

    # FFCV warns that torch lacks uint16 tensors, which torch has had since 2.3; the token rows stay uint16.
    warnings.filterwarnings("ignore", message="Pytorch currently doesn't support uint16")

    def open_(seed: int) -> Iterator[dict[str, Any]]:
        def make() -> Iterable[Any]:
            return Loader(str(path), batch_size=batch_size, num_workers=workers, order=OrderOption.RANDOM, seed=seed,
                          os_cache=True, drop_last=True,
                          pipelines={"image": [SimpleRGBImageDecoder(), ToTensor()],
                                     "tokens": [NDArrayDecoder(), ToTensor()], "length": [IntDecoder(), ToTensor()]})

        return _batches(make, lambda b: {"images": b[0], "input_ids": b[1], "lengths": b[2]})

    per_sample = path.stat().st_size / n
    chroma = "4:4:4" if full_chroma else "4:2:0"
    return Pipeline("ffcv-444" if full_chroma else "ffcv", f"FFCV .beton (RGBImageField jpg q{QUALITY} {chroma}, "
                    "re-encoded by OpenCV) -> Loader, random order, os_cache; libjpeg-turbo fast-IDCT decode -> "
                    "uint8 HWC", workers, per_sample, 3, open_, stored_bytes_per_sample=per_sample, files=[path])


# ---- the run ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vlpipe-bench",
                        help="data, caches and peer data sets, reused between runs (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=4000, help="synthetic samples")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers to run (default: all)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "peer_loaders.json")
    args = parser.parse_args(argv)

    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from bench_dataloader import SAMPLES_PER_SHARD, make_shards

    from vlpipe.bench import BASELINE
    from vlpipe.bench.jpeg_files import prepare_source
    from vlpipe.bench.measure import run_round
    from vlpipe.bench.pipelines import baseline_pipelines, vlpipe_pipeline
    from vlpipe.bench.system import (
        HostLoad,
        machine_info,
        package_version,
        script_record,
        utc_now,
        warm_files,
    )
    from vlpipe.cache.format import load_manifest
    from vlpipe.cache.writer import build_cache

    wanted = [name.strip() for name in args.peers.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(PEERS))
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    raw = args.work / f"raw-{args.samples}"
    if len(list(raw.glob("*.tar"))) != -(-args.samples // SAMPLES_PER_SHARD):
        print(f"writing {args.samples} synthetic samples to {raw} ...", file=sys.stderr)
        make_shards(raw, args.samples)
    cache, jpeg_cache = args.work / f"cache-{raw.name}", args.work / f"cache-jpeg-{raw.name}"
    build_cache(raw, cache, image_size=IMAGE_SIZE, patch_size=PATCH, max_len=MAX_LEN, tokenizer="wordpiece:8000",
                val_fraction=0.0)
    build_cache(raw, jpeg_cache, image_size=IMAGE_SIZE, patch_size=PATCH, max_len=MAX_LEN, val_fraction=0.0,
                tokenizer=str(cache / "tokenizer.json"), codec="jpeg", jpeg_quality=QUALITY)
    manifest, jpeg_manifest = load_manifest(cache), load_manifest(jpeg_cache)
    n = manifest.num_samples

    skipped = {name: why for name, why in missing_peers().items() if name in wanted}
    # peer -> its rows: (build, row, folder in --work).
    builders = {"litdata": [(build_litdata, litdata_pipeline, "litdata")],
                "mosaicml-streaming": [(build_mds, mds_pipeline, "mds")],
                "ffcv": [(build_ffcv, ffcv_pipeline, "ffcv"),
                         (functools.partial(build_ffcv, full_chroma=True),
                          functools.partial(ffcv_pipeline, full_chroma=True), "ffcv444")]}
    loose = args.work / f"loose-jpeg-{raw.name}"
    if any(name not in skipped for name in wanted):
        write_loose(jpeg_cache, loose)
    machine = machine_info()
    host = HostLoad()
    started = utc_now()
    with tempfile.TemporaryDirectory(prefix="vlpipe-peers-") as tmp:
        jpegs = prepare_source(manifest, cache, raw, Path(tmp), n)
        pipelines = [vlpipe_pipeline(cache, manifest, "threads", args.batch_size, args.workers),
                     vlpipe_pipeline(jpeg_cache, jpeg_manifest, "threads", args.batch_size, args.workers),
                     *baseline_pipelines([BASELINE], manifest, cache, jpegs, None, args.batch_size, args.workers)]
        for name in wanted:
            for build, row, folder in builders[name] if name not in skipped else []:
                try:
                    pipelines.append(row(build(loose, n, args.work / f"{folder}-{raw.name}"), n, args.batch_size,
                                         args.workers))
                except Exception as exc:  # a peer that installs but cannot build or open its data set: recorded
                    skipped[name] = f"{name} failed to build or open its data set ({type(exc).__name__}: {exc})"
        warm_files([f for p in pipelines for f in p.files] + jpegs.jpeg_paths)
        rounds: dict[str, list[Any]] = {p.name: [] for p in pipelines}
        for round_index in range(args.rounds):
            for pipeline in pipelines:
                result = run_round(pipeline, seed=round_index, seconds=args.seconds)
                # A closed loader caught in a reference cycle would otherwise be collected later, in some
                # forked worker of another row (where shutting its workers down fails), its idle workers alive.
                gc.collect()
                rounds[pipeline.name].append(result)
                print(f"round {round_index + 1}: {pipeline.name} {result.samples_per_s:,.0f} samples/s",
                      file=sys.stderr)
    record = script_record("benchmarks/bench_peer_loaders.py", argv if argv is not None else sys.argv[1:], started,
                           machine, host, {"batch_size": args.batch_size, "workers": args.workers,
                                           "seconds": args.seconds, "rounds": args.rounds, "samples": n,
                                           "image_size": IMAGE_SIZE, "jpeg_quality": QUALITY},
                           {name: [r.samples_per_s for r in results] for name, results in rounds.items()})
    baseline = record["results"][BASELINE]["median"]
    # The yardstick of the peer targets: the faster of litdata and MosaicML streaming.
    fastest_peer = max((record["results"][p]["median"] for p in ("litdata", "mosaicml-streaming")
                        if p in record["results"]), default=None)
    for pipeline in pipelines:
        row = record["results"][pipeline.name]
        results = rounds[pipeline.name]
        row.update({
            "description": pipeline.description, "workers": pipeline.workers,
            "read_bytes_per_sample": round(pipeline.read_bytes_per_sample),
            "stored_bytes_per_sample": round(pipeline.stored_bytes_per_sample),
            "ratio_to_baseline": round(row["median"] / baseline, 3),
            "ratio_to_faster_of_litdata_and_mds": (None if fastest_peer is None
                                                   else round(row["median"] / fastest_peer, 3)),
            "cpu_cores": round(statistics.mean(r.cpu_seconds / r.seconds for r in results), 2),
            "other_load_cores": round(max(r.other_load_cores for r in results), 2),
        })
    record["skipped"] = skipped
    record["versions"] = {name: package_version(name) for name in PEERS}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(_markdown(record), file=sys.stderr)
    print(f"wrote {args.json}", file=sys.stderr)


def _markdown(record: dict[str, Any]) -> str:
    lines = ["| row | samples/s [min-max] | x torchvision-uint8 | x faster of litdata, MDS | read B/sample | stored B/sample "
             "| CPU cores | other load |", "|---|---|---|---|---|---|---|---|"]
    for name, row in record["results"].items():
        ratio = row["ratio_to_faster_of_litdata_and_mds"]
        peer = "-" if ratio is None else f"{ratio:.2f}"
        lines.append(f"| {name} | **{row['median']:,.0f}** [{row['min']:,.0f}-{row['max']:,.0f}] | "
                     f"{row['ratio_to_baseline']:.2f} | {peer} | {row['read_bytes_per_sample']:,} | "
                     f"{row['stored_bytes_per_sample']:,} | {row['cpu_cores']:.2f} | {row['other_load_cores']:.2f} |")
    lines += [f"- {name} not run: {why}" for name, why in record["skipped"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
