"""The client's link to the controller: the engine table, outages, and what the I/O thread
routes to the client.

:class:`IOHandler` is what the I/O shell (:mod:`corral.client.io_shell`) calls with each
decoded message. :class:`ControllerLink`, a mixin of :class:`corral.client.client.Client`,
keeps the engine table current from registration notifications, notices when the controller
is unreachable (socket monitors) and, once it is back, asks the Hub for the engine table again
sends again the Hub queries the link's drop left unanswered, and recovers the requests left
unanswered (:mod:`corral.client.recovery`). Its waits (for engines, results, the link), each
bounded by the outage: :mod:`corral.client.waits`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Container
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from corral.client.direct import direct_address
from corral.client.forgotten_answers import is_balanced
from corral.client.metadata_table import compact_value
from corral.client.records import SERVICE, TASK, Pending
from corral.client.recovery import RECOVERY_PERIOD, Recovery
from corral.client.waits import LinkWaits
from corral.errors import ConnectionError, EngineError, SharedMemoryRefused
from corral.lane import AVAILABLE as LANES_AVAILABLE
from corral.protocol.direct_offer import read_lane
from corral.protocol.session import Message, utcnow
from corral.protocol.shm import METADATA_KEY

if TYPE_CHECKING:
    from corral.client.client import Client
    from corral.client.io_shell import ClientIO
    from corral.client.records import Records
    from corral.client.recovery import Resender
    from corral.protocol.session import Session
    from corral.sharedmem import SharedMemory

__all__ = ["ControllerLink", "IOHandler", "answered_by", "engine_gone"]

log = logging.getLogger("corral.client")

# on a direct engine's end, the tasks it answered in this many seconds before (at most this
# many) are reported to the Hub: their copies may have died with it (answered_by)
ANSWERED_WINDOW = 300.0
ANSWERED_LATEST = 10_000
# an engine the Hub's table lacks after an outage has this long to register again (it does
# once its queue connections are up, which it awaits up to 10 s) before the client stops
# reconnecting to its direct address
DIRECT_GRACE = 30.0
# engines absent from a restarted Hub's table remembered at most, to name to the next one
MAX_NAMED = 1024


class IOHandler:
    """The I/O thread's view of a Client: where each decoded message goes."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def on_reply(self, msg: Message) -> None:
        records = self.client._records
        try:
            msg = self.client._shm.resolve(msg)  # verified by the I/O thread already
        except SharedMemoryRefused as err:
            self.client._io.count_rejected()
            pending = records.pending.get(msg.parent_id or "")
            if pending is None:
                # a second answer to a request already settled, whose buffers went with the
                # first (an engine sends its kept replies again to a restarted controller,
                # which forwards them): nothing is lost, nothing waits for it
                log.debug("client: dropped a late reply to %s: %s", msg.parent_id, err)
                return
            log.warning("client: refused the buffers of a reply to %s: %s", msg.parent_id, err)
            if pending.kind != SERVICE:
                records.fail(msg.parent_id or "", err)
                return
            stripped = {k: v for k, v in msg.metadata.items() if k != METADATA_KEY}
            msg = replace(msg, metadata=stripped, buffers=())
        records.handle_reply(msg)

    def on_reply_again(self, msg: Message) -> None:
        """(I/O thread) A reply whose handling a Ctrl-C cut on a thread that read it while
        waiting: handled again, settling its request if the cut took it from ``pending``."""
        try:
            msg = self.client._shm.resolve(msg)
        except SharedMemoryRefused as err:
            self.client._io.count_rejected()
            log.warning("client: refused the buffers of a reply to %s: %s", msg.parent_id, err)
            self.client._records.fail(msg.parent_id or "", err)
            return
        self.client._records.handle_reply(msg, again=True)

    def on_notification(self, msg: Message) -> None:
        content = msg.content or {}
        if msg.msg_type == "registration_notification":
            if isinstance(content.get("shm_host"), str):
                self.client._shm_hosts[content["uuid"]] = content["shm_host"]
            if isinstance(content.get("direct"), str):
                self.client._direct_offers[content["uuid"]] = content["direct"]
            self.client._engine_registered(content["id"], content["uuid"])
        elif msg.msg_type == "unregistration_notification":
            why = content.get("why")
            self.client._engine_unregistered(
                content["id"], content["uuid"], why if isinstance(why, str) else None
            )

    def on_iopub(self, msg: Message) -> None:
        self.client._records.handle_iopub(msg)

    def on_closed(self) -> None:
        reason = self.client._io.closed_error()
        self.client._records.fail_all(
            lambda: ConnectionError(f"this request was not answered: {reason}")
        )
        with self.client._engines_changed:
            self.client._engines_changed.notify_all()  # wait_for_engines: raise, do not wait

    def on_link(self, up: bool) -> None:
        self.client._link_changed(up)


class ControllerLink(LinkWaits):
    """The engine table and the controller link of a Client (see the module doc)."""

    if TYPE_CHECKING:  # provided by Client
        session: Session
        timeout: float
        outage_grace: float
        addresses: dict[str, str]
        _io: ClientIO
        _records: Records
        _resender: Resender
        _engines: dict[int, str]
        _uuids: dict[str, int]
        _gone: set[str]
        _engines_changed: threading.Condition
        _link_lost_at: float | None
        _resync: set[str] | None
        _asked_before_outage: set[str]
        _controller: str | None
        _shm_hosts: dict[str, str]
        _direct_offers: dict[str, str]
        _request_segments: dict[str, list[dict[str, Any]]]
        _purged_from_hub: dict[str, None]
        _absent_direct: set[str]
        _absent_named: dict[str, int]
        _awaited_reports: dict[str, tuple[list[list[Any]], list[list[Any]]]]
        _shm: SharedMemory
        _helpers: set[threading.Thread]

        def _fetch_results(
            self,
            msg_ids: list[str],
            delay: float,
            unknown_until: float,
            ceiling: float = 1.0,
            then: Callable[[], None] | None = None,
        ) -> None: ...

        def _fetch_in_chunks(self, msg_ids: list[str]) -> None: ...

    def _link_changed(self, up: bool) -> None:
        """(I/O thread) The controller link dropped, or its sockets are connected again. The
        client counts as reconnected only once the Hub has sent the engine table again:
        registrations published meanwhile never reached it, and a direct request to an engine
        that has not re-registered yet would be dropped by the new MUX."""
        if up:
            with self._engines_changed:
                self._resync = set()
            self._request_engine_table()
            return
        self._asked_before_outage.update(self._hub_queries())
        self._records.last_outage = time.monotonic()  # answers just before it are at risk
        with self._engines_changed:
            if self._link_lost_at is None:
                self._link_lost_at = time.monotonic()
            self._resync = None
            self._engines_changed.notify_all()

    def _hub_queries(self) -> list[str]:
        """(I/O thread) The Hub queries unanswered here that may be sent again."""
        return [
            msg_id
            for msg_id, pending in list(self._records.pending.items())
            if isinstance(pending, Pending) and pending.request is not None
        ]

    def _ask_hub_again(self) -> None:
        """(I/O thread) Once reconnected, send again the Hub queries that were unanswered
        when the link dropped: the controller that had them may be gone (killed, then
        restarted with --restore, which knows nothing of them), and without this a
        ``get_result``, ``db_query`` or the recovery's own fetch of results failed after the
        client's timeout although the restarted Hub could answer at once. Each goes out
        dated anew, so a Hub that did read the first (the link dropped, the controller
        lived) does not refuse it as a replay; of two answers the second finds nothing
        pending and is dropped. Queries sent during the outage are not among them: zmq
        holds those until the new connection is up."""
        msg_ids, self._asked_before_outage = self._asked_before_outage, set()
        for msg_id in msg_ids:
            pending = self._records.pending.get(msg_id)
            if isinstance(pending, Pending) and pending.request is not None:
                request = pending.request
                again = replace(request, header={**request.header, "date": utcnow()})
                self._io.send_now("hub", self.session.serialize(again))

    def _request_engine_table(self) -> None:
        """(I/O thread) connection_request; the reply replaces the engine table, keeping the
        engines announced while it was on its way, and ends the outage. Asked again while the
        sockets stay connected and no reply comes."""
        msg = self.session.msg("connection_request", {})

        def on_reply(reply: Message) -> None:
            content = reply.content or {}
            with self._engines_changed:
                if content.get("status") != "ok" or self._resync is None:
                    return
                announced, self._resync = self._resync, None
                self._controller = content.get("controller")
                self._shm_hosts.update(content.get("engine_hosts") or {})
                self._direct_offers.update(content.get("engine_direct") or {})
                engines = {
                    int(engine_id): uuid
                    for engine_id, uuid in content.get("engines", {}).items()
                    if uuid not in self._gone
                }
                engines.update({i: u for i, u in self._engines.items() if u in announced})
                missing = [u for u in self._engines.values() if u not in engines.values()]
                # to name: engines this table lacks that this client sent direct requests
                # to, and those named to a Hub before this one that have not been heard of
                absent = {
                    **{u: i for u, i in self._uuids.items() if u in missing},
                    **self._absent_named,
                }
                absent = {u: i for u, i in absent.items() if u not in engines.values()}
                self._engines = engines
                self._uuids = {u: i for i, u in engines.items()}
                self._link_lost_at = None
                self._engines_changed.notify_all()
            if missing:
                self._io.call_later(DIRECT_GRACE, lambda: self._drop_direct_of_absent(missing))
            answering = engines_answered(self._records) if absent else set()
            for uuid, engine_id in absent.items():
                if uuid in self._absent_named or self._io.sends_direct(uuid) or uuid in answering:
                    self._name_absent(uuid, engine_id)
            self._ask_hub_again()
            self._recover(Recovery.of(self._unanswered()))

        def on_timeout() -> None:
            if self._records.pending.pop(msg.msg_id, None) is not None and self._io.link_up:
                self._request_engine_table()

        self._records.track_service(msg.msg_id, "hub", on_reply=on_reply)
        self._io.send_now("hub", self.session.serialize(msg))
        self._io.call_later(self.timeout, on_timeout)

    def _drop_direct_of_absent(self, uuids: list[str]) -> None:
        """(I/O thread) Engines the Hub's table lacked after an outage and that have not
        registered since: stop reconnecting to their direct addresses (zmq would try for
        ever). A request to an engine not in the table is refused at once anyway; the ones
        still unanswered are settled through the Hub (:meth:`_recover`, or the engine's
        unregistration, which a restarted Hub announces for an engine its records name)."""
        for uuid in uuids:
            if uuid not in self._uuids and self._io.sends_direct(uuid):
                self._io.disconnect_direct(uuid)
                self._absent_direct.add(uuid)  # its end, if announced, is still reported

    def _unanswered(self) -> list[str]:
        return [
            msg_id
            for msg_id, pending in list(self._records.pending.items())
            if pending.kind == TASK and pending.channel in ("mux", "task")
        ]

    def _recover(self, recovery: Recovery) -> None:
        """(I/O thread) After an outage: ask the Hub about requests still unanswered here
        (see :mod:`corral.client.recovery`), until each is settled."""
        msg_ids = recovery.to_ask(self._unanswered())
        if not msg_ids or self._io.closed:
            return
        query = {"query": {"msg_id": {"$in": msg_ids}}, "keys": ["msg_id", "status"]}
        msg = self.session.msg("db_request", query)

        def on_reply(reply: Message) -> None:
            records = (reply.content or {}).get("records") or []
            plan = recovery.answered({r["msg_id"]: r.get("status", "") for r in records})
            resent = 0
            for msg_id in plan.lost:
                if self._resend(msg_id, "the controller died before it recorded it"):
                    resent += 1
                    continue
                self._records.fail(msg_id, self._lost_error(msg_id))
            if resent:
                log.warning(
                    "client: %d task(s) sent again: the controller died before it recorded "
                    "them (the first: %s)",
                    resent,
                    plan.lost[0],
                )
            if plan.fetch:
                self._fetch_in_chunks(plan.fetch)
            if plan.ask_again:
                self._io.call_later(RECOVERY_PERIOD, lambda: self._recover(recovery))

        def on_timeout() -> None:
            if self._records.pending.pop(msg.msg_id, None) is not None and self._io.link_up:
                self._recover(recovery)  # no answer but connected: ask again

        self._records.track_service(msg.msg_id, "hub", on_reply=on_reply)
        self._io.send_now("hub", self.session.serialize(msg))
        self._io.call_later(self.timeout, on_timeout)

    def _lost_error(self, msg_id: str) -> BaseException:
        """(I/O thread) Why a request the restarted Hub has no record of is lost. A direct one
        never went through the controller: if its engine is not registered with the restarted
        controller either, the engine is what is gone (it died while the controller was down,
        say), not a record; otherwise the controller died before it recorded the request."""
        pending = self._records.pending.get(msg_id)
        uuid = pending.engine_uuid if pending is not None else None
        if (
            pending is not None
            and uuid is not None
            and pending.channel == "mux"
            and uuid not in self._uuids
            and (self._io.sends_direct(uuid) or uuid in self._absent_direct)
        ):
            md = self._records.metadata.get(msg_id)
            engine_id = md.get("engine_id") if md is not None else None
            return EngineError(
                "EngineError",
                f"engine {engine_id} ({uuid}), to which this request was sent directly, is not "
                "registered with the restarted controller (it died while the controller was "
                "down, or has not come back), and the controller has no record of the "
                "request: its answer will not come; submit it again",
                engine_id=engine_id,
                engine_uuid=uuid,
            )
        return ConnectionError(
            "the controller died before it recorded this request, so it never reached an "
            "engine; submit it again"
        )

    def _resend(self, msg_id: str, why: str) -> bool:
        """(I/O thread) Send a held load-balanced request again, same msg_id; False if it is
        not held (direct, answered, or sent again too often already)."""
        msg = self._resender.take(msg_id, self.session)
        if msg is None or self._io.closed:
            return False
        log.debug("client: task %s sent again: %s", msg_id, why)  # callers log a summary
        self._io.send_now("task", self.session.serialize(msg))
        return True

    def _add_engine(self, engine_id: int, uuid: str) -> None:
        if uuid in self._gone:
            return
        self._absent_direct.discard(uuid)  # back: connected again below
        self._absent_named.pop(uuid, None)
        self._awaited_reports.pop(uuid, None)  # its copies and replies come from it again
        if uuid not in self._uuids:  # before any request to it can leave: see client/direct.py
            address = direct_address(
                self._io.direct_enabled,
                self._direct_offers.get(uuid),
                self._shm_hosts.get(uuid),
                self._shm.host,
            )
            if address is not None:
                lane = read_lane(self._direct_offers.get(uuid)) if LANES_AVAILABLE else None
                self._io.connect_direct(uuid, address, lane)
        self._engines = {**self._engines, engine_id: uuid}
        self._uuids = {**self._uuids, uuid: engine_id}
        self._engines_changed.notify_all()

    def _engine_registered(self, engine_id: int, uuid: str) -> None:
        with self._engines_changed:
            self._add_engine(engine_id, uuid)
            if self._resync is not None:
                self._resync.add(uuid)

    def _engine_unregistered(self, engine_id: int, uuid: str, why: str | None = None) -> None:
        with self._engines_changed:
            self._gone.add(uuid)
            self._engines = {i: u for i, u in self._engines.items() if u != uuid}
            self._uuids = {u: i for i, u in self._engines.items()}
            self._engines_changed.notify_all()
        named = self._absent_named.pop(uuid, None) is not None
        awaited = self._awaited_reports.pop(uuid, None)
        # what this client got from the engine may be all that is left of those tasks: its
        # direct answers' copies may have died with it, and after an outage its load-balanced
        # ones' too (the Hub that read them killed before it wrote them)
        sent_direct = (
            self._io.sends_direct(uuid)
            or uuid in self._absent_direct
            or named
            or bool(awaited)
            or self._records.outage_within(ANSWERED_WINDOW)
        )
        self._absent_direct.discard(uuid)
        self._io.disconnect_direct(uuid)
        sent = [
            msg_id
            for msg_id, pending in list(self._records.pending.items())
            if pending.kind == TASK and pending.engine_uuid == uuid and pending.channel == "mux"
        ]
        segments = {m: self._request_segments[m] for m in sent if m in self._request_segments}
        failed = self._records.fail_engine(uuid, lambda: engine_gone(engine_id, uuid, why))
        if sent_direct:
            lost = set(failed)
            tasks = [msg_id for msg_id in sent if msg_id in lost]
            answered = answered_by(self._records, uuid, self._purged_from_hub)
            self._report_lost_direct(uuid, tasks, segments, answered, awaited, engine_id)
        self._records.drop_forgotten_answers(uuid)  # reported, if ever sent any

    def _report_lost_direct(
        self,
        uuid: str,
        msg_ids: list[str],
        segments: dict[str, list[dict[str, Any]]],
        answered: list[list[Any]] | None = None,
        awaited: tuple[list[list[Any]], list[list[Any]]] | None = None,
        engine_id: int = -1,
    ) -> None:
        """(I/O thread) Tell the Hub of the tasks this client sent straight to the engine
        ``uuid``, now unregistered, and never got answers for: the engine may have died
        before their copies left it, and then only this client knows them. The Hub records
        those it does not know as failed (``direct_lost_request``, see
        :mod:`corral.controller.hub_gone`), so other clients' ``get_result`` and ``db_query``
        find them, and removes its links to their requests' shared-memory segments
        (``segments``: msg_id -> the request's references), which only their copies would
        have removed. ``answered``: tasks this client got the answers of from that engine
        lately (:func:`answered_by`), which the Hub records, without their results, if it
        never read their copies. ``awaited``: the tasks and answers of an earlier report of
        this engine that a Hub took without recording them (it did not know the engine: a
        report sent again to a restarted controller, which awaited it instead), told again
        with this one, now that the engine's end is announced. Nobody waits for the answer; a
        refusal is logged; an answer that the engine is awaited keeps the report for then
        (``engine_id``: the engine's id, to name it by)."""
        if self._io.closed:
            return
        tasks: list[list[Any]] = []
        for msg_id in msg_ids:
            md = self._records.metadata.get(msg_id)
            submitted = md.get("submitted") if md is not None else None
            task: list[Any] = [msg_id, submitted.isoformat() if submitted is not None else None]
            if msg_id in segments:
                task.append(segments[msg_id])
            tasks.append(task)
        answered = list(answered or ())
        if awaited is not None:
            tasks += _not_among(awaited[0], tasks)
            answered += _not_among(awaited[1], answered)
        if not tasks and not answered:
            return
        content: dict[str, Any] = {"engine_uuid": uuid, "tasks": tasks}
        if answered:
            content["answered"] = answered
        msg = self.session.msg("direct_lost_request", content)

        def on_reply(reply: Message) -> None:
            content = reply.content or {}
            if content.get("status") != "ok":
                log.info(
                    "client: the Hub did not record the %d lost tasks of engine %s: %s: %s",
                    len(tasks),
                    uuid,
                    content.get("ename"),
                    content.get("evalue"),
                )
            elif content.get("awaited") and uuid not in self._uuids:
                self._keep_awaited(uuid, tasks, answered, engine_id)

        self._tell_hub(msg, on_reply)

    def _keep_awaited(
        self, uuid: str, tasks: list[list[Any]], answered: list[list[Any]], engine_id: int
    ) -> None:
        """(I/O thread) A Hub took a report of the engine ``uuid`` without recording it: it
        had not heard of the engine (a restarted controller, to which the report was sent
        again after the one it was meant for died) and awaits it. The client failed those
        tasks already, so the engine's end, when announced, finds none left to report: keep
        them for :meth:`_engine_unregistered` (at most ``MAX_NAMED`` engines' reports, the
        oldest forgotten). The engine counts as named (:meth:`_name_absent`): should that Hub
        be killed before it announces the end, the next one has no record of the engine, and
        only this client's naming it again gets the end announced and the report told."""
        self._remember_named(uuid, self._absent_named.get(uuid, engine_id))
        kept_tasks, kept_answered = self._awaited_reports.pop(uuid, ([], []))
        self._awaited_reports[uuid] = (
            kept_tasks + _not_among(tasks, kept_tasks),
            kept_answered + _not_among(answered, kept_answered),
        )
        while len(self._awaited_reports) > MAX_NAMED:
            del self._awaited_reports[next(iter(self._awaited_reports))]

    def _name_absent(self, uuid: str, engine_id: int) -> None:
        """(I/O thread) An engine this client sent direct requests to is missing from the
        restarted controller's table: name it to the Hub (a ``direct_lost_request`` with no
        tasks), which awaits it. A restarted Hub whose records do not name the engine would
        otherwise never announce its end, and this client would never report what it got
        from it: a task the engine answered while the controller was down, its copies lost
        with the engine, stayed unknown to every other client. If the engine does not
        register again in time its end is announced, and :meth:`_engine_unregistered`
        reports its tasks then. Named again to each restarted Hub until then (the one that
        awaited it may be killed too: a new one has no record of it either); at most
        ``MAX_NAMED`` engines are remembered so, the oldest forgotten."""
        if self._io.closed:
            return
        self._remember_named(uuid, engine_id)
        content = {"engine_uuid": uuid, "tasks": [], "engine_id": engine_id}
        msg = self.session.msg("direct_lost_request", content)

        def on_reply(reply: Message) -> None:
            content = reply.content or {}
            if content.get("status") != "ok":  # it registered again meanwhile, say
                log.debug("client: engine %s not awaited: %s", uuid, content.get("evalue"))

        self._tell_hub(msg, on_reply)

    def _remember_named(self, uuid: str, engine_id: int) -> None:
        """(I/O thread) ``uuid`` is named to each restarted Hub until its end is announced
        (the newest ``MAX_NAMED`` engines)."""
        self._absent_named[uuid] = engine_id
        while len(self._absent_named) > MAX_NAMED:
            del self._absent_named[next(iter(self._absent_named))]

    def _tell_hub(self, msg: Message, on_reply: Callable[[Message], None]) -> None:
        """(I/O thread) Send the Hub ``msg``, whose answer nobody waits for: ``on_reply``
        reads it; no answer within the timeout is forgotten."""

        def on_timeout() -> None:
            self._records.pending.pop(msg.msg_id, None)

        self._records.track_service(msg.msg_id, "hub", on_reply=on_reply, request=msg)
        self._io.send_now("hub", self.session.serialize(msg))
        self._io.call_later(self.timeout, on_timeout)


def _not_among(entries: list[list[Any]], among: list[list[Any]]) -> list[list[Any]]:
    """The ``[msg_id, ...]`` entries whose msg_id none of ``among`` has."""
    have = {entry[0] for entry in among}
    return [entry for entry in entries if entry[0] not in have]


def answered_by(
    records: Records, uuid: str, purged: Container[str], now: datetime | None = None
) -> list[list[Any]]:
    """``[msg_id, submitted, status, started, completed]`` (and ``"task"`` for a
    load-balanced one) of the apply and execute requests
    ``records`` got answers for from the engine ``uuid`` within ``ANSWERED_WINDOW`` seconds
    before ``now``, newest first, at most ``ANSWERED_LATEST``, leaving out those in
    ``purged`` (purged from the Hub by this client: their records must not be made again).
    Asked when that engine ends, for the direct requests' report: their copies may have been
    queued on its copies PUSH when it died (the Hub reading slowly), and then only this
    client knows them. Requests failed here, without a reply, are not among them; direct
    requests whose records were forgotten since (no AsyncResult held them) are
    (:meth:`Records.forgotten_answers`)."""
    since = (now or datetime.now(UTC)) - timedelta(seconds=ANSWERED_WINDOW)
    requests = set(records.history)  # apply and execute: not control requests
    answered: list[list[Any]] = []
    metadata = records.metadata
    value = metadata.value  # one key at a time: no Metadata built for the records it reads
    entries = metadata.entries
    for msg_id in reversed(list(records.results)):  # one copy in C: safe beside workers
        if msg_id not in metadata or msg_id not in requests:
            continue
        balanced = is_balanced(entries.get(msg_id))
        entry = _answer_entry(msg_id, partial(value, msg_id), uuid, since, purged, balanced)
        if entry is _TOO_OLD:
            break  # results are settled about in the order their replies came
        if entry is not None:
            answered.append(entry)
            if len(answered) >= ANSWERED_LATEST:
                return answered
    seen = {entry[0] for entry in answered}
    for msg_id, kept in reversed(records.forgotten_answers(uuid)):
        if msg_id in seen:
            continue
        read = partial(compact_value, kept) if type(kept) is tuple else kept.get
        entry = _answer_entry(msg_id, read, uuid, since, purged, is_balanced(kept))
        if entry is _TOO_OLD:
            break  # kept in the order they were forgotten: about that of their replies
        if entry is not None:
            answered.append(entry)
            if len(answered) >= ANSWERED_LATEST:
                break
    return answered


def engines_answered(records: Records, now: datetime | None = None) -> set[str]:
    """The engines :func:`answered_by` may find answers of: those whose answers the records
    hold, got within ``ANSWERED_WINDOW`` seconds before ``now``, and those the forgotten
    answers keep. One pass over the held results, however many engines are asked about."""
    since = (now or datetime.now(UTC)) - timedelta(seconds=ANSWERED_WINDOW)
    engines = set(records.forgotten_engines())
    value = records.metadata.value
    for msg_id in reversed(list(records.results)):  # one copy in C: safe beside workers
        received = value(msg_id, "received", None)
        if received is None:
            continue
        if received < since:
            break  # results are settled about in the order their replies came
        engine = value(msg_id, "engine_uuid", None)
        if isinstance(engine, str):
            engines.add(engine)
    return engines


_TOO_OLD: list[Any] = []  # ``_answer_entry``'s answer for a reply older than the window


def _answer_entry(
    msg_id: str,
    read: Callable[[str, Any], Any],
    uuid: str,
    since: datetime,
    purged: Container[str],
    balanced: bool = False,
) -> list[Any] | None:
    """:func:`answered_by`'s entry of one request whose metadata ``read(key, default)``
    reads: None if another engine answered it or it has no answer to report,
    :data:`_TOO_OLD` if its reply came before ``since``; a ``balanced`` one (load-balanced)
    says so (``"task"``, its queue)."""
    if read("engine_uuid", None) != uuid:
        return None
    received = read("received", None)
    if received is None or received < since:
        return _TOO_OLD
    status, completed = read("status", None), read("completed", None)
    if completed is None or status not in ("ok", "error", "aborted") or msg_id in purged:
        return None
    started, submitted = read("started", None), read("submitted", None)
    entry = [
        msg_id,
        submitted.isoformat() if submitted is not None else None,
        status,
        started.isoformat() if started is not None else None,
        completed.isoformat(),
    ]
    if balanced:
        entry.append("task")
    return entry


def engine_gone(engine_id: int | None, uuid: str, why: str | None = None) -> EngineError:
    return EngineError(
        "EngineError",
        f"engine {engine_id} ({uuid}) was unregistered while this request was outstanding: "
        + (why or "it stopped, died or missed its heartbeats"),
        engine_id=engine_id,
        engine_uuid=uuid,
    )
