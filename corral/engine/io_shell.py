"""The engine's I/O thread: the socket shell around the link core (:mod:`.link`).

One :class:`~corral.loop.LoopThread` owns the engine's sockets but the task sockets. Its setup
connects the registration socket and starts the first registration; once the Hub accepts it,
the queues, iopub and the heart are connected; mux and task go to the main thread's loop
(:mod:`.task_shell`), and the others are served in priority order: control (served at once,
even while a task runs on the main thread, except ``clear_request``, which empties the
namespace and so is handed to the main thread to run after the running task, ahead of queued
ones), registration, heartbeat pings. What the link core must know of the main thread's tasks
(received, replied) is read from the task shell's notes before it decides; when this thread
must send on a task socket (aborts, kept replies sent again, a task over its time limit, exit)
it borrows it (:meth:`~.task_shell.TaskShell.borrow`). Other threads (the output flusher's
streams) reach the sockets only through :meth:`IOShell.post`, the loop's one hand-off path.
Timers replace a poll timeout computed by hand: the link's next deadline, the engine stats, a
running task's time limit and the re-sent SIGINT.

What to do about the controller (register, retry, time out, notice it is gone, re-register,
send kept replies again) is decided by :class:`~.link.EngineLink`; this module performs its
actions. Every exit of the process goes through :meth:`IOShell.shutdown`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.utils.garbage

from corral.errors import (
    ConnectionError,
    ProtocolError,
    TaskTimeout,
    UnknownMessageType,
)
from corral.lane import AVAILABLE as LANES_AVAILABLE
from corral.lane import Lane, LaneListener, lane_name
from corral.lifetime import watch_owner
from corral.loop import Loop, LoopThread, Timer
from corral.protocol.connection_files import EngineConnection
from corral.protocol.direct_offer import make_offer
from corral.protocol.messages import validate_content
from corral.protocol.session import Frame, Message, Session, utcnow
from corral.security import make_client
from corral.sharedmem import SharedMemory
from corral.sockets import send_frames

from .capture import TASK_SIGNALS, OutputCapture
from .handshake import QueueLinks
from .heart import Heart
from .interrupts import InterruptGate
from .link import Action, EngineLink, Exit, Fail, LinkSettings, Registered, Resend, SendRegistration
from .placement import cpu_share
from .replies import marked_resent
from .runner import (
    CONTROL_TYPES,
    MAIN_THREAD_CONTROL_TYPES,
    AbortList,
    EngineIdentity,
    Request,
    error_reply_msg,
    reply_metadata,
    reply_type,
)
from .stats import STATS_PERIOD, STATS_TOPIC, StatsSampler, StatsSubscribers
from .task_shell import TASK_CHANNELS, TaskShell
from .time_limits import SignalSender, TimeLimits

BATCH = 64  # messages per socket per turn: control is served again soon
LINGER_MS = 1000
DIRECT_IP = "127.0.0.1"  # direct requests come from clients on this host only
REGISTRATION_MARGIN = 10.0  # seconds the main thread waits past the registration timeout


@dataclass(frozen=True)
class IOSettings:
    """What the I/O thread is told at start: where the controller is and how to leave it."""

    info: EngineConnection
    link: LinkSettings = field(default_factory=LinkSettings)
    # clients on this host may send direct requests to this engine (docs/wire-flows.md,
    # "Direct requests"); never under --curve (the engine holds no server key)
    direct: bool = True
    # and on a lane (corral.lane: a Unix socket, no zmq I/O thread on either side), where the
    # direct path is on and the system has them (Linux)
    lanes: bool = True
    unregister_timeout: float = 1.0  # seconds to wait for the Hub's unregistration_reply


@dataclass
class EngineParts:
    """The engine's state that its main thread and I/O thread share."""

    session: Session
    identity: EngineIdentity
    tasks: TaskShell
    aborts: AbortList
    gate: InterruptGate
    shm: SharedMemory
    log: logging.Logger
    capture: OutputCapture


class IOShell:
    """Owns and serves the engine's sockets on its loop thread; see the module docstring.

    The owner (the main thread) calls :meth:`start`, then :meth:`wait_registered`; other
    threads hand frames over with :meth:`post` only.
    """

    def __init__(self, settings: IOSettings, parts: EngineParts) -> None:
        self.settings = settings
        self.info = settings.info
        self.session = parts.session
        self.identity = parts.identity
        self.tasks = parts.tasks
        self.aborts = parts.aborts
        self.gate = parts.gate
        self.shm = parts.shm
        self.log = parts.log
        self.capture = parts.capture
        self.link = EngineLink(
            self.identity.uuid,
            self.session.new_msg_id,
            settings.link,
            placement=self.identity.placement,
            shm_host=self.shm.host,
            cpus=cpu_share(),
            registration_address=self.info.registration_url,
            log=self.log,
        )
        self.thread = LoopThread("corral-engine-io", self._setup, self._teardown)
        self.loop: Loop = self.thread.loop
        self.context: zmq.Context[Any] = zmq.Context()
        self.stats = StatsSampler()
        self.stats_subscribers = StatsSubscribers()
        self._stats_timer: Timer | None = None
        self.failure: str | None = None  # why the first registration failed
        self.rejected = 0  # messages dropped here: bad signature, replay, malformed
        self._registered = threading.Event()
        self._exit: Exit | None = None  # set by shutdown(): the teardown ends the process
        self._sockets: dict[bytes, zmq.Socket[Any]] = {}
        self._lanes: LaneListener | None = None  # the lanes' listening socket (direct on)
        self._heart: Heart | None = None
        self._queue_links: QueueLinks | None = None
        self._registration_waits: SendRegistration | None = None  # for the queues to connect
        self._link_timer: Timer | None = None
        main_ident = threading.main_thread().ident
        assert main_ident is not None
        self.signals = SignalSender(self.loop, self.gate, main_ident)
        self.limits = TimeLimits(
            self.loop,
            self.gate,
            self.signals,
            self._overrun,
            lambda: self._exit is not None,
            refresh=self._drain_notes,
        )

    # ------------------------------------------------------------------ the owner's side

    def handle_signals(self) -> None:
        """SIGTERM makes the engine unregister and exit, even while a task runs: the loop
        hears it through its signal wake-up at once. Main thread only, before :meth:`start`."""
        self.loop.handle_signals([signal.SIGTERM], self._on_signal)

    def end_with_owner(self, owner_pid: int | None) -> None:
        """Shut down as on SIGTERM as soon as ``owner_pid`` (the process that started this
        engine) ends: its pidfd is a reader on the I/O loop. Before :meth:`start`."""
        watch_owner(self.loop, owner_pid, lambda: self._on_signal(signal.SIGTERM))

    def start(self) -> None:
        self.thread.start()

    def wait_registered(self) -> None:
        """Until the Hub accepted this engine; ConnectionError (the thread joined) if it
        refused or never answered."""
        timeout = self.settings.link.registration_timeout + REGISTRATION_MARGIN
        if not self._registered.wait(timeout):
            self.failure = f"the registration did not end within {timeout:g} s"
        if self.failure is not None:
            self.thread.stop()
            raise ConnectionError(self.failure)

    def post(self, channel: bytes, frames: Sequence[Frame]) -> None:
        """(Any thread.) Send ``frames`` on ``channel`` from the I/O thread, in call order.
        Dropped once the engine is shutting down (the process is about to end)."""
        try:
            self.loop.call_soon_threadsafe(self._forward, channel, frames)
        except ConnectionError:
            self.log.debug("dropped frames for %r: the I/O thread has stopped", channel)

    # ------------------------------------------------------------------ startup

    def _setup(self, loop: Loop) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, TASK_SIGNALS)
        # pyzmq starts its zero-copy garbage collector thread on first use; started here, it
        # inherits the blocked mask and cannot take SIGINT meant for the main thread
        if not zmq.utils.garbage.gc.is_alive():
            zmq.utils.garbage.gc.start()
        registration = self._dealer(b"registration")
        registration.connect(self.info.registration_url)
        if self.settings.direct and self.info.curve is None:
            self.link.direct_address = self._bind_direct()
        loop.add_socket(registration, self._on_registration)
        loop.at_turn_end(self._drain_notes)
        self._perform(self.link.start(loop.time()))

    def _dealer(self, name: bytes) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.identity.uuid.encode())
        self._secure(sock)
        self._sockets[name] = sock
        return sock

    def _bind_direct(self) -> str:
        """The ROUTER clients on this host send their direct requests to, on loopback: a
        client there connects to it with this engine's uuid as the peer's routing identity,
        so a request and its reply skip the controller's MUX device (the main thread serves
        it with the other task sockets once registered)."""
        sock: zmq.Socket[Any] = self.context.socket(zmq.ROUTER)
        sock.sndhwm = sock.rcvhwm = 0
        port = sock.bind_to_random_port(f"tcp://{DIRECT_IP}")
        self._sockets[b"direct"] = sock
        lane = None
        if self.settings.lanes and LANES_AVAILABLE:
            try:
                self._lanes = LaneListener(lane_name(self.identity.uuid))
                lane = self._lanes.name
            except OSError as err:  # the zmq ROUTER serves alone
                self.log.warning("no lane for direct requests: %s", err)
        return make_offer(port, lane)  # the address, its network namespace and the lane

    def _secure(self, sock: zmq.Socket[Any]) -> None:
        """A curve client of the controller when the cluster uses --curve (TCP sockets only)."""
        if self.info.curve is not None:
            make_client(sock, self.info.curve)

    def _connect(self, addresses: dict[str, str]) -> None:
        """Queues and iopub first, the heart once the queues' handshakes are done: the Hub
        announces the engine on its first pong, and by then requests sent to it must find its
        queue sockets connected (:mod:`.handshake`; a registration after a controller restart
        waits for them the same way). The sockets are served in this order: control,
        registration, pings, mux, task."""
        queues = [self._dealer(name) for name in (b"mux", b"control", b"task")]
        # watched before connecting: a handshake on loopback can end at once
        self._queue_links = QueueLinks(self.loop, queues)
        self._queue_links.when_connected(lambda: self._start_heart(addresses))
        for name, sock in zip((b"mux", b"control", b"task"), queues, strict=True):
            sock.connect(addresses[name.decode()])
        # XPUB: it hears which topics are subscribed (the reports only when someone reads them)
        iopub = self.context.socket(zmq.XPUB)
        self._secure(iopub)
        iopub.connect(addresses["iopub"])
        self._sockets[b"iopub"] = iopub
        pings = self.context.socket(zmq.SUB)
        pings.setsockopt(zmq.SUBSCRIBE, b"")
        self._secure(pings)
        pings.connect(addresses["hb_ping"])
        self._sockets[b"pings"] = pings
        loop = self.loop
        loop.remove(self._sockets[b"registration"])  # added again after control
        loop.add_socket(self._sockets[b"control"], self._on_control, batch=BATCH)
        loop.add_socket(self._sockets[b"registration"], self._on_registration, batch=BATCH)
        loop.add_socket(pings, self._on_ping, batch=BATCH)
        direct = self._sockets.get(b"direct")
        copies = None
        if direct is not None and "copies" in addresses:
            copies = self.context.socket(zmq.PUSH)
            copies.sndhwm = 0  # a copy is never dropped: the Hub records every task from them
            self._secure(copies)
            copies.connect(addresses["copies"])
            self._sockets[b"copies"] = copies
        elif direct is not None:  # an older Hub: its clients do not know of the direct path
            self.log.warning("the controller takes no copies of direct requests")
        copies_lane = None
        if copies is not None and self._lanes is not None and "copies_lane" in addresses:
            try:  # a Hub on another host (or network namespace) has none here: refused
                copies_lane = Lane.connect(
                    addresses["copies_lane"], self.identity.uuid.encode(), b"hub"
                )
            except OSError as err:
                self.log.debug("no copies lane to the Hub: %s", err)
        # the main thread serves the task sockets from now on (task_shell.py)
        self.tasks.attach(
            self._sockets[b"mux"], self._sockets[b"task"], direct, copies, self._lanes, copies_lane
        )
        loop.add_socket(self._sockets[b"iopub"], self._on_iopub_subscription, batch=BATCH)

    def _on_iopub_subscription(self, frames: list[zmq.Frame]) -> None:
        """A topic of iopub got its first subscriber or lost its last: start or stop the
        once-a-second reports (stats.py)."""
        if not self.stats_subscribers.update(frames[0].bytes):
            return
        if self.stats_subscribers.wanted and self._exit is None:
            self._publish_stats()  # at once: a dashboard that just connected sees it now
            self._stats_timer = self.loop.call_every(STATS_PERIOD, self._publish_stats)
        elif self._stats_timer is not None:
            self._stats_timer.cancel()
            self._stats_timer = None

    def _start_heart(self, addresses: dict[str, str]) -> None:
        self._heart = Heart(
            addresses["hb_ping"], addresses["hb_pong"], self.identity.uuid.encode(), self.info.curve
        )
        self._heart.start()

    # ------------------------------------------------------------------ the link core

    def _perform(self, actions: list[Action]) -> None:
        """Carry out what the link core decided, then wake it when it next has to decide."""
        for action in actions:
            if isinstance(action, SendRegistration):
                if self._queue_links is None:  # the first: no queue socket exists yet
                    self._send_registration(action)
                else:  # again (a restarted controller): announced only once reachable
                    waiting = self._registration_waits is not None
                    self._registration_waits = action  # the newest attempt names most
                    if not waiting:
                        self._queue_links.when_connected(self._send_waiting_registration)
            elif isinstance(action, Registered):
                self.identity.id = action.engine_id
                self.shm.configure(action.shm)
                if action.first:
                    self._connect(action.addresses)
                    self._registered.set()
            elif isinstance(action, Resend):
                # kept again, on the channel it goes on now, until this controller confirms
                # it: one killed before it recorded them would lose them otherwise
                with self.tasks.borrow():
                    for channel, reply in action.replies:
                        self.tasks.send_now(channel, marked_resent(reply, self.session.sign))
            elif isinstance(action, Fail):
                self.failure = action.reason
                self._registered.set()
                self.loop.stop()
                return
            else:
                self.shutdown(action.code, action.reason, unregister=action.unregister)
                return
        if self._link_timer is not None:
            self._link_timer.cancel()
        due = self.link.next_deadline()
        self._link_timer = None if due is None else self.loop.call_at(due, self._link_tick)

    def _send_waiting_registration(self) -> None:
        action, self._registration_waits = self._registration_waits, None
        if action is not None:
            self._send_registration(action)

    def _send_registration(self, action: SendRegistration) -> None:
        if self._exit is not None:
            return
        header = {**self.session.header("registration_request"), "msg_id": action.msg_id}
        msg = Message(header, {}, {}, action.content)
        send_frames(self._sockets[b"registration"], self.session.serialize(msg))

    def _link_tick(self) -> None:
        self._link_timer = None
        if self._exit is None:
            self._drain_notes()
            self._perform(self.link.tick(self.loop.time()))

    def _on_registration(self, frames: list[zmq.Frame]) -> None:
        """Raises InvalidContent for a malformed ``replies_recorded`` (the loop counts it)."""
        msg = self._decode(b"registration", frames)
        if msg is not None:
            self._drain_notes()  # a replies_recorded names replies the main thread sent
            self._perform(self.link.on_registration_message(msg, self.loop.time()))

    def _on_ping(self, frames: list[zmq.Frame]) -> None:
        """A ping from the Hub: the controller is alive (and which instance it is)."""
        if self._exit is None:
            self._drain_notes()  # a restarted controller is told the tasks this engine holds
            self._perform(self.link.on_ping(frames[-1].bytes, self.loop.time()))
            # direct requests queued behind a long task (a load-balanced one too): the Hub
            # gets their copies now (task_shell.py, TaskShell.look_behind_running_task)
            self.tasks.look_behind_running_task()

    # ------------------------------------------------------------------ tasks

    def _decode(self, channel: bytes, frames: list[zmq.Frame]) -> Message | None:
        """A verified message, or None after logging why it was dropped (or if the engine is
        shutting down: nothing new is taken then)."""
        if self._exit is not None:
            return None
        try:
            return self.session.feed(frames)
        except ProtocolError as err:
            self.rejected += 1
            self.log.warning("dropped a message on %s: %s", channel.decode(), err)
            return None

    def _send(self, channel: bytes, frames: Sequence[Frame]) -> None:
        if channel in TASK_CHANNELS:  # the main thread's sockets: borrowed
            with self.tasks.borrow():
                self.tasks.send_now(channel, frames)
            return
        send_frames(self._sockets[channel], frames)

    def _drain_notes(self) -> None:
        """Tell the link core what the main thread received and replied since the last call
        (it was not woken for each): before the link decides, and at the end of every turn."""
        notes = self.tasks.notes
        if not notes:
            return
        now = self.loop.time()
        link = self.link
        while notes:
            kind, first, second, answers = notes.popleft()
            if kind == "received":
                link.received(first, second)
            else:
                msg_id = link.replied(first, second, now, answers)
                if msg_id is not None:
                    self.limits.answered(msg_id)

    def _reply_error(self, channel: bytes, request: Message, exc: BaseException) -> None:
        reply = error_reply_msg(self.session, self.identity, request, exc)
        self._send(channel, self.session.serialize(reply, request.idents))

    def _forward(self, channel: bytes, frames: Sequence[Frame]) -> None:
        """Frames another thread posted for ``channel`` (control, iopub; a task reply posted
        here is sent through the main thread's sockets, kept until recorded)."""
        known = (b"mux", b"task", b"direct", b"control", b"iopub")
        if channel not in known or channel not in self._sockets:
            self.log.error("frames posted for unknown channel %r", channel)
            return
        self._send(channel, frames)

    def _overrun(self, request: Request | None, reason: str) -> None:
        """A task ignored its time limit's interrupt (see :class:`.time_limits.TimeLimits`):
        answer it with TaskTimeout, then stop this engine (exit status 1)."""
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
                self.tasks.put_next(Request(b"control", msg))  # the main thread replies
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
        self._send(b"control", self.session.serialize(reply, msg.idents))
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
        """Answer every request that reached this engine and has not started as aborted (the
        main thread's queue and sockets, borrowed)."""
        with self.tasks.borrow():
            self.tasks.abort_queued(reason)

    def deliver_signal(self, signum: int) -> None:
        """Signal the main thread (:class:`.time_limits.SignalSender`)."""
        self.signals.send(signum)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            self.shutdown(0, "SIGTERM")

    def _publish_stats(self) -> None:
        """Once per STATS_PERIOD: this engine's CPU, memory and running task (stats.py)."""
        if self._exit is not None:
            return
        stats = self.stats.sample(self.gate.running, self.loop.time())
        msg = self.session.msg("engine_stats", stats)
        topic = STATS_TOPIC + str(self.identity.id).encode()
        self._send(b"iopub", [topic, *self.session.serialize(msg)])

    # ------------------------------------------------------------------ exit

    def shutdown(self, exit_code: int, reason: str, *, unregister: bool = True) -> None:
        """End the engine (loop thread only): the text not yet streamed and the replies other
        threads handed over are sent, queued tasks are answered as aborted, the Hub is told
        (``unregister``), every socket and thread is closed, and the process exits with
        ``exit_code`` through ``os._exit``, even while the main thread is inside user code.
        Nothing new is taken once this is called; the rest happens in the teardown."""
        if self._exit is not None:
            return
        lanes = self.tasks.lanes
        self.log.info(
            "engine %s shutting down: %s (%d messages rejected)",
            self.identity.id,
            reason,
            self.rejected
            + self.loop.rejected
            + self.tasks.rejected
            + self.tasks.loop.rejected
            + (lanes.rejected if lanes is not None else 0),
        )
        self._exit = Exit(exit_code, reason, unregister)
        try:
            self.capture.close(timeout=LINGER_MS / 1000)  # posts the text not yet streamed
        finally:
            self.loop.stop(f"engine {self.identity.id} is shutting down ({reason})")

    def _teardown(self) -> None:
        """Last on the loop thread, after the hand-offs accepted before the stop ran."""
        exit_ = self._exit
        if exit_ is None and self.failure is not None:  # the first registration failed
            self._close(linger=0)
            return
        if exit_ is None:  # the loop itself failed (LoopThread logged it)
            self.log.critical("the engine's I/O thread failed; exiting")
            exit_ = Exit(1, "internal error")
        try:
            self.tasks.take_over()  # the main thread never sends again: its replies go now
            if b"mux" in self._sockets:
                self.tasks.abort_queued(f"engine {self.identity.id} shut down ({exit_.reason})")
            if exit_.unregister and self._registered.is_set():
                self._unregister()
            self._close(linger=LINGER_MS)
            self.shm.close()
        except BaseException:
            self.log.exception("error during shutdown")
        finally:
            try:
                logging.shutdown()
                for stream in (sys.__stdout__, sys.__stderr__):
                    if stream is not None:
                        stream.flush()
            except (OSError, ValueError):
                # an output nobody reads any more (the ssh session of an engine it started
                # was killed: EPIPE) must not keep the process from exiting: raised here, it
                # ended this thread before os._exit, and the engine ran on for ever, its
                # main thread waiting for this one
                pass
            os._exit(exit_.code)

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
            try:
                reply = self.session.feed(sock.recv_multipart(copy=False))
            except ProtocolError:
                continue
            if reply.parent_id == msg.msg_id:
                return

    def _close(self, linger: int) -> None:
        """Send what the task shell's outboxes hold (the aborts of the teardown), stop the
        heart, close every socket (waiting at most ``linger`` ms for queued messages to leave)
        and the context."""
        for error_text in self.tasks.flush():  # taken over by the teardown
            self.log.error("replies not sent at exit: %s", error_text)
        if self._queue_links is not None:
            self._queue_links.close()
        if self._heart is not None:
            self._heart.stop(timeout=LINGER_MS / 1000)
        for sock in self._sockets.values():
            sock.close(linger=linger)
        self.context.term()
        self.stats.close()
