"""Stop cleanly when asked: SIGTERM/SIGUSR1 (SLURM before preemption or time-out) and Ctrl-C.

The handler only records the request. The training loop reads it between optimizer steps, the
evaluation loops before each batch (every rank at the same points, so that all of them stop
together); the run then saves what it can and exits 75, and the next run resumes from that state.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# EX_TEMPFAIL: a temporary failure, to be retried (Snakemake --retries, SLURM requeue).
EXIT_PREEMPTED = 75
# Environment variable naming a file the main rank creates when it stops on request, so that the
# launcher can exit 75 where torchrun reports any failed rank as 1.
PREEMPTED_MARKER = "FRELON_PREEMPTED_MARKER"

_active: list[Preemption] = []  # the handlers installed now (the outermost first)


class Preemption:
    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}

    def _handle(self, signum: int, _frame) -> None:
        self.signal = signum

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def handling() -> Iterator[Preemption]:
    """Record stop requests for the duration of the block; inside another such block, the same handler
    (a request made while a run trains is still seen while it scores)."""
    if _active:
        yield _active[-1]
        return
    preemption = Preemption()
    _active.append(preemption)
    try:
        yield preemption
    finally:
        _active.remove(preemption)
        preemption.restore()


def requested() -> bool:
    """Whether this process was asked to stop while a `handling` block was open."""
    return bool(_active) and _active[-1].requested


class Preempted(Exception):
    """Raised by the loop after it saved its state on request; the worker exits with EXIT_PREEMPTED."""


class StopRequested(Exception):
    """A stop was asked for during evaluation: every rank raises it at the same batch, nothing is saved."""
