"""The Hub as a state machine: engine registry, task records, and client queries.

Every method takes a decoded message (or a tick) and returns the messages to send, as
:class:`Send` values; :mod:`corral.controller.app` owns the sockets. The Hub is never on the data
path: it learns of requests and replies from the queues' monitor copies and writes them to a
:class:`~corral.controller.store.base.ResultStore`, whose writes happen off this thread.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.controller.activity import Activity
from corral.controller.heartbeat import HeartMonitor
from corral.controller.store.base import ResultStore, check_page
from corral.controller.store.query import validate_query
from corral.controller.store.retention import OMITTED_FIELD, not_stored_message
from corral.errors import EngineError, InvalidContent, QueryError, StoreError, error_content
from corral.protocol.messages import RESENDABLE, error_reply, ok_reply
from corral.protocol.session import Frame, Message, frame_view, utcnow

log = logging.getLogger("corral.hub")

MAX_QUERY_IDS = 100_000
# the fields of a result, emptied when a task lost in a restart is sent again
CLEARED_RESULT: dict[str, Any] = {
    "result_header": None,
    "result_metadata": None,
    "result_content": None,
    "result_buffers": [],
    "completed": None,
    "received": None,
}


@dataclass(frozen=True)
class Send:
    """A message for the app to send: on the registration ROUTER (``idents`` first) or the
    notification PUB."""

    channel: str
    msg_type: str
    content: dict[str, Any]
    parent: dict[str, Any] | None = None
    idents: tuple[bytes, ...] = ()
    buffers: tuple[Frame, ...] = ()


@dataclass(frozen=True)
class Stop:
    """The Hub was asked to shut the controller down (after its reply is sent)."""


Action = Send | Stop


@dataclass
class EngineEntry:
    id: int
    uuid: str
    registered: str
    shm_host: str | None = None  # host identity for the same-host fast path (corral.sharedmem)
    queue: dict[str, None] = field(default_factory=dict)  # MUX msg_ids sent, not answered
    tasks: dict[str, None] = field(default_factory=dict)  # load-balanced msg_ids in flight
    completed: dict[str, None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # host, pid, MPI rank, launcher, job id


@dataclass
class PendingRegistration:
    id: int
    uuid: str
    expires_at_beat: int
    shm_host: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Hub:
    """Registration, heartbeat bookkeeping, task records and queries for one controller.

    ``addresses`` are the URLs engines and clients need (the registration and connection replies
    carry them); ``heartbeat_period`` is only reported to engines, the app does the timing.
    """

    def __init__(
        self,
        store: ResultStore,
        engine_addresses: dict[str, str],
        client_addresses: dict[str, str | None],
        heartbeat_period: float,
        max_misses: int = 3,
        first_engine_id: int = 0,
    ) -> None:
        self.store = store
        self.engine_addresses = engine_addresses
        self.client_addresses = client_addresses
        self.heartbeat_period = heartbeat_period
        self.hearts = HeartMonitor(max_misses=max_misses)
        self.engines: dict[int, EngineEntry] = {}
        self.by_uuid: dict[str, EngineEntry] = {}
        self.pending_registrations: dict[str, PendingRegistration] = {}
        self.next_id = first_engine_id
        self.pending: dict[str, str | None] = {}  # msg_id -> engine uuid (None: unassigned)
        self.dropped: set[str] = set()  # hearts this Hub declared dead
        self.retired_ids: set[int] = set()  # ids of engines gone while this Hub runs
        self.told_stale: set[str] = set()
        self.rejected = 0
        self.instance = self.hearts.instance.decode("ascii")
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
        """After a restart: tasks the store still has pending may yet be answered by engines
        that survived, so their replies must be recorded when they come."""
        keys = ["engine_uuid", "queue", "metadata"]
        for record in self.store.find_records({"status": "pending"}, keys):
            self.pending[record["msg_id"]] = record.get("engine_uuid")
            if record.get("queue") == "task":
                retries = (record.get("metadata") or {}).get("retries")
                self.balanced[record["msg_id"]] = retries if isinstance(retries, int) else 0
        self.restored = dict(self.pending)
        self.restored_until_beat = self.hearts.beat + 2 * self.hearts.max_misses

    def _settle_restored(self) -> None:
        """Tasks pending before the restart whose engine did not come back in time (or that
        waited in the old scheduler, which is gone) can never be answered: fail them, so that
        no client waits for them for ever."""
        now = utcnow()
        for msg_id, engine_uuid in self.restored.items():
            if msg_id not in self.pending or msg_id in self.reported:
                continue
            del self.pending[msg_id]
            if engine_uuid in self.by_uuid:
                where = f"its engine {engine_uuid} came back without it: it never reached it"
            elif engine_uuid:
                where = f"its engine {engine_uuid} did not come back"
            else:
                where = "it waited in the task scheduler, which restarted empty"
            content = error_content(
                EngineError("EngineError", f"lost in a controller restart: {where}"), None, None
            )
            # a load-balanced task that never reached an engine, or may be retried: the client
            # that still holds the request sends it again (see corral.client.recovery)
            never_ran = engine_uuid is None or engine_uuid in self.by_uuid
            resendable = self._lost_balanced(msg_id, never_ran)
            self.store.update_record(
                msg_id,
                {
                    "status": "error",
                    "result_content": content,
                    "completed": now,
                    "result_metadata": {
                        "status": "error",
                        "engine_uuid": engine_uuid,
                        **({RESENDABLE: True} if resendable else {}),
                    },
                },
            )
            log.warning("hub: task %s %s", msg_id, f"lost in the restart: {where}")
        self.restored = {}
        self.reported.clear()

    def _lost_balanced(self, msg_id: str, never_ran: bool) -> bool:
        """Whether a restored task, now failed, is load-balanced and may be sent again: it
        never reached an engine, or its ``retries`` allow another attempt."""
        retries = self.balanced.pop(msg_id, None)
        if retries is None or not (never_ran or retries > 0):
            return False
        self.resendable.add(msg_id)
        return True

    def _expect_answers(self, uuid: str, msg_ids: Any) -> None:
        """An engine back after a restart holds these tasks or sends their replies again:
        the replies must be recorded, also of tasks this controller never saw recorded."""
        if not isinstance(msg_ids, list) or not all(isinstance(m, str) for m in msg_ids):
            raise InvalidContent("tasks must be a list of msg_ids")
        msg_ids = msg_ids[:MAX_QUERY_IDS]
        known = self.store.get_records([m for m in msg_ids if m not in self.pending])
        self.expected_from[uuid] = msg_ids
        for msg_id in msg_ids:
            if msg_id in self.pending:
                self.pending[msg_id] = uuid
                self.reported.add(msg_id)
            elif msg_id not in known:
                self.pending[msg_id] = uuid
                self.reported.add(msg_id)
                self.store.add_record(
                    msg_id,
                    {
                        "msg_id": msg_id,
                        "header": {"msg_id": msg_id},
                        "metadata": {},
                        "content": {},
                        "queue": None,
                        "client_uuid": None,
                        "engine_uuid": uuid,
                        "engine_id": None,
                        "submitted": None,
                        "status": "pending",
                        "started": None,
                        "completed": None,
                        "received": None,
                        "resubmitted": False,
                    },
                )

    # ------------------------------------------------------------ registration

    def handle_request(self, idents: Sequence[bytes], msg: Message) -> list[Action]:
        """A message on the registration ROUTER: registration, connection, or a query."""
        assert msg.content is not None
        handler = getattr(self, "_on_" + msg.msg_type, None)
        reply_type = msg.msg_type.replace("_request", "_reply")
        if handler is None or not msg.msg_type.endswith("_request"):
            self.rejected += 1
            log.warning("hub: unexpected %s on the registration socket", msg.msg_type)
            if not msg.msg_type.endswith("_request"):
                return []
            return [
                self._reply(
                    idents,
                    msg,
                    reply_type,
                    error_reply("InvalidRequest", f"the Hub does not handle {msg.msg_type}"),
                )
            ]
        try:
            result: list[Action] = handler(idents, msg)
            return result
        except (QueryError, InvalidContent, StoreError, ValueError, TypeError) as err:
            self.rejected += 1
            log.warning("hub: %s rejected: %s", msg.msg_type, err)
            content = error_reply(type(err).__name__, str(err))
            return [self._reply(idents, msg, reply_type, content)]

    def _reply(
        self,
        idents: Sequence[bytes],
        request: Message,
        msg_type: str,
        content: dict[str, Any],
        buffers: Iterable[Frame] = (),
    ) -> Send:
        return Send(
            "registration", msg_type, content, request.header, tuple(idents), tuple(buffers)
        )

    def _on_registration_request(self, idents: Sequence[bytes], msg: Message) -> list[Action]:
        content = msg.content or {}
        uuid = content["uuid"]
        requested = content.get("id")
        if uuid in self.dropped:
            # a paused engine woke up and tries to come back: its tasks were failed or
            # resubmitted, so it must not answer for them, nor get an engine id again
            self.told_stale.add(uuid)
            return [
                self._reply(
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
                self._reply(
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
                self._reply(
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
        self.pending_registrations[uuid] = PendingRegistration(
            engine_id,
            uuid,
            self.hearts.beat + 2 * self.hearts.max_misses + 2,
            content.get("shm_host"),
            dict(info) if isinstance(info, dict) else {},
        )
        self.told_stale.discard(uuid)
        if "tasks" in content:
            self._expect_answers(uuid, content["tasks"])
        reply = ok_reply(
            id=engine_id, heartbeat_period=self.heartbeat_period, **self.engine_addresses
        )
        log.info("hub: engine %s asked to register as %d; waiting for its heart", uuid, engine_id)
        return [self._reply(idents, msg, "registration_reply", reply)]

    def _on_unregistration_request(self, idents: Sequence[bytes], msg: Message) -> list[Action]:
        content = msg.content or {}
        entry = None
        if "uuid" in content:
            entry = self.by_uuid.get(content["uuid"])
        elif "id" in content:
            entry = self.engines.get(content["id"])
        if entry is None:
            return [
                self._reply(
                    idents,
                    msg,
                    "unregistration_reply",
                    error_reply("RegistrationError", f"no such engine: {content}"),
                )
            ]
        actions: list[Action] = [self._reply(idents, msg, "unregistration_reply", ok_reply())]
        actions.extend(self._unregister(entry, "engine asked to unregister"))
        return actions

    def _on_connection_request(self, idents: Sequence[bytes], msg: Message) -> list[Action]:
        engines = {str(e.id): e.uuid for e in self.engines.values()}
        hosts = {e.uuid: e.shm_host for e in self.engines.values() if e.shm_host}
        engine_info = {str(e.id): {"uuid": e.uuid, **e.info} for e in self.engines.values()}
        reply = ok_reply(
            engines=engines,
            controller=self.instance,
            engine_hosts=hosts,
            engine_info=engine_info,
            **self.client_addresses,
        )
        return [self._reply(idents, msg, "connection_reply", reply)]

    def _stale(self, msg: Message) -> str | None:
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

    def _on_hub_shutdown_request(self, idents: Sequence[bytes], msg: Message) -> list[Action]:
        stale = self._stale(msg)
        if stale is not None:
            content = error_reply("StaleRequest", stale)
            return [self._reply(idents, msg, "hub_shutdown_reply", content)]
        return [self._reply(idents, msg, "hub_shutdown_reply", ok_reply()), Stop()]

    def _register(self, pending: PendingRegistration) -> list[Action]:
        entry = EngineEntry(pending.id, pending.uuid, utcnow(), pending.shm_host, info=pending.info)
        self.engines[entry.id] = entry
        self.by_uuid[entry.uuid] = entry
        for msg_id in self.expected_from.pop(entry.uuid, []):
            if msg_id in self.pending:
                # no scheduler knows it now: if this engine dies, the Hub fails it
                entry.queue[msg_id] = None
        log.info("hub: engine %d (%s) registered", entry.id, entry.uuid)
        content: dict[str, Any] = {"id": entry.id, "uuid": entry.uuid}
        if entry.shm_host:
            content["shm_host"] = entry.shm_host
        return [Send("notification", "registration_notification", content)]

    def _unregister(self, entry: EngineEntry, why: str) -> list[Action]:
        del self.engines[entry.id]
        del self.by_uuid[entry.uuid]
        self.retired_ids.add(entry.id)
        self.hearts.forget(entry.uuid)
        log.info("hub: engine %d (%s) unregistered: %s", entry.id, entry.uuid, why)
        failure = error_content(
            EngineError(
                "EngineError",
                f"engine {entry.id} died or was unregistered ({why}) "
                "while this task was queued or running",
                engine_id=entry.id,
                engine_uuid=entry.uuid,
            ),
            entry.id,
            entry.uuid,
        )
        now = utcnow()
        for msg_id in list(entry.queue):
            # direct tasks can never complete now; load-balanced ones are the scheduler's to
            # resubmit or fail, and its reply will update the record; those restored after a
            # controller restart no scheduler knows: their client may send them again
            self.pending.pop(msg_id, None)
            self.activity.complete(msg_id, entry.id, "error", None, now)
            resendable = self._lost_balanced(msg_id, never_ran=False)
            self.store.update_record(
                msg_id,
                {
                    "status": "error",
                    "result_content": failure,
                    "completed": now,
                    "result_metadata": {
                        "status": "error",
                        "engine_id": entry.id,
                        "engine_uuid": entry.uuid,
                        **({RESENDABLE: True} if resendable else {}),
                    },
                },
            )
        for msg_id in entry.tasks:
            self.pending[msg_id] = None
        content = {"id": entry.id, "uuid": entry.uuid, "why": why}
        return [Send("notification", "unregistration_notification", content)]

    # ------------------------------------------------------------ heartbeat

    def tick(self) -> tuple[bytes, list[Action]]:
        """One heartbeat period: the ping payload, and what failures and expiries mean."""
        payload, failed = self.hearts.tick()
        try:
            self._forget_purged(self.store.expire_results())
        except StoreError as err:  # a failing store must not stop the heartbeat
            log.error("hub: purging expired results failed: %s", err)
        actions: list[Action] = self._confirm_recorded()
        if self.restored and self.hearts.beat >= self.restored_until_beat:
            self._settle_restored()
        for uuid in failed:
            entry = self.by_uuid.get(uuid)
            if entry is not None:
                self.dropped.add(uuid)
                actions.extend(self._unregister(entry, "heartbeat stopped"))
        for uuid, pending in list(self.pending_registrations.items()):
            if pending.expires_at_beat <= self.hearts.beat:
                del self.pending_registrations[uuid]
                self.expected_from.pop(uuid, None)
                log.warning("hub: engine %s registered but its heart never beat", uuid)
        return payload, actions

    def _confirm_recorded(self) -> list[Action]:
        """Tell each engine which of its replies are now written to the store, so that it stops
        keeping them for a restarted controller (see :mod:`corral.engine.replies`). Never
        waits for the store: replies seen since the last tick wait for a later one."""
        if self.replies_seen:
            self.replies_writing.append((self.store.write_mark(), self.replies_seen))
            self.replies_seen = {}
        done: dict[str, dict[str, str]] = {}
        while self.replies_writing and self.store.written(self.replies_writing[0][0]):
            for uuid, newest in self.replies_writing.popleft()[1].items():
                done.setdefault(uuid, {}).update(newest)
        return [
            Send("registration", "replies_recorded", newest, idents=(uuid.encode(),))
            for uuid, newest in done.items()
            if uuid in self.by_uuid
        ]

    def _forget_purged(self, msg_ids: list[str]) -> None:
        """Results the store purged (time to live, size limit) leave the Hub's tables too, so a
        long-running controller's memory stays bounded like its store."""
        if not msg_ids:
            return
        for entry in self.engines.values():
            completed = entry.completed
            for msg_id in msg_ids:
                completed.pop(msg_id, None)

    def connection_closed(self, uuid: str) -> None:
        """A connection of this engine closed (the app saw it on the pong socket): probe it."""
        if uuid in self.by_uuid:
            self.hearts.suspect(uuid)

    def probe(self) -> tuple[bytes, list[Action]]:
        """A probe to publish while engines are suspected; those that stopped answering are
        unregistered as dead, as after missed beats (their late replies are ignored)."""
        payload, failed = self.hearts.probe()
        actions: list[Action] = []
        for uuid in failed:
            entry = self.by_uuid.get(uuid)
            if entry is not None:
                self.dropped.add(uuid)
                actions.extend(self._unregister(entry, "its connections closed: it died"))
        return payload, actions

    def handle_pong(self, uuid: str, payload: bytes) -> list[Action]:
        if uuid in self.by_uuid:
            self.hearts.pong(uuid, payload)
            return []
        pending = self.pending_registrations.pop(uuid, None)
        if pending is not None:
            self.hearts.pong(uuid, payload)
            return self._register(pending)
        if uuid in self.dropped and uuid not in self.told_stale:
            # a heart we dropped (paused process, partition) came back: its tasks were failed
            # or resubmitted, so tell it to stop rather than let it answer for them twice.
            # Hearts this Hub never knew (it was restarted) re-register by themselves.
            self.told_stale.add(uuid)
            log.warning("hub: heart %s beats but is not registered; telling it to stop", uuid)
            return [
                Send(
                    "registration",
                    "unregistration_notification",
                    {"id": -1, "uuid": uuid},
                    idents=(uuid.encode(),),
                )
            ]
        return []

    # ------------------------------------------------------------ monitor: task records

    def handle_monitor(self, prefix: bytes, idents: Sequence[bytes], msg: Message) -> None:
        """A copy of a queue's traffic: record requests, destinations and replies."""
        queue, _, direction = prefix.decode("ascii", "replace").partition("_")
        if direction == "in" and queue in ("mux", "task"):
            self._record_request(queue, idents, msg)
        elif direction == "out" and queue in ("mux", "task"):
            self._record_reply(queue, idents, msg)
        elif direction == "dest" and msg.content is not None:
            self._record_destination(msg.content["msg_id"], msg.content["engine_id"])

    def _record_request(self, queue: str, idents: Sequence[bytes], msg: Message) -> None:
        if msg.msg_type not in ("apply_request", "execute_request"):
            return
        # monitor copies carry identities as the queue sent them on: destination first, so a
        # MUX request is (engine, client) and a task request, not yet routed, is (client,)
        if queue == "mux":
            engine_uuid: str | None = _ident(idents, 0)
            client = _ident(idents, 1)
        else:
            engine_uuid, client = None, _ident(idents, 0)
        entry = self.by_uuid.get(engine_uuid) if engine_uuid else None
        msg_id = msg.msg_id
        self.pending[msg_id] = engine_uuid
        if entry is not None:
            entry.queue[msg_id] = None
        label = msg.metadata.get("label")
        self.activity.submit()
        resent = msg_id in self.resendable  # sent again after a restart lost it
        self.resendable.discard(msg_id)
        self.store.add_record(
            msg_id,
            {
                **({"label": label} if isinstance(label, str) else {}),
                "msg_id": msg_id,
                "header": msg.header,
                "metadata": msg.metadata,
                "content": msg.content or {},
                "queue": queue,
                "client_uuid": client,
                "engine_uuid": engine_uuid,
                "engine_id": entry.id if entry else None,
                "submitted": msg.header.get("date"),
                "status": "pending",
                "started": None,
                "completed": None,
                "received": None,
                "resubmitted": resent,
                **(CLEARED_RESULT if resent else {}),
            },
        )

    def _record_destination(self, msg_id: str, engine_uuid: str) -> None:
        entry = self.by_uuid.get(engine_uuid)
        if msg_id not in self.pending:
            return
        self.pending[msg_id] = engine_uuid
        if entry is not None:
            entry.tasks[msg_id] = None
        self.store.update_record(
            msg_id, {"engine_uuid": engine_uuid, "engine_id": entry.id if entry else None}
        )

    def _record_reply(self, queue: str, idents: Sequence[bytes], msg: Message) -> None:
        msg_id = msg.parent_id
        if msg_id is None:
            return
        engine_uuid = _ident(idents, 1)  # a reply travels (client, engine)
        if engine_uuid in self.by_uuid:  # its engine may forget it once it is written
            self.replies_seen.setdefault(engine_uuid, {})[queue] = msg_id
        if msg_id not in self.pending:
            return  # a duplicate (e.g. a resumed engine's late reply) or not a task
        if engine_uuid in self.dropped:
            return  # a late reply of an engine declared dead: its tasks were settled without it
        expected = self.pending.pop(msg_id)
        if expected is not None and expected != engine_uuid and engine_uuid != "scheduler":
            self.pending[msg_id] = expected
            return  # a reply from an engine the task was taken away from
        self.balanced.pop(msg_id, None)
        entry = self.by_uuid.get(engine_uuid) or (self.by_uuid.get(expected) if expected else None)
        if entry is not None:
            entry.queue.pop(msg_id, None)
            entry.tasks.pop(msg_id, None)
            entry.completed[msg_id] = None
        content = msg.content or {}
        metadata = msg.metadata
        self.activity.complete(
            msg_id,
            entry.id if entry else metadata.get("engine_id"),
            str(content.get("status", "error")),
            metadata.get("started"),
            metadata.get("completed"),
        )
        self.store.update_record(
            msg_id,
            {
                "status": content.get("status", "error"),
                "result_header": msg.header,
                "result_metadata": metadata,
                "result_content": content,
                "result_buffers": [frame_view(b) for b in msg.buffers],
                "started": metadata.get("started"),
                "completed": metadata.get("completed") or utcnow(),
                "received": utcnow(),
                "stdout": metadata.get("stdout", ""),
                "stderr": metadata.get("stderr", ""),
                "engine_uuid": entry.uuid if entry else engine_uuid,
                "engine_id": entry.id if entry else metadata.get("engine_id"),
            },
        )

    # ------------------------------------------------------------ queries

    def _targets(self, targets: Any) -> list[EngineEntry]:
        if targets is None:
            return sorted(self.engines.values(), key=lambda e: e.id)
        if not isinstance(targets, list):
            raise QueryError("targets must be a list of engine ids or uuids, or null")
        entries = []
        for target in targets:
            entry = (
                self.engines.get(target)
                if isinstance(target, int)
                else self.by_uuid.get(target)
                if isinstance(target, str)
                else None
            )
            if entry is None:
                raise QueryError(f"no such engine: {target!r}")
            entries.append(entry)
        return entries

    def _msg_ids(self, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
            raise QueryError("msg_ids must be a list of strings")
        if len(value) > MAX_QUERY_IDS:
            raise QueryError(f"too many msg_ids in one query: {len(value)} > {MAX_QUERY_IDS}")
        return value

    def _on_queue_request(self, idents: Sequence[bytes], msg: Message) -> list[Action]:
        content = msg.content or {}
        verbose = content.get("verbose", False)
        reply: dict[str, Any] = ok_reply()
        for entry in self._targets(content.get("targets")):
            lists = {
                "completed": list(entry.completed),
                "queue": list(entry.queue),
                "tasks": list(entry.tasks),
            }
            reply[str(entry.id)] = lists if verbose else {k: len(v) for k, v in lists.items()}
        unassigned = [msg_id for msg_id, engine in self.pending.items() if engine is None]
        reply["unassigned"] = unassigned if verbose else len(unassigned)
        return [self._reply(idents, msg, "queue_reply", reply)]

    def _on_result_request(self, idents: Sequence[bytes], msg: Message) -> list[Action]:
        content = msg.content or {}
        msg_ids = self._msg_ids(content.get("msg_ids"))
        statusonly = content.get("statusonly", False)
        records = self.store.get_records(msg_ids)
        unknown = [m for m in msg_ids if m not in records]
        if unknown and content.get("unknown_pending"):
            # the asker may know of a submission whose copy has not reached the Hub yet: it
            # is told so, and asks again (see Client.get_result)
            reply_unknown: dict[str, Any] = ok_reply(pending=[], completed=[], unknown=unknown)
            known = [m for m in msg_ids if m in records]
            msg_ids, unknown = known, []
        else:
            reply_unknown = {}
        if unknown:
            raise QueryError(
                f"no such msg_id: {unknown[0]}"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            )
        reply: dict[str, Any] = reply_unknown or ok_reply(pending=[], completed=[])
        buffers: list[Frame] = []
        for msg_id in msg_ids:
            record = records[msg_id]
            if record.get("status") == "pending" or msg_id in self.pending:
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
        return [self._reply(idents, msg, "result_reply", reply, buffers)]

    def _on_purge_request(self, idents: Sequence[bytes], msg: Message) -> list[Action]:
        stale = self._stale(msg)
        if stale is not None:
            return [self._reply(idents, msg, "purge_reply", error_reply("StaleRequest", stale))]
        content = msg.content or {}
        msg_ids = content.get("msg_ids", [])
        engine_ids = content.get("engine_ids") or []
        if msg_ids == "all":
            self.store.drop_matching_records({"status": {"$ne": "pending"}})
            for entry in self.engines.values():
                entry.completed.clear()
        else:
            msg_ids = self._msg_ids(msg_ids)
            records = self.store.get_records(msg_ids)
            for msg_id in msg_ids:
                if msg_id not in records:
                    raise QueryError(f"cannot purge unknown msg_id {msg_id}")
                if msg_id in self.pending or records[msg_id].get("status") == "pending":
                    raise QueryError(f"cannot purge pending msg_id {msg_id}")
            self.store.drop_records(msg_ids)
            for entry in self.engines.values():
                for msg_id in msg_ids:
                    entry.completed.pop(msg_id, None)
        for entry in self._targets(list(engine_ids)) if engine_ids else []:
            self.store.drop_matching_records(
                {"engine_uuid": entry.uuid, "status": {"$ne": "pending"}}
            )
            entry.completed.clear()
        return [self._reply(idents, msg, "purge_reply", ok_reply())]

    def _on_history_request(self, idents: Sequence[bytes], msg: Message) -> list[Action]:
        return [
            self._reply(idents, msg, "history_reply", ok_reply(history=self.store.get_history()))
        ]

    def _on_db_request(self, idents: Sequence[bytes], msg: Message) -> list[Action]:
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
            records, extra["total"] = self.store.find_page(
                query, keys, limit=limit, skip=skip, newest_first=newest_first
            )
        else:
            records = self.store.find_records(query, keys)
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
        return [self._reply(idents, msg, "db_reply", reply, buffers)]

    def _on_status_request(self, idents: Sequence[bytes], msg: Message) -> list[Action]:
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
            for entry in self.engines.values()
        }
        unassigned = sum(1 for engine in self.pending.values() if engine is None)
        reply = ok_reply(
            instance=self.hearts.instance.decode(),
            engines=engines,
            unassigned=unassigned,
            pending=len(self.pending),
            **self.activity.since(since),
        )
        return [self._reply(idents, msg, "status_reply", reply)]


def _ident(idents: Sequence[bytes], index: int) -> str:
    return idents[index].decode("utf-8", "replace") if len(idents) > index else ""
