"""Every message type corral sends, with its content fields, in one place.

The catalogue is the seed's message list plus what protocol.md section 3 adds. A sender builds
content through :func:`make_content` (or `Session.msg`, which calls it), so a missing or wrongly
typed field fails where the bug is, not in another process. A receiver calls
:func:`validate_content` before acting on a request's content.

Replies are lenient on purpose: every reply has a ``status``; error replies add ``ename``,
``evalue``, ``traceback`` and ``engine_info``; other fields vary by request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.errors import InvalidContent, UnknownMessageType

NoneType = type(None)
JSONValue = (str, int, float, bool, list, dict, NoneType)


@dataclass(frozen=True)
class MessageSpec:
    """Content fields of one message type: name -> accepted types; ``optional`` may be absent.

    ``open`` specs accept extra fields (replies, whose extras depend on the request).
    """

    msg_type: str
    required: Mapping[str, tuple[type, ...]] = field(default_factory=dict)
    optional: Mapping[str, tuple[type, ...]] = field(default_factory=dict)
    open: bool = False
    channel: str = ""


STATUS = {"status": (str,)}
INT_LIST = (list, NoneType)


def _spec(
    msg_type: str,
    channel: str,
    required: Mapping[str, tuple[type, ...]] | None = None,
    optional: Mapping[str, tuple[type, ...]] | None = None,
    open: bool = False,
) -> MessageSpec:
    return MessageSpec(msg_type, dict(required or {}), dict(optional or {}), open, channel)


def _reply(msg_type: str, channel: str) -> MessageSpec:
    return _spec(msg_type, channel, STATUS, open=True)


_SPECS = [
    # -- registration and connection (Hub ROUTER) --
    _spec(
        "registration_request", "registration", {"uuid": (str,)}, {"id": (int,), "info": (dict,)}
    ),
    _reply("registration_reply", "registration"),
    _spec("unregistration_request", "registration", optional={"id": (int,), "uuid": (str,)}),
    _reply("unregistration_reply", "registration"),
    _spec("connection_request", "registration"),
    _reply("connection_reply", "registration"),
    # -- notifications (Hub PUB) --
    _spec(
        "registration_notification",
        "notification",
        {"id": (int,), "uuid": (str,)},
        {"info": (dict,)},
    ),
    _spec("unregistration_notification", "notification", {"id": (int,), "uuid": (str,)}),
    # -- client queries (Hub ROUTER) --
    _spec("queue_request", "query", optional={"verbose": (bool,), "targets": INT_LIST}),
    _reply("queue_reply", "query"),
    _spec(
        "result_request",
        "query",
        {"msg_ids": (list,)},
        {"targets": INT_LIST, "statusonly": (bool,)},
    ),
    _reply("result_reply", "query"),
    _spec("purge_request", "query", optional={"msg_ids": (list, str), "engine_ids": INT_LIST}),
    _reply("purge_reply", "query"),
    _spec("history_request", "query"),
    _reply("history_reply", "query"),
    _spec("db_request", "query", {"query": (dict,)}, {"keys": INT_LIST}),
    _reply("db_reply", "query"),
    _spec("hub_shutdown_request", "query"),
    _reply("hub_shutdown_reply", "query"),
    # -- scheduler to Hub --
    _spec("task_destination", "monitor", {"msg_id": (str,), "engine_id": (str,)}),
    # -- execution (MUX and task queues) --
    _spec("apply_request", "shell"),
    _reply("apply_reply", "shell"),
    _spec(
        "execute_request",
        "shell",
        {"code": (str,)},
        {
            "silent": (bool,),
            "store_history": (bool,),
            "user_expressions": (dict,),
            "allow_stdin": (bool,),
            "stop_on_error": (bool,),
        },
    ),
    _reply("execute_reply", "shell"),
    # -- control queue --
    _spec("clear_request", "control"),
    _reply("clear_reply", "control"),
    _spec("abort_request", "control", optional={"msg_ids": INT_LIST}),
    _reply("abort_reply", "control"),
    _spec("shutdown_request", "control", optional={"restart": (bool,)}),
    _reply("shutdown_reply", "control"),
    _spec("signal_request", "control", {"sig": (int,)}),
    _reply("signal_reply", "control"),
    # -- iopub (engine PUB -> clients) --
    _spec("stream", "iopub", {"name": (str,), "text": (str,)}),
    _spec("execute_input", "iopub", {"code": (str,)}, {"execution_count": (int,)}),
    _spec(
        "execute_result",
        "iopub",
        {"data": (dict,)},
        {"metadata": (dict,), "execution_count": (int,)},
    ),
    _spec("display_data", "iopub", {"data": (dict,)}, {"metadata": (dict,), "transient": (dict,)}),
    _spec("error", "iopub", {"ename": (str,), "evalue": (str,), "traceback": (list,)}, open=True),
    _spec("status", "iopub", {"execution_state": (str,)}),
]

CATALOGUE: dict[str, MessageSpec] = {spec.msg_type: spec for spec in _SPECS}
KNOWN_TYPES: frozenset[str] = frozenset(CATALOGUE)


def spec_for(msg_type: str) -> MessageSpec:
    """The spec of ``msg_type``; UnknownMessageType if the catalogue lacks it."""
    try:
        return CATALOGUE[msg_type]
    except KeyError:
        raise UnknownMessageType(f"unknown msg_type {msg_type!r}") from None


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("None" if t is NoneType else t.__name__ for t in types)


def _check(msg_type: str, name: str, value: Any, types: tuple[type, ...]) -> None:
    # bool is an int subclass: an int field must not accept True, nor a bool field 1
    ok = isinstance(value, types) and not (
        isinstance(value, bool) and bool not in types and int in types
    )
    if not ok:
        raise InvalidContent(
            f"{msg_type}: field {name!r} must be {_type_names(types)}, "
            f"got {type(value).__name__} ({value!r:.60})"
        )


def validate_content(msg_type: str, content: Mapping[str, Any]) -> None:
    """Raise InvalidContent naming the first missing, unexpected or wrongly typed field."""
    spec = spec_for(msg_type)
    if not isinstance(content, Mapping):
        raise InvalidContent(f"{msg_type}: content must be a JSON object")
    for name, types in spec.required.items():
        if name not in content:
            raise InvalidContent(f"{msg_type}: missing required field {name!r}")
        _check(msg_type, name, content[name], types)
    for name, value in content.items():
        if name in spec.required:
            continue
        if name in spec.optional:
            _check(msg_type, name, value, spec.optional[name])
        elif not spec.open:
            raise InvalidContent(f"{msg_type}: unexpected field {name!r}")


def make_content(msg_type: str, /, **fields: Any) -> dict[str, Any]:
    """Build validated content for ``msg_type`` from keyword fields."""
    validate_content(msg_type, fields)
    return fields


def ok_reply(**fields: Any) -> dict[str, Any]:
    """Content of a successful reply."""
    return {"status": "ok", **fields}


def error_reply(ename: str, evalue: str, **fields: Any) -> dict[str, Any]:
    """Content of an error reply that is not an engine's exception (bad query, bad request)."""
    return {"status": "error", "ename": ename, "evalue": evalue, "traceback": [], **fields}
