"""The stop flag: a signal handler that only records. No heavy imports, so it is installed first.

SIGUSR1 and SIGTERM are preemptions (SLURM's time-limit warning, a cancel or SLURM's own preemption); SIGINT is a
person pressing Ctrl-C. Either way the run saves at the next step boundary and stops. A second Ctrl-C ends the
process at once, as Ctrl-C does elsewhere: whatever it interrupts, the checkpoints on disk stay complete (they are
written atomically).
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

# In order of precedence when ranks received different signals: a Ctrl-C anywhere stops the run for good, the
# time-limit warning anywhere requeues it, SIGTERM alone does not requeue it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def signal_precedence(signum: int | None) -> int:
    """0 for no signal, else 1 + its place in STOP_SIGNALS: ranks agree on the signal by the maximum of this."""
    return 0 if signum is None else 1 + STOP_SIGNALS.index(signum)


def signal_of_precedence(precedence: int) -> int | None:
    return None if precedence == 0 else STOP_SIGNALS[precedence - 1]


class SignalFlag:
    """Records the first preemption signal received, or a Ctrl-C, which overrides it (a person stopping the run is
    not requeued); installing it again (after Lightning replaced the handlers with its own) keeps what was already
    received."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            # the second Ctrl-C: end the process now, by the signal's default action
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.raise_signal(signal.SIGINT)
        if self.received is None or signum == signal.SIGINT:
            self.received = signum

    def install(self) -> None:
        for sig in self.signals:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
