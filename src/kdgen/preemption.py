"""Graceful preemption: SIGTERM or SIGINT asks training to stop after the current step.

The command line installs the handlers (:func:`handle_signals`, main thread only); the
engine only polls :func:`stop_requested`, a plain Python bool, so the check costs no host
sync. A first signal sets the flag; the engine then finishes the optimiser step, saves a
resumable state and raises :class:`TrainingStopped`. A second signal exits at once.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: list[int] = []  # the signal numbers received, in order


class TrainingStopped(BaseException):
    """Training stopped on request after saving a resumable state.

    A ``BaseException``, as :class:`KeyboardInterrupt`, so that no ``except Exception``
    swallows it. ``epoch`` counts the epochs begun (1-based), ``step`` the optimiser steps
    done in it; ``run_dir`` is filled in by the code that owns the run folder.
    """

    def __init__(self, generation: int, epoch: int, step: int) -> None:
        super().__init__(generation, epoch, step)
        self.generation, self.epoch, self.step = generation, epoch, step
        self.run_dir: str | None = None

    @property
    def signal_name(self) -> str:
        return signal_name()

    def __str__(self) -> str:
        return (
            f"interrupted by {self.signal_name} at generation {self.generation}, "
            f"epoch {self.epoch}, step {self.step}"
        )


def stop_requested() -> bool:
    """Whether a stop signal has arrived (a Python bool: no device work)."""
    return bool(_requested)


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Ask training to stop as if ``signum`` had arrived (tests, embedding code)."""
    _requested.append(int(signum))


def reset() -> None:
    """Forget any stop request."""
    _requested.clear()


def signal_name() -> str:
    """The name of the first stop signal received ('a stop request' if none)."""
    return signal.Signals(_requested[0]).name if _requested else "a stop request"


def exit_status() -> int:
    """The conventional exit status for the first signal: 128 + its number (143, 130)."""
    return 128 + (_requested[0] if _requested else signal.SIGTERM)


def _handler(signum: int, frame: FrameType | None) -> None:
    if _requested:  # a second signal: no more grace
        os._exit(128 + signum)
    _requested.append(signum)


@contextmanager
def handle_signals() -> Iterator[None]:
    """Install the SIGTERM/SIGINT handlers for the duration of the block (main thread only;
    elsewhere it does nothing), then restore the previous handlers and clear the flag."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    reset()
    for sig in _SIGNALS:
        signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
