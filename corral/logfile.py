"""Log files that rotate, for the controller and engines a cluster starts in the background.

A process started with ``--log-file`` logs there through a :class:`ProcessLog`: at
``max_bytes`` the file is renamed ``<name>.1`` (older ones shift up to ``backups``, the oldest
is deleted) and a new one started. The process's standard output and error (fds 1 and 2) are
pointed at the current file too, and follow it at each rotation, so that whatever bypasses
logging (a traceback at exit, a C library's warnings) is kept with the log and bounded with it.
"""

from __future__ import annotations

import logging
import os
from logging.handlers import RotatingFileHandler
from pathlib import Path

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 3


class ProcessLog(RotatingFileHandler):
    """A rotating log file that also receives the process's fds 1 and 2."""

    def __init__(
        self, path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS
    ) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups)
        self._redirect()

    def doRollover(self) -> None:  # noqa: N802 (the logging API's name)
        super().doRollover()
        self._redirect()

    def _redirect(self) -> None:
        if self.stream is None:
            return
        for stream_fd in (1, 2):
            os.dup2(self.stream.fileno(), stream_fd)


def log_to_file(
    path: str | Path,
    level: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backups: int = DEFAULT_BACKUPS,
) -> None:
    """Send this process's logging, stdout and stderr to a rotating file at ``path``."""
    handler = ProcessLog(path, max_bytes, backups)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
