"""Engines that are gone, and the direct tasks the Hub learns of after their engine (part of the
Hub core).

The Hub fails the direct tasks of an engine it unregisters from the engine's queue, which holds
the tasks whose requests it had recorded. Two kinds of direct task are not there:

- a request whose copy the Hub reads only after the engine's unregistration (the copy was
  still in a socket, or on the engine's copies PUSH, when the Hub decided): recorded pending,
  it would have stayed pending for ever. It is recorded failed at once, as the engine's other
  tasks were (:func:`~corral.controller.hub_records.record_request`, with
  :meth:`GoneEngine.failed_fields`);
- a request sent to the engine's own ROUTER whose copy never left the engine (it died before
  the end of its turn, or within the first milliseconds of a long task, or while the request
  waited behind a running task: docs/wire-flows.md, "Direct requests"). Only its client knows
  of it: when the Hub announces the engine's unregistration, the client fails it and tells the
  Hub (``direct_lost_request``), which records it failed (:func:`record_lost_direct`), so that
  ``get_result`` from another client and ``db_query`` find it, and removes its own links to the
  request's shared-memory segments, which no copy will ever come to release. A client that
  died too leaves nobody who knows the task;
- a task the engine answered whose copies were still queued on its copies PUSH when it died
  (the Hub reading slowly): its client has the reply, and the same report names it among the
  tasks the engine answered lately (``answered``). The Hub records it with the client's
  status and no result (:func:`_record_answered`: ``get_result`` elsewhere raises
  ResultNotStored saying why).

An engine this Hub never registered can be named too: after a controller restart, by the
restored records of the engines that ran before it, and by the copies an engine that survived
sends (its copies PUSH reconnects by itself) before it has registered again. Such an engine is
*awaited* (:class:`AwaitedEngine`) for as long as a registration may take; one that has not
registered by then is declared gone as a dead engine is (:func:`settle_awaited`): its direct
tasks are failed with an EngineError, its later copies too, a later registration of it is
refused, and its unregistration is announced, so that clients stop using its direct address
and fail, then report, what they sent it.

No sockets, no clock: the dates come from the ``now`` the shell passed to the Hub.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral.controller.heartbeat import AWAIT_AT_LEAST as AWAIT_AT_LEAST
from corral.controller.hub_actions import Action, AddRecord, ForgetSegments, Send, UpdateRecord
from corral.controller.hub_queries import MAX_QUERY_IDS, answer
from corral.controller.hub_records import iso_date, purge_recorded
from corral.controller.store.retention import OMITTED_FIELD, REQUEST_OMITTED_FIELD
from corral.errors import EngineError, QueryError, error_content
from corral.protocol.messages import ok_reply
from corral.protocol.session import Message

if TYPE_CHECKING:
    from corral.controller.hub import EngineEntry, Hub

log = logging.getLogger("corral.hub")

MAX_GONE = 10_000  # engines remembered as gone (the oldest forgotten): a few hundred bytes each
# direct tasks failed with an engine that left cleanly, whose answer may still come (bounded)
MAX_ANSWERABLE = 20_000
# why the record of a task its client reported lost has no request (for resubmit's refusal)
LOST_REQUEST = "its engine died before it sent the controller a copy of the request"
# why the record of a task its client reported answered has no result (for get_result)
ANSWER_NOT_COPIED = (
    "its engine died before it sent the controller a copy of the result; only the client "
    "that submitted the task received it"
)


@dataclass(frozen=True)
class GoneEngine:
    """An engine the Hub unregistered: when, why, and the failure its tasks get."""

    id: int
    date: str  # ISO 8601, when the Hub unregistered it
    failure: dict[str, Any]  # the error content of its direct tasks
    # it asked to leave (not declared dead): its replies sent before it left are answers
    clean: bool = False

    def failed_fields(self, uuid: str) -> dict[str, Any]:
        """The result fields of a direct task of this engine that can never be answered."""
        return {
            "status": "error",
            "result_content": self.failure,
            "completed": self.date,
            "result_metadata": {"status": "error", "engine_id": self.id, "engine_uuid": uuid},
        }


def engine_failure(engine_id: int, uuid: str, why: str) -> dict[str, Any]:
    """The error content of a direct task whose engine is gone (``why``: how the Hub knew)."""
    error = EngineError(
        "EngineError",
        f"engine {engine_id} died or was unregistered ({why}) "
        "while this task was queued or running",
        engine_id=engine_id,
        engine_uuid=uuid,
    )
    return error_content(error, engine_id, uuid)


class GoneEngines:
    """The engines this Hub unregistered, newest last (at most ``MAX_GONE``), and the direct
    tasks it failed with one that left cleanly (at most ``MAX_ANSWERABLE``).

    An engine that asks to leave answers what it can first (its queued tasks as aborted) and
    then unregisters, but the copies of those replies come on another socket than its
    unregistration (the device's or its own copies PUSH) and may be read after it: such a
    reply is the task's answer, which the client has too, and replaces the failure
    (:meth:`take_answer`). A late reply of an engine declared dead never does: its tasks
    were settled without it."""

    def __init__(self) -> None:
        self._gone: OrderedDict[str, GoneEngine] = OrderedDict()
        self._answerable: OrderedDict[str, str] = OrderedDict()  # msg_id -> engine uuid

    def add(self, engine_id: int, uuid: str, why: str, now: float, *, clean: bool) -> GoneEngine:
        failure = engine_failure(engine_id, uuid, why)
        gone = GoneEngine(engine_id, iso_date(now), failure, clean)
        self._gone[uuid] = gone
        while len(self._gone) > MAX_GONE:
            self._gone.popitem(last=False)
        return gone

    def get(self, uuid: str | None) -> GoneEngine | None:
        return self._gone.get(uuid) if uuid else None

    def failed(self, msg_id: str, uuid: str) -> None:
        """``msg_id``, sent to the gone engine ``uuid``, was recorded failed. (A dead
        engine's tasks are remembered too: its client may report it got the answer, whose
        copy died with the engine, or with a controller killed since; a late reply of a dead
        engine is dropped before :meth:`take_answer` is asked.)"""
        self._answerable[msg_id] = uuid
        while len(self._answerable) > MAX_ANSWERABLE:
            self._answerable.popitem(last=False)

    def take_answer(self, msg_id: str, uuid: str) -> bool:
        """Whether an answer from ``uuid`` to ``msg_id`` (its reply's late copy, or its
        client's report of the reply) replaces the failure its engine's end recorded. Once
        only."""
        if self._answerable.get(msg_id) != uuid:
            return False
        del self._answerable[msg_id]
        return True

    def __len__(self) -> int:
        return len(self._gone)


def record_lost_direct(hub: Hub, idents: Sequence[bytes], msg: Message) -> list[Action]:
    """A client's ``direct_lost_request {engine_uuid, tasks: [[msg_id, submitted, segments?],
    ...]}``: tasks it sent straight to that engine, now unregistered, and never got answers
    for. Each the Hub has no record of is recorded failed, as the engine's other tasks were,
    and the Hub's links to its request's shared-memory segments (``segments``: the request's
    ``shm`` references) are removed: its copy, which would have released them, died with the
    engine. Those it knows are left as they are (their copy came: the Hub read or forgot the
    segments then). Refused (QueryError) for an engine registered here: only a gone engine's
    tasks are lost. An engine this Hub neither registered nor unregistered is one a
    controller restart lost track of (its client names it when the restarted Hub's engine
    table lacks it: :meth:`~corral.client.link.ControllerLink._name_absent`): it is awaited
    (:func:`await_engine`) and nothing is recorded now; if it does not register in time,
    its end is announced and its clients report again."""
    content = msg.content or {}
    engine_uuid = content["engine_uuid"]
    tasks = _lost_tasks(content["tasks"])
    gone = hub.gone.get(engine_uuid)
    if gone is None:
        if engine_uuid in hub.by_uuid:
            raise QueryError(
                f"engine {engine_uuid} is registered with this Hub: only a gone engine's "
                "tasks are lost"
            )
        _answered_tasks(content.get("answered", []))  # checked: a malformed report says so
        engine_id = content.get("engine_id")
        known_id = engine_id if type(engine_id) is int and engine_id >= 0 else None
        await_engine(hub, engine_uuid, engine_id=known_id)
        return [answer(idents, msg, "direct_lost_reply", ok_reply(recorded=[], awaited=True))]
    known = hub.store.recorded_or_purged([msg_id for msg_id, _, _ in tasks])
    client = idents[0].decode("utf-8", "replace") if idents else ""
    recorded: list[str] = []
    actions: list[Action] = []
    for msg_id, submitted, segments in tasks:
        if msg_id in known or msg_id in hub.pending:
            continue
        record = _lost_request_record(msg_id, client, engine_uuid, gone, submitted)
        record.update(started=None, received=None, **gone.failed_fields(engine_uuid))
        hub.activity.submit()
        hub.activity.complete(msg_id, gone.id, "error", None, gone.date)
        hub.gone.failed(msg_id, engine_uuid)  # its answer may follow
        actions.extend(purge_recorded(hub, msg_id, [AddRecord(msg_id, record)]))
        if segments:
            actions.append(ForgetSegments(segments))
        recorded.append(msg_id)
    answered = _answered_tasks(content.get("answered", []))
    if answered:
        actions.extend(_record_answered(hub, client, engine_uuid, gone, answered, recorded))
    return [*actions, answer(idents, msg, "direct_lost_reply", ok_reply(recorded=recorded))]


def _lost_request_record(
    msg_id: str, client: str, engine_uuid: str, gone: GoneEngine, submitted: Any
) -> dict[str, Any]:
    """The record of a direct request whose copy died with its engine, from what its client
    reported (no request: ``request_buffers_omitted`` says why); its outcome is the caller's."""
    return {
        "msg_id": msg_id,
        "header": {"msg_id": msg_id, "session": client, "date": submitted},
        "metadata": {},
        "content": {},
        "buffers": None,
        REQUEST_OMITTED_FIELD: {"why": LOST_REQUEST},
        "queue": "mux",
        "client_uuid": client,
        "engine_uuid": engine_uuid,
        "engine_id": gone.id,
        "submitted": submitted,
        "resubmitted": False,
    }


def _record_answered(
    hub: Hub,
    client: str,
    engine_uuid: str,
    gone: GoneEngine,
    answered: list[list[Any]],
    recorded: list[str],
) -> list[Action]:
    """The tasks a client reports it got the answers of from the gone engine, whose copies
    may have died with it (queued on its copies PUSH while the Hub read slowly): each the Hub
    has no record of is recorded with the client's status and dates and no result
    (``buffers_omitted`` says why: ``get_result`` from another client raises
    ResultNotStored); one the engine's end failed gets them instead of the failure; the
    others, and those a purge dropped (:class:`~corral.controller.hub_queries.Purged`), are
    left as they are. Appends the msg_ids it recorded to ``recorded``."""
    known = hub.store.recorded_or_purged([item[0] for item in answered])
    actions: list[Action] = []
    for item in answered:
        msg_id, submitted, status, started, completed = item[:5]
        if msg_id in hub.pending:
            continue  # its copies came after all: its reply's will follow
        fields: dict[str, Any] = {
            "status": status,
            "result_header": None,
            "result_metadata": {
                "status": status,
                "engine_id": gone.id,
                "engine_uuid": engine_uuid,
                "started": started,
                "completed": completed,
            },
            "result_content": {"status": status},
            "result_buffers": [],
            "started": started,
            "completed": completed,
            "received": gone.date,
            OMITTED_FIELD: {"why": ANSWER_NOT_COPIED},
        }
        if msg_id in known:
            if hub.gone.take_answer(msg_id, engine_uuid):
                actions.extend(purge_recorded(hub, msg_id, [UpdateRecord(msg_id, fields)]))
                recorded.append(msg_id)
            continue
        if hub.purged.dropped(msg_id, engine_uuid, completed):
            continue  # a purge dropped it (another client's, say): not made again
        record = _lost_request_record(msg_id, client, engine_uuid, gone, submitted)
        record.update(fields, queue=item[5] if len(item) > 5 else "mux")
        hub.activity.submit()
        hub.activity.complete(msg_id, gone.id, status, started, completed)
        actions.extend(purge_recorded(hub, msg_id, [AddRecord(msg_id, record)]))
        recorded.append(msg_id)
    return actions


def _answered_tasks(value: Any) -> list[list[Any]]:
    """``[[msg_id, submitted, status, started, completed, queue?], ...]`` (dates ISO 8601 or
    null, status ok, error or aborted, queue ``mux`` or ``task``, ``mux`` if left out)
    checked; QueryError naming what is wrong."""
    if not isinstance(value, list) or len(value) > MAX_QUERY_IDS:
        raise QueryError(f"answered must be a list of at most {MAX_QUERY_IDS} tasks")
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) not in (5, 6)
            or not isinstance(item[0], str)
            or item[2] not in ("ok", "error", "aborted")
            or not all(date is None or isinstance(date, str) for date in (item[1], *item[3:5]))
            or (len(item) == 6 and item[5] not in ("mux", "task"))
        ):
            raise QueryError(
                "an answered task is [msg_id, submitted, status, started, completed, queue?] "
                f"(queue mux or task), not {item!r}"
            )
    return value


def _lost_tasks(value: Any) -> list[tuple[str, str | None, list[Any] | None]]:
    """``[[msg_id, submitted or None, segments?], ...]`` checked; QueryError naming what is
    wrong. ``segments`` is passed on as it came (a list): the shell reads only the well-formed
    references in it (:func:`corral.protocol.shm.named_segments`)."""
    if len(value) > MAX_QUERY_IDS:
        raise QueryError(f"too many tasks in one report: {len(value)} > {MAX_QUERY_IDS}")
    tasks: list[tuple[str, str | None, list[Any] | None]] = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) not in (2, 3)
            or not isinstance(item[0], str)
            or not (item[1] is None or isinstance(item[1], str))
            or not (len(item) == 2 or isinstance(item[2], list))
        ):
            raise QueryError(
                f"a lost task is [msg_id, submitted date or null, segments?], not {item!r}"
            )
        tasks.append((item[0], item[1], item[2] if len(item) == 3 else None))
    return tasks


@dataclass
class AwaitedEngine:
    """An engine this Hub has not registered that it expects to register (see the module
    doc): its id if a restored record named one, the beat by which it must have registered,
    and the direct tasks whose copies named it (pending until it registers or is gone)."""

    id: int | None
    until_beat: int
    tasks: dict[str, None] = field(default_factory=dict)


def await_engine(
    hub: Hub,
    uuid: str,
    msg_id: str | None = None,
    engine_id: int | None = None,
    until_beat: int | None = None,
) -> None:
    """``uuid``, not registered here, was named by a direct request's copy (``msg_id``) or a
    restored record (``engine_id``, ``until_beat``: the restart's window, whose end fails its
    restored tasks): it has until then, and at least as long as a registration may take
    (``2 * max_misses + 2`` beats, and ``hub.await_at_least``: ``AWAIT_AT_LEAST`` unless the
    controller was told otherwise), to register. At most
    ``MAX_GONE`` engines are awaited; past that a new one is not, and logged."""
    awaited = hub.awaited.get(uuid)
    if awaited is None:
        if len(hub.awaited) >= MAX_GONE:
            log.warning("hub: too many unregistered engines named; %s is not awaited", uuid)
            return
        hearts = hub.hearts
        beats = max(2 * hearts.max_misses + 2, math.ceil(hub.await_at_least / hub.heartbeat_period))
        until_beat = max(until_beat or 0, hearts.beat + beats)
        awaited = hub.awaited[uuid] = AwaitedEngine(engine_id, until_beat)
    elif engine_id is not None and awaited.id is None:
        awaited.id = engine_id
    if msg_id is not None:
        awaited.tasks[msg_id] = None


def registered(hub: Hub, entry: EngineEntry) -> None:
    """An awaited engine registered: its direct tasks are its queue's, failed if it dies."""
    awaited = hub.awaited.pop(entry.uuid, None)
    if awaited is None:
        return
    for msg_id in awaited.tasks:
        if hub.pending.get(msg_id) == entry.uuid:
            entry.queue[msg_id] = None


def settle_awaited(hub: Hub, now: float) -> list[Action]:
    """(Each beat.) Awaited engines whose time is up and that have not registered (nor are
    registering now) are gone: see the module doc."""
    beat = hub.hearts.beat
    actions: list[Action] = []
    for uuid, awaited in list(hub.awaited.items()):
        if awaited.until_beat > beat or uuid in hub.pending_registrations:
            continue
        del hub.awaited[uuid]
        if uuid not in hub.by_uuid:
            actions.extend(_declare_gone(hub, uuid, awaited, now))
    return actions


def _declare_gone(hub: Hub, uuid: str, awaited: AwaitedEngine, now: float) -> list[Action]:
    if awaited.tasks:
        why = (
            "it sent this controller copies of direct requests but never registered with it "
            "(it died or was cut off after a controller restart)"
        )
    else:
        why = "it did not register again after the controller restarted"
    in_use = {e.id for e in hub.engines.values()}
    in_use.update(p.id for p in hub.pending_registrations.values())
    # an id another engine holds now (a supervisor restarted it with --id) is not named
    engine_id = awaited.id if awaited.id is not None and awaited.id not in in_use else -1
    log.warning("hub: engine %s (id %s) is gone: %s", uuid, engine_id, why)
    hub.dropped.add(uuid)  # were it to come back, its tasks were settled without it
    gone = hub.gone.add(engine_id, uuid, why, now, clean=False)
    actions: list[Action] = []
    for msg_id in awaited.tasks:
        if hub.pending.get(msg_id) != uuid:
            continue  # answered meanwhile, or settled another way
        del hub.pending[msg_id]
        hub.activity.complete(msg_id, engine_id, "error", None, gone.date)
        hub.gone.failed(msg_id, uuid)
        actions.extend(
            purge_recorded(hub, msg_id, [UpdateRecord(msg_id, gone.failed_fields(uuid))])
        )
    content = {"id": engine_id, "uuid": uuid, "why": why}
    actions.append(Send("notification", "unregistration_notification", content))
    return actions
