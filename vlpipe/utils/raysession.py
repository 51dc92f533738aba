"""Connect to the Ray cluster a command runs on, or start a local Ray for the command alone.

Both Ray users (`build-cache --distributor ray`, `fetch --distributor ray` through img2dataset)
go through `ray_session`, so the address means the same everywhere: `--ray-address` if given
(`auto` = the cluster `ray start` brought up on this machine, or `HOST:PORT`), else `RAY_ADDRESS`,
else a fresh local Ray with `num_cpus` CPUs that is shut down when the command ends. A session
that is already connected in this process (a notebook, a test) is used as it is and left running.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator

from vlpipe.errors import VlpipeError, one_line


def require_ray(flag: str = "--distributor ray") -> None:
    """Fail before anything is written when Ray is not installed (img2dataset would silently do nothing)."""
    if importlib.util.find_spec("ray") is None:
        raise VlpipeError(f"{flag} needs the ray package: pip install 'vlpipe[ray]'")


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Ray connected for the duration of the block; `num_cpus` only sizes a Ray started here."""
    require_ray()
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address is None:
            # No dashboard: nothing reads it, and on a small machine it costs a process and seconds.
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"--ray-address {address}" if address else "a local Ray"
        raise VlpipeError(f"{where}: cannot start or reach Ray ({one_line(exc)}); see docs/scale-out.md") from exc
    try:
        yield
    finally:
        ray.shutdown()
