"""The task scheduler process: the socket shell around :class:`SchedulerCore`.

Client-facing ROUTER in, engine-facing ROUTER out (docs/wire-flows.md). Per task it verifies
the signature and parses header and metadata only; content and buffers are forwarded as the
zmq Frames they arrived in. Copies go to the Hub's monitor SUB (``task_in``, ``task_dest``,
``task_out``). Engines come and go through the Hub's notifications.

Run by the controller as ``python -m corral.controller.scheduler`` with its settings as one
JSON line on stdin; it answers with one JSON line ``{"task": port, "task_engine": port}``, and
when it stops writes one more, ``{"counts": {...}}`` (tasks submitted, completed, failed, and
messages rejected).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson
import zmq
from zmq.auth.thread import ThreadAuthenticator

from corral.controller.loop import drain
from corral.controller.scheduling import Action, Complete, Dispatch, Fail, SchedulerCore, Task
from corral.errors import CorralError, ProtocolError, RemoteError, error_content
from corral.lifetime import SignalWakeup, exit_with_owner
from corral.protocol.dependency import Dependency
from corral.protocol.session import (
    DELIMITER,
    Frame,
    Message,
    Session,
    frame_view,
    split_identities,
    utcnow,
)
from corral.security import CurveKeys, make_client, make_server, start_authenticator
from corral.sockets import send_frames

log = logging.getLogger("corral.scheduler")

UNREACHABLE_GRACE = 5.0  # seconds to keep trying an engine whose connection is not up yet
SCHEDULER_IDENT = b"scheduler"
FINISHED_MEMORY = 100_000  # recent tasks whose late replies are recognised and outcomes kept


@dataclass
class Pending:
    """A task the scheduler holds: who sent it, and its frames, untouched."""

    client: bytes
    msg: Message
    frames: list[Frame]  # after the delimiter: signature, 4 JSON frames, buffers
    reply: list[Frame] | None = None


class TaskScheduler:
    """Owns the scheduler's sockets; every decision is the core's."""

    def __init__(self, settings: dict[str, Any], context: zmq.Context[Any] | None = None) -> None:
        self.context = context or zmq.Context()
        self.session = Session(
            settings["key"], signature_scheme=settings["signature_scheme"], username="scheduler"
        )
        self.core = SchedulerCore(
            settings.get("policy", "leastload"), int(settings.get("max_outstanding", 16))
        )
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
        self.pending: dict[str, Pending] = {}
        self.finished: dict[str, None] = {}  # recently answered msg_ids, oldest first
        self.unreachable: dict[str, tuple[str, int, float]] = {}
        self.stopping = False
        self.signals: SignalWakeup | None = None  # set by main(): SIGTERM wakes the loop
        self.counts = {"submitted": 0, "completed": 0, "failed": 0, "rejected": 0}

    def _socket(self, kind: int, *, server: bool) -> zmq.Socket[Any]:
        sock = self.context.socket(kind)
        sock.linger = 0
        if self.curve is not None:
            (make_server if server else make_client)(sock, self.curve)
        return sock

    # ------------------------------------------------------------ loop

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        for sock in (self.clients, self.engines, self.notifications):
            poller.register(sock, zmq.POLLIN)
        if self.signals is not None:
            poller.register(self.signals.fileno(), zmq.POLLIN)
        while not self.stopping:
            deadline = self.core.next_deadline()
            wait = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            if self.unreachable:
                wait = min(wait, 0.01)
            events = dict(poller.poll(int(min(wait, 1.0) * 1000)))
            if self.signals is not None and self.signals.fileno() in events:
                self.signals.drain()  # the handler has run: stopping is set
            if self.notifications in events:
                self._drain(self.notifications, self._on_notification)
            if self.engines in events:
                self._drain(self.engines, self._on_engine_reply)
            if self.clients in events:
                self._drain(self.clients, self._on_request)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self._perform(self.core.tick(now))
            if self.unreachable:
                self._retry_unreachable(now)

    def _drain(self, sock: zmq.Socket[Any], handle: Any) -> None:
        drain(sock, handle, self.counts, log)

    def _on_notification(self, frames: list[zmq.Frame]) -> None:
        msg = self.session.feed(frames)
        uuid = (msg.content or {}).get("uuid")
        if not isinstance(uuid, str):
            return
        if msg.msg_type == "registration_notification":
            try:
                self._perform(self.core.add_engine(uuid))
            except ValueError:
                log.warning("engine %s registered twice", uuid)
        elif msg.msg_type == "unregistration_notification":
            self._perform(self.core.remove_engine(uuid))

    def _on_request(self, frames: list[zmq.Frame]) -> None:
        idents, msg_frames = split_identities(frames)
        if not idents:
            raise ProtocolError("task request without a client identity")
        msg = self.session.deserialize(msg_frames, content=False)
        client = idents[0]
        # the Hub records requests without their buffers: copy it the signed frames only
        send_frames(self.monitor, [b"task_in", client, DELIMITER, *msg_frames[:5]])
        pending = Pending(client, msg, msg_frames)
        self.pending[msg.msg_id] = pending
        self.counts["submitted"] += 1
        if msg.msg_type not in ("apply_request", "execute_request"):
            self._fail(msg.msg_id, ProtocolError, f"the task queue does not run {msg.msg_type}")
            return
        try:
            task = _task_from(msg)
            actions = self.core.submit(task, time.monotonic())
        except (CorralError, ValueError, TypeError) as err:
            self._fail(msg.msg_id, type(err), f"bad task metadata: {err}")
            return
        self._perform(actions)

    def _on_engine_reply(self, frames: list[zmq.Frame]) -> None:
        idents, msg_frames = split_identities(frames)
        if len(idents) < 2:
            raise ProtocolError("engine reply without engine and client identities")
        engine_uuid = idents[0].decode("utf-8", "replace")
        msg = self.session.deserialize(msg_frames, content=True)
        msg_id = msg.parent_id
        pending = self.pending.get(msg_id) if msg_id else None
        if pending is None or msg_id is None:
            if msg_id is None or msg_id in self.finished:
                # this scheduler already answered it (failed or resubmitted on engine loss):
                # a second outcome must not reach the client
                log.info("late reply from %s for a finished task dropped", engine_uuid)
                return
            # a task sent before a controller restart: pass the answer on
            client = idents[1]
            send_frames(self.clients, [client, idents[0], DELIMITER, *msg_frames])
            send_frames(self.monitor, [b"task_out", client, idents[0], DELIMITER, *msg_frames])
            return
        pending.reply = [idents[0], *msg_frames]
        content = msg.content or {}
        status = content.get("status")
        if status == "error" and content.get("ename") == "UnmetDependency":
            why = str(content.get("evalue", ""))
            self._perform(self.core.task_unmet(msg_id, engine_uuid, time.monotonic(), why))
            if msg_id in self.pending:
                self.pending[msg_id].reply = None
            return
        self._perform(
            self.core.task_finished(
                msg_id, engine_uuid, status == "ok", time.monotonic(), retry=status != "aborted"
            )
        )
        if msg_id in self.pending:
            self.pending[msg_id].reply = None

    # ------------------------------------------------------------ actions

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                self._dispatch(action.msg_id, action.engine_uuid, action.attempt)
            elif isinstance(action, Complete):
                self._complete(action.msg_id)
            elif isinstance(action, Fail):
                self._fail(action.msg_id, action.error, action.reason)

    def _dispatch(self, msg_id: str, engine_uuid: str, attempt: int) -> None:
        pending = self.pending[msg_id]
        self.unreachable.pop(msg_id, None)
        if attempt > 0:
            pending.frames = self._resigned(pending, attempt)
        engine = engine_uuid.encode()
        try:
            send_frames(self.engines, [engine, pending.client, DELIMITER, *pending.frames])
        except zmq.ZMQError as err:
            if err.errno != zmq.EHOSTUNREACH:
                raise
            # the engine registered but its task connection is not up yet (or it just died)
            self.unreachable[msg_id] = (engine_uuid, attempt, time.monotonic())
            return
        dest = self.session.msg("task_destination", {"msg_id": msg_id, "engine_id": engine_uuid})
        send_frames(self.monitor, [b"task_dest", *self.session.serialize(dest)])

    def _retry_unreachable(self, now: float) -> None:
        for msg_id, (engine_uuid, attempt, since) in list(self.unreachable.items()):
            if now - since > UNREACHABLE_GRACE:
                # the Hub will declare the engine dead; the core then retries or fails the task
                continue
            del self.unreachable[msg_id]
            if msg_id in self.pending:
                self._dispatch(msg_id, engine_uuid, attempt)
                if msg_id in self.unreachable:
                    self.unreachable[msg_id] = (engine_uuid, attempt, since)

    def _resigned(self, pending: Pending, attempt: int) -> list[Frame]:
        """The same request with ``attempt`` in its metadata: a new signature, so the engine's
        replay protection accepts the retry; the other frames are the originals."""
        frames = pending.frames
        metadata = orjson.dumps(dict(pending.msg.metadata, attempt=attempt))
        header, parent, content = (frame_view(frames[index]) for index in (1, 2, 4))
        json_frames = [header, parent, metadata, content]
        return [self.session.sign(json_frames), *json_frames, *frames[5:]]

    def _remember_finished(self, msg_id: str) -> None:
        """Remember the newest FINISHED_MEMORY answered tasks; the core forgets the outcome
        of each one that falls out, so neither grows with every task ever run (a task that
        names one as a dependency later is refused as unknown, see SchedulerCore)."""
        self.finished[msg_id] = None
        if len(self.finished) > FINISHED_MEMORY:
            oldest = next(iter(self.finished))
            del self.finished[oldest]
            self.core.forget([oldest])

    def _complete(self, msg_id: str) -> None:
        pending = self.pending.pop(msg_id)
        self._remember_finished(msg_id)
        reply = pending.reply
        if reply is None:
            return
        engine, *msg_frames = reply
        send_frames(self.clients, [pending.client, engine, DELIMITER, *msg_frames])
        send_frames(self.monitor, [b"task_out", pending.client, engine, DELIMITER, *msg_frames])
        self.counts["completed"] += 1

    def _fail(self, msg_id: str, error: type[BaseException], reason: str) -> None:
        pending = self.pending.pop(msg_id, None)
        self.unreachable.pop(msg_id, None)
        if pending is None:
            return
        self._remember_finished(msg_id)
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
        reply = self.session.msg("apply_reply", content, pending.msg, metadata)
        frames = self.session.serialize(reply)
        send_frames(self.clients, [pending.client, SCHEDULER_IDENT, *frames])
        send_frames(self.monitor, [b"task_out", pending.client, SCHEDULER_IDENT, *frames])
        self.counts["failed"] += 1

    def close(self) -> None:
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


def _task_from(msg: Message) -> Task:
    """Decode the scheduling fields of a request's metadata (docs/wire-flows.md, apply_request)."""
    metadata = msg.metadata
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
        msg_id=msg.msg_id,
        after=Dependency.from_wire(metadata.get("after")),
        follow=Dependency.from_wire(metadata.get("follow")),
        targets=targets,
        timeout=float(timeout) if timeout is not None else None,
        retries=retries,
        priority=priority,
    )


def main() -> int:
    settings = json.loads(sys.stdin.readline())
    logging.basicConfig(
        level=settings.get("log_level") or logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    scheduler = TaskScheduler(settings)
    signal.signal(signal.SIGTERM, lambda *_: setattr(scheduler, "stopping", True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller decides when we stop
    scheduler.signals = SignalWakeup()
    exit_with_owner(settings.get("parent_pid"))  # SIGTERM once the controller is gone
    sys.stdout.write(
        json.dumps({"task": scheduler.client_port, "task_engine": scheduler.engine_port}) + "\n"
    )
    sys.stdout.flush()
    try:
        scheduler.serve_forever()
    finally:
        scheduler.close()
        scheduler.signals.close()
        try:  # the controller reads this last line into its stats file
            sys.stdout.write(json.dumps({"counts": scheduler.counts}) + "\n")
            sys.stdout.flush()
        except OSError:  # the controller is gone
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
