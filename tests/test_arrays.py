"""The one checked opener of shard files: size, readability (never unpickling), dtype and shape."""

from __future__ import annotations

import numpy as np
import pytest

from vlpipe.cache.arrays import check_size, open_npy
from vlpipe.errors import VlpipeError


def test_open_npy_maps_a_matching_array(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(12, dtype=np.uint8).reshape(3, 4))
    arr = open_npy(path, {"uint8": (3, 4)})
    assert isinstance(arr, np.memmap) and arr[2, 3] == 11
    # None: any length on that axis; several dtypes may be allowed, each with its own shape.
    assert open_npy(path, {"int64": (3,), "uint8": (3, None)}).shape == (3, 4)


@pytest.mark.parametrize(("expected", "message"), [
    ({"uint8": (4, 3)}, r"a.npy: array is uint8\[3, 4\], expected uint8\[4, 3\]$"),
    ({"uint8": (3,)}, r"a.npy: array is uint8\[3, 4\], expected uint8\[3\]$"),
    ({"int64": (3,), "uint16": (3, None)}, r"a.npy: array is uint8\[3, 4\], expected int64\[3\] or uint16\[3, any\]$"),
])
def test_open_npy_refuses_another_dtype_or_shape(tmp_path, expected, message):
    np.save(tmp_path / "a.npy", np.zeros((3, 4), np.uint8))
    with pytest.raises(VlpipeError, match=message):
        open_npy(tmp_path / "a.npy", expected)


@pytest.mark.parametrize("make", [
    lambda p: p.write_bytes(b"\x93NUMPY\x01\x00garbage"),
    lambda p: p.write_bytes(b""),
    lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),  # would need unpickling
])
def test_open_npy_refuses_unreadable_files_in_one_line(tmp_path, make):
    path = tmp_path / "a.npy"
    make(path)
    with pytest.raises(VlpipeError, match=r"a.npy: not a readable .npy file") as info:
        open_npy(path, {"uint8": (1,)})
    assert "\n" not in str(info.value)


def test_check_size(tmp_path):
    path = tmp_path / "f.npy"
    path.write_bytes(b"x" * 10)
    check_size(path, 10)
    with pytest.raises(VlpipeError, match=r"f.npy: 10 bytes but the manifest records 12 \(truncated or modified"):
        check_size(path, 12)
    with pytest.raises(VlpipeError, match=r"gone.npy: file is missing"):
        check_size(tmp_path / "gone.npy", 10)
