"""One hierarchy for every error a corral user or process can see.

Errors that travel (a task failing on an engine, a dependency that can never be met) are
turned into plain dicts for reply content with :func:`error_content` and rebuilt on the
client with :func:`error_from_content`, so that no exception object is ever pickled across
the wire (the remote exception class may not even exist on the client).
"""

from __future__ import annotations

import builtins
import traceback as traceback_module
from typing import Any


class CorralError(Exception):
    """Base class of every error raised by corral itself."""


# ---------------------------------------------------------------- protocol


class ProtocolError(CorralError):
    """A message that cannot be accepted: the receiving loop logs it and goes on."""


class SignatureError(ProtocolError):
    """The HMAC signature is missing or does not match: the sender lacks the key, or the
    message was changed in transit."""


class ReplayError(SignatureError):
    """A signature already seen by this receiver: the message is a replay."""


class MalformedMessage(ProtocolError):
    """The frames do not form a message: no delimiter, too few frames, bad JSON, wrong types."""


class UnknownMessageType(ProtocolError):
    """A well-formed, signed message whose msg_type is not in the catalogue."""


class InvalidContent(ProtocolError):
    """Message content with a missing, unexpected or wrongly typed field."""


class SerializationError(CorralError):
    """An object could not be serialized, or bytes could not be turned back into one."""


# ---------------------------------------------------------------- connection / cluster


class ConnectionError(CorralError, builtins.ConnectionError):  # noqa: A001
    """The controller cannot be reached, or went away while a call was waiting on it."""


class LaunchError(CorralError):
    """A launcher (local, mpi, ssh, slurm, pbs, lsf, sge) could not start or stop its processes;
    the message carries the launcher's own error text (sbatch's, mpiexec's, ssh's)."""


class NoEnginesRegistered(CorralError):
    """A view or call needs engines and there are none."""


class InvalidTarget(CorralError, ValueError):
    """A target that names no registered engine."""


class TimeoutError(CorralError, builtins.TimeoutError):  # noqa: A001
    """A wait ran out of time; the work it waited on may still complete later."""


class QueryError(CorralError):
    """A Hub query was rejected (bad fields, unknown operator, unknown or pending msg_id)."""


class StoreError(CorralError):
    """The result store failed (disk full, read-only file, server gone); nothing was lost
    silently: the caller is told."""


# ---------------------------------------------------------------- task outcomes


class RemoteError(CorralError):
    """An exception raised by user code on an engine.

    ``ename``/``evalue``/``traceback`` are the remote exception's class name, message and
    formatted traceback; ``engine_id`` is the integer id of the engine it ran on.
    """

    def __init__(
        self,
        ename: str,
        evalue: str,
        traceback: list[str] | str | None = None,
        engine_id: int | None = None,
        engine_uuid: str | None = None,
    ) -> None:
        super().__init__(ename, evalue)
        self.ename = ename
        self.evalue = evalue
        if isinstance(traceback, str):
            traceback = traceback.splitlines()
        self.traceback: list[str] = list(traceback or [])
        self.engine_id = engine_id
        self.engine_uuid = engine_uuid

    def __str__(self) -> str:
        where = f"[engine {self.engine_id}] " if self.engine_id is not None else ""
        return f"{where}{self.ename}: {self.evalue}"

    def render_traceback(self) -> str:
        """The remote traceback as the engine printed it."""
        return "\n".join(self.traceback) or str(self)


class TaskAborted(RemoteError):
    """The task was aborted before it ran (abort_request, or engine shutdown)."""


class EngineError(RemoteError):
    """The engine running (or holding) the task died or was unregistered."""


class UnmetDependency(RemoteError):
    """The task's dependencies were not met and can no longer be met."""


class ImpossibleDependency(UnmetDependency):
    """A dependency that can never be met: it failed and only success was allowed, it points
    at an engine that is gone, or the task's targets exclude every possible engine."""


class DependencyTimeout(UnmetDependency):
    """The task's dependencies were not met within its ``timeout``."""


class CompositeError(RemoteError):
    """Several remote errors from one call (one per failing engine or task)."""

    def __init__(self, message: str, elist: list[RemoteError]) -> None:
        super().__init__("CompositeError", message)
        self.elist = list(elist)

    def __str__(self) -> str:
        lines = [f"{self.evalue} ({len(self.elist)} errors)"]
        lines.extend(f"  {error}" for error in self.elist)
        return "\n".join(lines)

    def raise_exception(self, index: int = 0) -> None:
        """Raise one of the contained errors, for a closer look at it."""
        raise self.elist[index]


_WIRE_ERRORS: dict[str, type[RemoteError]] = {
    cls.__name__: cls
    for cls in (
        TaskAborted,
        EngineError,
        UnmetDependency,
        ImpossibleDependency,
        DependencyTimeout,
    )
}


def error_content(
    exc: BaseException, engine_id: int | None = None, engine_uuid: str | None = None
) -> dict[str, Any]:
    """Reply content for a failed request: status, ename, evalue, traceback, engine_info.

    For our own RemoteError subclasses the ename is the class name, so the client rebuilds
    the same class (EngineError stays EngineError); anything else becomes RemoteError.
    """
    if isinstance(exc, RemoteError):
        ename = type(exc).__name__ if type(exc).__name__ in _WIRE_ERRORS else exc.ename
        evalue = exc.evalue
        tb = exc.traceback or [f"{ename}: {evalue}"]
    else:
        ename = type(exc).__name__
        try:
            evalue = str(exc)
        except Exception as str_error:  # an exception whose __str__ itself fails
            evalue = f"<unprintable {ename}: {type(str_error).__name__}>"
        tb = traceback_module.format_exception(exc)
    return {
        "status": "aborted" if ename == "TaskAborted" else "error",
        "ename": ename,
        "evalue": evalue,
        "traceback": [line.rstrip("\n") for line in tb],
        "engine_info": {"engine_id": engine_id, "engine_uuid": engine_uuid},
    }


def error_from_content(content: dict[str, Any]) -> RemoteError:
    """The exception a client raises for an error (or aborted) reply's content."""
    ename = str(content.get("ename", "RemoteError"))
    info = content.get("engine_info") or {}
    cls = _WIRE_ERRORS.get(ename, RemoteError)
    if content.get("status") == "aborted":
        cls = TaskAborted
    return cls(
        ename,
        str(content.get("evalue", "")),
        content.get("traceback") or [],
        engine_id=info.get("engine_id"),
        engine_uuid=info.get("engine_uuid"),
    )


def collect_exceptions(results: list[Any], method: str) -> list[Any]:
    """Raise a CompositeError if several results are RemoteErrors; the one error if only one."""
    errors = [r for r in results if isinstance(r, RemoteError)]
    if not errors:
        return results
    if len(errors) == 1:
        raise errors[0]
    raise CompositeError(f"one or more exceptions from call to method: {method}", errors)
