"""The replies an engine sends, and who it is in them: reply types, reply metadata, the error
and aborted replies that the task shell, the runner and the I/O thread all make.

No sockets and no state: plain functions of a request, an exception and the engine's
:class:`EngineIdentity` (moved out of :mod:`corral.engine.runner`, which runs the tasks and
still exports these names).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Final

from corral.errors import TaskAborted, error_content
from corral.protocol.session import JSONDict, Message, Session, utcnow

from .namespace import strip_engine_frames


@dataclass
class EngineIdentity:
    """Who this engine is on the wire. ``id`` is None until registered, and may change when the
    engine re-registers with a restarted controller."""

    uuid: str
    id: int | None = None
    placement: dict[str, Any] = field(default_factory=dict)  # host, pid, MPI rank ...


def reply_type(msg_type: str) -> str:
    """``foo_request`` -> ``foo_reply``; any other type gets ``_reply`` appended."""
    return _REPLY_TYPES.get(msg_type) or msg_type.removesuffix("_request") + "_reply"


_REPLY_TYPES: Final = {"apply_request": "apply_reply", "execute_request": "execute_reply"}


def reply_metadata(
    identity: EngineIdentity,
    status: str,
    started: str,
    completed: str | None = None,
    stdout: str = "",
    stderr: str = "",
    **extra: Any,
) -> JSONDict:
    """The metadata every engine reply carries (docs/wire-flows.md, apply_reply). (Built in
    place, one key at a time: every reply makes one, and merging literal dicts cost a third
    more.)"""
    metadata: JSONDict = {
        "engine_uuid": identity.uuid,
        "engine_id": identity.id,
        "status": status,
        "started": started,
        "completed": completed or utcnow(),
        "stdout": stdout,
        "stderr": stderr,
    }
    placement = identity.placement
    if "host" in placement:
        metadata["engine_host"] = placement["host"]
    rank = placement.get("mpi_rank")
    if rank is not None:
        metadata["mpi_rank"] = rank
    if extra:
        metadata.update(extra)
    return metadata


def failure_content(exc: BaseException, identity: EngineIdentity) -> JSONDict:
    """Error reply content for ``exc``, never raising (user exceptions can be hostile)."""
    try:
        return error_content(strip_engine_frames(exc), identity.id, identity.uuid)
    except Exception as formatting_error:
        return {
            "status": "error",
            "ename": type(exc).__name__,
            "evalue": f"<the error could not be formatted: {formatting_error!r}>",
            "traceback": [],
            "engine_info": {"engine_id": identity.id, "engine_uuid": identity.uuid},
        }


def error_reply_msg(
    session: Session, identity: EngineIdentity, request: Message, exc: BaseException
) -> Message:
    """A reply to ``request`` (any type, even one outside the catalogue) reporting ``exc``.

    Built without catalogue validation, so a request of an unknown type still gets an answer
    (``<type>_reply``) and its sender does not wait forever.
    """
    content = failure_content(exc, identity)
    now = utcnow()
    msg_type = reply_type(request.msg_type)
    return Message(
        header=session.header(msg_type),
        parent_header=request.header,
        metadata=reply_metadata(identity, content["status"], now, now),
        content=content,
    )


def aborted_reply_msg(
    session: Session, identity: EngineIdentity, request: Message, reason: str
) -> Message:
    """The ``aborted`` reply of a task that will never run."""
    exc = TaskAborted("TaskAborted", reason, engine_id=identity.id, engine_uuid=identity.uuid)
    content = error_content(exc, identity.id, identity.uuid)
    now = utcnow()
    return session.msg(
        reply_type(request.msg_type),
        content,
        parent=request,
        metadata=reply_metadata(identity, "aborted", now, now),
    )


def stops_on_error(request: Message, reply: Message) -> bool:
    """Whether ``reply`` to the execute ``request`` aborts the execute requests queued behind
    it: it failed (status "error", not "aborted"), the request was not silent and did not set
    ``stop_on_error`` false (Jupyter's messaging spec; the default is true)."""
    content = request.content or {}
    return (
        (reply.content or {}).get("status") == "error"
        and not content.get("silent", False)
        and bool(content.get("stop_on_error", True))
    )


def iopub_error(content: JSONDict) -> JSONDict:
    return {key: content[key] for key in ("ename", "evalue", "traceback", "engine_info")}


def _json_safe(value: Any) -> Any:
    """``value`` with every string made encodable as UTF-8 (lone surrogates escaped)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def json_safe_msg(msg: Message) -> Message:
    return replace(
        msg,
        header=_json_safe(msg.header),
        parent_header=_json_safe(msg.parent_header),
        metadata=_json_safe(msg.metadata),
        content=_json_safe(msg.content),
    )
