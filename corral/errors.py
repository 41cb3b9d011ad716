"""One hierarchy for every error a corral user or process can see.

Errors that travel (a task failing on an engine, a dependency that can never be met) are
turned into plain dicts for reply content with :func:`error_content` and rebuilt on the
client with :func:`error_from_content`, so that no exception object is ever pickled across
the wire (the remote exception class may not even exist on the client).
"""

from __future__ import annotations

import builtins
import sys
import traceback as traceback_module
from typing import Any, NamedTuple


class CorralError(Exception):
    """Base class of every error raised by corral itself."""


# ---------------------------------------------------------------- protocol


class ProtocolError(CorralError):
    """A message that cannot be accepted: the receiving loop logs it and goes on."""


class LaneClosed(ProtocolError):
    """A lane's peer closed it, or it broke (corral.lane): a packet out of order, a peer that
    is not ours."""


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


class ImportNeeded(SerializationError):
    """Deserializing would import a module not imported yet, and the caller asked not to
    (``deserialize_object(..., loaded_only=True)``): it deserializes on another thread."""


class SharedMemoryRefused(ProtocolError):
    """A shared-memory reference in a signed message that this process will not map: not one
    of this cluster's segments (forged or guessed name, wrong prefix), of the wrong size or
    owner, or already gone. The receiver logs it and never reads the segment."""


class SharedMemoryError(CorralError):
    """A buffer could not be put into shared memory: /dev/shm lacks the space, or refused the
    write. Nothing was sent; free memory, or lower the load (``shm_threshold=0`` turns the
    same-host fast path off)."""


# ---------------------------------------------------------------- connection / cluster


class ConnectionError(CorralError, builtins.ConnectionError):  # noqa: A001
    """The controller cannot be reached, or went away while a call was waiting on it."""


class MultipleInstanceError(CorralError, KeyError):
    """A second instance of something there may be only one of: a cluster that a
    ClusterManager already manages (ipyparallel's name, from traitlets' singletons)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownFlag(CorralError, KeyError, TypeError):
    """``view.set_flags`` (or a view constructor) given a name that is not a flag of the view: a
    KeyError as in ipyparallel, and a TypeError, as for an unknown keyword argument."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LaunchError(CorralError):
    """A launcher (local, mpi, ssh, slurm, pbs, lsf, sge) could not start or stop its processes;
    the message carries the launcher's own error text (sbatch's, mpiexec's, ssh's)."""


class InvalidTarget(CorralError, ValueError, IndexError):
    """A target that names no registered engine (an IndexError too, as ``rc[99]`` raises in
    ipyparallel)."""


class TimeoutError(CorralError, builtins.TimeoutError):  # noqa: A001
    """A wait ran out of time; the work it waited on may still complete later."""


class NotReady(CorralError, RuntimeError, ValueError):
    """``AsyncResult.successful()`` asked before the result came: ipyparallel raises
    RuntimeError there, ``multiprocessing.pool.AsyncResult`` (whose interface it extends)
    ValueError; a handler written for either catches this."""


class QueryError(CorralError):
    """A Hub query was rejected (bad fields, unknown operator, unknown or pending msg_id)."""


class StoreError(CorralError):
    """The result store failed (disk full, read-only file, server gone); nothing was lost
    silently: the caller is told."""


class ResultNotStored(QueryError):
    """The Hub recorded the task but not its result's buffers: they were larger than the
    store's per-result limit (``--store-buffer-limit``). The message says which setting to
    raise; the client that submitted the task received the result itself."""


class ResultPurged(QueryError):
    """The Hub recorded the task, but its result store purged the record since: its size
    limit (``--store-size-limit``) or its results' time to live (``--result-ttl``), which
    the message names. Told while the controller remembers the purge (the latest 65,536 of
    them, not across a restart); after that it is an unknown msg_id."""


def purged_message(msg_id: str, why: str) -> str:
    """What :class:`ResultPurged` says of ``msg_id``, purged for ``why`` (the store's rule)."""
    return f"msg_id {msg_id} was purged from the Hub's result store: {why}"


# ---------------------------------------------------------------- task outcomes
#
# The tree below matches ipyparallel's ``error`` module, so ``except`` clauses written for it
# catch the same things here: KernelError is the base of every task outcome, RemoteError of an
# exception raised on an engine, and ImpossibleDependency of the dependency failures. Where
# corral goes further the extra base is RemoteError (TaskAborted, EngineError, the dependency
# errors carry the engine and traceback of where they were decided).

IPythonError = CorralError  # ipyparallel's name for the base of all its errors


class KernelError(CorralError):
    """Base class of every task outcome that is not a value (ipyparallel's KernelError)."""


class NoEnginesRegistered(KernelError):
    """A view or call needs engines and there are none."""


class TaskRejectError(KernelError):
    """A task was refused by the engine it was sent to (kept for ipyparallel programs that
    name it; corral's scheduler reroutes instead of rejecting)."""


class RemoteErrorInfo(NamedTuple):
    """One error of a CompositeError, as ipyparallel's ``elist`` holds it: a 4-tuple
    ``(ename, evalue, traceback, engine_info)``, also readable by name."""

    ename: str
    evalue: str
    traceback: str
    engine_info: dict[str, Any]

    @property
    def engine_id(self) -> int | None:
        engine_id = self.engine_info.get("engine_id")
        return engine_id if isinstance(engine_id, int) else None


class RemoteError(KernelError):
    """An exception raised by user code on an engine.

    ``ename``/``evalue`` are the remote exception's class name and message, ``traceback`` the
    traceback as the engine formatted it (one string), ``engine_info`` a dict with
    ``engine_id``, ``engine_uuid`` and ``method`` (``apply`` or ``execute``); ``engine_id`` and
    ``engine_uuid`` are also attributes. IPython shows the remote traceback, not a client one
    (``_render_traceback_``).
    """

    def __init__(
        self,
        ename: str,
        evalue: str,
        traceback: list[str] | str | None = None,
        engine_info: dict[str, Any] | None = None,
        *,
        engine_id: int | None = None,
        engine_uuid: str | None = None,
    ) -> None:
        super().__init__(ename, evalue)
        self.ename = ename
        self.evalue = evalue
        if not isinstance(traceback, str):
            traceback = "\n".join(traceback or [])
        self.traceback: str = traceback
        info = dict(engine_info or {})
        self.engine_id: int | None = info.get("engine_id", engine_id)
        self.engine_uuid: str | None = info.get("engine_uuid", engine_uuid)
        self.method: str | None = info.get("method")

    @property
    def engine_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"engine_id": self.engine_id, "engine_uuid": self.engine_uuid}
        if self.method is not None:
            info["method"] = self.method
        return info

    def __str__(self) -> str:
        """``[0:apply] ZeroDivisionError: division by zero``: the label its traceback is shown
        under, as ipyparallel's (``[Engine Exception]`` when no engine raised it)."""
        return f"{self._where()} {self.ename}: {self.evalue}"

    def _where(self) -> str:
        return f"[{_label(self)}]" if self.engine_id is not None else "[Engine Exception]"

    def __repr__(self) -> str:
        return f"<{type(self).__name__}[{self.engine_id}]:{self.ename}({self.evalue})>"

    def render_traceback(self) -> list[str]:
        """Where it was raised (``[0:apply]``, as ipyparallel labels it), then the remote
        traceback as the engine printed it, as a list of lines."""
        return [self._where(), *self._traceback_lines()]

    def _traceback_lines(self) -> list[str]:
        """The remote traceback alone, as lines (its summary line if the engine sent none)."""
        return self.traceback.splitlines() or [f"{self.ename}: {self.evalue}"]

    def _render_traceback_(self) -> list[str]:
        """IPython's hook: show the remote traceback instead of the client-side one."""
        return self.render_traceback()

    def print_traceback(self) -> None:
        """Print the remote traceback."""
        print("\n".join(self.render_traceback()))

    def info(self) -> RemoteErrorInfo:
        """This error as one entry of a CompositeError's ``elist``."""
        return RemoteErrorInfo(self.ename, self.evalue, self.traceback, self.engine_info)


class TaskAborted(RemoteError):
    """The task was aborted before it ran (abort_request, or engine shutdown)."""


class TaskTimeout(RemoteError):
    """The task's ``timeout`` passed before an engine could run it to completion (its
    dependencies or retries did not finish in time), or it ran longer than its ``time_limit``:
    it was interrupted, or its engine was stopped (and restarted by its supervisor) when the
    interrupt did not end it."""


class EngineError(RemoteError):
    """The engine running (or holding) the task died or was unregistered."""


class UnmetDependency(RemoteError):
    """The task's dependencies were not met here (a ``depend`` condition was false, a
    ``require`` import failed); the scheduler tries it elsewhere."""


class ImpossibleDependency(UnmetDependency):
    """A dependency that can never be met: it failed and only success was allowed, it points
    at an engine that is gone, or no engine can satisfy its ``depend``/``require``."""


class DependencyTimeout(ImpossibleDependency):
    """The task's dependencies were not met within its ``timeout``."""


class InvalidDependency(ImpossibleDependency):
    """A dependency names a task that neither this client nor the Hub knows."""


class CompositeError(RemoteError):
    """The errors of a call to several engines (or of a map): raised when any part failed.

    ``elist`` holds one :class:`RemoteErrorInfo` ``(ename, evalue, traceback, engine_info)``
    per failure; :meth:`raise_exception` raises one of them as its own exception. Printing it
    shows at most ``tb_limit`` tracebacks.
    """

    tb_limit = 4

    def __init__(
        self, message: str, elist: list[RemoteError] | list[RemoteErrorInfo] | list[Any]
    ) -> None:
        errors = [_as_remote_error(item) for item in elist]
        super().__init__("CompositeError", message, "", None)
        self.errors: list[RemoteError] = errors
        self.elist: list[RemoteErrorInfo] = [error.info() for error in errors]
        self.message = message
        self.msg = message  # ipyparallel's name for it

    def __str__(self) -> str:
        """The message, then one summary line per error up to ``tb_limit`` (as ipyparallel:
        a plain Python traceback of a call to hundreds of engines stays short)."""
        lines = [self.evalue]
        shown = self.errors[: self.tb_limit]
        lines.extend(f"[{_label(error)}]: {error.ename}: {error.evalue}" for error in shown)
        if len(self.errors) > len(shown):
            lines.append(f"... {len(self.errors) - len(shown)} more exceptions ...")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"CompositeError({len(self.elist)})"

    def render_traceback(self, excid: int | None = None) -> list[str]:
        """Each error's traceback (or only that of ``excid``), at most ``tb_limit`` of them,
        each under its engine's label (``[0:execute]:``) and followed by a blank line, as
        ipyparallel renders them (the traceback's last line already names the error)."""
        if excid is not None:
            if not -len(self.errors) <= excid < len(self.errors):
                raise IndexError(f"an exception with index {excid} does not exist")
            error = self.errors[excid]
            return [f"[{_label(error)}]:", *error._traceback_lines()]
        lines: list[str] = []
        for index, error in enumerate(self.errors):
            if index >= self.tb_limit:
                lines.append(f"... {len(self.errors) - index} more exceptions ...")
                break
            lines.append(f"[{_label(error)}]:")
            lines.extend(error._traceback_lines())
            lines.append("")
        return lines

    def print_traceback(self, excid: int | None = None) -> None:
        """Print the tracebacks (all, up to ``tb_limit``, or that of ``excid``)."""
        print("\n".join(self.render_traceback(excid)))

    def _render_traceback_(self) -> list[str]:
        """What IPython shows: the tracebacks alone, as ipyparallel (``str()`` also has the
        message and every error's summary line)."""
        return self.render_traceback()

    def raise_exception(self, excid: int = 0) -> None:
        """Raise one of the contained errors, for a closer look at it."""
        if not -len(self.errors) <= excid < len(self.errors):
            raise IndexError(f"an exception with index {excid} does not exist")
        raise self.errors[excid]


class AlreadyDisplayedError(RemoteError):
    """Errors whose output was already shown (``%%px --stream`` printed the tracebacks as
    they came); ``original_error`` is the RemoteError or CompositeError, and IPython shows
    only ``N errors`` instead of every traceback again."""

    def __init__(self, original_error: RemoteError) -> None:
        super().__init__(
            original_error.ename, original_error.evalue, original_error.traceback, None
        )
        self.original_error = original_error
        self.n = len(getattr(original_error, "elist", None) or [original_error])

    def __str__(self) -> str:
        return f"{self.n} errors"

    def render_traceback(self) -> list[str]:
        return [str(self)]


def _label(error: RemoteError) -> str:
    engine = error.engine_id if error.engine_id is not None else "?"
    return f"{engine}:{error.method or 'apply'}"


def _as_remote_error(item: Any) -> RemoteError:
    if isinstance(item, RemoteError):
        return item
    if isinstance(item, tuple) and len(item) == 4:
        ename, evalue, traceback, info = item
        return error_from_content(
            {"ename": ename, "evalue": evalue, "traceback": traceback, "engine_info": info}
        )
    raise TypeError(f"a CompositeError holds RemoteErrors or 4-tuples, not {item!r}")


_WIRE_ERRORS: dict[str, type[RemoteError]] = {
    cls.__name__: cls
    for cls in (
        TaskAborted,
        TaskTimeout,
        EngineError,
        UnmetDependency,
        ImpossibleDependency,
        DependencyTimeout,
        InvalidDependency,
        TaskTimeout,
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
        tb = exc.traceback.splitlines() or [f"{ename}: {evalue}"]
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
        {key: info.get(key) for key in ("engine_id", "engine_uuid", "method") if key in info},
    )


def collect_exceptions(results: list[Any], method: str) -> list[Any]:
    """``results`` unchanged if none is a RemoteError, else a CompositeError holding every
    one (also when only one failed: ipyparallel's rule for calls to several engines)."""
    errors = [r for r in results if isinstance(r, RemoteError)]
    if not errors:
        return results
    raise CompositeError(f"one or more exceptions raised in: {method}", errors)


def wrap_exception(engine_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The exception being handled (in an ``except`` block) as error reply content, as
    ipyparallel's ``wrap_exception``: status, ename, evalue, traceback lines, engine_info."""
    exc = sys.exception()
    if exc is None:
        raise RuntimeError("wrap_exception() is called in an except block, while handling one")
    content = error_content(exc)
    content["engine_info"] = dict(engine_info or {})
    return content


def unwrap_exception(content: dict[str, Any]) -> RemoteError:
    """The RemoteError (or subclass named by ``ename``) for error reply content, as
    :func:`wrap_exception` or an engine produced it."""
    return error_from_content(content)
