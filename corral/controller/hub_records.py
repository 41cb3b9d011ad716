"""The Hub's task records, built from the queues' monitor copies (part of the Hub core).

:meth:`Hub.handle_monitor <corral.controller.hub.Hub.handle_monitor>` dispatches each copy here:
a request becomes an :class:`~corral.controller.hub_actions.AddRecord`, its destination (the
scheduler's choice of engine) and its reply become
:class:`~corral.controller.hub_actions.UpdateRecord` writes for the shell to apply, while the
Hub's tables (pending tasks, each engine's queue, the activity log) change here at once. Dates
come from the ``now`` the shell passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from corral.controller.hub_actions import (
    Action,
    AddRecord,
    DropRecords,
    SetEngines,
    UpdateRecord,
)
from corral.controller.scheduler_wire import HubCopy
from corral.controller.store.base import IN_TEXTS, MessageJSON
from corral.controller.store.retention import REQUEST_OMITTED_FIELD
from corral.protocol.session import Frame, frame_view

if TYPE_CHECKING:
    from corral.controller.hub import EngineEntry, Hub

log = logging.getLogger("corral.hub")


class _LastDate:
    """The last date :func:`iso_date` formatted, and of which ``now``."""

    def __init__(self) -> None:
        self.now = -1.0
        self.text = ""


_LAST_DATE: Final = _LastDate()


def iso_date(now: float) -> str:
    """``now`` (seconds since the epoch) as every date on the wire: ISO 8601 with zone. The
    last one is kept: the shell dates every copy of a bundle by the moment it came, and
    formatting a date cost about a microsecond, once per reply. (Kept in a compiled object's
    attributes: ``functools.lru_cache``'s wrapper was a generic call, 1.7k instructions.)"""
    last = _LAST_DATE
    if last.now != now:
        last.text = datetime.fromtimestamp(now, UTC).isoformat()
        last.now = now
    return last.text


# the fields of a result, emptied when a task lost in a restart is sent again
CLEARED_RESULT: dict[str, Any] = {
    "result_header": None,
    "result_metadata": None,
    "result_content": None,
    "result_buffers": [],
    "completed": None,
    "received": None,
    "execute_result": None,
    "error": None,
}

#: The fields of an engine's error reply kept as the record's ``error``: what ipyparallel's
#: Hub keeps there from the engine's iopub ``error`` message (its TaskRecord table: "Python
#: traceback (error message content)"), so a query finds why a task failed without decoding
#: ``result_content``.
ERROR_FIELDS: Final = ("ename", "evalue", "traceback", "engine_info")


#: The identity frame the scheduler adds to a ``task_in`` copy it sent without the request's
#: buffers (more than the store keeps), followed by their size in bytes.
OMITTED_PREFIX = b"omitted:"


def record_request(
    hub: Hub,
    queue: str,
    idents: Sequence[bytes],
    msg: HubCopy,
    request_omitted: dict[str, Any] | None = None,
    texts: MessageJSON | None = None,
) -> list[Action]:
    """The record of a request, its buffers included (``Client.resubmit`` sends them again),
    or with the ``request_buffers_omitted`` marker when the copy came without them:
    ``request_omitted`` from the shell (shared memory it could not map), or the scheduler's
    ``omitted:<bytes>`` identity (more than the store keeps). ``texts``: the JSON frames
    ``msg`` was decoded from, passed on to the store with the fields they became."""
    if msg.msg_type not in ("apply_request", "execute_request"):
        return []
    # monitor copies carry identities as the queue sent them on: destination first, so a
    # MUX request is (engine, client); a task request is (client,), or (client, engine) when
    # the scheduler dispatched it at once (its destination in the same copy, no task_dest),
    # then an ``omitted:<bytes>`` identity if the copy comes without the request's buffers
    if queue == "mux":
        engine_uuid: str | None = _ident(idents, 0)
        client = _ident(idents, 1)
    else:
        engine_uuid, client = None, _ident(idents, 0)
        for ident in idents[1:]:  # (client, [engine], [omitted:<bytes>])
            if ident.startswith(OMITTED_PREFIX):
                request_omitted = _omitted(hub, ident[len(OMITTED_PREFIX) :])
            elif engine_uuid is None:
                engine_uuid = ident.decode("utf-8", "replace") or None
    entry = hub.by_uuid.get(engine_uuid) if engine_uuid else None
    msg_id = msg.msg_id
    # a direct request whose copy comes after its engine's unregistration (from a socket, or
    # the engine's copies PUSH): failed at once, as the engine's other tasks were, never
    # pending for ever (corral.controller.hub_gone)
    gone = hub.gone.get(engine_uuid) if entry is None and queue == "mux" else None
    # (a rare path: it may read the store) recorded already from its client's report of it
    # (direct_lost_request), and counted then: the request's fields complete that record
    counted = gone is not None and bool(hub.store.get_records([msg_id]))
    if gone is None:
        hub.pending[msg_id] = engine_uuid
        if entry is None and queue == "mux" and engine_uuid:
            # a rare path, and hub_gone imports this module: imported here
            from corral.controller.hub_gone import await_engine

            await_engine(hub, engine_uuid, msg_id)  # failed if it never registers
    if entry is not None:
        (entry.queue if queue == "mux" else entry.tasks)[msg_id] = None
    label = msg.metadata.get("label")
    if not counted:
        hub.activity.submit()
    resent = msg_id in hub.resendable  # sent again after a restart lost it
    hub.resendable.discard(msg_id)
    record: dict[str, Any] = {"label": label} if isinstance(label, str) else {}
    record["msg_id"] = msg_id
    record["header"] = msg.header
    record["metadata"] = msg.metadata
    record["content"] = msg.content
    code = execute_input(msg.header, msg.content)
    if code is not None:
        record["execute_input"] = code
    if request_omitted is None:
        record["buffers"] = _views(msg.buffers)
    else:
        record["buffers"] = None
        record[REQUEST_OMITTED_FIELD] = request_omitted
    record["queue"] = queue
    if client != hub.resubmit_identity:  # the Hub's own resubmission: recorded when asked
        record["client_uuid"] = client
    record["engine_uuid"] = engine_uuid
    record["engine_id"] = entry.id if entry else None
    record["submitted"] = msg.header.get("date")
    record["status"] = "pending"
    record["started"] = record["completed"] = record["received"] = None
    record["resubmitted"] = resent
    if resent:
        record.update(CLEARED_RESULT)
    if gone is not None and engine_uuid is not None:
        log.info("hub: %s came after its engine %s was unregistered: failed", msg_id, gone.id)
        record["engine_id"] = gone.id
        record.update(gone.failed_fields(engine_uuid))
        if not counted:
            hub.activity.complete(msg_id, gone.id, "error", None, gone.date)
        hub.gone.failed(msg_id, engine_uuid)
        return purge_recorded(hub, msg_id, [AddRecord(msg_id, record)])
    if texts is None:
        return [AddRecord(msg_id, record)]
    return [AddRecord(msg_id, record, texts)]


def _omitted(hub: Hub, size: bytes) -> dict[str, Any]:
    retention = hub.store.retention
    limit = retention.settings.buffer_limit if retention is not None else None
    return {"bytes": int(size) if size.isdigit() else None, "limit": limit}


def record_destinations(hub: Hub, destinations: Iterable[tuple[str, str]]) -> list[Action]:
    """Where tasks that waited went (the scheduler's ``task_dest`` copy names a turn's
    dispatches): one write of the engine fields of those the Hub still holds pending, none
    for the others (answered, or forgotten)."""
    pending = hub.pending
    by_uuid = hub.by_uuid
    changes: list[tuple[str, str, int | None]] = []
    for msg_id, engine_uuid in destinations:
        if msg_id not in pending:
            continue
        pending[msg_id] = engine_uuid
        entry = by_uuid.get(engine_uuid)
        if entry is None:
            changes.append((msg_id, engine_uuid, None))
        else:
            entry.tasks[msg_id] = None
            changes.append((msg_id, engine_uuid, entry.id))
    return [SetEngines(tuple(changes))] if changes else []


def record_reply(
    hub: Hub,
    queue: str,
    idents: Sequence[bytes],
    msg: HubCopy,
    now: float,
    texts: MessageJSON | None = None,
    channel: str | None = None,
) -> list[Action]:
    """The result fields of a reply's task (``texts`` as :func:`record_request` takes them);
    a whole record when the Hub never saw its request (:func:`_record_unknown`). ``channel``:
    the path the copy came by, on which the engine is told it is written (``queue`` if not
    given; ``direct`` for an engine's own copy, see :meth:`Hub.handle_monitor`)."""
    msg_id = msg.parent_id
    if msg_id is None:
        return []
    engine_uuid = _ident(idents, 1)  # a reply travels (client, engine)
    if engine_uuid in hub.by_uuid:  # its engine may forget it once it is written
        hub.replies_seen.setdefault(engine_uuid, {})[channel or queue] = msg_id
    if engine_uuid in hub.dropped:
        return []  # a late reply of an engine declared dead: its tasks were settled without it
    if msg_id not in hub.pending:
        if queue == "mux" and hub.gone.take_answer(msg_id, engine_uuid):
            # its engine answered, then left cleanly: the answer's copy came after the
            # unregistration that failed the task, and replaces the failure
            changes = _result_fields(msg, None, engine_uuid, now)
            return purge_recorded(hub, msg_id, [UpdateRecord(msg_id, changes)])
        # a duplicate (e.g. a resumed engine's late reply), or a task whose request this Hub
        # never recorded: submitted just before a controller was killed, its request record
        # died with that controller while its engine kept the reply for the next one
        return _record_unknown(hub, queue, idents, msg, now)
    expected = hub.pending.pop(msg_id)
    if queue == "mux" and expected is not None and expected != engine_uuid:
        hub.pending[msg_id] = expected
        return []  # a direct task's reply from an engine it was not sent to
    # the task queue's copies come from the scheduler, which passes on one outcome per task it
    # holds, whichever engine ran it, and an engine's answer to a task it does not hold (sent
    # before a controller restart): either is the task's result, even from another engine
    # than the Hub expected (after a restart, an engine that names the tasks it holds can
    # re-point a task the client had meanwhile sent again and another engine answered)
    hub.balanced.pop(msg_id, None)
    entry = hub.by_uuid.get(engine_uuid) or (hub.by_uuid.get(expected) if expected else None)
    if entry is not None:
        entry.queue.pop(msg_id, None)
        entry.tasks.pop(msg_id, None)
        entry.completed[msg_id] = None
    awaited = hub.by_uuid.get(expected) if expected else None
    if awaited is not None and awaited is not entry:  # its death must not fail the task now
        awaited.queue.pop(msg_id, None)
        awaited.tasks.pop(msg_id, None)
    content = msg.content
    metadata = msg.metadata
    hub.activity.complete(
        msg_id,
        entry.id if entry else metadata.get("engine_id"),
        str(content.get("status", "error")),
        metadata.get("started"),
        metadata.get("completed"),
    )
    changes = _result_fields(msg, entry, engine_uuid, now, texts)
    if texts is None:
        writes: list[Action] = [UpdateRecord(msg_id, changes)]
    else:
        writes = [UpdateRecord(msg_id, changes, texts)]
    return purge_recorded(hub, msg_id, writes) if hub.purge_on_record else writes


def purge_recorded(hub: Hub, msg_id: str, writes: list[Action]) -> list[Action]:
    """``writes`` (a task's result just recorded), then its drop if a purge asked for it
    before its copy came (see ``hub_queries.purge_request``)."""
    if msg_id not in hub.purge_on_record:
        return writes
    del hub.purge_on_record[msg_id]
    for entry in hub.engines.values():
        entry.completed.pop(msg_id, None)
    return [*writes, DropRecords((msg_id,))]


def _result_fields(
    msg: HubCopy,
    entry: EngineEntry | None,
    engine_uuid: str,
    now: float,
    texts: MessageJSON | None = None,
) -> dict[str, Any]:
    """The fields a reply fills in its task's record. With ``texts`` (written with the
    fields, :meth:`~.store.base.ResultStore.update_decoded_record`), a header not read yet
    stays in its frame (:data:`~.store.base.IN_TEXTS`): the Hub reads nothing of it."""
    content = msg.content
    metadata = msg.metadata
    date = iso_date(now)
    fields = {
        "status": content.get("status", "error"),
        "result_header": IN_TEXTS if texts is not None and msg.header_unread else msg.header,
        "result_metadata": metadata,
        "result_content": content,
        "result_buffers": _views(msg.buffers),
        "started": metadata.get("started"),
        "completed": metadata.get("completed") or date,
        "received": date,
        "stdout": metadata.get("stdout", ""),
        "stderr": metadata.get("stderr", ""),
        "engine_uuid": entry.uuid if entry else engine_uuid,
        "engine_id": entry.id if entry else metadata.get("engine_id"),
    }
    if fields["status"] == "error":
        fields["error"] = {key: content[key] for key in ERROR_FIELDS if key in content}
    result = metadata.get("execute_result")
    if result is not None:
        fields["execute_result"] = execute_result(result, metadata, content)
    return fields


def execute_input(header: dict[str, Any], content: dict[str, Any]) -> str | None:
    """The code of a non-silent execute request (its record's ``execute_input``); None for
    anything else. As in ipyparallel, whose Hub keeps the engine's iopub ``execute_input``,
    which a silent execute does not publish."""
    if header.get("msg_type") != "execute_request" or content.get("silent"):
        return None
    code = content.get("code")
    return code if isinstance(code, str) else None


def execute_result(data: Any, metadata: dict[str, Any], content: dict[str, Any]) -> Any:
    """A reply's execute result as the record's ``execute_result``: ipyparallel's shape (the
    iopub ``execute_result`` content, ``{"data": {mime: ...}, "metadata": {mime: ...},
    "execution_count": n}``), as ``AsyncResult.metadata`` has it on the client."""
    if not isinstance(data, dict) or isinstance(data.get("data"), dict):
        return data
    extra = metadata.get("execute_result_metadata")
    return {
        "data": data,
        "metadata": dict(extra) if isinstance(extra, dict) else {},
        "execution_count": content.get("execution_count"),
    }


def _record_unknown(
    hub: Hub, queue: str, idents: Sequence[bytes], msg: HubCopy, now: float
) -> list[Action]:
    """A whole record, from the reply alone, for a task the store does not hold; nothing for
    a task it does (a duplicate reply: the first one was recorded) or purged (a reply sent
    again to a restarted controller)."""
    msg_id = msg.parent_id
    request = msg.parent_header
    if (
        msg_id is None
        or request.get("msg_type") not in ("apply_request", "execute_request")
        or hub.store.recorded_or_purged([msg_id])
    ):
        return []  # recorded once already, or purged since (by its size limit, its ttl)
    engine_uuid = _ident(idents, 1)
    entry = hub.by_uuid.get(engine_uuid)
    log.info("hub: recording %s from its reply (its request was never recorded)", msg_id)
    record = {
        "msg_id": msg_id,
        "header": dict(request),
        "metadata": {},
        "content": {},
        "queue": queue,
        "client_uuid": _ident(idents, 0),
        "submitted": request.get("date"),
        "resubmitted": False,
        **_result_fields(msg, entry, engine_uuid, now),
    }
    return purge_recorded(hub, msg_id, [AddRecord(msg_id, record)])


def _views(buffers: tuple[Frame, ...]) -> list[bytes | memoryview]:
    """The buffers as the store keeps them: ``bytes`` as they are (a bundle's small frames),
    anything else through :func:`~corral.protocol.session.frame_view` (no copy)."""
    return [b if type(b) is bytes else frame_view(b) for b in buffers]


def _ident(idents: Sequence[bytes], index: int) -> str:
    return idents[index].decode("utf-8", "replace") if len(idents) > index else ""
