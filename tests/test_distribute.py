"""build-cache and fetch on a real Ray (2 CPUs, started once for this module), against local builds.

Every test that needs Ray is here so that Ray starts once (about 10 s on 2 cores). The module's
Ray is started by vlpipe's own `ray_session`, as `--distributor ray` starts one on a single
machine; a second driver (a `vlpipe build-cache` subprocess) joins it by `--ray-address`, as on a
cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cachegen
import psutil
import pytest
from click.testing import CliRunner
from imageserver import ImageServer
from test_fetch import FAST, drop_reasons, read_samples, run_fetch
from test_merge import FLAGS, assert_same_cache, build_parts, vlpipe
from test_writer import OPTS, _png

from vlpipe.cache.writer import build_cache
from vlpipe.cli.fetch import fetch
from vlpipe.errors import VlpipeError
from vlpipe.fetch import safety
from vlpipe.fetch.tally import fetch_report
from vlpipe.text import load_tokenizer
from vlpipe.utils.raysession import ray_session

ray = pytest.importorskip("ray")  # in the dev extra; a bare install may lack it


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        env.delenv("RAY_ADDRESS", raising=False)
        with ray_session(num_cpus=2):
            assert ray.cluster_resources()["CPU"] == 2
            yield ray.get_runtime_context().gcs_address
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    items = cachegen.hard_items() + cachegen.photo_items(12, 100)
    chunks = [items[:5], items[5:10], items[10:14], items[14:18], items[18:]]
    return cachegen.write_layout(tmp_path_factory.mktemp("src"), "webdataset", chunks)


def test_ray_build_equals_local_and_merged_parts(ray_address: str, src: Path, tmp_path: Path) -> None:
    build_cache(src, tmp_path / "local", processes=1, **OPTS)
    build_parts(src, tmp_path / "parts", 2)
    vlpipe("cache", "merge", str(tmp_path / "parts"))
    # A driver in another process joining the running cluster, as `ray start --address` nodes do.
    subprocess.run([sys.executable, "-m", "vlpipe.cli.main", "build-cache", str(src), "--out", str(tmp_path / "ray"),
                    *FLAGS, "--distributor", "ray", "--ray-address", ray_address], check=True)
    assert_same_cache(tmp_path / "ray", tmp_path / "local")
    assert_same_cache(tmp_path / "parts", tmp_path / "local")
    # In this process too (the session is reused), through the command line.
    vlpipe("build-cache", str(src), "--out", str(tmp_path / "ray2"), *FLAGS, "--distributor", "ray")
    assert_same_cache(tmp_path / "ray2", tmp_path / "local")


def test_a_failing_shard_job_is_its_own_one_line_error(ray_address: str, tmp_path: Path) -> None:
    # A source shard that cannot be read fails inside its Ray task (a tokenizer file is given, so
    # the driver never reads the captions): not retried, reported as the job's own error.
    src = cachegen.write_layout(tmp_path / "src", "webdataset", [cachegen.photo_items(3), cachegen.photo_items(3, 3)])
    (src / "00001.tar").write_bytes((src / "00001.tar").read_bytes()[:700])
    tokenizer = tmp_path / "tokenizer.json"
    load_tokenizer("wordpiece:200", ["a photo", "another photo"]).save(tokenizer)
    with pytest.raises(VlpipeError) as info:
        build_cache(src, tmp_path / "cache", distributor="ray", **{**OPTS, "tokenizer": str(tokenizer)})
    assert str(info.value).startswith(str(src / "00001.tar")) and "\n" not in str(info.value), str(info.value)


def test_worker_killed_mid_shard_is_retried_and_the_cache_is_unchanged(ray_address: str, tmp_path: Path) -> None:
    # The last shard is slow enough (many PNGs, no JPEG draft) to be caught while it writes.
    slow = [it._replace(data=_png(it.data), ext="png") for it in cachegen.photo_items(200, 100, (160, 120))]
    src = cachegen.write_layout(tmp_path / "src", "webdataset", [cachegen.photo_items(3), slow])
    build_cache(src, tmp_path / "local", processes=1, **OPTS)
    out = tmp_path / "ray"
    errors: list[BaseException] = []

    def build() -> None:
        try:
            build_cache(src, out, distributor="ray", **OPTS)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=build)
    thread.start()
    # The shard's images.npy is written under .tmp-<pid of the writing process>-images.npy.
    deadline, killed = time.monotonic() + 120, None
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        for tmp in (out / "shards/00001").glob(".tmp-*-images.npy"):
            size = 0
            with contextlib.suppress(FileNotFoundError):  # renamed into place since the glob
                size = tmp.stat().st_size
            if size > 10_000:
                pid = int(tmp.name.split("-")[1])
                assert psutil.Process(pid).cmdline()[0].startswith("ray::")  # a Ray worker, not this process
                os.kill(pid, signal.SIGKILL)
                killed = pid
        time.sleep(0.005)
    thread.join(timeout=300)
    assert killed is not None, "the shard finished before its worker could be killed"
    assert not errors, errors
    assert_same_cache(out, tmp_path / "local")


# ---- fetch on Ray --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer() as srv:
        yield srv


def test_fetch_on_ray_keeps_and_drops_what_multiprocessing_does(ray_address: str, server: ImageServer,
                                                                 tmp_path: Path) -> None:
    local = run_fetch(server, tmp_path / "mp", *FAST)
    guard_before = safety._installed
    on_ray = run_fetch(server, tmp_path / "ray", *FAST, "--distributor", "ray")
    assert read_samples(tmp_path / "ray") == read_samples(tmp_path / "mp")  # same JPEG bytes, same metadata
    assert drop_reasons(tmp_path / "ray") == drop_reasons(tmp_path / "mp")
    assert {k: on_ray[k] for k in ("attempted", "kept", "dropped")} == {k: local[k] for k in ("attempted", "kept",
                                                                                            "dropped")}
    assert safety._installed is guard_before  # the downloads ran in Ray workers, not in this driver


def test_private_url_refused_inside_a_ray_worker(ray_address: str, server: ImageServer, tmp_path: Path) -> None:
    # Without --allow-private-network the loopback test server is a private address: the URL guard
    # must refuse it inside the Ray worker that downloads, before any connection is made.
    # The list names the server as `localhost`: a name only the guard's own lookup can judge (a list of
    # literal private addresses is refused before any worker starts).
    no_flag = [a for a in FAST if a != "--allow-private-network"]
    listing = tmp_path / "named.tsv"
    by_name = server.base.replace("127.0.0.1", "localhost")
    listing.write_text("".join(f"photo {i}\t{by_name}/img/jpeg?n={i}\n" for i in range(3)))
    requests_before = len(server.requests)
    out = tmp_path / "out"
    result = CliRunner().invoke(fetch, ["tsv", str(listing), "--out", str(out), "--download-dir",
                                        str(tmp_path / "dl"), *no_flag, "--distributor", "ray"])
    assert isinstance(result.exception, VlpipeError)
    assert "no image was kept: all 3 rows were dropped (private_address 3)" in str(result.exception)
    assert fetch_report(out)["dropped"] == {"private_address": 3}
    assert server.requests[requests_before:] == []
