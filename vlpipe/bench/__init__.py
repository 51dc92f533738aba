"""`vlpipe bench dataloader`: vlpipe's cache reader against the JPEG-decoding loaders people use today.

`bench_dataloader` is imported lazily so that the ceiling's spawned gatherer processes, which
import `vlpipe.bench.ceiling`, start without importing torch.
"""

from typing import Any

__all__ = ["BASELINE", "BASELINES", "VLPIPE_MODES", "bench_dataloader"]

# The reader modes benchmarked by default; kept here so the CLI can show them without importing torch.
VLPIPE_MODES = ("inline", "threads")

# The JPEG-decoding rows (vlpipe.bench.pipelines), and the like-for-like one every ratio is taken
# against: it delivers what vlpipe delivers (uint8 pixels + token ids) and normalizes nothing on the CPU.
BASELINE = "torchvision-uint8"
BASELINES = (BASELINE, "torchvision-float", "seed-recipe", "webdataset")


def __getattr__(name: str) -> Any:
    if name == "bench_dataloader":
        from vlpipe.bench.dataloader import bench_dataloader

        return bench_dataloader
    raise AttributeError(f"module 'vlpipe.bench' has no attribute {name!r}")
