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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import zmq
import zmq.utils.garbage

from corral.errors import (
    InvalidContent,
    ProtocolError,
    SharedMemoryRefused,
    TaskTimeout,
    UnknownMessageType,
)
from corral.protocol.messages import validate_content
from corral.protocol.session import Frame, Message, Session, utcnow
from corral.security import make_client
from corral.sharedmem import SharedMemory
from corral.sockets import send_frames

from .connection import EngineConnectionInfo
from .heart import Heart
from .interrupts import InterruptGate
from .link import (
    Action,
    EngineLink,
    Fail,
    LinkSettings,
    Phase,
    Registered,
    Resend,
    SendRegistration,
)
from .namespace import TASK_SIGNALS, OutputCapture
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

CONTROL_TYPES = frozenset({"clear_request", "abort_request", "signal_request", "shutdown_request"})
BATCH = 64
LINGER_MS = 1000
SIGINT_RESEND = 0.05
SIGINT_RESEND_FOR = 5.0
TIME_LIMIT_GRACE = 3.0  # seconds a task over its time limit has to stop once interrupted


@dataclass(frozen=True)
class IOSettings:
    """What the I/O thread is told at start: where the controller is and how to leave it."""

    info: EngineConnectionInfo
    link: LinkSettings = field(default_factory=LinkSettings)
    unregister_timeout: float = 1.0  # seconds to wait for the Hub's unregistration_reply
    wakeup_fd: int | None = None  # the signal wake-up pipe (SIGTERM); None: not watched


@dataclass
class EngineParts:
    """The engine's state that its main thread and I/O thread share."""

    session: Session
    identity: EngineIdentity
    work: WorkQueue
    aborts: AbortList
    gate: InterruptGate
    shm: SharedMemory
    log: logging.Logger
    capture: OutputCapture


class IOThread:
    """Owns and serves the engine's sockets; see the module docstring for the loop.

    Other threads reach it through :meth:`post` only.
    """

    def __init__(self, settings: IOSettings, parts: EngineParts) -> None:
        self.settings = settings
        self.info = settings.info
        self.session = parts.session
        self.identity = parts.identity
        self.work = parts.work
        self.aborts = parts.aborts
        self.gate = parts.gate
        self.shm = parts.shm
        self.log = parts.log
        self.link = EngineLink(
            self.identity.uuid,
            self.session.new_msg_id,
            settings.link,
            placement=self.identity.placement,
            shm_host=self.shm.host,
            registration_address=self.info.registration,
            log=self.log,
        )
        self.context: zmq.Context[Any] = zmq.Context()
        self.stats = StatsSampler()
        self._next_stats = 0.0
        self.registered = threading.Event()
        self.failure: str | None = None
        self.rejected = 0  # messages dropped: bad signature, replay, malformed
        self._sockets: dict[bytes, zmq.Socket[Any]] = {}
        self._sigint_watch: tuple[int, float] | None = None
        self._limited: dict[str, Request] = {}  # requests with a time limit, not answered
        self._overrun: tuple[str, float] | None = None  # (msg_id, when to stop the engine)
        self._inbox: deque[tuple[bytes, Sequence[Frame]]] = deque()
        self._inbox_read, self._inbox_write = os.pipe()
        os.set_blocking(self._inbox_read, False)
        os.set_blocking(self._inbox_write, False)
        self.capture = parts.capture
        self._heart: Heart | None = None
        main_ident = threading.main_thread().ident
        assert main_ident is not None
        self._main_ident = main_ident
        self._thread = threading.Thread(target=self._main, name="corral-engine-io", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def post(self, channel: bytes, frames: Sequence[Frame]) -> None:
        """(Any thread.) Send ``frames`` on ``channel`` from the I/O thread, in call order."""
        self._inbox.append((channel, frames))
        try:
            os.write(self._inbox_write, b"\0")
        except BlockingIOError:  # the pipe is full: the I/O thread is already woken
            pass

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
            self.registered.set()
            self._loop()
        except BaseException:
            self.log.critical("the engine's I/O thread failed; exiting", exc_info=True)
            self.shutdown(1, "internal error", unregister=False)

    def _perform(self, actions: list[Action]) -> None:
        """Carry out what the link core decided."""
        for action in actions:
            if isinstance(action, SendRegistration):
                msg = Message(
                    header={**self.session.header("registration_request"), "msg_id": action.msg_id},
                    parent_header={},
                    metadata={},
                    content=action.content,
                )
                send_frames(self._sockets[b"registration"], self.session.serialize(msg))
            elif isinstance(action, Registered):
                self.identity.id = action.engine_id
                self.shm.configure(action.shm)
                if action.first:
                    self._connect(action.addresses)
            elif isinstance(action, Resend):
                for channel, reply in action.replies:
                    send_frames(self._sockets[channel], reply)
            elif isinstance(action, Fail):
                self.failure = action.reason
            else:
                self.shutdown(action.code, action.reason, unregister=action.unregister)

    def _register(self) -> bool:
        """First registration; False (with ``failure`` set) if refused or unanswered."""
        sock = self._dealer(b"registration")
        sock.connect(self.info.registration)
        self._perform(self.link.start(time.monotonic()))
        while self.link.phase is Phase.REGISTERING:
            deadline = self.link.next_deadline()
            assert deadline is not None
            if sock.poll(max(int((deadline - time.monotonic()) * 1000) + 1, 1)):
                self._on_registration(sock.recv_multipart(copy=False))
            else:
                self._perform(self.link.tick(time.monotonic()))
        return self.failure is None

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

    def _connect(self, addresses: dict[str, str]) -> None:
        """Queues and iopub first, the heart last: the Hub announces the engine on its first
        pong, and by then requests sent to it must find its queue sockets connected."""
        for name in (b"mux", b"control", b"task"):
            self._dealer(name).connect(addresses[name.decode()])
        iopub = self.context.socket(zmq.PUB)
        self._secure(iopub)
        iopub.connect(addresses["iopub"])
        self._sockets[b"iopub"] = iopub
        pings = self.context.socket(zmq.SUB)
        pings.setsockopt(zmq.SUBSCRIBE, b"")
        self._secure(pings)
        pings.connect(addresses["hb_ping"])
        self._sockets[b"pings"] = pings
        self._heart = Heart(
            addresses["hb_ping"],
            addresses["hb_pong"],
            self.identity.uuid.encode(),
            self.info.curve,
        )
        self._heart.start()

    # ------------------------------------------------------------------ loop

    def _loop(self) -> NoReturn:
        poller = zmq.Poller()
        order = [b"control", b"registration", b"pings", b"mux", b"task"]
        for name in order:
            poller.register(self._sockets[name], zmq.POLLIN)
        poller.register(self._inbox_read, zmq.POLLIN)
        if self.settings.wakeup_fd is not None:
            poller.register(self.settings.wakeup_fd, zmq.POLLIN)
        handlers: dict[bytes, Callable[[list[zmq.Frame]], None]] = {
            b"control": self._on_control,
            b"registration": self._on_registration,
            b"pings": self._on_ping,
            b"mux": lambda frames: self._on_task(b"mux", frames),
            b"task": lambda frames: self._on_task(b"task", frames),
        }
        while True:
            period = self.link.heartbeat_period
            timeout = SIGINT_RESEND if self._sigint_watch else min(STATS_PERIOD, period)
            timeout = min(timeout, self._check_time_limit())
            link_due = self.link.next_deadline()
            if link_due is not None:
                timeout = min(timeout, max(link_due - time.monotonic(), 0.0))
            events = dict(poller.poll(int(timeout * 1000) + 1))
            wakeup_fd = self.settings.wakeup_fd
            if wakeup_fd is not None and wakeup_fd in events:
                self._on_signals(os.read(wakeup_fd, 64))
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
            if self._inbox_read in events:
                self._drain_inbox()
            self._resend_sigint()
            self._perform(self.link.tick(time.monotonic()))
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

    def _drain_inbox(self) -> None:
        """Send what other threads posted, oldest first."""
        try:
            while os.read(self._inbox_read, 4096):
                pass
        except BlockingIOError:
            pass
        while self._inbox:
            self._forward(*self._inbox.popleft())

    def _forward(self, channel: bytes, frames: Sequence[Frame]) -> None:
        """Frames posted by another thread for ``channel``."""
        sock = self._sockets.get(channel)
        if sock is None or channel in (b"pings", b"registration"):
            self.log.error("frames posted for unknown channel %r", channel)
            return
        if channel in (b"mux", b"task"):
            msg_id = self.link.replied(channel, frames, time.monotonic())
            if msg_id is not None:
                self._limited.pop(msg_id, None)
        send_frames(sock, frames)

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
        self.link.received(msg.msg_id)
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
        running, deadline = gate.running, gate.deadline
        if running is None or deadline is None:
            self._overrun = None
            return self.link.heartbeat_period
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
        running = self.gate.request_abort(named, interrupt)
        self.aborts.add(msg_id for msg_id in named if msg_id != running)
        if running is None and interrupt:
            # the main thread may have started one of them since it was asked above, after
            # its own last look at the abort list: ask again, so that it is interrupted
            running = self.gate.request_abort(named, interrupt)
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
            self.link.replied(request.channel, frames, time.monotonic())
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
            self._sigint_watch = (self.gate.seen, deadline)

    def _resend_sigint(self) -> None:
        if self._sigint_watch is None:
            return
        seen, deadline = self._sigint_watch
        if self.gate.seen != seen or time.monotonic() > deadline:
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
        try:
            actions = self.link.on_registration_message(msg, time.monotonic())
        except InvalidContent as err:
            self.rejected += 1
            self.log.warning("%s", err)
            return
        self._perform(actions)

    def _on_ping(self, frames: list[zmq.Frame]) -> None:
        """A ping from the Hub: the controller is alive (and which instance it is)."""
        self._perform(self.link.on_ping(frames[-1].bytes, time.monotonic()))

    def _publish_stats(self) -> None:
        """Once per STATS_PERIOD: this engine's CPU, memory and running task (stats.py)."""
        now = time.monotonic()
        if now < self._next_stats:
            return
        self._next_stats = now + STATS_PERIOD
        msg = self.session.msg("engine_stats", self.stats.sample(self.gate.running, now))
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
            self.capture.close(timeout=LINGER_MS / 1000)  # posts the text not yet streamed
            if b"mux" in self._sockets:
                self._abort_queued(f"engine {self.identity.id} shut down ({reason})")
                self._drain_inbox()
            if unregister and b"registration" in self._sockets:
                self._unregister()
            if self._heart is not None:
                self._heart.stop(timeout=LINGER_MS / 1000)
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

    def _unregister(self) -> None:
        """Tell the Hub we leave; wait for its reply at most ``unregister_timeout``."""
        sock = self._sockets[b"registration"]
        content = {"id": self.identity.id, "uuid": self.identity.uuid}
        msg = self.session.msg("unregistration_request", content)
        send_frames(sock, self.session.serialize(msg))
        deadline = time.monotonic() + self.settings.unregister_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not sock.poll(int(remaining * 1000) + 1):
                return
            reply = self._decode(b"registration", sock.recv_multipart(copy=False))
            if reply is not None and reply.parent_id == msg.msg_id:
                return

    def _close_sockets(self, linger: int) -> None:
        """Close every socket; wait (at most ``linger`` ms) for queued messages to leave."""
        for sock in self._sockets.values():
            sock.close(linger=linger)
        self.context.term()
