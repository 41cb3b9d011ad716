"""``resubmit_request``: the Hub sends recorded tasks again under new msg_ids (part of the
Hub core: no sockets, no clock).

ipyparallel's ``Client.resubmit`` contract, kept here: the Hub answers with the mapping from
each named msg_id to the msg_id it was sent again under, and the client follows the new ones
as results held by the Hub (an ``AsyncHubResult``). What the Hub sends is its record of the
request: the original header with a new ``msg_id`` and ``date`` (everything else as the client
sent it: session, username, msg_type), the content, the metadata and the buffers the store
kept. The decisions, all taken before anything is sent, so a refused request sends nothing:

- every named msg_id must have a record (else the reply is a ``KeyError``, as ipyparallel's);
- a task still running may be resubmitted, as in ipyparallel: the copy runs beside it;
- its buffers must have been kept (``--store-buffer-limit``; a request recorded from its reply
  alone after a controller restart has none): else ``RequestNotStored``, naming the setting;
- a load-balanced task goes back through the task scheduler, which applies its recorded
  ``after``/``follow``/``targets``/``retries``/``timeout`` again (a dependency the scheduler
  has forgotten fails it with ``InvalidDependency``); a direct task goes to the engine it was
  sent to, which must still be registered (else ``EngineError``: its namespace is gone with
  it, so running it elsewhere would not be the same task).

The original's record gets ``resubmitted: True`` and ``resubmitted_as`` (the newest new
msg_id); the new record ``resubmitted_from`` (the original's). ipyparallel stores the new msg_id
in ``resubmitted`` itself; corral's stores type that field as a boolean (it also marks a task
sent again after a controller restart), so the link has fields of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from corral.controller.hub_actions import Action, AddRecord, Resubmit, UpdateRecord
from corral.controller.hub_queries import answer, msg_ids_of
from corral.controller.hub_records import execute_input, iso_date
from corral.controller.store.retention import (
    FLAGS,
    OMITTED_FIELD,
    REQUEST_OMITTED_FIELD,
    format_size,
)
from corral.errors import QueryError, purged_message
from corral.protocol.messages import error_reply, ok_reply
from corral.protocol.session import Message
from corral.protocol.shm import METADATA_KEY, READER_KEY

if TYPE_CHECKING:
    from corral.controller.hub import Hub

__all__ = ["resubmit_failed", "resubmit_request"]

RESUBMITTABLE = ("apply_request", "execute_request")


class Refused(Exception):
    """One named task cannot be resubmitted: the reply's ``ename`` and ``evalue``."""

    def __init__(self, ename: str, evalue: str) -> None:
        super().__init__(evalue)
        self.ename = ename


def resubmit_request(hub: Hub, idents: Sequence[bytes], msg: Message, now: float) -> list[Action]:
    """The writes, the sends and the reply for one ``resubmit_request`` (see the module)."""
    stale = hub.stale(msg)
    if stale is not None:
        return [answer(idents, msg, "resubmit_reply", error_reply("StaleRequest", stale))]
    msg_ids = list(dict.fromkeys(msg_ids_of((msg.content or {}).get("msg_ids"))))
    if not msg_ids:
        raise QueryError("resubmit_request names no msg_ids")
    records = hub.store.get_records(msg_ids)
    missing = [msg_id for msg_id in msg_ids if msg_id not in records]
    if missing:
        why = f"No such msg(s): {missing!r}"
        purged = hub.store.purged_reasons(missing)  # said why: the store's retention
        if purged:
            why += "; " + "; ".join(purged_message(m, reason) for m, reason in purged.items())
        content = error_reply("KeyError", why)  # ipyparallel's ename
        return [answer(idents, msg, "resubmit_reply", content)]
    try:
        for msg_id in msg_ids:
            _check(hub, msg_id, records[msg_id])
    except Refused as refused:
        content = error_reply(refused.ename, str(refused))
        return [answer(idents, msg, "resubmit_reply", content)]
    # the asking client, as every record names its client: by its session id
    client = str(msg.header.get("session") or (idents[0].hex() if idents else ""))
    changed = (msg.content or {}).get("metadata") or {}
    date = iso_date(now)
    actions: list[Action] = []
    mapping: dict[str, str] = {}
    for msg_id in msg_ids:
        new_id = str(uuid.uuid4())
        mapping[msg_id] = new_id
        actions.extend(_send_again(hub, records[msg_id], new_id, client, date, changed))
    actions.append(answer(idents, msg, "resubmit_reply", ok_reply(resubmitted=mapping)))
    return actions


def _check(hub: Hub, msg_id: str, record: dict[str, Any]) -> None:
    marker = record.get(REQUEST_OMITTED_FIELD)
    if isinstance(marker, dict) and isinstance(marker.get("why"), str):  # it says why first
        raise Refused("RequestNotStored", _not_kept(msg_id, record))
    header = record.get("header") or {}
    if header.get("msg_type") not in RESUBMITTABLE:
        raise Refused(
            "RequestNotStored",
            f"cannot resubmit {msg_id}: the controller has no request of it to send again "
            "(its record was made from its reply alone, after a controller restart)",
        )
    if record.get("buffers") is None:
        raise Refused("RequestNotStored", _not_kept(msg_id, record))
    if record.get("queue") == "mux":
        entry = hub.by_uuid.get(str(record.get("engine_uuid")))
        if entry is None:
            raise Refused(
                "EngineError",
                f"cannot resubmit {msg_id}: it was sent directly to engine "
                f"{record.get('engine_id')}, which is no longer registered. A direct task is "
                "resubmitted to its own engine only (its namespace went with it): submit it "
                "again through a view of a live engine",
            )
    elif record.get("queue") != "task":
        raise Refused("RequestNotStored", f"cannot resubmit {msg_id}: it names no queue")


def _not_kept(msg_id: str, record: dict[str, Any]) -> str:
    """Why a request's buffers are not in the store, and what to change."""
    marker = record.get(REQUEST_OMITTED_FIELD)
    flag = FLAGS["buffer_limit"]
    if isinstance(marker, dict) and isinstance(marker.get("why"), str):
        return f"cannot resubmit {msg_id}: its buffers were not kept ({marker['why']})"
    if isinstance(marker, dict):
        size, limit = marker.get("bytes"), marker.get("limit")
        return (
            f"cannot resubmit {msg_id}: the controller's result store did not keep its "
            f"request, whose {format_size(size if isinstance(size, int) else None)} of buffers "
            f"exceed the per-task limit ({format_size(limit if isinstance(limit, int) else None)}"
            f"). Start the controller with a larger {flag} (Cluster(store_buffer_limit=...)) to "
            "resubmit such tasks"
        )
    lost = " (nor its result's)" if record.get(OMITTED_FIELD) else ""
    return (
        f"cannot resubmit {msg_id}: the controller's result store holds no buffers of its "
        f"request{lost}: it was recorded by a corral older than resubmission, or from its "
        "reply alone after a controller restart"
    )


def _send_again(
    hub: Hub,
    record: dict[str, Any],
    new_id: str,
    client: str,
    date: str,
    changed: dict[str, Any],
) -> list[Action]:
    """The new record, the link from the original, and the send; ``changed`` replaces
    fields of the recorded metadata (the scheduler checks them as any client's)."""
    original = str(record["msg_id"])
    header = {**record["header"], "msg_id": new_id, "date": date}
    # the reply goes to the Hub, so it must not be put in shared memory for the first client
    metadata = {
        key: value
        for key, value in {**(record.get("metadata") or {}), **changed}.items()
        if key not in (READER_KEY, METADATA_KEY)
    }
    content = record.get("content") or {}
    buffers = tuple(record["buffers"])
    queue = str(record["queue"])
    engine_uuid = str(record["engine_uuid"]) if queue == "mux" else None
    entry = hub.by_uuid.get(engine_uuid) if engine_uuid is not None else None
    hub.pending[new_id] = engine_uuid
    if entry is not None:
        entry.queue[new_id] = None
    label = metadata.get("label")
    new_record = {
        **({"label": label} if isinstance(label, str) else {}),
        "msg_id": new_id,
        "header": header,
        "metadata": metadata,
        "content": content,
        "buffers": list(buffers),
        "queue": queue,
        "client_uuid": client,
        "engine_uuid": engine_uuid,
        "engine_id": entry.id if entry is not None else None,
        "submitted": date,
        "status": "pending",
        "started": None,
        "completed": None,
        "received": None,
        "resubmitted": False,
        "resubmitted_from": original,
    }
    code = execute_input(header, content)
    if code is not None:
        new_record["execute_input"] = code
    return [
        AddRecord(new_id, new_record),
        UpdateRecord(original, {"resubmitted": True, "resubmitted_as": new_id}),
        Resubmit(queue, engine_uuid, header, metadata, content, buffers),
    ]


def resubmit_failed(hub: Hub, msg_id: str, why: str, now: float) -> list[Action]:
    """A resubmission the shell could not send: its record fails (with ``why``) rather than
    wait for ever, as a task lost with its engine does."""
    engine_uuid = hub.pending.pop(msg_id, None)
    entry = hub.by_uuid.get(engine_uuid) if engine_uuid is not None else None
    if entry is not None:
        entry.queue.pop(msg_id, None)
    failure = error_reply("ResubmitError", why)
    date = iso_date(now)
    changes = {
        "status": "error",
        "result_content": failure,
        "result_metadata": {"status": "error"},
        "completed": date,
        "received": date,
    }
    return [UpdateRecord(msg_id, changes)]
