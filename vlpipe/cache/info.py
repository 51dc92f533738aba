"""Look inside a cache: a summary of its manifest and a contact sheet of images with captions.

The contact sheet is the quickest end-to-end check a person can make: if the pixels were
patchified in the wrong order, or captions shifted by one row, it is obvious at a glance.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlpipe.cache.arrays import check_size, open_jpeg, open_npy
from vlpipe.cache.codec import bad_row, decode_jpeg
from vlpipe.cache.format import Manifest, ShardEntry, load_manifest
from vlpipe.errors import VlpipeError, one_line
from vlpipe.imaging import patchify, unpatchify
from vlpipe.utils.atomic import atomic_path


def cache_info(cache_dir: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(field, value) rows describing the cache, in the order a person reads them."""
    m = load_manifest(cache_dir)
    size = sum(f.bytes for s in m.shards for f in s.files.values())
    img, t, prov = m.image, m.text, m.provenance
    skipped = ", ".join(f"{n} {reason}" for reason, n in m.skipped.items()) or "none"
    return [
        ("samples", f"{m.num_samples}"),
        ("splits", ", ".join(f"{k} {v}" for k, v in m.splits.items())),
        ("shards", f"{len(m.shards)}"),
        ("size", f"{size / 1e6:.1f} MB ({size / max(m.num_samples, 1) / 1e3:.1f} kB per sample)"),
        ("images", f"{img.image_size}x{img.image_size} px, {img.patch_size}-px patches: "
                   f"({img.num_patches}, {img.patch_dim}) {img.dtype} per sample"),
        ("codec", _codec_line(m)),
        ("tokenizer", f"{t.tokenizer_spec} (vocab {t.vocab_size}, max_len {t.max_len}, {t.dtype})"),
        ("special ids", f"pad {t.pad_id}, cls {t.cls_id}, sep {t.sep_id}, mask {t.mask_id}, unk {t.unk_id}"),
        ("labels", _labels_line(m.labels)),
        ("skipped", skipped),
        ("source", f"{prov.get('source')} ({prov.get('source_format')})"),
        ("built", f"{prov.get('created')} by vlpipe {prov.get('vlpipe_version')}"),
    ]


def _codec_line(m: Manifest) -> str:
    img = m.image
    if img.codec == "raw":
        return "raw (uint8 patch rows)"
    stored = sum(s.files["jpeg"].bytes for s in m.shards) / max(m.num_samples, 1)
    return (f"jpeg q{img.quality} {img.subsampling} ({img.encoder}), {stored / 1e3:.1f} kB per image, "
            f"{stored / (img.num_patches * img.patch_dim):.1%} of raw")


def _labels_line(labels: dict | None) -> str:
    """Task, vocabulary size and a few names: a 101-class name list would drown the table."""
    if labels is None:
        return "none"
    names = labels["names"]
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    unlabeled = "".join(f"; {n} unlabeled {s}" for s, n in (labels.get("unlabeled") or {}).items())
    return f"{labels['task']}, {labels['num_labels']} labels ({shown}){unlabeled}"


def shard_file(cache_dir: Path, shard: ShardEntry, kind: str) -> Path:
    """The path of one of `shard`'s files, refused unless it has the size the manifest records.

    A wrong size is the cheap tell of a truncated copy; catching it here gives a one-line error
    naming the file instead of numpy's or Arrow's parser error halfway through a read. (Paths
    that leave the cache folder are refused as the manifest is read.)
    """
    path = shard.path(cache_dir, kind)
    check_size(path, shard.files[kind].bytes)
    return path


class DecodedRows:
    """A JPEG shard's images, row by row as a raw shard's: `rows[i]` is (num_patches, patch_dim) uint8."""

    def __init__(self, m: Manifest, cache_dir: Path, shard: ShardEntry) -> None:
        self.path = shard_file(cache_dir, shard, "jpeg")
        self.data, offsets = open_jpeg(self.path, shard_file(cache_dir, shard, "jpeg_offsets"), shard.num_samples)
        self.bounds = np.asarray(offsets)
        self.size, self.patch_size = m.image.image_size, m.image.patch_size

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, row: int) -> np.ndarray:
        pixels = np.empty((self.size, self.size, 3), np.uint8)
        try:
            decode_jpeg(self.data[self.bounds[row] : self.bounds[row + 1]], pixels)
        except ValueError as exc:
            raise bad_row(self.path, row, self.size, exc) from None
        return patchify(pixels, self.patch_size)


def shard_images(m: Manifest, cache_dir: Path, shard: ShardEntry) -> np.ndarray | DecodedRows:
    """A shard's images by row: images.npy memory-mapped (never unpickled) and checked against the
    manifest's shape, or a JPEG shard's rows decoded as they are read."""
    if m.image.codec == "jpeg":
        return DecodedRows(m, cache_dir, shard)
    return open_npy(shard_file(cache_dir, shard, "images"),
                    {"uint8": (shard.num_samples, m.image.num_patches, m.image.patch_dim)})


def shard_captions(cache_dir: Path, shard: ShardEntry) -> list[str]:
    """A shard's captions from meta.parquet, one per sample (checked, so rows cannot shift)."""
    path = shard_file(cache_dir, shard, "meta")
    try:
        captions = pq.read_table(path, columns=["caption"]).column(0).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise VlpipeError(f"{path}: not a readable parquet file with a caption column ({one_line(exc)})") from None
    if len(captions) != shard.num_samples:
        raise VlpipeError(f"{path}: {len(captions)} rows, manifest says {shard.num_samples}")
    return captions


def sample_rows(m: Manifest, cache_dir: Path, indices: list[int]) -> list[tuple[np.ndarray, str]]:
    """(H, W, 3) image and caption for global sample indices, read through the memmaps."""
    offsets = m.shard_offsets()
    opened: dict[int, tuple[np.ndarray | DecodedRows, list[str]]] = {}
    out: list[tuple[np.ndarray, str]] = []
    for index in indices:
        k = int(np.searchsorted(offsets, index, side="right")) - 1
        shard, row = m.shards[k], index - offsets[k]
        if k not in opened:
            opened[k] = (shard_images(m, cache_dir, shard), shard_captions(cache_dir, shard))
        images, captions = opened[k]
        out.append((unpatchify(np.asarray(images[row]), m.image.patch_size), captions[row]))
    return out


def contact_sheet(cache_dir: str | os.PathLike[str], out_png: str | os.PathLike[str], n: int = 16,
                  seed: int = 0) -> Path:
    """Draw `n` random samples (un-patchified) in a grid with their captions; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    root = Path(cache_dir)
    m = load_manifest(root)
    if m.num_samples == 0:
        raise VlpipeError(f"{root}: the cache holds no samples to draw")
    if n < 1:
        raise VlpipeError(f"--n {n} must be at least 1")
    rng = np.random.default_rng(seed)
    indices = sorted(rng.choice(m.num_samples, size=min(n, m.num_samples), replace=False).tolist())
    rows = sample_rows(m, root, indices)
    cols = int(np.ceil(np.sqrt(len(rows))))
    lines = len(rows) // cols + (len(rows) % cols > 0)
    fig, axes = plt.subplots(lines, cols, figsize=(2.6 * cols, 3.2 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index, (image, caption) in zip(axes.flat, indices, rows, strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(f"#{index}: {caption}", 32)[:3]), fontsize=7)
    fig.suptitle(f"What the model sees: the cached pixels ({m.image.image_size} px) and captions of "
                 f"{len(rows)} samples from {root.name}/", fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out

