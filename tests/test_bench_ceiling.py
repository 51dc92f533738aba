"""The random-gather ceiling gathers the right rows, across shards, in one and in two processes."""

from pathlib import Path

import numpy as np
import pytest

from vlpipe.bench.ceiling import RowGatherer, measure_ceiling


def _shards(tmp_path: Path) -> tuple[list[str], np.ndarray]:
    rows = np.arange(30 * 48, dtype=np.uint32).reshape(30, 48).view(np.uint8).reshape(30, 4, 48)
    files = []
    for name, part in (("a", rows[:20]), ("b", rows[20:])):
        np.save(tmp_path / f"{name}.npy", part)
        files.append(str(tmp_path / f"{name}.npy"))
    return files, rows


@pytest.mark.parametrize("method", ["rows", "take"])
def test_gathered_rows_are_the_rows_of_their_global_indices(tmp_path: Path, method: str) -> None:
    files, rows = _shards(tmp_path)
    gatherer = RowGatherer(files, batch_size=16, seed=3, method=method)
    seen = set()
    for _ in range(20):
        indices = gatherer.gather()
        np.testing.assert_array_equal(gatherer.buffer, rows[indices])
        seen.update(indices.tolist())
    assert min(seen) < 20 <= max(seen)  # both shards were read


def test_consumer_copy_variant_copies_every_gathered_batch(tmp_path: Path) -> None:
    files, rows = _shards(tmp_path)
    gatherer = RowGatherer(files, batch_size=16, seed=3, consumer_copy=True)
    for _ in range(3):
        indices = gatherer.gather()
        np.testing.assert_array_equal(gatherer.staging, rows[indices])
    assert RowGatherer(files, batch_size=16, seed=3).staging is None


def test_one_and_two_process_ceilings_are_measured(tmp_path: Path) -> None:
    files, _ = _shards(tmp_path)
    one = measure_ceiling(files, batch_size=8, seconds=0.05, processes=1)
    two = measure_ceiling(files, batch_size=8, seconds=0.05, processes=2)
    assert one.processes == 1 and one.samples_per_s > 0
    assert two.processes == 2 and two.samples_per_s > 0
    copied = measure_ceiling(files, batch_size=8, seconds=0.05, processes=2, consumer_copy=True)
    assert copied.consumer_copy and copied.samples_per_s > 0
    taken = measure_ceiling(files, batch_size=8, seconds=0.05, processes=2, method="take")
    assert taken.method == "take" and taken.samples_per_s > 0


def test_unknown_gather_method_is_refused(tmp_path: Path) -> None:
    files, _ = _shards(tmp_path)
    with pytest.raises(ValueError, match="unknown gather method 'fancy'"):
        RowGatherer(files, batch_size=4, seed=0, method="fancy")
