"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM ask the training loop to finish its step, checkpoint
and exit; a second Ctrl-C aborts at once."""

from __future__ import annotations

import logging
import signal
import threading

from dqn_cli.errors import UserError

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStoppedError(UserError):
    """Training stopped on a signal after writing a resumable checkpoint. Exit code 128 + signal
    number (130 for SIGINT, 143 for SIGTERM), as a shell reports a process killed by that signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class Aborted(KeyboardInterrupt):
    """A second stop signal while the first was being handled: leave now, without a checkpoint."""

    def __init__(self, signum: int):
        super().__init__(f"second {signal.Signals(signum).name}")
        self.signum = signum


class StopSignals:
    """While active, the first SIGINT/SIGTERM only sets `signum`, which the loop checks after each
    step; a second one raises `Aborted` (a KeyboardInterrupt) wherever the program is. The previous
    handlers come back on exit. Outside the main thread (where Python allows no handlers) it does
    nothing and `signum` stays None.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise Aborted(signum)
        self.signum = signum
        log.warning(
            f"{signal.Signals(signum).name} received: finishing this step, then writing a checkpoint "
            "(Ctrl-C again aborts at once)"
        )
