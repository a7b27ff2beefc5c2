"""SIGTERM and SIGINT (what Slurm's preemption and Ctrl-C send) as a clean stop, not a loss.

The CLI installs ``install_handlers()``. Outside a ``deferred()`` section a signal raises ``Stopped``
at once: everything zhtune commits is written atomically (evaluation chunks, stage markers, results),
so what was finished stays and nothing half-written remains. Inside ``deferred()`` (training) a
signal only records the request; the trainer's callback saves a checkpoint at the current step and
stops, then ``Stopped`` is raised. A second signal while one is pending stops at once. The CLI turns
``Stopped`` into one line and exit status 128 + the signal number (143 for SIGTERM, 130 for SIGINT).
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_pending: int | None = None
_deferred = 0


class Stopped(BaseException):
    """Stopped by a signal; what was finished is saved and the same command resumes. Not an
    Exception (nothing catches it by accident) nor a KeyboardInterrupt (click would turn that into
    its own "Aborted!")."""

    def __init__(self, signum: int, saved: str = "finished work is saved"):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}: {saved}; run the same command "
                         f"again to resume")


def _handle(signum, frame) -> None:
    global _pending
    if _deferred and _pending is None:
        _pending = signum  # the deferred section stops at its next safe point
        return
    raise Stopped(signum)


def install_handlers() -> None:
    """SIGTERM and SIGINT raise ``Stopped`` (or are deferred); call once, from the main thread."""
    for sig in _SIGNALS:
        signal.signal(sig, _handle)


def pending() -> int | None:
    """The signal received inside a ``deferred()`` section, if any."""
    return _pending


@contextmanager
def deferred() -> Iterator[None]:
    """Signals only request a stop here (``pending()``); the caller stops at a safe point and raises
    ``Stopped``. Without ``install_handlers()`` (zhtune used as a library) nothing changes."""
    global _deferred, _pending
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1
        if not _deferred:
            _pending = None
