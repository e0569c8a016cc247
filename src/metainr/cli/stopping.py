"""Stopping a meta-training run from outside: the first SIGINT / SIGTERM finishes the outer step
in progress, writes a checkpoint and ends the run (resumable with ``--resume``); a second one
stops at once (the last checkpoint is kept; every file is written atomically)."""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType

from ..train import Callback, RunState

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop(Callback):
    """``with GracefulStop() as stop: meta_train(..., callbacks=[stop])``; ``stop.signal`` names the
    signal that ended the run (None if it ran to its end)."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"metainr: {self.signal}: stopping after this outer step with a checkpoint (again: stop now)",
              file=sys.stderr)

    def on_step(self, state: RunState) -> None:
        if self.signal is not None:
            state.stop = f"stopped by {self.signal}"

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous = {}
