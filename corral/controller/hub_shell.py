"""The Hub's socket shell: moves frames and time between the controller's sockets and the Hub.

It drives the :class:`~corral.controller.hub.Hub` core on one :class:`~corral.loop.Loop`, the
controller's main thread (:mod:`corral.controller.app` binds the sockets and runs it). Per
message it only decodes what the Hub needs and sends what it returns; every rule is the core's.
The shell keeps what needs I/O: the store writes the Hub returns (applied with
:func:`~corral.controller.hub_actions.apply_writes`, before the messages of the same call are
sent), the tasks it sends again (``Client.resubmit``: on its own DEALERs on the MUX and task
queues, whose replies it drops, as it records them from the copies), the wall clock (passed
to the Hub as ``now``; the Hub says when it next wants to be woken and one loop timer waits
for that), the pong socket's disconnect events, the shared-memory segments of requests and
results, and the scheduler process's end.

Sockets are served in priority order each loop turn: pongs (a late pong can cost an engine its
life), the devices' copies, the scheduler's copies (at most ``MONITOR_BATCH`` of each per turn,
so the beat's timer is never far away), then registration and queries; copies that arrived
since the poll are read before each request (but an engine's registration) too, so a query sees
every task whose copy came first (a client's submission is known to the next query of any
client). A reply read so
ahead of the re-registration that names its task is still recorded: a reply to a task the Hub
has no record of makes a whole record (see :mod:`.hub_records`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import zmq

from corral import heap
from corral.controller.destination import PREFIX as DESTINATION
from corral.controller.destination import read_destinations
from corral.controller.hub import Hub
from corral.controller.hub_actions import (
    Action,
    DropMatching,
    DropRecords,
    ForgetSegments,
    Resubmit,
    Send,
    Stop,
    apply_record_write,
    apply_writes,
)
from corral.controller.hub_resubmit import resubmit_failed
from corral.controller.scheduler_wire import HubCopy, read_hub_copy, split_route
from corral.controller.store.base import MessageJSON, ResultStore
from corral.errors import CorralError, ProtocolError, StoreError
from corral.lane import Lane, LaneListener, LaneServer
from corral.loop import DRAIN_BATCH, FrameHandler, Loop, Timer
from corral.protocol.messages import error_reply
from corral.protocol.session import (
    DELIMITER,
    Frame,
    Message,
    Session,
    split_identities,
)
from corral.protocol.shm import METADATA_KEY, SegmentRef, encode_refs
from corral.sharedmem import SharedMemory
from corral.socket_events import read_monitor_event
from corral.sockets import recv_small_as_bytes, send_frames

log = logging.getLogger("corral.controller")
_sched_yield = os.sched_yield

SHM_SWEEP_PERIOD = 2.0  # seconds between sweeps of the segments of dead processes
# copies read per monitor socket per loop turn: the beat (a timer) runs between turns, and a
# backlog of copies (100000 tasks submitted at once) must not delay it past the engines'
# patience, nor pongs, registrations and queries
MONITOR_BATCH = 250
# seconds the engines' copies lanes go unwatched after a copy woke the Hub, read on a timer
# instead while copies keep coming (:meth:`HubShell._gather`): a direct round trip's copies
# woke the Hub once each, which cost the engine the wake-up on its way to the reply and the
# Hub a sleep and a wake-up per task, on a machine whose cores the client and the engine need
# (the Hub's CPU per direct round trip 136-140 -> 90-108 us, bench_roundtrip_cpu.py; the
# round trip's median 8-19 us faster in bench_paired.py's blocks, the same within 5 us run
# after run; bench/README.md, round thirty-four)
LANE_GATHER = 0.002
# an engine's (un)registration reads no task record: no catching up on copies first (with a
# backlog, each of an engine's repeated attempts cost a whole batch of copies: the beat
# stopped for over a minute and every engine took the controller for lost)
ENGINE_REQUESTS = frozenset({"registration_request", "unregistration_request"})
# requests whose answer lets the client forget what it told: answered once the store has
# written what they recorded (a controller killed after the answer, before the writer's
# commit, would lose the only copy: the client does not tell it again)
WRITTEN_BEFORE_ANSWER = frozenset({"direct_lost_request"})
# after a purge (a client's, or the time to live's), give the freed memory back to the system
# (corral.heap), at most every 10 s
PURGE_TRIM_SCHEDULE = (1, 10.0, 10.0)
# after a burst of copies read (at least 10,000 since the last such trim), once no task is
# pending, at most every 10 s (every 60 s if some always are): a burst's copies queued in
# zmq and its records queued for the writer leave the C allocator's heap at its high-water
# mark otherwise (bench/README.md, round fourteen's hubmem)
BURST_TRIM_SCHEDULE = (10_000, 10.0, 60.0)
TRIM_CHECK_COPIES = 1000
PURGES = (DropRecords, DropMatching)
# the prefix, at most three identities (client, engine, omitted:<bytes>) and the delimiter
MAX_COPY_ROUTE = 5


class HubShell:
    """The Hub's sockets on one loop. Construct it on the loop's thread, then ``loop.run()``.

    ``on_stop`` is called (on the loop) when the Hub is asked to shut down or the scheduler
    process ends; ``scheduler`` is that process, watched through its stdout pipe (its last line
    is its counts, then end of file), so its end is noticed at once, without polling.
    ``burst_trim``: when memory freed after a burst of copies goes back to the system
    (:class:`corral.heap.TrimSchedule`'s arguments; tests shorten it).
    """

    def __init__(
        self,
        loop: Loop,
        hub: Hub,
        session: Session,
        store: ResultStore,
        shm: SharedMemory,
        sockets: dict[str, zmq.Socket[Any]],
        on_stop: Callable[[bool], None],
        scheduler: subprocess.Popen[bytes] | None = None,
        *,
        trusted_copies: bool = False,
        burst_trim: tuple[int, float, float] = BURST_TRIM_SCHEDULE,
        copies_lanes: LaneListener | None = None,
        lane_gather: float = LANE_GATHER,
    ) -> None:
        self.loop = loop
        self.hub = hub
        self.session = session
        self.store = store
        self.shm = shm
        self.registration = sockets["registration"]
        self.notification = sockets["notification"]
        self.ping = sockets["ping"]
        self.pong = sockets["pong"]
        self.pong_events = sockets["pong_events"]
        self.monitor = sockets["monitor"]
        self.queue_monitor = sockets["queue_monitor"]
        self.engine_copies = sockets.get("engine_copies")
        # the Hub's own clients of the MUX and task queues, for resubmissions (no "task" when
        # the controller runs without a scheduler)
        self.resubmit_sockets = {
            queue: sockets[f"resubmit_{queue}"]
            for queue in ("mux", "task")
            if f"resubmit_{queue}" in sockets
        }
        self.on_stop = on_stop
        self.scheduler = scheduler
        # the scheduler's copies come over a socket only this user's processes can reach, and
        # the scheduler checked every signature in them: checking again here would add nothing
        # (docs/wire-flows.md, "Who checks what"); the devices' copies are always checked
        self.verify_scheduler_copies = not trusted_copies
        self.scheduler_counts: dict[str, Any] | None = None
        self.monitored = 0
        self._pong_fds: dict[int, str] = {}
        self._timer: Timer | None = None
        self._trim = heap.TrimSchedule(*PURGE_TRIM_SCHEDULE)
        self._burst_trim = heap.TrimSchedule(*burst_trim)
        self._copies_unreported = 0  # copies read since the burst trim's schedule was told
        self._purged = 0  # tasks purged by the actions being performed
        self._received = 0.0  # when the bundle of copies being read came
        loop.add_socket(self.pong, self._on_pong)  # zmq Frames: their SRCFD is read
        loop.add_reader(self.pong_events, self._on_pong_events)
        # the other sockets' small frames are read as bytes, as a bundle's messages come: every
        # frame of a copy is parsed (corral.sockets.recv_small_as_bytes)
        # copies come in bundles when they queue up (corral.bundles): each read as one burst
        loop.add_socket(
            self.queue_monitor, self._on_device_message, batch=MONITOR_BATCH, small_as_bytes=True
        )
        # the engines' copies of their direct requests and replies, in the devices' format
        if self.engine_copies is not None:
            loop.add_socket(
                self.engine_copies,
                self._on_engine_message,
                batch=MONITOR_BATCH,
                small_as_bytes=True,
            )
        # and those of engines on this host, on their lanes (corral.lane)
        self.lane_copies = 0  # copies (or bundles of them) read from lanes
        self._lanes: LaneServer | None = None
        self._lane_readers: dict[int, Callable[[], None]] = {}  # lane descriptor -> its reader
        self._listener_fd = -1
        self._gathering: Timer | None = None  # while the lanes are read on a timer
        self._lane_gather = lane_gather
        self.lane_gathered = 0  # of lane_copies, those the gathering's timer read
        if copies_lanes is not None:
            self._listener_fd = copies_lanes.fileno()
            self._lanes = LaneServer(
                copies_lanes,
                self._watch_lane,
                self._unwatch_lane,
                self._on_lane_copy,
                MONITOR_BATCH,
            )
            self._lanes.start()
        # the scheduler's come in bundles always: each is read as one burst (_on_scheduler_message)
        loop.add_socket(
            self.monitor, self._on_scheduler_message, batch=MONITOR_BATCH, small_as_bytes=True
        )
        loop.add_socket(self.registration, self._on_request, small_as_bytes=True)
        for sock in self.resubmit_sockets.values():
            loop.add_socket(sock, self._on_resubmitted_reply)
        if scheduler is not None and scheduler.stdout is not None:
            loop.add_reader(scheduler.stdout.fileno(), self._on_scheduler_output)
        loop.call_every(SHM_SWEEP_PERIOD, self.shm.sweep)
        loop.call_soon(self._wake)

    # ------------------------------------------------------------ time

    def _wake(self) -> None:
        """The Hub's deadline came: publish its pings, act on what they decided, re-arm."""
        self._timer = None
        pings, actions = self.hub.wake(time.time())
        for payload in pings:
            self.ping.send(payload)
        self._perform(actions)
        self._schedule()
        self._trim_after_burst(0)

    def _trim_after_burst(self, copies: int) -> None:
        """``copies`` more were read (0: a beat): give a burst's freed memory back to the
        system (:data:`BURST_TRIM_SCHEDULE`) once no task is pending, at the latest at the
        beat after the burst. Copies are counted in lumps of :data:`TRIM_CHECK_COPIES`, so a
        copy read alone (a direct task's) costs an addition, not a clock read."""
        unreported = self._copies_unreported + copies
        if copies and unreported < TRIM_CHECK_COPIES:
            self._copies_unreported = unreported
            return
        self._copies_unreported = 0
        if self._burst_trim.due(time.monotonic(), unreported, idle=not self.hub.pending):
            heap.trim()

    def _schedule(self) -> None:
        """Arm the timer for the Hub's next deadline, if that is sooner than the armed one
        (an event can only bring a deadline forward: a registration, a closed connection)."""
        now = time.time()
        when = self.loop.time() + max(0.0, self.hub.next_deadline(now) - now)
        timer = self._timer
        if timer is not None and not timer.cancelled:
            if timer.when <= when:
                return
            timer.cancel()
        self._timer = self.loop.call_at(when, self._wake)

    # ------------------------------------------------------------ sockets

    def _on_pong(self, frames: list[zmq.Frame]) -> None:
        if len(frames) != 2:
            raise ProtocolError(f"heartbeat with {len(frames)} frames")
        uuid = frames[0].bytes.decode("utf-8", "replace")
        try:
            self._pong_fds[int(frames[1].get(zmq.SRCFD))] = uuid
        except zmq.ZMQError:
            pass  # no descriptor for this frame: that engine is judged by its beats alone
        self._perform(self.hub.handle_pong(uuid, frames[1].bytes, time.time()))

    def _on_pong_events(self) -> None:
        """Connections of the pong socket that closed: the engine behind each is probed."""
        while self.pong_events.poll(0):
            event = read_monitor_event(self.pong_events)
            uuid = self._pong_fds.pop(event.value, None)
            if uuid is not None:
                log.info("hub: the connection of engine %s closed; probing it", uuid)
                self.hub.connection_closed(uuid)
        self._schedule()

    def _on_request(self, frames: list[zmq.Frame]) -> None:
        idents, msg_frames = split_identities(frames)
        msg = self.session.deserialize(msg_frames, content=False, idents=idents)
        if msg.msg_type not in ENGINE_REQUESTS:
            self._catch_up()
        actions = self.hub.handle_request(idents, msg, time.time(), msg_frames[4])
        self._perform(actions, msg.metadata, written=msg.msg_type in WRITTEN_BEFORE_ANSWER)
        self._schedule()

    def _catch_up(self) -> None:
        """Copies that reached the monitors after this turn's poll are recorded before a
        request reads the records."""
        monitors = [
            (self.queue_monitor, self._on_device_message),
            (self.monitor, self._on_scheduler_message),
        ]
        if self.engine_copies is not None:
            monitors.append((self.engine_copies, self._on_engine_message))
        if self._lanes is not None:
            self._lanes.read_all(DRAIN_BATCH)
        for monitor, handle in monitors:
            for _ in range(DRAIN_BATCH):
                if not int(monitor.get(zmq.EVENTS)) & zmq.POLLIN:
                    break
                # a bad copy costs itself, never the query after it
                handle(cast(list[zmq.Frame], recv_small_as_bytes(monitor)))

    def _on_lane_copy(self, lane: Lane, frames: list[object]) -> None:
        """A copy (or a bundle of them) from an engine's lane, read as those of its PULL."""
        self.lane_copies += 1
        self._on_engine_message(cast(list[zmq.Frame], frames))

    def _watch_lane(self, fd: int, read: Callable[[], object]) -> None:
        """(The lanes' ``watch``) The listener is watched as it is; a lane is read when it
        wakes the loop, which then gathers (:meth:`_gather`), or by the gathering's timer."""
        if fd == self._listener_fd:
            self.loop.add_reader(fd, read)
            return

        def woken() -> None:
            copies = self.lane_copies
            read()
            if self.lane_copies != copies:  # not for a hello, nor a lane's end
                self._gather()

        self._lane_readers[fd] = woken
        if self._gathering is None:
            self.loop.add_reader(fd, woken)

    def _unwatch_lane(self, fd: int) -> None:
        self._lane_readers.pop(fd, None)
        self.loop.remove(fd)  # ignored if not watched (while gathering)

    def _gather(self) -> None:
        """(A copy woke the loop.) Stop watching the lanes, and read them every
        :data:`LANE_GATHER` seconds while copies keep coming, several per wake-up: an engine's
        copy then only lands in the socket, no thread woken. The ordering a client relies on
        holds as before: an engine writes a task's copies before its reply, so they are in
        the lane when the client has the reply, and the Hub reads every lane before it
        answers a query (:meth:`_catch_up`). A timer that finds nothing watches the lanes
        again (a copy that came meanwhile wakes the loop at once: the poll is level-triggered)."""
        if self._gathering is not None:
            return
        for fd in self._lane_readers:
            self.loop.remove(fd)
        self._gathering = self.loop.call_later(self._lane_gather, self._gathered)

    def _gathered(self) -> None:
        """(The gathering's timer.) Read what came on the lanes, a message of each lane at a
        time, the CPU offered between them (``sched_yield``): read in one go, a timer's
        copies held a core for a few hundred microseconds that a woken client or engine
        waited for (direct round trips 33 us faster in the median but 90-150 us slower at
        the 99th percentile; offering the CPU gave back 12 us of the median and all of the
        tail, bench_paired.py). Then again after :data:`LANE_GATHER` if any came, else the
        lanes are watched again."""
        lanes = self._lanes
        self._gathering = None
        if lanes is None:
            return
        started = self.lane_copies
        try:
            for _ in range(MONITOR_BATCH):
                before = self.lane_copies
                # a message of each lane; a new lane is the loop's (the listener is watched)
                lanes.read_all(1, accept=False)
                if self.lane_copies == before:
                    break
                _sched_yield()
        finally:  # whatever a read raised, the lanes are read again or watched again
            if self.lane_copies != started:
                self.lane_gathered += self.lane_copies - started
                self._gathering = self.loop.call_later(self._lane_gather, self._gathered)
            else:
                for fd, woken in self._lane_readers.items():
                    self.loop.add_reader(fd, woken)

    def close_lanes(self) -> None:
        """(Teardown) Close the engines' copies lanes."""
        if self._gathering is not None:
            self._gathering.cancel()
            self._gathering = None
        if self._lanes is not None:
            self._lanes.close()
            self._lanes = None

    def _on_device_message(self, frames: list[zmq.Frame]) -> None:
        """A copy from the MUX or control device, or a bundle of them (a client's or an
        engine's bundle as it came), read as one burst as the scheduler's are
        (:meth:`_on_scheduler_message`): dated once, their store writes queued together."""
        self._read_burst(self._on_monitor, frames)

    def _on_engine_message(self, frames: list[zmq.Frame]) -> None:
        """An engine's copy of a direct request or reply, or a bundle of them, read as the
        devices' are; a reply here is confirmed to its engine on the ``direct`` channel
        (:meth:`Hub.handle_monitor`)."""
        self._read_burst(self._on_engine_copy, frames)

    def _on_scheduler_message(self, frames: list[zmq.Frame]) -> None:
        """A bundle of the scheduler's copies (:mod:`corral.bundles`), read as one burst: the
        copies one by one (a bad one costs itself), all dated by the moment the bundle came,
        and their store writes queued together (:meth:`ResultStore.holding_writes`) when the
        last is read. Reads of the store in between still see every write before them."""
        self._read_burst(self._on_scheduler_copy, frames)

    def _read_burst(self, handle: FrameHandler, frames: list[zmq.Frame]) -> None:
        """``handle`` each message of ``frames`` (a bundle, or one message), all dated by the
        moment they came, their store writes queued together when the last is read."""
        self._received = time.time()
        idle = not self.hub.replies_seen
        read = self.monitored
        try:
            with self.store.holding_writes():
                self.loop.deliver(handle, frames)
        except StoreError as err:  # an earlier write's failure, already logged by the writer
            log.error("hub: result store: %s", err)
        self._trim_after_burst(self.monitored - read)
        if idle and self.hub.replies_seen:  # the first replies since a confirmation: its
            self._schedule()  # time may come before the armed beat's (Hub.next_deadline)

    def _on_scheduler_copy(self, frames: Sequence[Frame]) -> None:
        """A copy from the scheduler (from a bundle, :meth:`_on_scheduler_message`): a
        compact ``task_dest`` (:mod:`.destination`), or a ``task_in`` / ``task_out``, read as
        the devices' copies."""
        if _ident_bytes(frames[0]) == DESTINATION:
            self.monitored += 1
            destinations = read_destinations(
                self.session, frames, verify=self.verify_scheduler_copies
            )
            self._perform(self.hub.handle_destinations(destinations))
            return
        self._record_copy(frames, self.verify_scheduler_copies, self._received)

    def _on_monitor(self, frames: Sequence[Frame]) -> None:
        """A copy from the MUX or control device (from :meth:`_on_device_message`): a
        client's or an engine's message as it came, so its signature is checked here."""
        self._record_copy(frames, True, self._received)

    def _on_engine_copy(self, frames: Sequence[Frame]) -> None:
        """A copy from an engine's copies PUSH (from :meth:`_on_engine_message`): checked as
        a device's, its reply confirmed on the ``direct`` channel."""
        self._record_copy(frames, True, self._received, direct=True)

    def _record_copy(
        self, frames: Sequence[Frame], verify: bool, now: float, *, direct: bool = False
    ) -> None:
        prefix = _ident_bytes(frames[0])
        idents, msg_frames = _split_copy(frames)
        # a copy not checked here is the task scheduler's, which checked its header
        copy = read_hub_copy(self.session, msg_frames, verify=verify, header_checked=not verify)
        self.monitored += 1
        omitted: dict[str, Any] | None = None
        texts: MessageJSON | None = None
        if METADATA_KEY in copy.metadata:  # data in shared memory (none for small tasks)
            msg = copy.message(idents)
            if prefix in (b"mux_in", b"task_in"):
                msg, omitted = self._shm_request(msg)
            else:
                msg = self._shm_resolve(prefix, msg)
            copy = HubCopy.of(msg)
        else:
            # the message is what its JSON frames say: the store may keep them as they came
            # (when they are bytes, as the loop hands small frames on)
            header, parent, metadata, content = msg_frames[1:5]
            if (
                type(header) is bytes
                and type(parent) is bytes
                and type(metadata) is bytes
                and type(content) is bytes
            ):
                texts = (header, parent, metadata, content)
        actions = self.hub.handle_copy(prefix, idents, copy, now, omitted, texts, direct=direct)
        # the usual copy makes one record write and nothing to send
        if actions and not (len(actions) == 1 and apply_record_write(self.store, actions[0])):
            self._perform(actions)

    def _on_resubmitted_reply(self, frames: list[zmq.Frame]) -> None:
        """A reply to a task the Hub sent again: already recorded from the queue's copy."""

    def _shm_request(self, msg: Message) -> tuple[Message, dict[str, Any] | None]:
        """A monitored request with its segments mapped, so that the store keeps its data for
        a resubmission; without them (and why, for the record) when they are more than the
        store keeps or cannot be mapped."""
        retention = self.store.retention
        limit = retention.settings.buffer_limit if retention is not None else None
        refs = msg.metadata.get(METADATA_KEY)
        size = sum(
            ref["size"]
            for ref in (refs if isinstance(refs, list) else [])
            if isinstance(ref, dict) and isinstance(ref.get("size"), int)
        )
        if limit is not None and size > limit:
            self.shm.forget(msg)  # the link its writer made for the Hub (sharedmem.export)
            return self.shm.strip(msg), {"bytes": size, "limit": limit}
        try:
            return self.shm.resolve(msg), None
        except ProtocolError as err:
            self.shm.forget(msg)  # links of segments it never reached
            why = f"its shared-memory segments could not be read when the Hub saw it: {err}"
            return self.shm.strip(msg), {"bytes": size, "why": why}

    def _shm_resolve(self, prefix: bytes, msg: Message) -> Message:
        """A monitored reply with its segments mapped (the Hub records the data, never a
        reference). A reply whose segments cannot be mapped is recorded as an error that
        says why."""
        if METADATA_KEY not in msg.metadata:
            return msg
        if not prefix.endswith(b"_out"):
            return self.shm.strip(msg)
        try:
            return self.shm.resolve(msg)
        except ProtocolError as err:
            self.loop.rejected += 1
            log.warning("hub: the result of %s is not recorded: %s", msg.parent_id, err)
            content = error_reply(type(err).__name__, f"the result's data was lost: {err}")
            return Message(msg.header, msg.parent_header, msg.metadata, content, (), msg.idents)

    def _on_scheduler_output(self) -> None:
        """The scheduler wrote its last line (its counts) or closed its stdout: it ended."""
        assert self.scheduler is not None and self.scheduler.stdout is not None
        self.loop.remove(self.scheduler.stdout.fileno())
        line = self.scheduler.stdout.readline()
        try:
            last = json.loads(line) if line else None
        except ValueError:
            last = None
        counts = last.get("counts") if isinstance(last, dict) else None
        self.scheduler_counts = counts if isinstance(counts, dict) else None
        if not self.loop.stopping:
            log.error("the task scheduler exited; stopping")
            self.on_stop(True)

    # ------------------------------------------------------------ actions

    def _perform(
        self,
        actions: list[Action],
        request_metadata: dict[str, Any] | None = None,
        *,
        written: bool = False,
    ) -> None:
        """Apply the store writes among ``actions``, then send the rest; ``written``: wait
        for the store's writer to apply every write first (a rare request whose answer the
        client acts on, :data:`WRITTEN_BEFORE_ANSWER`)."""
        for action in actions:
            if isinstance(action, PURGES):
                self._purged += 1
        sends = apply_writes(self.store, actions, self._forget_purged)
        if written and len(sends) < len(actions):
            try:
                self.store.flush()
            except StoreError as err:  # logged by the writer; the answer goes out still
                log.error("hub: result store: %s", err)
        for action in sends:
            if isinstance(action, Stop):
                log.info("hub: shutdown requested")
                self.on_stop(False)
            elif isinstance(action, Resubmit):
                self._resubmit(action)
            elif isinstance(action, ForgetSegments):
                self.shm.forget_named(action.refs)
            else:
                self._send(action, request_metadata)
        if self._purged:
            purged, self._purged = self._purged, 0
            if self._trim.due(time.monotonic(), purged, idle=True):
                heap.trim()

    def _forget_purged(self, msg_ids: list[str]) -> None:
        """The store purged these by itself (time to live): the Hub forgets them too."""
        self._purged += len(msg_ids)
        self.hub.forget_purged(msg_ids)

    def _resubmit(self, action: Resubmit) -> None:
        """Send a recorded request again, signed with its new header, as a client would."""
        sock = self.resubmit_sockets.get(action.queue)
        msg = Message(action.header, {}, action.metadata, action.content, action.buffers)
        idents = (action.engine_uuid.encode(),) if action.engine_uuid is not None else ()
        try:
            if sock is None:
                raise zmq.ZMQError(msg=f"this controller has no {action.queue} queue")
            send_frames(sock, self.session.serialize(msg, idents), zmq.NOBLOCK)
        except zmq.ZMQError as err:
            log.error("hub: could not resubmit %s: %s", msg.msg_id, err)
            why = f"the controller could not send it again: {err}"
            self._perform(resubmit_failed(self.hub, msg.msg_id, why, time.time()))

    def _send(self, action: Send, request_metadata: dict[str, Any] | None = None) -> None:
        sock = self.registration if action.channel == "registration" else self.notification
        content, buffers = action.content, list(action.buffers)
        metadata: dict[str, Any] = {}
        refs: list[SegmentRef] = []
        if action.msg_type == "registration_reply" and self.shm.settings is not None:
            content = {**content, "shm": self.shm.settings.to_json()}
        elif buffers and request_metadata:
            try:
                buffers, refs = self.shm.export_reply(request_metadata, buffers, hub_reads=False)
            except CorralError as err:  # no room in /dev/shm: the socket path still works
                log.warning("hub: %s sent without shared memory: %s", action.msg_type, err)
            if refs:
                metadata = {METADATA_KEY: encode_refs(refs)}
        msg = self.session.msg(action.msg_type, content, action.parent, metadata, buffers)
        try:
            send_frames(sock, self.session.serialize(msg, action.idents))
        except zmq.ZMQError as err:
            log.warning("could not send %s: %s", action.msg_type, err)
        finally:
            self.shm.release(refs)


def _split_copy(frames: Sequence[Frame]) -> tuple[list[bytes], list[Frame]]:
    """The identities and the message frames of a copy ``[prefix, *identities, <IDS|MSG>,
    ...]``, as :func:`~corral.protocol.session.split_identities` splits ``frames[1:]``. The
    loop hands the copies on as lists with their small frames as ``bytes`` (a bundle's, and a
    copy that came alone), compared as they are (no view and no copy per frame; compiled, a
    list's items and their types read in C); a route of ``zmq.Frame`` objects (a copy read
    some other way) is told from the delimiter by their length and read through
    ``Frame.bytes``, which copies once and keeps the copy. Anything else goes through
    :func:`~.scheduler_wire.split_route`."""
    route = frames if isinstance(frames, list) else list(frames)
    for index in range(1, min(len(route), MAX_COPY_ROUTE)):
        frame = route[index]
        if type(frame) is bytes:
            if frame == _DELIMITER:
                idents = [f if type(f) is bytes else _ident_bytes(f) for f in route[1:index]]
                return idents, route[index + 1 :]  # a list's slice is a list: no second copy
        elif type(frame) is not _ZMQ_FRAME or len(frame) == _DELIMITER_LENGTH:
            break
    return split_route(route[1:])


def _ident_bytes(frame: Frame) -> bytes:
    """A frame's bytes: a ``zmq.Frame``'s copied once, then kept by the frame."""
    if isinstance(frame, bytes):
        return frame
    if isinstance(frame, zmq.Frame):
        return frame.bytes
    return bytes(frame)


_DELIMITER: Final = DELIMITER
_DELIMITER_LENGTH: Final = len(DELIMITER)
_ZMQ_FRAME: Final = zmq.Frame
