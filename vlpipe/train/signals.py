"""Ctrl-C and a scheduler's pre-emption (SIGTERM) stop a training run after a checkpoint, not mid-step.

The loop (vlpipe/train/loop.py) collects the signals with `signals_caught`, saves a checkpoint at
the next step all processes agree on, and raises `Interrupted`; the CLI then prints the exact
command that continues the run (`--resume`) and exits with 128 + the signal's number.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from vlpipe.errors import VlpipeError


class Interrupted(VlpipeError):
    """SIGINT or SIGTERM stopped a run, after it saved a checkpoint: `--resume` continues it exactly."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number


@contextlib.contextmanager
def signals_caught() -> Iterator[list[int]]:
    """Collect SIGINT/SIGTERM (Ctrl-C, a scheduler's pre-emption) instead of dying mid-step; a second
    signal stops at once. Only the main thread can install handlers; elsewhere nothing is caught."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(number: int, frame: Any) -> None:
        if caught:
            raise KeyboardInterrupt
        caught.append(number)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
