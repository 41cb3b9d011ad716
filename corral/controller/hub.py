"""The Hub as a state machine: engine registry, heartbeat timing, task records, queries.

Every method takes a decoded message (or the time) and returns what to do as values
(:mod:`corral.controller.hub_actions`): messages to send, and store writes. Its shell,
:mod:`corral.controller.hub_shell`, owns the sockets and the clock: it passes ``now`` (seconds
since the epoch) into every call that needs time, asks :meth:`Hub.next_deadline` when to call
:meth:`Hub.wake` next, and applies the writes. The Hub reads its injected
:class:`~corral.controller.store.base.ResultStore` for queries only. It is never on the data
path: it learns of requests and replies from the queues' monitor copies.

Rules that live here, so that tests drive them without sockets or sleeps: request validation,
engine ids (increasing, never handed out again unasked, above every stored one after a restore),
the beat once per period, the current beat repeated every ``REGISTRATION_PING`` while an engine
waits to be registered, probes every ``PROBE_PERIOD`` while an engine is suspected, and what an
engine's loss or a controller restart does to the records. The core's other parts are
functions of the Hub: :mod:`~corral.controller.hub_records` (records from monitor copies),
:mod:`~corral.controller.hub_restart` (``--restore``), :mod:`~corral.controller.hub_gone`
(engines gone) and :mod:`~corral.controller.hub_queries`; its heartbeat timing is a mixin,
:mod:`~corral.controller.hub_beat`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from corral.controller.activity import Activity
from corral.controller.heartbeat import AWAIT_AT_LEAST, HeartMonitor
from corral.controller.hub_actions import (
    Action,
    Send,
    Stop,
    UpdateRecord,
)
from corral.controller.hub_beat import PROBE_PERIOD, REGISTRATION_PING, HubHeartbeat
from corral.controller.hub_gone import (
    AwaitedEngine,
    GoneEngines,
    record_lost_direct,
    registered,
)
from corral.controller.hub_queries import QUERIES, Purged, answer
from corral.controller.hub_records import (
    iso_date,
    purge_recorded,
    record_destinations,
    record_reply,
    record_request,
)
from corral.controller.hub_restart import expect_answers, lost_balanced, restore
from corral.controller.hub_resubmit import resubmit_request
from corral.controller.scheduler_wire import HubCopy
from corral.controller.store.base import MessageJSON, ResultStore
from corral.errors import (
    InvalidContent,
    ProtocolError,
    QueryError,
    StoreError,
    UnknownMessageType,
)
from corral.protocol.messages import (
    KNOWN_TYPES,
    RESENDABLE,
    error_reply,
    ok_reply,
    validate_content,
)
from corral.protocol.session import Frame, Message, frame_view

__all__ = [
    "PROBE_PERIOD",
    "REGISTRATION_PING",
    "Action",
    "EngineEntry",
    "Hub",
    "Send",
    "Stop",
]

log = logging.getLogger("corral.hub")

#: The copies that make task records: prefix -> (queue, whether it is the request).
MONITORED = {
    b"mux_in": ("mux", True),
    b"task_in": ("task", True),
    b"mux_out": ("mux", False),
    b"task_out": ("task", False),
}


@dataclass
class EngineEntry:
    id: int
    uuid: str
    registered: str
    shm_host: str | None = None  # host identity for the same-host fast path (corral.sharedmem)
    direct: str | None = None  # where clients on its host may send direct requests
    queue: dict[str, None] = field(default_factory=dict)  # MUX msg_ids sent, not answered
    tasks: dict[str, None] = field(default_factory=dict)  # load-balanced msg_ids in flight
    completed: dict[str, None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # host, pid, MPI rank, launcher, job id
    cpus: dict[str, Any] | None = None  # its machine and CPU ids, passed on to the scheduler


@dataclass
class PendingRegistration:
    id: int
    uuid: str
    expires_at_beat: int
    shm_host: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    cpus: dict[str, Any] | None = None
    direct: str | None = None


class Hub(HubHeartbeat):
    """Registration, heartbeat bookkeeping, task records and queries for one controller.

    ``addresses`` are the URLs engines and clients need (the registration and connection replies
    carry them); the Hub beats every ``heartbeat_period`` seconds of the ``now`` it is given.
    """

    def __init__(
        self,
        store: ResultStore,
        engine_addresses: dict[str, str],
        client_addresses: dict[str, str | None],
        heartbeat_period: float,
        max_misses: int = 3,
        await_at_least: float = AWAIT_AT_LEAST,
    ) -> None:
        self.store = store
        self.engine_addresses = engine_addresses
        self.client_addresses = client_addresses
        self.heartbeat_period = heartbeat_period
        self.await_at_least = await_at_least  # seconds an awaited engine has to register (hub_gone)
        self.hearts = HeartMonitor(max_misses=max_misses)
        self.engines: dict[int, EngineEntry] = {}
        self.by_uuid: dict[str, EngineEntry] = {}
        self.pending_registrations: dict[str, PendingRegistration] = {}
        # registrations whose heart did not beat in time, newest last (at most
        # MAX_LAPSED_REGISTRATIONS): a heart that beats later registers then (hub_beat)
        self.lapsed_registrations: dict[str, PendingRegistration] = {}
        self.next_id = 0
        self.queries = 0  # requests answered (valid ones; the rejected are in ``rejected``)
        self.next_beat: float | None = None  # None: beat at the first wake
        self.next_repeat: float | None = None
        self.next_probe: float | None = None
        self.next_confirm: float | None = None  # replies_recorded, while replies come
        self.pending: dict[str, str | None] = {}  # msg_id -> engine uuid (None: unassigned)
        # settled tasks a purge named before their copies came: purged once recorded (bounded)
        self.purge_on_record: dict[str, None] = {}
        # what purges dropped, for a dead engine's answered tasks a client reports later
        # (hub_gone): they must not be made again (hub_queries.Purged)
        self.purged = Purged()
        self.dropped: set[str] = set()  # hearts this Hub declared dead
        self.gone = GoneEngines()  # engines it unregistered (dead or not): late copies' fate
        # engines not registered here that copies or restored records name (hub_gone)
        self.awaited: dict[str, AwaitedEngine] = {}
        self.retired_ids: set[int] = set()  # ids of engines gone while this Hub runs
        self.told_stale: set[str] = set()
        self.rejected = 0
        self.instance = self.hearts.instance.decode("ascii")
        # the identity of the Hub's own sockets on the MUX and task queues (resubmissions)
        self.resubmit_identity = f"hub-{self.instance}"
        self.restored: dict[str, str | None] = {}  # pending before a restart: msg_id -> engine
        self.reported: set[str] = set()  # restored or unknown tasks an engine says it holds
        self.expected_from: dict[str, list[str]] = {}  # engine uuid -> those it reported
        self.restored_until_beat = 0
        # restored load-balanced tasks (msg_id -> retries): no scheduler knows them now, so
        # the Hub decides whether one lost is failed or sent again by its client
        self.balanced: dict[str, int] = {}
        # load-balanced tasks failed as lost in a restart, which their client may send again
        self.resendable: set[str] = set()
        self.activity = Activity()  # counts and recent completions, for live views
        # engine uuid -> queue -> the newest reply seen from it since the last tick; then,
        # with the store's write mark, waiting until those records are written (oldest first)
        self.replies_seen: dict[str, dict[str, str]] = {}
        self.replies_writing: deque[tuple[int, dict[str, dict[str, str]]]] = deque()

    def restore(self) -> None:
        """After a restart: re-mark the tasks the store still has pending (see
        :func:`corral.controller.hub_restart.restore`)."""
        restore(self)

    # ------------------------------------------------------------ registration

    def handle_request(
        self,
        idents: Sequence[bytes],
        msg: Message,
        now: float,
        raw_content: Frame | bytes | None = None,
    ) -> list[Action]:
        """A message on the registration ROUTER: registration, connection, or a query.

        The shell parses the header only and passes the content frame as ``raw_content``; the
        Hub checks the type and the content (a request gets an error reply naming what is
        wrong, anything else is dropped) and answers. ``msg.content`` is used when
        ``raw_content`` is None (a message decoded whole)."""
        reply_type = msg.msg_type.replace("_request", "_reply")
        try:
            if msg.msg_type not in KNOWN_TYPES:
                raise UnknownMessageType(f"unknown msg_type {msg.msg_type!r}")
            content = msg.content if raw_content is None else orjson.loads(frame_view(raw_content))
            if not isinstance(content, dict):
                raise InvalidContent("content is not a JSON object")
            validate_content(msg.msg_type, content)
        except (ProtocolError, orjson.JSONDecodeError) as err:
            return self._refuse(idents, msg, reply_type, err)
        msg = replace(msg, content=content)
        query = QUERIES.get(msg.msg_type)
        handler: Callable[..., list[Action]] | None = (
            getattr(self, "_on_" + msg.msg_type, None) if query is None else None
        )
        if (query is None and handler is None) or not msg.msg_type.endswith("_request"):
            self.rejected += 1
            log.warning("hub: unexpected %s on the registration socket", msg.msg_type)
            if not msg.msg_type.endswith("_request"):
                return []
            why = f"the Hub does not handle {msg.msg_type}"
            return [answer(idents, msg, reply_type, error_reply("InvalidRequest", why))]
        self.queries += 1
        try:
            if query is not None:
                return query(self, idents, msg)
            assert handler is not None
            return handler(idents, msg, now)
        except (QueryError, InvalidContent, StoreError, ValueError, TypeError) as err:
            return self._refuse(idents, msg, reply_type, err)

    def _refuse(
        self, idents: Sequence[bytes], msg: Message, reply_type: str, err: Exception
    ) -> list[Action]:
        self.rejected += 1
        log.warning("hub: rejected %s: %s", msg.msg_type, err)
        if not msg.msg_type.endswith("_request"):
            return []
        return [answer(idents, msg, reply_type, error_reply(type(err).__name__, str(err)))]

    def _on_registration_request(
        self, idents: Sequence[bytes], msg: Message, now: float
    ) -> list[Action]:
        content = msg.content or {}
        uuid = content["uuid"]
        requested = content.get("id")
        if uuid in self.dropped:
            # a paused engine woke up and tries to come back: its tasks were failed or
            # resubmitted, so it must not answer for them, nor get an engine id again
            self.told_stale.add(uuid)
            return [
                answer(
                    idents,
                    msg,
                    "registration_reply",
                    error_reply(
                        "RegistrationError",
                        f"engine {uuid} was declared dead (it missed its heartbeats) and its "
                        "tasks were failed or resubmitted: it must stop; start a new engine",
                    ),
                ),
                Send(
                    "registration",
                    "unregistration_notification",
                    {"id": -1, "uuid": uuid},
                    idents=tuple(idents),
                ),
            ]
        if uuid in self.by_uuid or uuid in self.pending_registrations:
            return [
                answer(
                    idents,
                    msg,
                    "registration_reply",
                    error_reply("RegistrationError", f"engine uuid {uuid} is already registered"),
                )
            ]
        in_use = {e.id for e in self.engines.values()} | {
            p.id for p in self.pending_registrations.values()
        }
        # the id of an engine that is gone is never handed out unasked, but an engine may ask
        # for it: a supervisor restarting a dead engine keeps its id
        if requested is not None and requested in in_use:
            return [
                answer(
                    idents,
                    msg,
                    "registration_reply",
                    # id_in_use: the engine may ask again (its predecessor may be dying)
                    {
                        **error_reply("RegistrationError", f"engine id {requested} is in use"),
                        "id_in_use": requested,
                    },
                )
            ]
        if requested is None:
            engine_id = self.next_id
        else:
            engine_id = requested
        self.next_id = max(self.next_id, engine_id + 1)
        info = content.get("info")
        cpus = content.get("cpus")
        self.pending_registrations[uuid] = PendingRegistration(
            engine_id,
            uuid,
            self.hearts.beat + 2 * self.hearts.max_misses + 2,
            content.get("shm_host"),
            dict(info) if isinstance(info, dict) else {},
            dict(cpus) if isinstance(cpus, dict) else None,
            content.get("direct"),
        )
        self.told_stale.discard(uuid)
        self.lapsed_registrations.pop(uuid, None)  # this one supersedes it
        writes: list[Action] = []
        if "tasks" in content:
            writes = expect_answers(self, uuid, content["tasks"], content.get("balanced"))
        reply = ok_reply(
            id=engine_id, heartbeat_period=self.heartbeat_period, **self.engine_addresses
        )
        log.info("hub: engine %s asked to register as %d; waiting for its heart", uuid, engine_id)
        return [*writes, answer(idents, msg, "registration_reply", reply)]

    def _on_unregistration_request(
        self, idents: Sequence[bytes], msg: Message, now: float
    ) -> list[Action]:
        content = msg.content or {}
        entry = None
        if "uuid" in content:
            entry = self.by_uuid.get(content["uuid"])
        elif "id" in content:
            entry = self.engines.get(content["id"])
        if entry is None:
            return [
                answer(
                    idents,
                    msg,
                    "unregistration_reply",
                    error_reply("RegistrationError", f"no such engine: {content}"),
                )
            ]
        actions: list[Action] = [answer(idents, msg, "unregistration_reply", ok_reply())]
        actions.extend(self._unregister(entry, "engine asked to unregister", now))
        return actions

    def _on_connection_request(
        self, idents: Sequence[bytes], msg: Message, now: float
    ) -> list[Action]:
        engines = {str(e.id): e.uuid for e in self.engines.values()}
        hosts = {e.uuid: e.shm_host for e in self.engines.values() if e.shm_host}
        direct = {e.uuid: e.direct for e in self.engines.values() if e.direct}
        engine_info = {str(e.id): {"uuid": e.uuid, **e.info} for e in self.engines.values()}
        reply = ok_reply(
            engines=engines,
            controller=self.instance,
            engine_hosts=hosts,
            engine_direct=direct,
            engine_info=engine_info,
            **self.client_addresses,
        )
        return [answer(idents, msg, "connection_reply", reply)]

    def stale(self, msg: Message) -> str | None:
        """Why a request that changes state must not act here: it names another run of the
        controller (a zmq socket queues while it reconnects, so a request sent to a controller
        that died reaches the one restarted in its place)."""
        meant_for = (msg.content or {}).get("controller")
        if meant_for is None or meant_for == self.instance:
            return None
        self.rejected += 1
        log.warning("hub: ignored %s meant for controller run %s", msg.msg_type, meant_for)
        return (
            f"{msg.msg_type} was sent to an earlier run of this controller ({meant_for}; this "
            f"one is {self.instance}) and is ignored: send it again if it is still meant"
        )

    def _on_resubmit_request(
        self, idents: Sequence[bytes], msg: Message, now: float
    ) -> list[Action]:
        return resubmit_request(self, idents, msg, now)

    def _on_hub_shutdown_request(
        self, idents: Sequence[bytes], msg: Message, now: float
    ) -> list[Action]:
        stale = self.stale(msg)
        if stale is not None:
            content = error_reply("StaleRequest", stale)
            return [answer(idents, msg, "hub_shutdown_reply", content)]
        return [answer(idents, msg, "hub_shutdown_reply", ok_reply()), Stop()]

    def _register(self, pending: PendingRegistration, now: float) -> list[Action]:
        entry = EngineEntry(
            pending.id,
            pending.uuid,
            iso_date(now),
            pending.shm_host,
            direct=pending.direct,
            info=pending.info,
            cpus=pending.cpus,
        )
        self.engines[entry.id] = entry
        self.by_uuid[entry.uuid] = entry
        for msg_id in self.expected_from.pop(entry.uuid, []):
            if msg_id in self.pending:
                # no scheduler knows it now: if this engine dies, the Hub fails it
                entry.queue[msg_id] = None
        registered(self, entry)
        log.info("hub: engine %d (%s) registered", entry.id, entry.uuid)
        content: dict[str, Any] = {"id": entry.id, "uuid": entry.uuid}
        if entry.shm_host:
            content["shm_host"] = entry.shm_host
        if entry.cpus is not None:  # the scheduler checks it (scheduler_shell._cpus_from)
            content["cpus"] = entry.cpus
        if entry.direct:
            content["direct"] = entry.direct
        return [Send("notification", "registration_notification", content)]

    def _unregister(self, entry: EngineEntry, why: str, now: float) -> list[Action]:
        """Forget an engine; fail its direct tasks (writes), free its load-balanced ones."""
        del self.engines[entry.id]
        del self.by_uuid[entry.uuid]
        self.retired_ids.add(entry.id)
        self.hearts.forget(entry.uuid)
        log.info("hub: engine %d (%s) unregistered: %s", entry.id, entry.uuid, why)
        # a direct request whose copy comes later is recorded failed as these are
        # (corral.controller.hub_gone)
        gone = self.gone.add(entry.id, entry.uuid, why, now, clean=entry.uuid not in self.dropped)
        date = gone.date
        actions: list[Action] = []
        for msg_id in list(entry.queue):
            # direct tasks can never complete now; load-balanced ones are the scheduler's to
            # resubmit or fail, and its reply will update the record; those restored after a
            # controller restart no scheduler knows: their client may send them again
            self.pending.pop(msg_id, None)
            self.activity.complete(msg_id, entry.id, "error", None, date)
            self.gone.failed(msg_id, entry.uuid)
            changes = gone.failed_fields(entry.uuid)
            if lost_balanced(self, msg_id, never_ran=False):
                changes["result_metadata"][RESENDABLE] = True
            if gone.clean:  # its answer may still come (GoneEngines.take_answer)
                actions.append(UpdateRecord(msg_id, changes))
            else:  # settled: a purge that named it before its copies came takes it now
                actions.extend(purge_recorded(self, msg_id, [UpdateRecord(msg_id, changes)]))
        for msg_id in entry.tasks:
            self.pending[msg_id] = None
        content = {"id": entry.id, "uuid": entry.uuid, "why": why}
        actions.append(Send("notification", "unregistration_notification", content))
        return actions

    def _on_direct_lost_request(
        self, idents: Sequence[bytes], msg: Message, now: float
    ) -> list[Action]:
        """A client's direct tasks that died with their engine before it copied them
        (:func:`~corral.controller.hub_gone.record_lost_direct`)."""
        return record_lost_direct(self, idents, msg)

    def forget_purged(self, msg_ids: list[str]) -> None:
        """Results the store purged (time to live, size limit) leave the Hub's tables too, so a
        long-running controller's memory stays bounded like its store."""
        if not msg_ids:
            return
        for entry in self.engines.values():
            completed = entry.completed
            for msg_id in msg_ids:
                completed.pop(msg_id, None)

    # ------------------------------------------------------------ monitor: task records

    def handle_monitor(
        self,
        prefix: bytes,
        idents: Sequence[bytes],
        msg: Message,
        now: float,
        request_omitted: dict[str, Any] | None = None,
        texts: MessageJSON | None = None,
        *,
        direct: bool = False,
    ) -> list[Action]:
        """A copy of a queue's traffic, decoded: :meth:`handle_copy` of it."""
        copy = HubCopy.of(msg)
        return self.handle_copy(prefix, idents, copy, now, request_omitted, texts, direct=direct)

    def handle_copy(
        self,
        prefix: bytes,
        idents: Sequence[bytes],
        copy: HubCopy,
        now: float,
        request_omitted: dict[str, Any] | None = None,
        texts: MessageJSON | None = None,
        *,
        direct: bool = False,
    ) -> list[Action]:
        """A copy of a queue's traffic (as its shell reads it,
        :func:`~corral.controller.scheduler_wire.read_hub_copy`): the record writes for
        requests and replies (none for anything else). ``request_omitted``: why a request's
        copy comes without its buffers (see
        :func:`~corral.controller.hub_records.record_request`); ``texts``: the copy's JSON
        frames it was decoded from, if the shell has them as they came (the store may keep
        them instead of encoding the dicts again). ``direct``: the copy came from its engine's
        copies PUSH, not from the MUX device: a path of its own, so its replies are confirmed
        to the engine on a channel of their own (``replies_recorded``'s ``direct``; see
        :mod:`corral.engine.replies`)."""
        route = MONITORED.get(prefix)
        if route is None:  # the control queue's copies: nothing to record
            return []
        queue, request = route
        if request:
            return record_request(self, queue, idents, copy, request_omitted, texts)
        channel = "direct" if direct else queue
        return record_reply(self, queue, idents, copy, now, texts, channel)

    def handle_destination(self, msg_id: str, engine_uuid: str) -> list[Action]:
        """One dispatch of the scheduler's ``task_dest`` copy: :meth:`handle_destinations` of
        it alone."""
        return record_destinations(self, ((msg_id, engine_uuid),))

    def handle_destinations(self, destinations: Iterable[tuple[str, str]]) -> list[Action]:
        """The scheduler's ``task_dest`` copy (:mod:`.destination`): tasks that waited were
        sent to these engines, ``(msg_id, engine_uuid)`` each; one write of the engine fields
        of those the Hub still holds pending."""
        return record_destinations(self, destinations)
