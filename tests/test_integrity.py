"""A damaged cache is refused before training: each file is hashed against the manifest once,
remembered, and hashed again only when it changed."""

from __future__ import annotations

import cachegen
import pyarrow.parquet as pq
import pytest

from vlpipe.cache import integrity
from vlpipe.cache.format import load_manifest
from vlpipe.errors import VlpipeError
from vlpipe.train.config import PretrainConfig
from vlpipe.train.pretrain import pretrain


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    return cachegen.captioned_cache(tmp_path, n=12, seed=1, val_fraction=0.25)


def _flip_one_byte(path, offset_from_end=7):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_each_file_is_hashed_once_until_it_changes(cache):
    manifest = load_manifest(cache)
    files = 1 + sum(len(s.files) for s in manifest.shards)  # the tokenizer and every shard file
    assert integrity.check_files(cache, quiet=True) == files
    assert integrity.check_files(cache, quiet=True) == 0  # remembered
    assert integrity.check_files(cache, "always", quiet=True) == files
    assert integrity.check_files(cache, "never", quiet=True) == 0
    tokens = manifest.shards[0].path(cache, "tokens")
    tokens.write_bytes(tokens.read_bytes())  # the same bytes, a new modification time
    assert integrity.check_files(cache, quiet=True) == 1


@pytest.mark.parametrize("kind", ["images", "tokens", "meta"])
def test_a_flipped_byte_is_refused_before_training(cache, tmp_path, kind):
    integrity.check_files(cache, quiet=True)  # verified once: the change below must still be caught
    path = load_manifest(cache).shards[0].path(cache, kind)
    if kind == "meta":  # inside a Parquet page, not its footer: the file stays readable
        pq.read_metadata(path)
    _flip_one_byte(path, offset_from_end=path.stat().st_size // 2)
    config = PretrainConfig(cache=str(cache), out=str(tmp_path / "run"), steps=1, batch_size=2, workers=1,
                            live=False, plots=False)
    with pytest.raises(VlpipeError, match=rf"{path.name}: its sha256 differs from .*manifest.json") as info:
        pretrain(config)
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()
    pretrain(config.model_copy(update={"verify_cache": "never"}))  # the user's explicit choice
