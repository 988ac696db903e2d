"""The preemption flag: a signal handler that only records. No heavy imports, so it is installed first."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class SignalFlag:
    """Records the first preemption signal received; installing it again (after Lightning replaced the
    handlers with its own) keeps what was already received."""

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def install(self) -> None:
        for sig in self.signals:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
