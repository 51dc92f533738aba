"""Choose fine-tuning's from-scratch learning rate by a small measured sweep (docs/training.md).

The task, from real photographs bundled with scikit-image (offline): "does the text name the
photo's subject?" Each sample is a random crop/flip of one of the subject photos with the text
"a photo of a <name>", where the name is the photo's own subject (label 1) or another one (label
0), half and half. Every name is true exactly as often as false, so the text alone is at chance;
every photo is positive exactly as often as negative, so the image alone is at chance: only
both together say the label.

For each learning rate and seed: `vlpipe train finetune --init none --preset tiny` with the
defaults otherwise (patience 3 and the early-stopping rule: epochs are counted only after the
first improvement and after warmup), and the same with early stopping off, 16 epochs.
Writes JSON to stdout and `--json FILE`.

    python benchmarks/sweep_finetune_lr.py --json benchmarks/results/finetune_lr_sweep.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlpipe.bench.system import HostLoad, machine_info, utc_now  # noqa: E402
from vlpipe.cache.writer import build_cache  # noqa: E402
from vlpipe.train.config import FinetuneConfig  # noqa: E402
from vlpipe.train.finetune import finetune  # noqa: E402

SUBJECTS = {"astronaut": "astronaut", "chelsea": "cat", "coffee": "coffee cup", "rocket": "rocket",
            "coins": "coin", "moon": "moon", "camera": "cameraman", "stereo_motorcycle": "motorcycle"}


def make_task(root: Path, n: int, seed: int) -> Path:
    """`n` labelled samples (.jsonl + images) of the subject task; returns the .jsonl path."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = {}
    for name in SUBJECTS:
        arr = getattr(skimage.data, name)()
        arr = arr[0] if isinstance(arr, tuple) else arr  # stereo_motorcycle: (left, right, disparity)
        arr = np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr[:, :, :3]
        photos[name] = Image.fromarray(arr.astype(np.uint8))
    (root / "img").mkdir(parents=True, exist_ok=True)
    names = list(SUBJECTS)
    rows = []
    for i in range(n):
        photo = names[i % len(names)]
        label = (i // len(names)) % 2  # each photo positive exactly as often as negative
        other = names[(names.index(photo) + 1 + int(rng.integers(len(names) - 1))) % len(names)]
        img = photos[photo]
        w, h = img.size
        side = int(min(w, h) * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = img.crop((x, y, x + side, y + side)).resize((96, 96), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crop.save(root / "img" / f"{i:05d}.jpg", quality=92)
        rows.append({"image": f"img/{i:05d}.jpg", "caption": f"a photo of a {SUBJECTS[photo if label else other]}",
                     "label": label})
    order = rng.permutation(n)
    path = root / "subjects.jsonl"
    path.write_text("".join(json.dumps(rows[j]) + "\n" for j in order))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--lrs", default="1e-4,3e-4,5e-4,1e-3,2e-3")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    started, host, machine = utc_now(), HostLoad(), machine_info()
    runs = []
    with tempfile.TemporaryDirectory(prefix="vlpipe-lr-sweep-") as tmp:
        root = Path(tmp)
        build_cache(make_task(root / "src", args.samples, seed=0), root / "cache", image_size=64, patch_size=16,
                    max_len=12, tokenizer="wordpiece:200", label_column="label", val_fraction=0.2, processes=1,
                    quiet=True)
        for lr in (float(x) for x in args.lrs.split(",")):
            for patience in (3, 0):
                for seed in (int(s) for s in args.seeds.split(",")):
                    out = root / f"run-{lr}-{patience}-{seed}"
                    began = time.perf_counter()
                    result = finetune(FinetuneConfig(cache=str(root / "cache"), out=str(out), lr=lr, epochs=args.epochs,
                                                     patience=patience, seeds=(seed,), workers=1, live=False,
                                                     plots=False, metric="accuracy"))
                    run = result.summary["runs"][str(seed)]
                    runs.append({"lr": lr, "patience": patience, "seed": seed, "epochs_run": run["epochs_run"],
                                 "best_epoch": run["best_epoch"], "val_accuracy": run["metrics"]["val"]["accuracy"],
                                 "val_auroc": run["metrics"]["val"]["auroc"], "seconds": time.perf_counter() - began})
                    print(json.dumps(runs[-1]), file=sys.stderr)
    summary = {}
    for lr in sorted({r["lr"] for r in runs}):
        for patience in (3, 0):
            accs = [r["val_accuracy"] for r in runs if r["lr"] == lr and r["patience"] == patience]
            summary[f"lr={lr:g} patience={patience}"] = {"val_accuracy_mean": statistics.mean(accs),
                                                         "val_accuracy_min": min(accs)}
    record = {"command": "python benchmarks/sweep_finetune_lr.py " + " ".join(sys.argv[1:]), "started": started,
              "finished": utc_now(), "machine": machine, "other_load_cores": round(host.other_cores(), 2),
              "settings": vars(args) | {"json": str(args.json) if args.json else None}, "summary": summary,
              "runs": runs}
    text = json.dumps(record, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
