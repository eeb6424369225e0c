"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM ask the training loop to finish its step, checkpoint
and exit; a second Ctrl-C aborts at once. In a sweep (`dqn train -m`) the process that launches the
jobs passes the stop on to every job through a file in the sweep dir (`SweepStop`)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

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

    def __reduce__(self):  # a sweep job's error travels back to the launcher pickled (joblib, Ray, submitit)
        return type(self), (str(self), self.signum)


class NotStartedError(TrainingStoppedError):
    """A sweep job that was due to start after the sweep had been stopped: it trains nothing."""


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

    `stop_file` (a sweep job's: SWEEP_DIR/.stop, see `SweepStop`) is looked at once a second: once it
    exists, the job stops as if it had received the signal it names. That signal arriving here too
    soon after (a terminal's Ctrl-C reaches the launcher and the job alike) is the same stop, not a second.
    """

    POLL_S = 1.0  # how often `requested` looks for the stop file
    SAME_STOP_S = 2.0  # the signal the stop file named, arriving this soon after it: not a second stop

    def __init__(self, stop_file: Path | None = None):
        self.signum: int | None = None
        self.stop_file = stop_file
        self._previous: dict[int, object] = {}
        self._next_poll = 0.0
        self._file_stop_at: float | None = None

    @property
    def requested(self) -> bool:
        if self.signum is None and self.stop_file is not None and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + self.POLL_S
            signum = read_stop_file(self.stop_file)
            if signum is not None:
                self.signum, self._file_stop_at = signum, time.monotonic()
                log.warning(f"the sweep was stopped by {self.name}: finishing this step, then writing a checkpoint")
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __enter__(self) -> StopSignals:
        if HELD is not None:  # a sweep job's process, signalled while it built this run (`hold_stop_signals`)
            self.signum = HELD
        self._previous = set_handlers(self._handle)
        return self

    def __exit__(self, *exc) -> None:
        restore_handlers(self._previous)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            if self._file_stop_at is not None and signum == self.signum:
                if time.monotonic() - self._file_stop_at < self.SAME_STOP_S:
                    return
            raise Aborted(signum)
        self.signum = signum
        if ACTIVE_SWEEP is not None:  # a job of the basic launcher, in the process that runs the sweep
            ACTIVE_SWEEP.request(signum)
        log.warning(
            f"{signal.Signals(signum).name} received: finishing this step, then writing a checkpoint "
            "(Ctrl-C again aborts at once)"
        )


def set_handlers(handler) -> dict[int, object]:
    """`handler` for SIGINT and SIGTERM; returns the handlers it replaced. Only in the main thread (Python
    allows handlers nowhere else): elsewhere it changes nothing and returns {}."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}


def restore_handlers(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@contextlib.contextmanager
def ignored():
    """SIGINT and SIGTERM ignored inside (in the main thread; elsewhere nothing changes)."""
    previous = set_handlers(signal.SIG_IGN)
    try:
        yield
    finally:
        restore_handlers(previous)


HELD: int | None = None  # the stop signal a joblib job's process took outside training (`hold_stop_signals`)


def hold_stop_signals() -> None:
    """In a joblib worker process, from its first job on: SIGINT / SIGTERM between trainings (building a
    run, waiting for the next job) are held as a stop request instead of raising KeyboardInterrupt, which
    would break joblib's worker pool and end the whole sweep at once. The run being built stops at its
    first step (with a checkpoint), later jobs do not start; a second signal aborts."""
    set_handlers(_hold)


def _hold(signum: int, frame) -> None:
    global HELD
    if HELD is not None:
        raise Aborted(signum)
    HELD = signum
    log.warning(f"{signal.Signals(signum).name} received: this job stops (or does not start), with a checkpoint")


STOP_FILE = ".stop"  # in a sweep dir, written by `SweepStop`: the signal's name


def read_stop_file(path: Path) -> int | None:
    """The signal number a sweep's stop file names, or None when there is no (readable) stop file."""
    try:
        name = path.read_text().strip()
    except OSError:
        return None
    return signal.Signals[name].value if name in signal.Signals.__members__ else signal.SIGTERM.value


class SweepStop:
    """The sweep's first SIGINT/SIGTERM, in the process that launches its jobs (`dqn train -m`).

    Raising KeyboardInterrupt there, as Python does by default, makes the launcher end its jobs before
    they can write their checkpoints (joblib terminates its worker processes, Ray shuts down). Instead
    the first signal writes SWEEP_DIR/.stop naming it: every job polls that file and stops as if
    signalled (checkpoint, then a `TrainingStoppedError` the launcher hands back), a job not yet begun
    does not start (`NotStartedError`), and the launcher returns once all have. This reaches jobs that
    the signal itself does not: Ray's workers, Slurm's nodes, and every job when `kill` signals only
    the launcher. A second signal raises `Aborted` at once. Handlers only in the main thread.
    """

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = Path(sweep_dir)
        self.signum: int | None = None
        self.planned: int | None = None  # how many jobs the sweep launches, where known (for the report)
        self._previous: dict[int, object] = {}

    @property
    def stop_file(self) -> Path:
        return self.sweep_dir / STOP_FILE

    def start(self) -> SweepStop:
        # an earlier sweep's stop file, in a reused hydra.sweep.dir (a sweep dir under a file: the launcher says so)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self.stop_file.unlink()
        self._previous = set_handlers(self._handle)
        return self

    def close(self) -> None:
        """Once the launcher has returned (every job launched has ended): the old handlers back, the stop file
        gone (it has told every job)."""
        restore_handlers(self._previous)
        self._previous = {}
        self.stop_file.unlink(missing_ok=True)
        if isinstance(sys.stderr, _WithoutJobErrorLines):
            sys.stderr = sys.stderr.stream

    def request(self, signum: int) -> None:
        """Stop the sweep: write the stop file (also called by an in-process job's own `StopSignals`)."""
        if self.signum is not None:
            return
        self.signum = signum
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.stop_file.with_name(f"{STOP_FILE}.{os.getpid()}.tmp")
        tmp.write_text(signal.Signals(signum).name + "\n")
        os.replace(tmp, self.stop_file)
        if not isinstance(sys.stderr, _WithoutJobErrorLines):
            sys.stderr = _WithoutJobErrorLines(sys.stderr)  # until close()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise Aborted(signum)
        self.request(signum)
        log.warning(
            f"{signal.Signals(signum).name} received: the sweep's running jobs finish their step and write a "
            "checkpoint, jobs not begun yet do not start (Ctrl-C again aborts at once)"
        )


class _WithoutJobErrorLines:
    """stderr without Hydra's "Error executing job with overrides: [...]" line, which its sweeper writes for
    every job that raised, stopped ones too; the CLI's report of the stop names each job instead."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return len(text) if text.startswith("Error executing job with overrides") else self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


ACTIVE_SWEEP: SweepStop | None = None  # this process launches a sweep (set by dqn_cli.sweep.SweepStopper)
# the run dir and step of the last last.pt this process wrote or resumed from: a second Ctrl-C names it
LAST_SAVED: tuple[Path, int] | None = None
