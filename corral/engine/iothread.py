"""The engine's I/O thread: the one owner of every engine socket.

It registers with the Hub, connects the queues, iopub and the heart, then loops on one poller:
control first (served here at once, even while a task runs on the main thread, except
``clear_request``, which empties the namespace and so is handed to the main thread to run
after the running task, ahead of queued ones), then the registration socket, heartbeat pings,
mux and task requests (decoded and queued for the main thread), the main thread's outgoing
frames (forwarded to the socket they name) and the signal wakeup pipe (SIGTERM). Every exit of
the process goes through :meth:`IOThread.shutdown`.

Controller loss: the thread watches the Hub's pings with its own SUB socket. When none has come
for ``missed_beats`` periods it sends ``registration_request`` with its current id every
``missed_beats`` periods until the Hub answers (zmq reconnects by itself, so a controller that
restarts on the same addresses gets the engine back under its old id). A reply naming other
addresses cannot be followed (the heart device cannot be moved), so the engine then exits.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import zmq
import zmq.utils.garbage
from zmq.devices import ThreadDevice

from corral.errors import (
    InvalidContent,
    ProtocolError,
    SharedMemoryRefused,
    TaskTimeout,
    UnknownMessageType,
)
from corral.protocol.connection_files import EngineConnection
from corral.protocol.messages import validate_content
from corral.protocol.session import Message, Session, utcnow
from corral.protocol.shm import Settings
from corral.security import client_options, make_client
from corral.sharedmem import SharedMemory
from corral.sockets import send_frames

from .interrupts import InterruptGate
from .namespace import TASK_SIGNALS
from .replies import ReplyLog
from .runner import (
    MAIN_THREAD_CONTROL_TYPES,
    TASK_TYPES,
    AbortList,
    EngineIdentity,
    Request,
    WorkQueue,
    aborted_reply_msg,
    error_reply_msg,
    reply_metadata,
    reply_type,
    time_limit,
)
from .stats import STATS_PERIOD, STATS_TOPIC, StatsSampler

ID_IN_USE_RETRY = 0.25  # seconds between registrations asking for an id still in use
CONTROL_TYPES = frozenset({"clear_request", "abort_request", "signal_request", "shutdown_request"})
ADDRESS_FIELDS = ("mux", "control", "task", "iopub", "hb_ping", "hb_pong")
BATCH = 64
LINGER_MS = 1000
SIGINT_RESEND = 0.05
SIGINT_RESEND_FOR = 5.0
TIME_LIMIT_GRACE = 3.0  # seconds a task over its time limit has to stop once interrupted


class IOThread:
    """Owns and serves the engine's sockets; see the module docstring for the loop."""

    def __init__(
        self,
        *,
        context: zmq.Context[Any],
        session: Session,
        identity: EngineIdentity,
        info: EngineConnection,
        work: WorkQueue,
        aborts: AbortList,
        inproc: str,
        close_main_socket: Callable[[float], bool],
        sigint_seen: Callable[[], int],
        abort_running: Callable[[list[str], bool], str | None],
        wakeup_fd: int | None,
        requested_id: int | None,
        registration_timeout: float,
        unregister_timeout: float,
        missed_beats: int,
        log: logging.Logger,
        shm: SharedMemory | None = None,
        gate: InterruptGate | None = None,
        running: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.shm = shm or SharedMemory()
        self.context = context
        self.session = session
        self.identity = identity
        self.info = info
        self.work = work
        self.aborts = aborts
        self.inproc = inproc
        self.close_main_socket = close_main_socket
        self.sigint_seen = sigint_seen
        self.abort_running = abort_running
        self.wakeup_fd = wakeup_fd
        self.requested_id = requested_id
        self.registration_timeout = registration_timeout
        self.unregister_timeout = unregister_timeout
        self.missed_beats = missed_beats
        self.log = log
        self.running = running
        self.stats = StatsSampler()
        self._next_stats = 0.0
        self.registered = threading.Event()
        self.failure: str | None = None
        self.rejected = 0  # messages dropped: bad signature, replay, malformed
        self.addresses: dict[str, str] = {}
        self.heartbeat_period = 3.0
        self._sockets: dict[bytes, zmq.Socket[Any]] = {}
        self._registration: zmq.Socket[Any] | None = None
        self._last_ping = 0.0
        self._hub_instance: bytes | None = None
        self._lost = False
        self._next_attempt = 0.0
        self._registrations: set[str] = set()  # re-registration requests not answered
        self._sigint_watch: tuple[int, float] | None = None
        self.replies = ReplyLog()
        self._reported_dropped = 0  # replies.dropped when last logged
        self.gate = gate
        self._limited: dict[str, Request] = {}  # requests with a time limit, not answered
        self._overrun: tuple[str, float] | None = None  # (msg_id, when to stop the engine)
        main_ident = threading.main_thread().ident
        assert main_ident is not None
        self._main_ident = main_ident
        self._thread = threading.Thread(target=self._main, name="corral-engine-io", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # ------------------------------------------------------------------ startup

    def _main(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, TASK_SIGNALS)
        # pyzmq starts its zero-copy garbage collector thread on first use; started here, it
        # inherits the blocked mask and cannot take SIGINT meant for the main thread
        if not zmq.utils.garbage.gc.is_alive():
            zmq.utils.garbage.gc.start()
        try:
            if not self._register():
                self._close_sockets(linger=0)
                self.registered.set()
                return
            self._connect()
            self.registered.set()
            self._loop()
        except BaseException:
            self.log.critical("the engine's I/O thread failed; exiting", exc_info=True)
            self.shutdown(1, "internal error", unregister=False)

    def _registration_msg(self, content: dict[str, Any]) -> Message:
        """Built without catalogue validation: the catalogue's registration_request lacks the
        optional ``id`` that docs/wire-flows.md gives it."""
        return Message(
            header=self.session.header("registration_request"),
            parent_header={},
            metadata={},
            content=content,
        )

    def _send_registration(self, engine_id: int | None, *, again: bool = False) -> str:
        """``again``: to a controller that restarted, naming the tasks this engine holds and
        the replies it will send again (:mod:`.replies`)."""
        content: dict[str, Any] = {"uuid": self.identity.uuid}
        if self.identity.placement:
            content["info"] = self.identity.placement
        if engine_id is not None:
            content["id"] = engine_id
        if again:
            content["tasks"] = self.replies.to_report()
        if self.shm.host is not None:
            content["shm_host"] = self.shm.host
        msg = self._registration_msg(content)
        assert self._registration is not None
        send_frames(self._registration, self.session.serialize(msg))
        return msg.msg_id

    def _register(self) -> bool:
        """First registration; False (with ``failure`` set) if refused or unanswered."""
        sock = self._dealer(b"registration")
        sock.connect(self.info.registration_url)
        self._registration = sock
        msg_id = self._send_registration(self.requested_id)
        deadline = time.monotonic() + self.registration_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not sock.poll(int(remaining * 1000) + 1):
                break
            reply = self._decode(b"registration", sock.recv_multipart(copy=False))
            if reply is None or reply.parent_id != msg_id:
                continue
            content = reply.content or {}
            if content.get("id_in_use") is not None and remaining > ID_IN_USE_RETRY:
                # a supervisor restarting a dead engine under its id can be faster than the
                # Hub's death detection: ask again until the old holder is gone or time is up
                time.sleep(ID_IN_USE_RETRY)
                msg_id = self._send_registration(self.requested_id)
                continue
            if content.get("status") != "ok":
                self.failure = (
                    f"the controller refused registration: {content.get('ename', 'error')}: "
                    f"{content.get('evalue', content)}"
                )
                return False
            try:
                self._accept_registration(content)
            except (KeyError, TypeError, ValueError) as err:
                self.failure = f"unusable registration reply ({err!r}): {content}"
                return False
            return True
        self.failure = (
            f"no registration reply from {self.info.registration_url} within "
            f"{self.registration_timeout:g} s: is the controller running, and does the engine's "
            "connection file hold its current key?"
        )
        return False

    def _accept_registration(self, content: dict[str, Any]) -> None:
        self.addresses = {name: str(content[name]) for name in ADDRESS_FIELDS}
        self.identity.id = int(content["id"])
        self.heartbeat_period = float(content.get("heartbeat_period", self.heartbeat_period))
        self.shm.configure(Settings.from_json(content.get("shm")))
        self.log.info("registered as engine %d (uuid %s)", self.identity.id, self.identity.uuid)

    def _dealer(self, name: bytes) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.identity.uuid.encode())
        self._secure(sock)
        self._sockets[name] = sock
        return sock

    def _secure(self, sock: zmq.Socket[Any]) -> None:
        """A curve client of the controller when the cluster uses --curve (TCP sockets only)."""
        if self.info.curve is not None:
            make_client(sock, self.info.curve)

    def _connect(self) -> None:
        """Queues and iopub first, the heart last: the Hub announces the engine on its first
        pong, and by then requests sent to it must find its queue sockets connected."""
        for name in (b"mux", b"control", b"task"):
            self._dealer(name).connect(self.addresses[name.decode()])
        iopub = self.context.socket(zmq.PUB)
        self._secure(iopub)
        iopub.connect(self.addresses["iopub"])
        self._sockets[b"iopub"] = iopub
        pull = self.context.socket(zmq.PULL)
        pull.bind(self.inproc)
        self._sockets[b"main"] = pull
        pings = self.context.socket(zmq.SUB)
        pings.setsockopt(zmq.SUBSCRIBE, b"")
        self._secure(pings)
        pings.connect(self.addresses["hb_ping"])
        self._sockets[b"pings"] = pings
        # C-level forwarder without the GIL: pongs continue while user code holds it
        heart = ThreadDevice(zmq.FORWARDER, zmq.SUB, zmq.DEALER)
        heart.context_factory = zmq.Context  # its own context: never blocks our term()
        heart.setsockopt_in(zmq.SUBSCRIBE, b"")
        if self.info.curve is not None:
            for option, value in client_options(self.info.curve):
                heart.setsockopt_in(option, value)
                heart.setsockopt_out(option, value)
        heart.connect_in(self.addresses["hb_ping"])
        heart.setsockopt_out(zmq.IDENTITY, self.identity.uuid.encode())
        heart.connect_out(self.addresses["hb_pong"])
        heart.start()
        self._last_ping = time.monotonic()

    # ------------------------------------------------------------------ loop

    def _loop(self) -> NoReturn:
        poller = zmq.Poller()
        order = [b"control", b"registration", b"pings", b"mux", b"task", b"main"]
        for name in order:
            poller.register(self._sockets[name], zmq.POLLIN)
        if self.wakeup_fd is not None:
            poller.register(self.wakeup_fd, zmq.POLLIN)
        handlers: dict[bytes, Callable[[list[zmq.Frame]], None]] = {
            b"control": self._on_control,
            b"registration": self._on_registration,
            b"pings": self._on_ping,
            b"mux": lambda frames: self._on_task(b"mux", frames),
            b"task": lambda frames: self._on_task(b"task", frames),
            b"main": self._forward,
        }
        while True:
            timeout = (
                SIGINT_RESEND if self._sigint_watch else min(STATS_PERIOD, self.heartbeat_period)
            )
            timeout = min(timeout, self._check_time_limit())
            events = dict(poller.poll(int(timeout * 1000)))
            if self.wakeup_fd is not None and self.wakeup_fd in events:
                self._on_signals(os.read(self.wakeup_fd, 64))
            for name in order:
                sock = self._sockets[name]
                if sock not in events:
                    continue
                for _ in range(BATCH):  # bounded, so control is served again soon
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    handlers[name](frames)
            self._resend_sigint()
            self._check_heartbeat()
            self._publish_stats()

    def _decode(self, channel: bytes, frames: list[zmq.Frame]) -> Message | None:
        """A verified message, or None after logging why it was dropped."""
        try:
            return self.session.feed(frames)
        except ProtocolError as err:
            self.rejected += 1
            self.log.warning("dropped a message on %s: %s", channel.decode(), err)
            return None

    def _reply_error(self, channel: bytes, request: Message, exc: BaseException) -> None:
        reply = error_reply_msg(self.session, self.identity, request, exc)
        send_frames(self._sockets[channel], self.session.serialize(reply, request.idents))

    def _forward(self, frames: list[zmq.Frame]) -> None:
        """Frames from the main thread: the first names the socket, the rest is the message."""
        channel = frames[0].bytes
        sock = self._sockets.get(channel)
        if sock is None or channel in (b"main", b"pings", b"registration"):
            self.log.error("main thread sent frames for unknown channel %r", channel)
            return
        if channel in (b"mux", b"task"):
            msg_id = self.replies.replied(channel, frames[1:], time.monotonic())
            if msg_id is not None:
                self._limited.pop(msg_id, None)
        send_frames(sock, frames[1:])

    def _on_task(self, channel: bytes, frames: list[zmq.Frame]) -> None:
        msg = self._decode(channel, frames)
        if msg is None:
            return
        try:
            msg = self.shm.resolve(msg)  # verified above: only then is a reference mapped
        except SharedMemoryRefused as err:
            self.rejected += 1
            self.log.warning("refused the buffers of %s: %s", msg.msg_id, err)
            self._reply_error(channel, msg, err)
            return
        if msg.msg_type not in TASK_TYPES:
            where = "belongs on the control channel" if msg.msg_type in CONTROL_TYPES else ""
            error = UnknownMessageType(
                f"{msg.msg_type!r} {where or 'is not a request this engine serves'}; the "
                f"{channel.decode()} channel takes {' and '.join(sorted(TASK_TYPES))}"
            )
            self._reply_error(channel, msg, error)
            return
        try:
            validate_content(msg.msg_type, msg.content or {})
            limited = time_limit(msg) is not None
        except InvalidContent as err:
            self._reply_error(channel, msg, err)
            return
        self.replies.received(msg.msg_id)
        request = Request(channel, msg)
        if limited:
            self._limited[msg.msg_id] = request
        self.work.put(request)

    def _check_time_limit(self) -> float:
        """Enforce the running task's time limit: interrupt it at its deadline (it fails with
        TaskTimeout); if it is still running ``TIME_LIMIT_GRACE`` seconds later, answer it
        with TaskTimeout and stop this engine (exit status 1: a supervisor starts it again
        under its id). Seconds until the next check is due."""
        gate = self.gate
        running = None if gate is None else gate.running
        deadline = None if gate is None else gate.deadline
        if gate is None or running is None or deadline is None:
            self._overrun = None
            return self.heartbeat_period
        now = time.monotonic()
        if self._overrun is None or self._overrun[0] != running:
            if now < deadline:
                return deadline - now
            if gate.request_abort([running], time_limit=True) is not None:
                self.deliver_signal(signal.SIGINT)
            self._overrun = (running, now + TIME_LIMIT_GRACE)
            return TIME_LIMIT_GRACE
        if now < self._overrun[1]:
            return self._overrun[1] - now
        request = self._limited.pop(running, None)
        reason = (
            f"task {running} ran longer than its time limit and did not stop when interrupted: "
            "its engine was stopped"
        )
        if request is not None:
            error = TaskTimeout(
                "TaskTimeout", reason, engine_id=self.identity.id, engine_uuid=self.identity.uuid
            )
            self._reply_error(request.channel, request.msg, error)
        self.shutdown(1, reason)

    # ------------------------------------------------------------------ control

    def _on_control(self, frames: list[zmq.Frame]) -> None:
        msg = self._decode(b"control", frames)
        if msg is None:
            return
        started = utcnow()
        if msg.msg_type not in CONTROL_TYPES:
            error = UnknownMessageType(
                f"{msg.msg_type!r} is not served on the control channel; "
                f"it takes {', '.join(sorted(CONTROL_TYPES))}"
            )
            self._reply_error(b"control", msg, error)
            return
        content = msg.content or {}
        answer: dict[str, Any] = {"status": "ok"}
        try:
            validate_content(msg.msg_type, content)
            if msg.msg_type in MAIN_THREAD_CONTROL_TYPES:
                self.work.put_next(Request(b"control", msg))  # the main thread replies
                return
            if msg.msg_type == "abort_request":
                spared = self._abort(content.get("msg_ids"), content.get("running", True))
                if spared is not None:
                    answer["running"] = [spared]
            elif msg.msg_type == "signal_request":
                self.deliver_signal(int(content["sig"]))
        except Exception as err:
            self._reply_error(b"control", msg, err)
            return
        reply = self.session.msg(
            reply_type(msg.msg_type),
            answer,
            parent=msg,
            metadata=reply_metadata(self.identity, "ok", started),
        )
        send_frames(self._sockets[b"control"], self.session.serialize(reply, msg.idents))
        if msg.msg_type == "shutdown_request":
            self.shutdown(0, "shutdown_request")

    def _abort(self, msg_ids: list[Any] | None, interrupt: bool = True) -> str | None:
        """Abort the named tasks: the running one at once (interrupted like SIGINT, answered
        as aborted), the others when they are reached. None: every queued task now, leaving
        the running one alone. ``interrupt=False`` leaves a running named task alone too and
        returns its msg_id (a cancel, which only stops what has not started)."""
        if msg_ids is None:
            self._abort_queued("aborted by an abort_request for all queued tasks")
            return None
        named = [str(msg_id) for msg_id in msg_ids]
        running = self.abort_running(named, interrupt)
        self.aborts.add(msg_id for msg_id in named if msg_id != running)
        if running is None and interrupt:
            # the main thread may have started one of them since it was asked above, after
            # its own last look at the abort list: ask again, so that it is interrupted
            running = self.abort_running(named, interrupt)
        if running is not None and interrupt:
            self.deliver_signal(signal.SIGINT)
            return None
        return running

    def _abort_queued(self, reason: str) -> None:
        while True:
            try:
                request = self.work.get_nowait()
            except queue.Empty:
                return
            reply = aborted_reply_msg(self.session, self.identity, request.msg, reason)
            frames = self.session.serialize(reply, request.msg.idents)
            self.replies.replied(request.channel, frames, time.monotonic())
            send_frames(self._sockets[request.channel], frames)

    def deliver_signal(self, signum: int) -> None:
        """Signal this process, aimed at the main thread.

        A process-directed signal may be taken by any thread that does not block it (a
        library's helper thread, a thread of the user's), and then the main thread's blocking
        call (``time.sleep``) is not interrupted; signals whose action is process-wide
        (SIGTERM, SIGKILL, SIGSTOP) act the same either way. SIGINT is re-sent every
        ``SIGINT_RESEND`` seconds until the gate's handler has run: on CPython 3.11 another
        thread can reset the flag that makes the main thread run pending handlers, and a
        SIGINT that lands just before a blocking call would then wait for that call to end.
        """
        if signum not in signal.valid_signals():
            raise ValueError(f"{signum} is not a valid signal number on this system")
        signal.pthread_kill(self._main_ident, signum)
        if signum == signal.SIGINT:
            deadline = time.monotonic() + SIGINT_RESEND_FOR
            self._sigint_watch = (self.sigint_seen(), deadline)

    def _resend_sigint(self) -> None:
        if self._sigint_watch is None:
            return
        seen, deadline = self._sigint_watch
        if self.sigint_seen() != seen or time.monotonic() > deadline:
            self._sigint_watch = None
        else:
            signal.pthread_kill(self._main_ident, signal.SIGINT)

    def _on_signals(self, signums: bytes) -> None:
        if signal.SIGTERM in signums:
            self.shutdown(0, "SIGTERM")

    # ------------------------------------------------------------------ Hub and heartbeat

    def _on_registration(self, frames: list[zmq.Frame]) -> None:
        msg = self._decode(b"registration", frames)
        if msg is None:
            return
        content = msg.content or {}
        if msg.msg_type == "unregistration_notification":
            if content.get("uuid") in (None, self.identity.uuid):
                self.shutdown(1, "the controller unregistered this engine", unregister=False)
            return
        if msg.msg_type == "replies_recorded":
            self._on_replies_recorded(content)
            return
        if msg.msg_type != "registration_reply" or msg.parent_id not in self._registrations:
            self.log.debug("ignored %s on the registration socket", msg.msg_type)
            return
        # every attempt made during the outage reaches the restarted controller (zmq queued
        # them): the first is accepted, the later ones are refused as already registered
        self._registrations.discard(msg.parent_id)
        if content.get("status") != "ok":
            if not self._registrations:
                self._lost = False
                self.log.warning(
                    "re-registration refused: %s: %s", content.get("ename"), content.get("evalue")
                )
            return
        self._registrations.clear()
        self._lost = False
        if any(str(content.get(name)) != self.addresses[name] for name in ADDRESS_FIELDS):
            self.shutdown(1, "the controller came back on other addresses", unregister=False)
        self._accept_registration(content)
        resend = self.replies.to_resend()
        if resend:
            self.log.info(
                "sending %d recent replies again to the restarted controller", len(resend)
            )
        for channel, reply in resend:
            send_frames(self._sockets[channel], reply)

    def _on_replies_recorded(self, content: dict[str, Any]) -> None:
        """The Hub wrote these replies' records (and every earlier one on their channel)."""
        try:
            validate_content("replies_recorded", content)
        except InvalidContent as err:
            self.rejected += 1
            self.log.warning("dropped replies_recorded: %s", err)
            return
        for channel, msg_id in content.items():
            self.replies.recorded(channel.encode(), msg_id)
        if self.replies.dropped > self._reported_dropped:
            self.log.warning(
                "the controller has not confirmed %d replies: dropped the oldest %d unconfirmed",
                len(self.replies.recent),
                self.replies.dropped - self._reported_dropped,
            )
            self._reported_dropped = self.replies.dropped

    def _on_ping(self, frames: list[zmq.Frame]) -> None:
        """Note the controller is alive. Pings are ``<beat>.<controller instance>``: a new
        instance is a restarted controller that does not know this engine: re-register now."""
        self._last_ping = time.monotonic()
        parts = frames[-1].bytes.split(b".")  # a probe adds ".<n>" after the instance
        instance = parts[1] if len(parts) > 1 else b""
        if self._hub_instance is not None and instance != self._hub_instance and not self._lost:
            self.log.warning("the controller restarted; re-registering")
            self._lost = True
            self._next_attempt = 0.0
        self._hub_instance = instance

    def _check_heartbeat(self) -> None:
        """Re-register while the Hub's pings are missing (see the module docstring)."""
        now = time.monotonic()
        window = self.heartbeat_period * self.missed_beats
        if not self._lost and now - self._last_ping > window:
            self.log.warning("no heartbeat from the controller for %.1f s", now - self._last_ping)
            self._lost = True
        if self._lost and now >= self._next_attempt:
            self._registrations.add(self._send_registration(self.identity.id, again=True))
            self._next_attempt = now + window

    def _publish_stats(self) -> None:
        """Once per STATS_PERIOD: this engine's CPU, memory and running task (stats.py)."""
        now = time.monotonic()
        if now < self._next_stats:
            return
        self._next_stats = now + STATS_PERIOD
        msg = self.session.msg("engine_stats", self.stats.sample(self.running(), now))
        topic = STATS_TOPIC + str(self.identity.id).encode()
        send_frames(self._sockets[b"iopub"], [topic, *self.session.serialize(msg)])

    # ------------------------------------------------------------------ exit

    def shutdown(self, exit_code: int, reason: str, *, unregister: bool = True) -> NoReturn:
        """Abort queued work, forward what the main thread sent, unregister, close, exit.

        Exits the process with ``os._exit`` even while the main thread is inside user code.
        """
        self.log.info(
            "engine %s shutting down: %s (%d messages rejected)",
            self.identity.id,
            reason,
            self.rejected,
        )
        try:
            if b"mux" in self._sockets:
                self._abort_queued(f"engine {self.identity.id} shut down ({reason})")
                self._drain_main()
            if unregister and self._registration is not None:
                self._unregister()
            self._close_sockets(linger=LINGER_MS)
            self.shm.close()
        except BaseException:
            self.log.exception("error during shutdown")
        finally:
            logging.shutdown()
            for stream in (sys.__stdout__, sys.__stderr__):
                if stream is not None:
                    stream.flush()
            os._exit(exit_code)

    def _drain_main(self) -> None:
        main = self._sockets[b"main"]
        while True:
            try:
                self._forward(main.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                return

    def _unregister(self) -> None:
        """Tell the Hub we leave; wait for its reply at most ``unregister_timeout``."""
        assert self._registration is not None
        content = {"id": self.identity.id, "uuid": self.identity.uuid}
        msg = self.session.msg("unregistration_request", content)
        send_frames(self._registration, self.session.serialize(msg))
        deadline = time.monotonic() + self.unregister_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not self._registration.poll(int(remaining * 1000) + 1):
                return
            reply = self._decode(b"registration", self._registration.recv_multipart(copy=False))
            if reply is not None and reply.parent_id == msg.msg_id:
                return

    def _close_sockets(self, linger: int) -> None:
        """Close every socket; wait (at most ``linger`` ms) for queued messages to leave."""
        for sock in self._sockets.values():
            sock.close(linger=linger)
        if self.close_main_socket(linger / 1000):
            self.context.term()
