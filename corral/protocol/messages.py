"""Every message type corral sends, with its content fields, in one place.

The catalogue is the seed's message list plus what docs/wire-flows.md adds. A sender builds
messages with ``Session.msg``, which validates their content, so a missing or wrongly typed
field fails where the bug is, not in another process. A receiver calls
:func:`validate_content` before acting on a request's content.

Replies are lenient on purpose: every reply has a ``status``; error replies add ``ename``,
``evalue``, ``traceback`` and ``engine_info``; other fields vary by request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from corral.errors import InvalidContent, UnknownMessageType

NoneType = type(None)


@dataclass(frozen=True)
class MessageSpec:
    """Content fields of one message type: name -> accepted types; ``optional`` may be absent.

    ``open`` specs accept extra fields (replies, whose extras depend on the request).
    """

    msg_type: str
    required: Mapping[str, tuple[type, ...]] = field(default_factory=dict)
    optional: Mapping[str, tuple[type, ...]] = field(default_factory=dict)
    open: bool = False


STATUS = {"status": (str,)}
INT_LIST = (list, NoneType)


def _spec(
    msg_type: str,
    required: Mapping[str, tuple[type, ...]] | None = None,
    optional: Mapping[str, tuple[type, ...]] | None = None,
    open: bool = False,
) -> MessageSpec:
    return MessageSpec(msg_type, dict(required or {}), dict(optional or {}), open)


def _reply(msg_type: str) -> MessageSpec:
    return _spec(msg_type, STATUS, open=True)


_SPECS = [
    # -- registration and connection (Hub ROUTER) --
    _spec(
        "registration_request",
        {"uuid": (str,)},
        {
            "id": (int,),
            "tasks": (list,),
            "balanced": (dict,),
            "shm_host": (str,),
            "info": (dict,),
            "cpus": (dict,),
            "direct": (str,),
        },
    ),
    _reply("registration_reply"),
    _spec("unregistration_request", optional={"id": (int,), "uuid": (str,)}),
    _reply("unregistration_reply"),
    _spec("connection_request"),
    _reply("connection_reply"),
    # -- notifications (Hub PUB) --
    _spec(
        "registration_notification",
        {"id": (int,), "uuid": (str,)},
        {"shm_host": (str,), "info": (dict,), "cpus": (dict,), "direct": (str,)},
    ),
    _spec("unregistration_notification", {"id": (int,), "uuid": (str,)}, optional={"why": (str,)}),
    # -- Hub to one engine (registration ROUTER): its newest reply per queue, recorded --
    _spec("replies_recorded", optional={"mux": (str,), "task": (str,), "direct": (str,)}),
    # -- client queries (Hub ROUTER) --
    _spec("queue_request", optional={"verbose": (bool,), "targets": INT_LIST}),
    _reply("queue_reply"),
    _spec(
        "result_request",
        {"msg_ids": (list,)},
        {"targets": INT_LIST, "statusonly": (bool,), "unknown_pending": (bool,)},
    ),
    _reply("result_reply"),
    _spec(
        "purge_request",
        optional={
            "msg_ids": (list, str),
            "engine_ids": INT_LIST,
            "controller": (str,),
            "settled": (list,),
        },
    ),
    _reply("purge_reply"),
    _spec("history_request"),
    _reply("history_reply"),
    _spec(
        "db_request",
        {"query": (dict,)},
        {"keys": INT_LIST, "limit": (int,), "skip": (int,), "newest_first": (bool,)},
    ),
    _reply("db_reply"),
    _spec("status_request", optional={"since": (int,)}),
    _reply("status_reply"),
    _spec("resubmit_request", {"msg_ids": (list,)}, {"controller": (str,), "metadata": (dict,)}),
    _reply("resubmit_reply"),
    _spec("hub_shutdown_request", optional={"controller": (str,)}),
    _reply("hub_shutdown_reply"),
    _spec(
        "direct_lost_request",
        {"engine_uuid": (str,), "tasks": (list,)},
        {"answered": (list,), "engine_id": (int,)},
    ),
    _reply("direct_lost_reply"),
    # -- scheduler to Hub --
    _spec("task_destination", {"msg_id": (str,), "engine_id": (str,)}),
    # -- execution (MUX and task queues) --
    _spec("apply_request"),
    _reply("apply_reply"),
    _spec(
        "execute_request",
        {"code": (str,)},
        {
            "silent": (bool,),
            "store_history": (bool,),
            "user_expressions": (dict,),
            "allow_stdin": (bool,),
            "stop_on_error": (bool,),
        },
    ),
    _reply("execute_reply"),
    # -- control queue --
    _spec("clear_request"),
    _reply("clear_reply"),
    _spec("abort_request", optional={"msg_ids": INT_LIST, "running": (bool,)}),
    _reply("abort_reply"),
    _spec("shutdown_request", optional={"restart": (bool,)}),
    _reply("shutdown_reply"),
    _spec("signal_request", {"sig": (int,)}),
    _reply("signal_reply"),
    # -- iopub (engine PUB -> clients) --
    _spec("stream", {"name": (str,), "text": (str,)}),
    _spec("execute_input", {"code": (str,)}, {"execution_count": (int,)}),
    _spec(
        "execute_result",
        {"data": (dict,)},
        {"metadata": (dict,), "execution_count": (int,)},
    ),
    _spec("display_data", {"data": (dict,)}, {"metadata": (dict,), "transient": (dict,)}),
    _spec("error", {"ename": (str,), "evalue": (str,), "traceback": (list,)}, open=True),
    _spec("status", {"execution_state": (str,)}),
    _spec("data_message", {"keys": (list,)}),
    _spec(
        "engine_stats",
        {"pid": (int,), "hostname": (str,), "cpu": (float, int), "memory": (int,)},
        {"running": (str, NoneType), "running_for": (float, int)},
    ),
]

CATALOGUE: Final[dict[str, MessageSpec]] = {spec.msg_type: spec for spec in _SPECS}
KNOWN_TYPES: Final[frozenset[str]] = frozenset(CATALOGUE)


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
    if type(content) is not dict and not isinstance(content, Mapping):  # the ABC's check is slow
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


def ok_reply(**fields: Any) -> dict[str, Any]:
    """Content of a successful reply."""
    return {"status": "ok", **fields}


def error_reply(ename: str, evalue: str, **fields: Any) -> dict[str, Any]:
    """Content of an error reply that is not an engine's exception (bad query, bad request)."""
    return {"status": "error", "ename": ename, "evalue": evalue, "traceback": [], **fields}


# A task result's metadata mark: the Hub failed this load-balanced task as lost in a controller
# restart (it waited in the old task scheduler); a client that still holds the request sends it
# again under the same msg_id (see corral.client.recovery.Resender).
RESENDABLE = "resendable"
# A message's metadata mark: a copy sent again after a controller restart may have lost the
# first (a request: how many times the client sent it again; a reply an engine kept: true).
# It changes the signature, so the copy is never dropped as a replay of the first.
RESENT = "resent"
