"""The engine's main thread: its own loop over the mux and task sockets, and the tasks it runs.

A request read by the I/O thread and handed to the main thread, and its reply handed back,
cost two thread wake-ups per task: about 130 us of a 1 ms apply round trip on two cores, and
more of its tail, where a woken thread waits for a core. So the main thread owns the two task
sockets (mux: direct requests through the MUX; task: the load-balancing scheduler's) and runs
a :class:`~corral.loop.Loop` of its own over them: it reads and verifies requests, runs them one
at a time between turns (so a turn reads what arrived meanwhile), and sends each reply at the
end of its turn, in a bundle with others when several are ready (:mod:`corral.bundles`). The
I/O thread keeps everything else (registration, control, heartbeat, iopub, the link core) and
is not woken per task: what the link core must learn of tasks and replies is left in
:attr:`notes` for it to read before it next decides anything.

The I/O thread still needs the task sockets now and then, also while the main thread runs user
code for hours: to answer every queued request of an ``abort_request`` at once, to send kept
replies again after a controller restart, to answer a task that overran its time limit, and at
exit. :meth:`TaskShell.borrow` gives it the sockets, the queue and the outbox: the main thread
holds :attr:`lock` while its loop runs and lets it go while a task's user code runs, and when
the I/O thread asks for it between tasks, at the end of the current turn.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, cast

import zmq

from corral.bundles import Outbox
from corral.errors import InvalidContent, ProtocolError, SharedMemoryRefused, UnknownMessageType
from corral.kept_frames import compact
from corral.lane import Lane, LaneListener
from corral.loop import Loop
from corral.protocol.messages import validate_content
from corral.protocol.session import Frame, Message, Session
from corral.sharedmem import SharedMemory
from corral.sockets import recv_small_as_bytes

from .alarm import Alarm
from .envelope import read_request
from .lanes import EngineLanes
from .runner import (
    CONTROL_TYPES,
    QUEUE_MARK,
    TASK_TYPES,
    EngineIdentity,
    QueueMark,
    Request,
    TaskRunner,
    WorkQueue,
    aborted_reply_msg,
    error_reply_msg,
    time_limit,
)
from .unrouted import KEEP_FOR as KEEP_UNROUTED
from .unrouted import UnroutedReplies

#: compiled, ``time.monotonic`` is an attribute lookup on the module at every call
_monotonic: Final = time.monotonic
BATCH: Final = 64  # messages per socket per turn
HOLD_REPLIES: Final = 0.002  # seconds a reply may wait for the tasks queued behind it, at most
BATCH_FOR: Final = 0.001  # seconds of held replies after which the loop sends them (end of turn)
# seconds between the I/O thread's reads of the direct socket while a task runs: from
# WATCH_EVERY, doubled after each read up to WATCH_AT_MOST (a task of hours must not wake the
# engine a hundred times a second; the Hub learns of a request queued behind it within a second)
WATCH_EVERY: Final = 0.01
WATCH_AT_MOST: Final = 1.0
TASK_CHANNELS: Final = (b"mux", b"task", b"direct")
MUX_IN: Final = b"mux_in"  # the prefixes of the MUX device's copies, which the Hub records
MUX_OUT: Final = b"mux_out"

Note = tuple[str, Any, Any, str | None]
"""What the link core must learn, in order: ``("received", msg_id, retries, None)`` (its
``retries`` if it came load-balanced, else None) or
``("replied", channel, frames, msg_id of the request answered, None if not known)``, the
frames compact (:func:`corral.kept_frames.compact`)."""


class TaskShell:
    """The main thread's loop over the task sockets; see the module docstring.

    The I/O thread calls :meth:`attach` when the engine registered, then only :meth:`borrow`,
    :meth:`send_now`, :meth:`abort_queued` and :meth:`put_next`; the main thread calls
    :meth:`run`, and the runner's callbacks :meth:`reply` and :meth:`mark_queue`.
    """

    def __init__(
        self,
        session: Session,
        identity: EngineIdentity,
        shm: SharedMemory,
        log: logging.Logger,
        watch_time_limit: Callable[[Request], None],
        on_failure: Callable[[str], None],
        hold_until: Callable[[float], None] = lambda deadline: None,
        alarm: Alarm | None = None,
    ) -> None:
        self.session = session
        self.identity = identity
        self.shm = shm
        self.log = log
        self.watch_time_limit = watch_time_limit  # hands a limited request to the I/O thread
        self.on_failure = on_failure  # the loop itself failed: the engine must stop
        # the I/O thread sends the held replies at a deadline (see _run_next): it polls the
        # alarm's descriptor; without one (not Linux), hold_until hands it the deadline
        self.hold_until = hold_until
        self.alarm = alarm
        self.loop = Loop("engine-tasks")
        self.work = WorkQueue()
        self.notes: deque[Note] = deque()  # for the link core, read by the I/O thread
        self.lock = threading.Lock()  # whoever holds it may use the sockets, work and outbox
        self.rejected = 0  # requests dropped here: bad signature, replay, malformed
        self._sockets: dict[bytes, zmq.Socket[Any]] = {}
        self._outboxes: dict[bytes, Outbox] = {}
        self._copies_outbox: Outbox | None = None  # to the Hub, for direct requests
        self.lanes: EngineLanes | None = None  # with the direct ROUTER, where lanes are
        self._copies: list[tuple[bytes, Sequence[Frame]]] = []  # made into copies after replies
        self._wanted = threading.Condition(threading.Lock())
        self._borrowers = 0  # I/O-thread calls waiting for or holding the lock
        self._scheduled = False
        self._held_since: float | None = None  # when the oldest reply not sent was queued
        self._copies_since: float | None = None  # when the oldest copy not sent was queued
        self._running = False  # user code runs (the lock is lent meanwhile)
        self._watch_every = WATCH_EVERY  # the next look at the direct socket, while it runs
        self._direct_seen = False  # a client sent a request to the direct socket
        self._engine_ident = identity.uuid.encode()
        self._hold_asked = False  # hold_until was called for the replies held now
        self._watch_armed = False  # the alarm is armed to watch the direct socket (no reply held)
        # direct replies the ROUTER refused (their client's zmq connection is not up yet)
        self.unrouted = UnroutedReplies()
        self._unrouted_asked = False  # a retry is asked of the loop

    # ------------------------------------------------------------------ set-up

    def attach(
        self,
        mux: zmq.Socket[Any],
        task: zmq.Socket[Any],
        direct: zmq.Socket[Any] | None = None,
        copies: zmq.Socket[Any] | None = None,
        lanes: LaneListener | None = None,
        copies_lane: Lane | None = None,
    ) -> None:
        """(I/O thread, at registration.) The task sockets; the main thread serves them from
        :meth:`run` on (the registration event orders this before it). ``direct``: the ROUTER
        clients on this host send direct requests to, and ``copies``: the PUSH to the Hub
        that gets the copies of those requests and their replies; ``lanes``: the listening
        socket of the lanes (:mod:`corral.lane`) that clients on this host may send those
        direct requests on instead; ``copies_lane``: a lane to the Hub for the copies, when
        it is on this host (the copies PUSH serves once it closes)."""
        self._sockets = {b"mux": mux, b"task": task}
        self._outboxes = {b"mux": Outbox(mux, 1), b"task": Outbox(task, 0)}
        if direct is not None:
            # refused, not dropped, when the client is not connected yet (corral.engine.unrouted)
            direct.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._sockets[b"direct"] = direct
            self._outboxes[b"direct"] = Outbox(direct, 1)
        if copies is not None:
            self._copies_outbox = Outbox(copies, 0)
        if direct is not None and (lanes is not None or copies_lane is not None):
            self.lanes = EngineLanes(self.loop, self.log, lanes, copies_lane, self._on_direct)

    def run(self, runner: TaskRunner) -> None:
        """(Main thread.) Serve the task sockets and run requests until the process ends (the
        I/O thread ends it), or until ``self.loop.stop()``; if the loop itself fails (a bug),
        ``on_failure`` is told why and this returns."""
        self.runner = runner
        loop = self.loop
        # a request's envelope and small buffers read as bytes: parsed, unpacked and
        # answered from them without a view per read (corral.sockets.recv_small_as_bytes)
        for channel, handle in self._handlers():
            sock = self._sockets[channel]
            loop.add_socket(sock, handle, batch=BATCH, bundles=True, small_as_bytes=True)
        if self.lanes is not None:
            self.lanes.start()
        loop.at_turn_end(self._end_turn)
        self.lock.acquire()
        try:
            loop.run()
        except Exception as exc:  # its poll failed
            self.log.exception("the engine's task loop failed")
            self.on_failure(f"the task loop failed: {exc!r}")
        finally:
            self.lock.release()

    # ------------------------------------------------------------------ requests (main thread)

    def _on_mux(self, frames: Sequence[Frame]) -> None:
        self._take(b"mux", frames)

    def _on_task(self, frames: Sequence[Frame]) -> None:
        self._take(b"task", frames)

    def _on_direct(self, frames: Sequence[Frame]) -> None:
        self._direct_seen = True
        self._take(b"direct", frames)

    def _handlers(self) -> list[tuple[bytes, Callable[[Sequence[Frame]], None]]]:
        handlers: list[tuple[bytes, Callable[[Sequence[Frame]], None]]] = [
            (b"mux", self._on_mux),
            (b"task", self._on_task),
        ]
        if b"direct" in self._sockets:
            handlers.append((b"direct", self._on_direct))
        return handlers

    def close_lanes(self) -> None:
        """(Teardown, the loop stopped) Close every lane, the Hub's too."""
        if self.lanes is not None:
            self.lanes.close()

    def _copy_for_hub(self, prefix: bytes, frames: Sequence[Frame]) -> None:
        """Note the Hub's copy of a direct request or reply, sent in the MUX device's format
        (``[mux_in, engine, client, msg]``, ``[mux_out, client, engine, msg]``) at the end of
        the turn just before its replies (:meth:`flush`, which lays them out then), or at the
        held replies' deadline while a long task runs (:meth:`_run_next`). Before the replies:
        a client that has its reply and asks the Hub about the task (``result_status``,
        ``purge``) finds it recorded, as through the MUX device, which publishes its copy as
        it forwards; sending them after the replies saved 1-16 us of a round trip's median
        (bench_paired.py) and made such questions fail now and then under load."""
        if self._copies_outbox is None:  # a Hub that takes no copies
            return
        if self._copies_since is None:
            self._copies_since = _monotonic()
        self._copies.append((prefix, frames))

    def _send_copies(self) -> list[str]:
        """(Lock held, before the replies.) Send the copies noted; the errors, if any."""
        outbox, copies = self._copies_outbox, self._copies
        if outbox is None or not copies:
            return []
        self._copies = []
        engine = self._engine_ident
        made: list[Sequence[Frame]] = [
            (prefix, engine, frames[0], *frames[1:])
            if prefix == MUX_IN
            else (prefix, frames[0], engine, *frames[1:])
            for prefix, frames in copies
        ]
        if self.lanes is not None:  # on the Hub's lane, in one packet, if it is on this host
            made = self.lanes.send_copies(made)
        for copy in made:
            outbox.put(copy)
        return [str(error) for error, _ in outbox.flush()]

    def _take(self, channel: bytes, frames: Sequence[Frame]) -> None:
        """Queue a verified apply or execute request; others get an error reply."""
        try:
            msg = read_request(self.session, frames)
        except ProtocolError as err:
            self.rejected += 1
            self.log.warning("dropped a message on %s: %s", channel.decode(), err)
            return
        if channel == b"direct":
            self._copy_for_hub(MUX_IN, frames)
        try:
            msg = self.shm.resolve(msg)  # verified above: only then is a reference mapped
        except SharedMemoryRefused as err:
            self.rejected += 1
            self.log.warning("refused the buffers of %s: %s", msg.msg_id, err)
            self._reply_error(channel, msg, err)
            return
        header = msg.header  # its fields are strings: the parse checked them
        msg_type: str = header["msg_type"]
        if msg_type not in TASK_TYPES:
            where = "belongs on the control channel" if msg_type in CONTROL_TYPES else ""
            error = UnknownMessageType(
                f"{msg_type!r} {where or 'is not a request this engine serves'}; the "
                f"{channel.decode()} channel takes {' and '.join(sorted(TASK_TYPES))}"
            )
            self._reply_error(channel, msg, error)
            return
        try:
            validate_content(msg_type, msg.content or {})
            limited = "time_limit" in msg.metadata and time_limit(msg) is not None
        except InvalidContent as err:
            self._reply_error(channel, msg, err)
            return
        # a load-balanced task's retries: a restarted controller that never recorded it may
        # then mark it for its client to send again (corral.engine.replies.ReplyLog.balanced_tasks)
        retries: int | None = None
        if channel == b"task":
            asked = msg.metadata.get("retries", 0)
            retries = asked if type(asked) is int else 0
        self.notes.append(("received", header["msg_id"], retries, None))
        request = Request(channel, msg)
        if limited:
            self.watch_time_limit(request)
        self.work.put(request)

    def _reply_error(self, channel: bytes, request: Message, exc: BaseException) -> None:
        reply = error_reply_msg(self.session, self.identity, request, exc)
        self._queue_reply(channel, self.session.serialize(reply, request.idents))

    def _end_turn(self) -> None:
        """(Turn end.) Lend the sockets if the I/O thread asked (it may answer queued requests
        as aborted, or queue one ahead); run the requests this turn read, unless replies are
        held (those leave first) or a run is already scheduled; send the replies; schedule
        what is left for the next turn, after the sockets were read again. Running them here
        rather than on the next turn saves a poll per batch, which is a poll per task when
        an engine gets one task at a time (many engines)."""
        self._lend_if_asked()
        if not self._scheduled and self._held_since is None:
            self._run_next()
        self._flush_turn()
        self._schedule()

    def _schedule(self) -> None:
        """Run the next request on the next turn, after the sockets were read."""
        if not self._scheduled and not self.work.empty():
            self._scheduled = True
            self.loop.call_soon(self._run_next)

    def _run_next(self) -> None:
        """Run queued requests. Replies are sent at the end of the turn, so after a short task
        the next queued one runs at once and its reply joins the same bundle (one message to
        the scheduler for several replies: it costs it far less than one each). A reply waits
        for the tasks behind it at most ``HOLD_REPLIES`` seconds: the loop stops taking more
        once its oldest held reply is ``BATCH_FOR`` old, and before a task starts with
        replies held, the I/O thread is asked to send them at the deadline if a task still
        holds them then (it borrows the sockets while user code runs; a batch of short tasks
        has ended and been sent by then, and the I/O thread finds nothing to do)."""
        self._scheduled = False
        while True:
            try:
                item = self.work.get_nowait()
            except queue.Empty:  # the I/O thread answered them all meanwhile
                return
            oldest = self._oldest_unsent()
            if not self._hold_asked and oldest is not None:
                self._hold_asked = True
                self._ask_deadline(oldest + HOLD_REPLIES)
            elif not self._hold_asked and self._direct_seen and self.alarm is not None:
                # direct requests that come while this task runs are read and copied for
                # the Hub from HOLD_REPLIES on (_watch_direct): an engine that serves none
                # never pays this system call per task
                self._hold_asked = self._watch_armed = True
                self.alarm.arm(_monotonic() + HOLD_REPLIES)
            self._running = True
            self._watch_every = WATCH_EVERY
            self.lock.release()  # user code may run for hours: the I/O thread may borrow
            try:
                self.runner.run(item)
            except BaseException:  # the runner answers user errors; this is a last resort
                name = "a queue mark" if isinstance(item, QueueMark) else item.msg.msg_id
                self.log.exception("failed to run %s", name)
            finally:
                self.lock.acquire()
                self._running = False
            held = self._held_since
            if self.work.empty() or held is None or _monotonic() - held >= BATCH_FOR:
                return

    def reply(self, channel: bytes, frames: Sequence[Frame], answers: str | None = None) -> None:
        """(Main thread, from the runner: also while the lock is lent.) Send a reply at the
        end of this turn; the link core keeps it until the Hub recorded it (by ``answers``,
        the msg_id of the request, read from the frames when not given)."""
        with self.lock:
            self._queue_reply(channel, frames, answers)

    def _queue_reply(
        self, channel: bytes, frames: Sequence[Frame], answers: str | None = None
    ) -> None:
        if self._held_since is None:
            self._held_since = _monotonic()
        # kept on its own channel: the Hub confirms a direct reply from its copy on the
        # copies PULL, which no order ties to the MUX device's (see corral.engine.replies);
        # compact, as the I/O thread keeps it until the Hub recorded the reply
        self.notes.append(("replied", channel, compact(frames), answers))
        if channel == b"direct":
            lanes = self.lanes
            if lanes is None or not lanes.hold_reply(frames):
                self._outboxes[channel].put(frames, (None, frames))  # tagged: see flush
            self._copy_for_hub(MUX_OUT, frames)
        else:
            self._outboxes[channel].put(frames)

    def _oldest_unsent(self) -> float | None:
        """When the oldest reply or copy not sent yet was queued (None: nothing waits)."""
        held, copies = self._held_since, self._copies_since
        if held is None or (copies is not None and copies < held):
            return copies
        return held

    def mark_queue(self) -> None:
        """(Main thread, from the runner.) A :class:`QueueMark` behind every request that has
        reached this engine so far: those still in the sockets are read first."""
        with self.lock:
            self.take_available()
            self.work.put(QUEUE_MARK)

    def take_available(self) -> int:
        """Read what waits in the task sockets into the queue now (with the lock held); the
        number of requests queued."""
        for channel, handle in self._handlers():
            sock = self._sockets[channel]
            while True:
                try:
                    frames = recv_small_as_bytes(sock, zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.loop.deliver(handle, cast(list[zmq.Frame], frames))
        if self.lanes is not None:
            self.lanes.read_all()
        return self.work.qsize()

    # ------------------------------------------------------------------ the I/O thread's side

    @contextmanager
    def borrow(self) -> Iterator[None]:
        """(I/O thread.) The task sockets, queue and outbox, for the block: at once while a
        task runs or before :meth:`run`; else at the end of the main loop's current turn."""
        self._acquire_from_main()
        try:
            yield
        finally:
            with self._wanted:
                self._borrowers -= 1
                self._wanted.notify_all()
            self.lock.release()

    def _lend_if_asked(self) -> None:
        """(Main thread, turn end.) Let the I/O thread have the lock, and wait for it back."""
        with self._wanted:
            if not self._borrowers:
                return
        self.lock.release()
        with self._wanted:
            while self._borrowers:
                self._wanted.wait()
        self.lock.acquire()

    def take_over(self) -> None:
        """(I/O thread, at exit.) The lock for good: the main thread never touches the task
        sockets again (it waits for the lock until the process ends)."""
        self._acquire_from_main()

    def _acquire_from_main(self) -> None:
        """(I/O thread.) Ask the main loop for the lock (it lends it at the end of its turn,
        see :meth:`_lend_if_asked`) and take it."""
        with self._wanted:
            self._borrowers += 1
        try:
            self.loop.call_soon_threadsafe(_nothing)  # a polling main loop ends its turn
        except Exception:  # the main loop is gone (only while the process ends)
            pass
        self.lock.acquire()

    def send_now(self, channel: bytes, frames: Sequence[Frame]) -> None:
        """(I/O thread, lock held via :meth:`borrow` or :meth:`take_over`.) Send now, after
        what the outboxes hold: replies leave in the order the link core learns of them, and
        it keeps each (a kept one sent again too) until the Hub confirms it."""
        self._queue_reply(channel, frames)
        for error in self.flush():
            self.log.error("replies not sent: %s", error)

    def abort_queued(self, reason: str) -> None:
        """(I/O thread, lock held.) Answer every request that reached this engine and has not
        started as aborted; queue marks are put back (the runner ends a stop_on_error abort at
        them)."""
        if not self._sockets:
            return
        self.take_available()
        marks: list[QueueMark] = []
        while not self.work.empty():
            request = self.work.get_nowait()
            if isinstance(request, QueueMark):
                marks.append(request)
                continue
            reply = aborted_reply_msg(self.session, self.identity, request.msg, reason)
            self._queue_reply(request.channel, self.session.serialize(reply, request.msg.idents))
        for mark in marks:
            self.work.put(mark)
        for error in self.flush():
            self.log.error("aborted replies not sent: %s", error)

    def flush(self) -> list[str]:
        """(Lock held.) Send the Hub's copies, then what the outboxes hold; the errors, if
        any. An alarm armed for a batch's held replies is left armed: the next batch with
        replies held arms it again (one system call, replacing the deadline), and if none
        comes before it fires, the I/O thread wakes once to find nothing asked
        (:meth:`send_held`). Disarming it here was a second system call per batch (about 2 us
        through ctypes) to spare that one wake-up at the end of a burst. An alarm armed to
        watch the direct socket (each task of a direct round trip, run alone: left armed, it
        would wake the I/O thread whenever the next request comes later than the deadline)
        is disarmed, last: a system call not spent before the replies leave."""
        self._held_since = self._copies_since = None
        self._hold_asked = False
        errors = self._send_copies()
        lanes = self.lanes
        if lanes is not None and lanes.holding:
            lanes.send_replies(self._outboxes[b"direct"])
        if len(self.unrouted):
            self._put_unrouted()
        for channel, outbox in self._outboxes.items():
            for error, tags in outbox.flush():
                if channel == b"direct" and error.errno == zmq.EHOSTUNREACH:
                    self.unrouted.keep([tag for tag in tags if tag is not None], _monotonic())
                else:
                    errors.append(str(error))
        if len(self.unrouted) and not self._unrouted_asked:
            self._unrouted_asked = True
            try:
                self.loop.call_soon_threadsafe(self._arm_unrouted)
            except ConnectionError:
                pass  # the engine stops: its clients' connections go with it
        if self._watch_armed:
            self._watch_armed = False
            if self.alarm is not None:
                self.alarm.disarm()
        return errors

    def _put_unrouted(self) -> None:
        """(Lock held, flushing.) The direct replies refused before, in the direct outbox again
        (tagged with when they were first refused); those kept too long are given up."""
        retried, given_up = self.unrouted.take(_monotonic())
        if given_up:
            self.log.warning(
                "%d direct reply(ies) dropped: their client never connected to this engine's "
                "direct socket in %.0f s (gone?)",
                given_up,
                KEEP_UNROUTED,
            )
        outbox = self._outboxes[b"direct"]
        for first, frames in retried:
            outbox.put(frames, (first, frames))

    def _arm_unrouted(self) -> None:
        """(Main loop.) Try the refused direct replies again (:mod:`.unrouted` says when)."""
        self.loop.call_later(self.unrouted.next_try(_monotonic()), self._retry_unrouted)

    def _retry_unrouted(self) -> None:
        """(Main loop, lock held.) Send the refused direct replies again (and what else is
        held); still refused, they ask for another try."""
        self._unrouted_asked = False
        if len(self.unrouted):
            for error in self.flush():
                self.log.error("replies not sent: %s", error)

    def _flush_turn(self) -> None:
        """(Turn end, or the I/O thread with the lock.) Send the replies and copies held."""
        if self._held_since is not None or self._copies_since is not None:
            for error in self.flush():
                self.log.error("replies not sent: %s", error)

    def on_alarm(self) -> None:
        """(I/O thread, its loop polls :attr:`alarm`.) The deadline of held replies passed."""
        if self.alarm is not None and self.alarm.clear():
            self.send_held()

    def _ask_deadline(self, deadline: float) -> None:
        """Have the I/O thread call :meth:`send_held` at ``deadline`` (a time.monotonic
        value): the alarm it polls, replacing any earlier deadline, or ``hold_until``."""
        if self.alarm is not None:
            self.alarm.arm(deadline)
        else:
            self.hold_until(deadline)

    def send_held(self) -> None:
        """(I/O thread, at the deadline of the alarm or of ``hold_until``.) Send the replies a
        long task holds back (none if the main thread sent them meanwhile). A deadline asked
        for a batch that has been sent since (the alarm is left armed, see :meth:`flush`) is
        dropped at once: no borrowing of the sockets from a task that holds nothing."""
        if not self._hold_asked:  # a hint read without the lock: set before every arming
            return
        held = self._oldest_unsent()  # hints read without the lock
        if held is None and not self._running:
            return  # sent meanwhile, and the task ended
        if held is not None and _monotonic() - held < HOLD_REPLIES - BATCH_FOR / 2:
            # sent meanwhile; those held now are younger. Their deadline is asked for again:
            # a task that started with them held asked for none when a deadline was pending
            # (the direct socket's watch, armed as the task before it started, firing now),
            # and they would have waited for the running task's end, however long
            self._ask_deadline(held + HOLD_REPLIES)
            return
        with self.borrow():
            self._watch_direct()

    def _watch_direct(self) -> None:
        """(I/O thread, lock borrowed, at the alarm.) Send what is held; and while a task
        runs, first read the direct requests waiting behind it, so that their copies reach
        the Hub now (queue_status, the engine's death) and not when the task ends, and look
        again after ``WATCH_EVERY`` seconds, then ever less often up to ``WATCH_AT_MOST`` (the
        MUX device copies the requests as they pass; the direct socket has no device)."""
        alarm = self.alarm
        watching = self._running and b"direct" in self._sockets and alarm is not None
        if watching:
            self.take_available()
        self._flush_turn()
        if watching and alarm is not None:
            self._hold_asked = self._watch_armed = True  # the next flush disarms it
            alarm.arm(_monotonic() + self._watch_every)
            self._watch_every = min(2 * self._watch_every, WATCH_AT_MOST)

    def look_behind_running_task(self) -> None:
        """(I/O thread, at each of the Hub's pings.) While a task runs, read the direct
        requests waiting behind it and send their copies to the Hub: the alarm does this
        every ``WATCH_EVERY`` from HOLD_REPLIES on once this engine has served a direct
        request, and this, once a beat, on an engine that had none yet (which arms no alarm
        per task: about 4 us of system calls)."""
        if self._running and b"direct" in self._sockets:  # hints: checked again under the lock
            with self.borrow():
                if self._running:
                    self.take_available()
                    self._flush_turn()

    def put_next(self, request: Request) -> None:
        """(Any thread.) Run ``request`` as soon as the running task (if any) ends, ahead of
        queued ones (``clear_request``)."""
        with self.borrow():
            self.work.put_next(request)


def _nothing() -> None:
    """A hand-off that only wakes a loop."""
