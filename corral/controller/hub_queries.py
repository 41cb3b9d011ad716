"""The Hub's answers to client queries: engines' queues, results, purges, history, the store.

Functions of the :class:`~corral.controller.hub.Hub` core (it dispatches ``<type>_request`` to
the function of that name in :data:`QUERIES`): they read the injected store and the Hub's tables
and return the reply to send, and for a purge the store writes for the shell to apply. No
sockets and no clock, like the rest of the core.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral.bounded_tables import drop_oldest
from corral.controller.hub_actions import Action, DropMatching, DropRecords, Send
from corral.controller.store.base import check_page
from corral.controller.store.query import validate_query
from corral.controller.store.retention import (
    OMITTED_FIELD,
    completion_time,
    not_stored_message,
)
from corral.errors import QueryError, ResultPurged, purged_message
from corral.protocol.messages import error_reply, ok_reply
from corral.protocol.session import Frame, Message

if TYPE_CHECKING:
    from corral.controller.hub import EngineEntry, Hub

MAX_QUERY_IDS = 100_000
# at most this many msg_ids wait to be purged once their copies come (the oldest forgotten):
# a copy is late by milliseconds, so these are only the results a client got just before it
# purged; one whose copy never comes (its engine died before sending it) must not stay for ever
PURGE_ON_RECORD_LIMIT = 20_000
# msg_ids a purge named, remembered at most (the oldest forgotten): see Purged
PURGED_REMEMBERED = 20_000


@dataclass
class Purged:
    """What purges dropped, as far as a later report of a dead engine's answered tasks needs:
    a client whose direct copies died with their engine reports the tasks it got answers for
    (hub_gone), and one that another client's purge had dropped must not be recorded again.
    Purges of ``"all"`` and of an engine's tasks are remembered by their date (a task
    completed before it would have been dropped; epoch seconds), the latest purged msg_ids by
    name."""

    all_at: float | None = None
    engine_at: dict[str, float] = field(default_factory=dict)
    msg_ids: dict[str, None] = field(default_factory=dict)

    def note(self, date: object, msg_ids: Iterable[str] | str, engines: Iterable[str]) -> None:
        """A purge sent at ``date`` (its header's ISO date; ignored if unreadable) named
        these."""
        when = completion_time(date, math.nan)
        known = not math.isnan(when)
        if msg_ids == "all":
            if known and (self.all_at is None or when > self.all_at):
                self.all_at = when
        else:
            self.msg_ids.update(dict.fromkeys(msg_ids))
            drop_oldest(self.msg_ids, PURGED_REMEMBERED)
        if known:
            for uuid in engines:
                self.engine_at[uuid] = max(when, self.engine_at.get(uuid, when))

    def dropped(self, msg_id: str, engine_uuid: str, completed: object) -> bool:
        """Whether a purge dropped (or would have dropped, had its copies come) the task
        ``msg_id`` that ran on ``engine_uuid`` and completed at ``completed`` (ISO 8601)."""
        if msg_id in self.msg_ids:
            return True
        done = completion_time(completed, math.inf)  # unreadable: no purge came after it
        engine_at = self.engine_at.get(engine_uuid)
        return (self.all_at is not None and done <= self.all_at) or (
            engine_at is not None and done <= engine_at
        )


def answer(
    idents: Sequence[bytes],
    request: Message,
    msg_type: str,
    content: dict[str, Any],
    buffers: Iterable[Frame] = (),
) -> Send:
    """The reply to ``request``, addressed back through the registration ROUTER."""
    return Send("registration", msg_type, content, request.header, tuple(idents), tuple(buffers))


def targets_of(hub: Hub, targets: Any) -> list[EngineEntry]:
    if targets is None:
        return sorted(hub.engines.values(), key=lambda e: e.id)
    if not isinstance(targets, list):
        raise QueryError("targets must be a list of engine ids or uuids, or null")
    entries = []
    for target in targets:
        entry = (
            hub.engines.get(target)
            if isinstance(target, int)
            else hub.by_uuid.get(target)
            if isinstance(target, str)
            else None
        )
        if entry is None:
            raise QueryError(f"no such engine: {target!r}")
        entries.append(entry)
    return entries


def msg_ids_of(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise QueryError("msg_ids must be a list of strings")
    if len(value) > MAX_QUERY_IDS:
        raise QueryError(f"too many msg_ids in one query: {len(value)} > {MAX_QUERY_IDS}")
    return value


def queue_request(hub: Hub, idents: Sequence[bytes], msg: Message) -> list[Action]:
    content = msg.content or {}
    verbose = content.get("verbose", False)
    reply: dict[str, Any] = ok_reply()
    # counts without lists: an engine's completed tasks are every one it ran that the store
    # still holds (a million, say), which a poll of the counts must not copy each time
    tables = ("completed", "queue", "tasks")
    for entry in targets_of(hub, content.get("targets")):
        if verbose:
            reply[str(entry.id)] = {name: list(getattr(entry, name)) for name in tables}
        else:
            reply[str(entry.id)] = {name: len(getattr(entry, name)) for name in tables}
    if verbose:
        unassigned = [msg_id for msg_id, engine in hub.pending.items() if engine is None]
        reply["unassigned"] = unassigned
    else:
        reply["unassigned"] = sum(1 for engine in hub.pending.values() if engine is None)
    return [answer(idents, msg, "queue_reply", reply)]


def result_request(hub: Hub, idents: Sequence[bytes], msg: Message) -> list[Action]:
    content = msg.content or {}
    msg_ids = msg_ids_of(content.get("msg_ids"))
    statusonly = content.get("statusonly", False)
    records = hub.store.get_records(msg_ids)
    unknown = [m for m in msg_ids if m not in records]
    # records the store's retention purged since (size limit, time to live): said so, and
    # why, not taken for tasks the Hub never saw
    purged = hub.store.purged_reasons(unknown) if unknown else {}
    if purged:
        unknown = [m for m in unknown if m not in purged]
    if content.get("unknown_pending") and (unknown or purged):
        # the asker may know of a submission whose copy has not reached the Hub yet: it
        # is told so, and asks again (see Client.get_result)
        reply_unknown: dict[str, Any] = ok_reply(pending=[], completed=[], unknown=unknown)
        if purged:
            reply_unknown["purged"] = purged
        known = [m for m in msg_ids if m in records]
        msg_ids, unknown = known, []
    else:
        reply_unknown = {}
        if purged:
            msg_id, why = next(iter(purged.items()))
            raise ResultPurged(purged_message(msg_id, why))
    if unknown:
        raise QueryError(
            f"no such msg_id: {unknown[0]}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
        )
    reply: dict[str, Any] = reply_unknown or ok_reply(pending=[], completed=[])
    buffers: list[Frame] = []
    for msg_id in msg_ids:
        record = records[msg_id]
        if record.get("status") == "pending" or msg_id in hub.pending:
            reply["pending"].append(msg_id)
            continue
        reply["completed"].append(msg_id)
        if statusonly:
            continue
        result_buffers = list(record.get("result_buffers") or [])
        reply[msg_id] = {
            "header": record.get("result_header") or {},
            "parent_header": record.get("header") or {},
            "metadata": record.get("result_metadata") or {},
            "content": record.get("result_content") or {},
            "buffer_count": len(result_buffers),
        }
        if record.get(OMITTED_FIELD):
            reply[msg_id]["not_stored"] = not_stored_message(msg_id, record[OMITTED_FIELD])
        buffers.extend(result_buffers)
    return [answer(idents, msg, "result_reply", reply, buffers)]


def purge_request(hub: Hub, idents: Sequence[bytes], msg: Message) -> list[Action]:
    """Forget completed results: the reply, then the drops for the shell to apply. Every
    named msg_id and engine is checked first, so a bad purge drops nothing.

    ``settled``: msg_ids whose results the asking client already holds. The copies that tell
    this Hub a task finished travel apart from the client's reply (from the scheduler, a
    device or the engine), so a client that purges right after its results came may ask
    before they arrive: such a task, still pending here or not yet known, is purged as soon
    as its result is recorded (``hub_records.purge_recorded``), instead of the purge failing or
    leaving it behind."""
    stale = hub.stale(msg)
    if stale is not None:
        return [answer(idents, msg, "purge_reply", error_reply("StaleRequest", stale))]
    content = msg.content or {}
    msg_ids = content.get("msg_ids", [])
    engine_ids = content.get("engine_ids") or []
    settled = dict.fromkeys(msg_ids_of(content.get("settled", [])))  # in the client's order
    engines = targets_of(hub, list(engine_ids)) if engine_ids else []
    actions: list[Action] = [answer(idents, msg, "purge_reply", ok_reply())]
    later: list[str] = []
    if msg_ids == "all":
        actions.append(DropMatching({"status": {"$ne": "pending"}}))
        recorded: set[str] = set()
        for entry in hub.engines.values():
            recorded.update(entry.completed)
            entry.completed.clear()
        # pending here, or not yet known: the drop above missed them (not those it took)
        later = [msg_id for msg_id in settled if msg_id not in recorded]
    else:
        msg_ids = msg_ids_of(msg_ids)
        records = hub.store.get_records(msg_ids)
        for msg_id in msg_ids:
            if msg_id in settled and (msg_id not in records or msg_id in hub.pending):
                later.append(msg_id)
            elif msg_id not in records:
                raise QueryError(f"cannot purge unknown msg_id {msg_id}")
            elif msg_id in hub.pending or records[msg_id].get("status") == "pending":
                raise QueryError(f"cannot purge pending msg_id {msg_id}")
        waiting = set(later)
        now = tuple(msg_id for msg_id in msg_ids if msg_id not in waiting)
        actions.append(DropRecords(now))
        for entry in hub.engines.values():
            for msg_id in now:
                entry.completed.pop(msg_id, None)
    for entry in engines:
        actions.append(DropMatching({"engine_uuid": entry.uuid, "status": {"$ne": "pending"}}))
        entry.completed.clear()
    hub.purged.note(msg.header.get("date"), msg_ids, [e.uuid for e in engines])
    hub.purge_on_record.update(dict.fromkeys(later))
    drop_oldest(hub.purge_on_record, PURGE_ON_RECORD_LIMIT)
    return actions


def history_request(hub: Hub, idents: Sequence[bytes], msg: Message) -> list[Action]:
    return [answer(idents, msg, "history_reply", ok_reply(history=hub.store.get_history()))]


def db_request(hub: Hub, idents: Sequence[bytes], msg: Message) -> list[Action]:
    content = msg.content or {}
    query = content["query"]
    keys = content.get("keys")
    validate_query(query)
    if keys is not None and not all(isinstance(k, str) for k in keys):
        raise QueryError("keys must be a list of field names")
    extra: dict[str, Any] = {}
    if "limit" in content:
        # one page, newest first unless asked otherwise, and the number of matches
        limit, skip = check_page(content["limit"], content.get("skip", 0))
        newest_first = bool(content.get("newest_first", True))
        records, extra["total"] = hub.store.find_page(
            query, keys, limit=limit, skip=skip, newest_first=newest_first
        )
    else:
        records = hub.store.find_records(query, keys)
    buffers: list[Frame] = []
    for record in records:
        for name in ("result_buffers", "buffers"):
            if keys is None:
                record.pop(name, None)  # buffers only when asked for by name
            elif name in record:
                found = list(record.pop(name) or [])
                record[name.replace("buffers", "buffer_count")] = len(found)
                buffers.extend(found)
    reply = ok_reply(records=records, **extra)
    return [answer(idents, msg, "db_reply", reply, buffers)]


def status_request(hub: Hub, idents: Sequence[bytes], msg: Message) -> list[Action]:
    """The live state in one small reply: each engine's queue lengths, the unassigned
    tasks, counts, and the completions after sequence number ``since``."""
    since = (msg.content or {}).get("since", 0)
    engines = {
        str(entry.id): {
            "uuid": entry.uuid,
            "registered": entry.registered,
            "queue": len(entry.queue),
            "tasks": len(entry.tasks),
            "completed": len(entry.completed),
        }
        for entry in hub.engines.values()
    }
    unassigned = sum(1 for engine in hub.pending.values() if engine is None)
    reply = ok_reply(
        instance=hub.hearts.instance.decode(),
        engines=engines,
        unassigned=unassigned,
        pending=len(hub.pending),
        **hub.activity.since(since),
    )
    return [answer(idents, msg, "status_reply", reply)]


QueryHandler = Callable[["Hub", Sequence[bytes], Message], list[Action]]
QUERIES: dict[str, QueryHandler] = {
    "queue_request": queue_request,
    "result_request": result_request,
    "purge_request": purge_request,
    "history_request": history_request,
    "db_request": db_request,
    "status_request": status_request,
}
