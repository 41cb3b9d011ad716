"""The task scheduler's socket shell: frames between clients, engines and the Hub, on one loop.

Drives :class:`~corral.controller.scheduling.SchedulerCore` (every decision is the core's,
including retries of a Dispatch an engine could not take yet and which late replies to drop) on
one :class:`~corral.loop.Loop`. Client-facing ROUTER in, engine-facing ROUTER out
(docs/wire-flows.md). Per task it verifies the signature and reads only what it decides on
(:mod:`.scheduler_wire`); content and buffers are forwarded as the frames they arrived in.
Copies go to the Hub's monitor SUB (``task_in``, ``task_out``, always in bundles:
:mod:`corral.bundles`; the compact ``task_dest`` of :mod:`.destination`); a message is laid
out once for its peer and the Hub: the bundle of replies made for a client is also the Hub's
``task_out`` copies (the client outbox's mirror), and a client's bundle of requests that all
wait here is passed on as their ``task_in`` copies (:meth:`SchedulerShell._on_requests`).
Engines come and go through the Hub's notifications. The process around it is
:mod:`corral.controller.scheduler`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import zmq
from zmq.auth.thread import ThreadAuthenticator

from corral import heap
from corral.bundles import MARK, Outbox
from corral.controller.cpu_wait import LocalEngines, read_schedstat
from corral.controller.destination import MAX_ENTRIES, Dispatched, destinations_frames
from corral.controller.packing import BURST_PACKING
from corral.controller.scheduler_wire import read_reply, read_request, split_route
from corral.controller.scheduling import SchedulerCore
from corral.controller.scheduling_state import (
    BURST_PREFETCH,
    LONG_TASK,
    Action,
    Complete,
    Dispatch,
    Fail,
    Task,
)
from corral.errors import CorralError, ProtocolError, RemoteError, error_content
from corral.loop import Loop, Timer
from corral.protocol.dependency import Dependency
from corral.protocol.session import (
    DELIMITER,
    Frame,
    Session,
    frame_view,
    utcnow,
)
from corral.security import CurveKeys, make_client, make_server, start_authenticator

log = logging.getLogger("corral.scheduler")

#: compiled, ``time.monotonic`` is an attribute lookup on the module at every call
_monotonic: Final = time.monotonic

SCHEDULER_IDENT: Final = b"scheduler"
SCHEDULING_FIELDS: Final = frozenset(
    ("after", "follow", "targets", "timeout", "retries", "priority")
)
"""The metadata keys :func:`_task_from` reads."""
TRIM_SCHEDULE: Final = (10_000, 2.0, 30.0)
"""Give freed memory back after 10,000 finished tasks, when none is pending (at most every 2 s),
or every 30 s if some always are: :class:`corral.heap.TrimSchedule`."""


@dataclass(slots=True, init=False)
class Pending:
    """A task the scheduler holds: who sent it, what it read of it (:mod:`.scheduler_wire`),
    and its frames, untouched. (Its ``__init__`` written out: compiled, a dataclass's own is
    interpreted Python, 0.16 against 0.05 us, for every request.)"""

    client: bytes
    msg_id: str
    header: dict[str, Any]
    metadata: dict[str, Any]
    frames: list[Frame]  # after the delimiter: signature, 4 JSON frames, buffers
    reply: list[Frame] | None  # the engine's reply as it goes to the client, once read
    copied: bool  # its task_in copy went to the Hub
    queued_to: str | None  # the engine of a Dispatch this turn will send

    def __init__(
        self,
        client: bytes,
        msg_id: str,
        header: dict[str, Any],
        metadata: dict[str, Any],
        frames: list[Frame],
    ) -> None:
        self.client = client
        self.msg_id = msg_id
        self.header = header
        self.metadata = metadata
        self.frames = frames
        self.reply = None
        self.copied = False
        self.queued_to = None


class SchedulerShell:
    """Owns the scheduler's sockets and its loop; every decision is the core's.

    Build it on the thread that runs :attr:`loop` (the process's main thread), then
    ``loop.run()`` until ``loop.stop()``; :meth:`close` releases the sockets.
    """

    def __init__(self, settings: dict[str, Any], context: zmq.Context[Any] | None = None) -> None:
        """``settings``: what the controller writes on the scheduler's stdin
        (:meth:`Controller._start_scheduler <corral.controller.app.Controller>`); ``policy``,
        ``max_outstanding``, ``burst_prefetch`` (default :data:`~corral.controller.
        scheduling_state.BURST_PREFETCH`), ``burst_packing`` (default
        :data:`~corral.controller.packing.BURST_PACKING`) and ``long_task`` (default
        :data:`~corral.controller.scheduling_state.LONG_TASK`) go to the core, which refuses
        bad values."""
        self.context = context or zmq.Context()
        self.loop = Loop("scheduler")
        self.session = Session(
            settings["key"], signature_scheme=settings["signature_scheme"], username="scheduler"
        )
        self.core = SchedulerCore(
            settings.get("policy", "leastload"),
            int(settings.get("max_outstanding", 16)),
            burst_prefetch=int(settings.get("burst_prefetch", BURST_PREFETCH)),
            burst_packing=int(settings.get("burst_packing", BURST_PACKING)),
            read_cpu=read_schedstat,
            own_pid=os.getpid(),
            long_task=settings.get("long_task", LONG_TASK),
        )
        self._local = LocalEngines()  # engines whose CPU time the core may read (packing)
        limit = settings.get("request_buffer_limit")
        # the Hub keeps a request's buffers up to this size (for a resubmission): larger ones
        # are left out of its copy, which says so (None: always copied)
        self.request_buffer_limit: int | None = limit if isinstance(limit, int) else None
        url = settings["url"]
        # under --curve: ROUTERs are curve servers, the sockets to the Hub curve clients
        self.curve = CurveKeys.from_connection(settings)
        self._authenticator: ThreadAuthenticator | None = None
        if self.curve is not None:
            self._authenticator = start_authenticator(self.context, self.curve)
        self.clients = self._socket(zmq.ROUTER, server=True)
        self.clients.sndhwm = 0  # a ROUTER drops replies it cannot queue: a slow client waits
        self.client_port = _bind(self.clients, url, settings.get("task"))
        self.engines = self._socket(zmq.ROUTER, server=True)
        self.engines.router_mandatory = True
        self.engine_port = _bind(self.engines, url, settings.get("task_engine"))
        self.notifications = self._socket(zmq.SUB, server=False)
        self.notifications.subscribe(b"")
        self.notifications.connect(settings["notification"])
        self.monitor = self._socket(zmq.PUB, server=False)
        self.monitor.sndhwm = 0  # a dropped copy is a task the Hub never records
        self.monitor.connect(settings["monitor"])
        # a Hub that trusts this scheduler's copies does not check their signatures: the one
        # copy signed only for it (task_dest) goes unsigned then (docs/wire-flows.md)
        self.sign_copies = not settings.get("trusted_copies", False)
        # what a turn sends, sent at its end, a bundle per peer (corral.bundles); Dispatches
        # made this turn, for their copies once the engines' sends are done (_flush)
        # every reply to a client has its task_out copy for the Hub: the client's bundle is
        # sent there too, behind the prefix (made once, not once per peer)
        self.to_clients = Outbox(self.clients, 1, mirror=(self.monitor, [b"task_out"]))
        self.to_engines = Outbox(self.engines, 1)
        self.to_hub = Outbox(self.monitor, 0, always_bundle=True)  # the Hub reads bundles
        self._dispatched: list[tuple[Pending, str, int]] = []
        # while a client's bundle is read (_on_requests): its requests held without a copy
        self._held: list[Pending] | None = None
        self._read = 0  # requests of that bundle read, held or not
        self.pending: dict[str, Pending] = {}
        self.counts = {"submitted": 0, "completed": 0, "failed": 0, "duplicates": 0, "trims": 0}
        min_work, min_interval, max_interval = settings.get("trim_schedule", TRIM_SCHEDULE)
        self._trim = heap.TrimSchedule(int(min_work), float(min_interval), float(max_interval))
        self._timer: Timer | None = None
        # the core's actions were performed this turn: its next deadline may have moved, asked
        # once at the turn's end (_flush), not after every message (see _perform)
        self._deadline_moved = False
        # engines come and go first, then replies (they free slots), then new requests
        self.loop.add_socket(self.notifications, self._on_notification)
        # small frames read as bytes (corral.sockets.recv_small_as_bytes): parsed without a
        # view per read, and bundled on as they are
        self.loop.add_socket(self.engines, self._on_engine_reply, bundles=True, small_as_bytes=True)
        self.loop.add_socket(self.clients, self._on_requests, small_as_bytes=True)
        self.loop.at_turn_end(self._flush)

    def _socket(self, kind: int, *, server: bool) -> zmq.Socket[Any]:
        sock = self.context.socket(kind)
        sock.linger = 0
        if self.curve is not None:
            (make_server if server else make_client)(sock, self.curve)
        return sock

    # ------------------------------------------------------------ time

    def _schedule(self) -> None:
        """Arm the one timer for the core's next deadline, if sooner than the armed one."""
        when = self.core.next_deadline()
        if when is None:
            return
        timer = self._timer
        if timer is not None and not timer.cancelled:
            if timer.when <= when:
                return
            timer.cancel()
        self._timer = self.loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._perform(self.core.tick(time.monotonic()))

    # ------------------------------------------------------------ sockets

    def _on_notification(self, frames: list[zmq.Frame]) -> None:
        msg = self.session.feed(frames)
        content = msg.content or {}
        uuid = content.get("uuid")
        if not isinstance(uuid, str):
            return
        if msg.msg_type == "registration_notification":
            reported = content.get("cpus")
            machine, cpus = _cpus_from(reported)
            pid = self._local.pid(reported) if machine and isinstance(reported, dict) else None
            try:
                self._perform(self.core.add_engine(uuid, machine, cpus, pid))
            except ValueError:
                log.warning("engine %s registered twice", uuid)
        elif msg.msg_type == "unregistration_notification":
            self._perform(self.core.remove_engine(uuid))

    def _on_requests(self, frames: list[zmq.Frame]) -> None:
        """What the clients ROUTER received: one request, or a client's bundle of them
        (:mod:`corral.bundles`), each read by :meth:`_on_request`. When every request of a
        bundle is held here without a copy yet (none went to an engine at once, none was
        refused, dropped or answered, none with buffers over the store's limit), the bundle
        itself goes to the Hub behind ``task_in``: unbundled there, each copy is the frames
        it would have had alone, ``[b"task_in", client_id, DELIMITER, ...]``, as the client's
        requests they are (signatures checked here), and the scheduler lays none of them
        out again. Otherwise each gets its own copy, as a request alone does."""
        if len(frames) < 4 or len(frames[1]) != len(MARK) or bytes(frame_view(frames[1])) != MARK:
            self.loop.deliver(self._on_request, frames)  # a request alone
            return
        limit = self.request_buffer_limit
        if limit is not None and sum(len(frame) for frame in frames) > limit:
            self.loop.deliver(self._on_request, frames)  # some may be over the limit
            return
        held: list[Pending] = []
        self._held, self._read = held, 0
        try:
            self.loop.deliver(self._on_request, frames)
        finally:
            self._held = None
        count = int.from_bytes(frame_view(frames[2])[:8], "little", signed=True)
        whole = 0 < self._read == count == len(held) and all(
            pending.queued_to is None
            and not pending.copied
            and self.pending.get(pending.msg_id) is pending
            for pending in held
        )
        if whole:
            for pending in held:
                pending.copied = True
            self.to_hub.put_bundle([b"task_in", *frames], count)
            return
        for pending in held:
            if pending.queued_to is None:
                self._copy_request(pending)

    def _on_request(self, frames: Sequence[Frame]) -> None:
        if self._held is not None:
            self._read += 1
        idents, msg_frames = split_route(frames)
        if not idents:
            raise ProtocolError("task request without a client identity")
        header, metadata = read_request(self.session, msg_frames)
        msg_id: str = header["msg_id"]
        client = idents[0]
        if self.core.task_state(msg_id) is not None:
            # a client sends a load-balanced request again when a controller restart may have
            # lost it (same msg_id, a new signature); this copy must neither replace the held
            # one nor give it a second outcome
            self.counts["duplicates"] += 1
            log.info("task %s sent again while held here: the copy is dropped", msg_id)
            return
        pending = Pending(client, msg_id, header, metadata, msg_frames)
        self.pending[msg_id] = pending
        self.counts["submitted"] += 1
        try:
            msg_type: str = header["msg_type"]  # a string (read_request)
            if msg_type not in ("apply_request", "execute_request"):
                why = f"the task queue does not run {msg_type}"
                self._perform(self.core.reject(msg_id, ProtocolError, why))
                return
            try:
                task = _task_from(msg_id, metadata)
                actions = self.core.submit(task, _monotonic())
            except (CorralError, ValueError, TypeError) as err:
                actions = self.core.reject(msg_id, type(err), f"bad task metadata: {err}")
            self._perform(actions)
        finally:  # the Hub hears of every request, whatever happened to it here (of one
            # dispatched at once, naming its engine, once it is sent: _flush; of one in a
            # client's bundle, once the bundle is read: _on_requests)
            if pending.queued_to is None:
                if self._held is not None:
                    self._held.append(pending)
                else:
                    self._copy_request(pending)

    def _copy_request(self, pending: Pending, engine: bytes | None = None) -> None:
        """The request's ``task_in`` copy for the Hub, once, before any other copy of that task,
        naming ``engine`` when it goes there at once (then no ``task_dest`` follows: one copy
        instead of two). With its buffers (the Hub keeps them, so that the task can be
        resubmitted) up to the store's per-task limit; beyond, the signed frames only and an
        ``omitted:<bytes>`` identity that tells the Hub why."""
        if pending.copied:
            return
        pending.copied = True
        route = [pending.client] if engine is None else [pending.client, engine]
        frames = pending.frames
        limit = self.request_buffer_limit
        if limit is not None and len(frames) > 5:
            size = 0
            for frame in frames[5:]:  # a bundle's are bytes: their length is their size
                size += (
                    len(frame) if isinstance(frame, bytes) else memoryview(frame_view(frame)).nbytes
                )
            if size > limit:
                omitted = b"omitted:%d" % size
                self.to_hub.put([b"task_in", *route, omitted, DELIMITER, *frames[:5]])
                return
        self.to_hub.put([b"task_in", *route, DELIMITER, *frames])

    def _on_engine_reply(self, frames: Sequence[Frame]) -> None:
        idents, msg_frames = split_route(frames)
        if len(idents) < 2:
            raise ProtocolError("engine reply without engine and client identities")
        engine_uuid = idents[0].decode("utf-8", "replace")
        msg_id, content = read_reply(self.session, msg_frames)
        pending = self.pending.get(msg_id) if msg_id else None
        if pending is None or msg_id is None:
            if msg_id is None or self.core.answered(msg_id):
                # this scheduler already answered it (failed or resubmitted on engine loss):
                # a second outcome must not reach the client
                log.info("late reply from %s for a finished task dropped", engine_uuid)
                return
            # a task sent before a controller restart: pass the answer on
            self.to_clients.put([idents[1], idents[0], DELIMITER, *msg_frames])  # and task_out
            return
        # laid out once for the client (and its task_out copy); dropped after the core's
        # decision if the task stays (a retry): the core's call adds no task, so a task still
        # held under this msg_id is this same Pending
        pending.reply = [pending.client, idents[0], DELIMITER, *msg_frames]
        status: str = content["status"]  # a string (read_reply): compared as one, compiled
        if status == "error" and content.get("ename") == "UnmetDependency":
            why = str(content.get("evalue", ""))
            self._perform(self.core.task_unmet(msg_id, engine_uuid, _monotonic(), why))
            pending.reply = None
            return
        self._perform(
            self.core.task_finished(
                msg_id, engine_uuid, status == "ok", _monotonic(), retry=status != "aborted"
            )
        )
        pending.reply = None

    # ------------------------------------------------------------ actions

    def _perform(self, actions: list[Action]) -> None:
        """Carry out the core's actions; the timer is armed for the core's next deadline at
        the end of the turn (:meth:`_flush`). Asked after every message, that deadline cost the
        scheduler about 3 us per task while a burst was packed (the queue's length and each
        packing group's lapse, per reply). The timer is armed before the loop polls again, so
        no deadline is missed: one already due runs on the next turn, which then polls
        without waiting."""
        for action in actions:
            if isinstance(action, Dispatch):
                self._dispatch(action.msg_id, action.engine_uuid, action.attempt)
            elif isinstance(action, Complete):
                self._complete(action.msg_id)
            elif isinstance(action, Fail):
                self._fail(action.msg_id, action.error, action.reason)
        self._deadline_moved = True

    def _dispatch(self, msg_id: str, engine_uuid: str, attempt: int) -> None:
        pending = self.pending[msg_id]
        if attempt > 0:
            pending.frames = self._resigned(pending, attempt)
        dispatch = (pending, engine_uuid, attempt)
        self.to_engines.put(
            [engine_uuid.encode(), pending.client, DELIMITER, *pending.frames], dispatch
        )
        pending.queued_to = engine_uuid
        self._dispatched.append(dispatch)

    def _flush(self) -> None:
        """(End of every turn.) Send the turn's Dispatches, a bundle per engine; then the Hub's
        copies of them (``task_in`` naming the engine, or, for the tasks the Hub knows already,
        one ``task_dest`` naming them all): only for those that left, since an engine whose
        task connection is not up yet (or that just died) refuses them (ROUTER_MANDATORY) and
        the core sends them again later. Then the copies the turn made, and then the replies."""
        unsent: set[int] = set()
        for error, tags in self.to_engines.flush():
            if error.errno != zmq.EHOSTUNREACH:
                log.warning("%d task(s) not sent to an engine: %s", len(tags), error)
            unsent.update(id(dispatch) for dispatch in tags)
        dispatched = self._dispatched
        self._dispatched = []
        destinations: list[Dispatched] = []  # of tasks the Hub knows already: one copy
        for dispatch in dispatched:
            pending, engine_uuid, attempt = dispatch
            pending.queued_to = None
            msg_id = pending.msg_id
            if self.pending.get(msg_id) is not pending:
                continue  # it ended this turn: its copies went then
            if id(dispatch) in unsent:
                self.core.engine_unreachable(msg_id, engine_uuid, time.monotonic())
                self._copy_request(pending)
            elif not pending.copied:
                self._copy_request(pending, engine_uuid.encode())
            else:
                destinations.append((msg_id, engine_uuid, attempt))
        for start in range(0, len(destinations), MAX_ENTRIES):
            chunk = destinations[start : start + MAX_ENTRIES]
            self.to_hub.put(destinations_frames(self.session, chunk, signed=self.sign_copies))
        # the copies before the replies: a client that purges (or queries) right after a
        # reply finds the Hub has the task's copy already, not still on its way (a purge of
        # everything then left behind the tasks whose copies came after it); the task_out
        # copies (to_clients' mirror) leave after the task_in ones and before any reply
        for outbox in (self.to_hub, self.to_clients):
            for error, tags in outbox.flush():
                log.error("%d message(s) not sent: %s", len(tags), error)
        if unsent or self._deadline_moved:
            self._deadline_moved = False
            self._schedule()

    def _resigned(self, pending: Pending, attempt: int) -> list[Frame]:
        """The same request with ``attempt`` in its metadata: a new signature, so the engine's
        replay protection accepts the retry; the other frames are the originals."""
        frames = pending.frames
        metadata = orjson.dumps(dict(pending.metadata, attempt=attempt))
        header, parent, content = (frame_view(frames[index]) for index in (1, 2, 4))
        json_frames = [header, parent, metadata, content]
        return [self.session.sign(json_frames), *json_frames, *frames[5:]]

    def _complete(self, msg_id: str) -> None:
        pending = self.pending.pop(msg_id)
        self._copy_request(pending)
        reply = pending.reply
        if reply is None:
            self._finished()
            return
        self.to_clients.put(reply)  # and task_out
        self.counts["completed"] += 1
        self._finished()

    def _fail(self, msg_id: str, error: type[Exception], reason: str) -> None:
        pending = self.pending.pop(msg_id, None)
        if pending is None:
            return
        self._copy_request(pending)
        if issubclass(error, RemoteError):
            exc: BaseException = error(error.__name__, reason)
        else:
            exc = error(reason)
        content = error_content(exc)
        now = utcnow()
        metadata = {
            "status": content["status"],
            "engine_uuid": None,
            "engine_id": None,
            "started": None,
            "completed": now,
            "stdout": "",
            "stderr": "",
            "scheduler_error": error.__name__,
        }
        reply = self.session.msg("apply_reply", content, pending.header, metadata)
        frames = self.session.serialize(reply)
        self.to_clients.put([pending.client, SCHEDULER_IDENT, *frames])  # and task_out
        self.counts["failed"] += 1
        self._finished()

    def sends(self) -> dict[str, dict[str, int]]:
        """Messages sent to each peer and the zmq messages they took (bundles, see
        :mod:`corral.bundles`): the scheduler's exit counts (the controller's stats file)."""
        clients, hub = self.to_clients.stats(), self.to_hub.stats()
        return {
            "engines": self.to_engines.stats(),
            "clients": {"messages": clients["messages"], "zmq_messages": clients["zmq_messages"]},
            "hub": {  # the task_out copies go with the clients' bundles (to_clients' mirror)
                "messages": hub["messages"] + clients["messages"],
                "zmq_messages": hub["zmq_messages"] + clients["mirrored"],
            },
        }

    def _finished(self) -> None:
        """A task left: what it held is freed. Give the allocator's free memory back when the
        schedule says so (the RSS of a long run stays flat; see :mod:`corral.heap`)."""
        if self._trim.due(_monotonic(), 1, idle=not self.pending):
            heap.trim()
            self.counts["trims"] += 1

    def close(self) -> None:
        """After the loop returned: release its wake-up sockets, stop the authenticator
        (joins its thread), then close every socket and the context."""
        self.loop.close()
        if self._authenticator is not None:
            self._authenticator.stop()
        self.context.destroy(linger=0)


def _bind(sock: zmq.Socket[Any], url: str, port: int | None) -> int:
    """Bind the given port (a restarted controller keeps its ports) or a free one."""
    if not port:
        return sock.bind_to_random_port(url)
    deadline = time.monotonic() + 5
    while True:  # the scheduler of a killed controller may hold the port a moment longer
        try:
            sock.bind(f"{url}:{port}")
            return port
        except zmq.ZMQError as err:
            if err.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


MAX_CPU_ID: Final = 1 << 20
"""CPU ids an engine may report (Linux allows 8192 and fewer): a larger or negative one is
an engine's mistake, not a CPU."""


def _cpus_from(reported: object) -> tuple[str | None, list[int]]:
    """The machine and CPU ids an engine reported at registration (``cpus``,
    docs/wire-flows.md), or ``(None, [])`` when it said nothing usable: an engine from an older
    tree, or a malformed field (logged): it is then never packed nor held
    (:mod:`corral.controller.packing`)."""
    if reported is None:
        return None, []
    if isinstance(reported, dict):
        machine, ids = reported.get("machine"), reported.get("ids")
        if (
            isinstance(machine, str)
            and machine
            and isinstance(ids, list)
            and ids
            and all(type(cpu) is int and 0 <= cpu < MAX_CPU_ID for cpu in ids)
        ):
            return machine, ids
    log.warning("an engine's cpus %.200r are not {machine, ids}: not packed with others", reported)
    return None, []


def _task_from(msg_id: str, metadata: dict[str, Any]) -> Task:
    """Decode the scheduling fields of a request's metadata (docs/wire-flows.md, apply_request).
    Most requests name none of them: those are a plain Task at once."""
    if SCHEDULING_FIELDS.isdisjoint(metadata):
        return Task.plain(msg_id)
    targets = metadata.get("targets")
    if targets is not None:
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise TypeError("targets must be a list of engine uuids")
        targets = frozenset(targets)
    timeout = metadata.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
        raise TypeError("timeout must be a number of seconds")
    retries = metadata.get("retries") or 0
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError("retries must be an integer")
    priority = metadata.get("priority") or 0
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError("priority must be an integer")
    return Task(
        msg_id=msg_id,
        after=Dependency.from_wire(metadata.get("after")),
        follow=Dependency.from_wire(metadata.get("follow")),
        targets=targets,
        timeout=float(timeout) if timeout is not None else None,
        retries=retries,
        priority=priority,
    )
