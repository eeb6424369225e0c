"""The console's log handler (configs/hydra/job_logging): a reader that has gone ends the output quietly."""

from __future__ import annotations

import logging
import os
import sys


class ConsoleHandler(logging.StreamHandler):
    """A StreamHandler to stdout for which a closed pipe (`dqn eval ... | head -1`) is no error: the
    rest of the output goes to /dev/null and the command finishes (its files written, its exit code
    its own). logging's default prints a "--- Logging error ---" traceback for every later line."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if isinstance(sys.exc_info()[1], BrokenPipeError) and self.stream is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        super().handleError(record)
