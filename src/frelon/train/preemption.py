"""Stop cleanly when asked: SIGTERM/SIGUSR1 (SLURM before preemption or time-out) and Ctrl-C.

The handler only records the request; the training loop checks it between optimizer steps,
saves its state and exits, and the next run resumes from that state.
"""

from __future__ import annotations

import signal

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# EX_TEMPFAIL: a temporary failure, to be retried (Snakemake --retries, SLURM requeue).
EXIT_PREEMPTED = 75
# Environment variable naming a file the main rank creates when it stops on request, so that the
# launcher can exit 75 where torchrun reports any failed rank as 1.
PREEMPTED_MARKER = "FRELON_PREEMPTED_MARKER"


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


class Preempted(Exception):
    """Raised by the loop after it saved its state on request; the worker exits with EXIT_PREEMPTED."""
