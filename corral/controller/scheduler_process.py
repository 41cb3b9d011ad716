"""The task scheduler's child process, as the controller runs it.

The controller starts ``python -m corral.controller.scheduler``, writes its settings as one
JSON line on its stdin (:meth:`~corral.controller.app.Controller.scheduler_settings` says
what they are) and reads the two ports it bound from its stdout; at the end it stops it
(:func:`corral.lifetime.terminate`, given :data:`STOP_GRACE`) and reads the counts the
scheduler wrote as its last line. Kept apart from :mod:`corral.controller.app`, which owns
the sockets and files, because this is a pipe protocol with a child process of its own; the
scheduler's side of it is :mod:`corral.controller.scheduler_shell`.
"""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
from typing import IO, Any, Final

from corral.errors import CorralError

__all__ = ["STOP_GRACE", "configure_scheduler", "final_counts", "launch_scheduler"]

#: Seconds the scheduler gets to stop cleanly (and write its counts) after SIGTERM.
STOP_GRACE: Final = 5.0


def launch_scheduler() -> subprocess.Popen[bytes]:
    """The scheduler process, started and waiting for its settings on stdin. The caller keeps
    it before :func:`configure_scheduler`, so that a scheduler that fails there is stopped."""
    return subprocess.Popen(
        [sys.executable, "-m", "corral.controller.scheduler"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def configure_scheduler(
    process: subprocess.Popen[bytes], settings: dict[str, Any]
) -> tuple[int, int]:
    """Write ``settings`` to the scheduler and read the ports it bound: ``task`` (clients)
    and ``task_engine``. CorralError when it does not answer within 30 s."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(settings).encode() + b"\n")
    process.stdin.close()
    ports = read_json_line(process.stdout, timeout=30)
    if ports is None:
        raise CorralError("the task scheduler process did not start; see the controller log")
    return int(ports["task"]), int(ports["task_engine"])


def final_counts(process: subprocess.Popen[bytes]) -> dict[str, Any] | None:
    """The counts the stopped scheduler wrote as its last line, if it could."""
    assert process.stdout is not None
    try:
        last = read_json_line(process.stdout, timeout=1.0)
    except (OSError, ValueError):
        return None
    counts = (last or {}).get("counts")
    return counts if isinstance(counts, dict) else None


def read_json_line(stream: IO[bytes], timeout: float) -> dict[str, Any] | None:
    """One line of ``stream`` as a JSON object; None when nothing came within ``timeout``
    seconds, the stream ended, or the line is JSON but not an object (ValueError if not
    JSON)."""
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            return None
        line = stream.readline()
    finally:
        selector.close()
    if not line:
        return None
    value = json.loads(line)
    return value if isinstance(value, dict) else None
