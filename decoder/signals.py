"""Stopping a training run cleanly on SIGINT/SIGTERM: the first signal sets a flag the loop reads
after its step (finish it, checkpoint, exit); a second one interrupts at once. Handlers are installed
only on the main thread and restored on exit."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopFlag:
    """Set by SIGINT/SIGTERM (first signal: finish the step, checkpoint, exit)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second signal: give up at once
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def redeliver(self) -> None:
        """A signal that came after the last step's stop check (the run completed anyway) goes to
        the Python handler that was there before training, so a caller that handles it (a sweep
        worker, Ctrl-C in a grid) stops too. With no such handler (SIGTERM's default) it is dropped:
        the run is complete and the process ends normally."""
        if self.signum is not None and callable(self._previous.get(self.signum)):
            signal.raise_signal(self.signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
