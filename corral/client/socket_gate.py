"""A client socket that the I/O thread and submitting threads share, one thread at a time.

Handing a request to the client's I/O thread (the loop's ``call_soon_threadsafe``) costs a
wake-up of that thread before the request leaves: a byte on its socket pair, the thread
scheduled, a loop turn. For a direct round trip that was 36 us of 517 (``bench/bench_trace.py``)
and CPU on both threads. So the request sockets (mux and task) are shared: a submitting
thread sends a request itself when it may, and hands it over only when it may not. The rules:

- **One thread at a time.** :attr:`SocketGate.lock` is held by whichever thread uses the
  socket: a submitting thread while it sends one request, the I/O thread while it receives a
  batch (not while the batch's handlers run) and while it sends what its turn queued. No zmq
  socket is ever used by two threads at once.
- **The I/O thread never zmq-polls it.** A zmq poll reads the socket's state (``ZMQ_EVENTS``),
  which would race a send on another thread; the loop polls the socket's file descriptor
  (``ZMQ_FD``) instead, which only the kernel touches, and the socket's state is read under
  the lock. That descriptor tells of a change, not of a state: any use of the socket may
  consume the notice that a message arrived. So whoever used the socket looks at
  ``ZMQ_EVENTS`` before letting the lock go and, if a message waits, has the I/O thread drain
  the socket (one call on its loop, not one per send); a drain reads until none waits.
- **Order.** :class:`SendOrder` counts the messages the I/O thread will send later (handed
  over, or its own: a task sent again after an outage). A submitting thread sends itself only
  while that count is 0 (deciding and sending under the lock; a message to hand over is
  counted there, before it is handed over), so a thread's requests leave in the order it
  submitted them; requests that threads submit at the same time have no order to keep.
- **When.** A submitting thread sends itself only when its caller asks (``at_once``): the
  client does when nothing else is in flight, where the hand-off's wake-up is pure latency.
  In a burst the hand-off is cheap (one wake-up for many) and the I/O thread sends what its
  turn queued for one peer as one bundle (:mod:`corral.bundles`), which every hop reads for
  less than the messages one by one.
- **Closing.** The I/O thread closes the socket under the lock and marks the gate closed; a
  submitting thread that finds it closed, or the loop refusing hand-offs, hands over, which
  raises ConnectionError. A request sent just before the client closes is pending in its
  records, which the close fails: nothing is lost without an error.

Replies are read by whichever thread *leads* the socket: the I/O thread, or a user thread
blocked waiting for a result (:meth:`SocketGate.lead`). Waking the I/O thread for a reply, and
then the waiting thread from it, cost a thread wake-up per round trip; a thread that waits
anyway can read its reply itself. The rules:

- **One reader at a time, in order.** Receiving and handling what was received happen under
  :attr:`SocketGate.handling` (the I/O thread's drains and the leader's reads alike), the
  socket itself under :attr:`SocketGate.lock` as above: replies are handled in the order the
  socket gave them, whoever reads them, and whoever reads settles every reply it reads, for
  any thread's request.
- **One leader, which the I/O thread then does not wake for.** The I/O thread's loop watches
  the socket's descriptor through an epoll set of its own; a leader takes the descriptor out
  of it (under the lock, so never a closed socket's), waits on it and on a wake-up eventfd,
  and puts it back when it stops, then has the I/O thread drain the socket if a message
  waits (as after any use of it). Other waiting threads follow: they sleep on their futures,
  and the leader or the I/O thread settles them. Without epoll and eventfd (not Linux) no
  thread leads and the I/O thread reads everything, as before.
- **Woken for its own result.** The leader waits on its future as a sleeper whose wake-up is
  a write to the eventfd, so a result settled elsewhere (the results worker, the I/O thread
  failing a request of a lost engine or a closing client) ends its wait at once. Its wait is
  bounded by the timeout it was given; it then stops leading.
- **Nothing lost on Ctrl-C.** A KeyboardInterrupt in a leading main thread (while it waits,
  receives or handles) stops it leading; the message it was handling is handed to the I/O
  thread, which decodes it again (without the replay check if its signature was already
  recorded) and settles its request if the interrupted handling had taken it from the
  pending requests without settling it, then handles what was received after it. What is
  received waits in the gate's queue until handled, so a message cut where it may have been
  handled already is at worst handled twice: refused as a replay, or found settled.
- **Lanes.** The direct gate also owns Unix connections to engines on its host
  (:mod:`corral.client.lanes`: which request takes one, its backlog, its replies), used by
  the same rules, under the same lock, read by the same readers.
- **Re-entered.** A signal handler that calls ``get()`` on a leading main thread reads on
  (:attr:`SocketGate.handling` is reentrant), the queue first: what the interrupted reading
  had received is handled before what comes later.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import zmq
import zmq.backend

from corral.bundles import Outbox, split_bundle
from corral.client.lanes import LaneSet
from corral.errors import ConnectionError, CorralError, ReplayError
from corral.lane import Lane
from corral.loop import Loop
from corral.protocol.session import Frame, Message
from corral.sockets import COPY_BELOW

from .gate_wire import Reader, SendOrder, Sleepy, send_whole
from .gate_wire import receive_whole as _receive
from .gate_wire import small_frame as _small

log = logging.getLogger("corral.client")

__all__ = ["LEADING", "Reader", "SendOrder", "Sleepy", "SocketGate", "send_whole"]

LEADING: Final = hasattr(select, "epoll") and hasattr(os, "eventfd")
"""Whether a waiting thread may read replies itself (see the module doc): Linux."""

_EVENTS: Final = zmq.SocketOption.EVENTS
_POLLIN: Final = int(zmq.POLLIN)
_backend_get: Final = zmq.backend.Socket.get
_FRAME: Final = zmq.Frame


class _Waker:
    """A leader's place among its future's sleepers: settled by another thread, the future
    wakes the leader through the eventfd it polls (its own settling needs no wake-up). It
    writes only while its gate's eventfd is the one it was made for, so a waker left behind
    (a Ctrl-C between adding and removing it) never writes to a descriptor closed since."""

    __slots__ = ("gate", "fd", "leader")

    def __init__(self, gate: SocketGate, fd: int, leader: int) -> None:
        self.gate = gate
        self.fd = fd
        self.leader = leader

    def release(self) -> None:
        if threading.get_ident() == self.leader:
            return
        gate = self.gate
        with gate.lock:
            if gate._wake_fd == self.fd:
                os.eventfd_write(self.fd, 1)


class SocketGate:
    """A request socket (mux or task) shared under a lock (see the module doc).

    Created and installed on the I/O thread (:meth:`install`); :meth:`submit` and
    :meth:`lead` from any thread; :meth:`put` and :meth:`close` on the I/O thread only.
    ``reader`` gets each message received (a bundle's messages one by one), without the
    socket's lock held, on the thread that read it.
    """

    def __init__(
        self,
        loop: Loop,
        sock: zmq.Socket[Any],
        route_length: int,
        reader: Reader,
        batch: int,
    ) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        # receiving and handling, in order (module doc); reentrant for a signal handler's
        # get() on a leading thread (_lead_again)
        self.handling = threading.RLock()
        self.order = SendOrder()
        self.sent_at_once = 0  # requests a submitting thread sent itself
        self.led = 0  # waits in which a user thread read the socket (tests, benches)
        self.rejected = 0  # messages dropped when handled off the I/O thread
        self._loop = loop
        self._outbox = Outbox(sock, route_length)
        # handed over by submitting threads, for the I/O thread to put in the outbox: one
        # call on its loop per burst (``_handed_asked``), not one per request, whose entry,
        # arguments and bound method waited in the loop's inbox, three objects per request
        # counted toward the user's next young collection (see ``submit``)
        self._handed: list[Sequence[Frame]] = []
        self._handed_asked = False
        self._take_handed_call: Callable[[], None] = self._take_handed  # made once
        self._reader = reader
        self._batch = batch
        self._drain_asked = False  # a drain is queued on the loop: no second one
        self._fd = -1  # the socket's ZMQ_FD, once installed
        self._io_set: Any = None  # select.epoll the I/O thread's loop watches (with LEADING)
        self._lead_set: Any = None  # select.epoll a leader waits on: ZMQ_FD and the eventfd
        self._wake_fd = -1  # the leader's eventfd
        self._leader: int | None = None  # the thread that leads now
        # received, not yet handled: whoever reads next (under ``handling``) handles it first
        # (a bundle's messages, once split, as tuples: see ``_handle_queue``)
        self._unhandled: collections.deque[Sequence[Any]] = collections.deque()
        self.lanes: LaneSet | None = None  # the direct gate's, once installed with lanes

    # ------------------------------------------------------------------ any thread

    def submit(self, frames: Sequence[Frame], at_once: bool) -> None:
        """Send ``frames`` now, on this thread, if ``at_once`` and nothing is queued ahead;
        else hand them to the I/O thread, which sends them at the end of its turn.
        ConnectionError if the loop refuses hand-offs (closed) and this thread may not send."""
        wake = ask = False
        with self.lock:
            lanes = self.lanes
            if at_once and lanes is not None and lanes.lanes:
                at_once = lanes.fresh(frames[0])  # False: in a burst to that lane (corked)
            at_once = self.order.may_send_now(at_once) and self._loop.closed_because is None
            if at_once:
                if lanes is None or not lanes.send(frames):
                    send_whole(self.sock, frames)
                    wake = self._take_readable()
                self.sent_at_once += 1
            else:
                self.order.queue()  # counted before it is handed over: never sent uncounted
                self._handed.append(frames)  # in order: one thread's requests keep theirs
                # the first of a burst asks the I/O thread to take them; so does any once
                # the loop refuses hand-offs, to get its ConnectionError
                ask = not self._handed_asked or self._loop.closed_because is not None
                self._handed_asked = True
        if ask:
            # after the lock, which the I/O thread takes to send what it is handed: waking
            # it while holding that lock made the two threads take turns at it and the GIL
            try:
                self._loop.call_soon_threadsafe(self._take_handed_call)
            except BaseException as error:  # refused (closed), or cut by Ctrl-C
                with self.lock:
                    self._handed_asked = False  # the next hand-off asks again
                    if isinstance(error, ConnectionError):
                        self._take_back(frames)
                raise
        elif wake:
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except ConnectionError:
                pass  # closing: nothing more is read

    def lead(self, future: Sleepy, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``future``, reading and handling this socket's
        messages meanwhile (any thread's replies), if no other thread leads it; False at
        once, nothing done, if this thread may not lead (then wait as a follower). Returns
        True once it led, ``future`` done or not (the caller checks, and its deadline)."""
        if self._lead_set is None:
            return False
        me = threading.get_ident()
        if self._leader == me:
            return self._lead_again(future, timeout)
        took = False
        try:  # whatever interrupts it (Ctrl-C), a thread that took the lead gives it back
            with self.lock:
                if self._leader is not None or self.order.closed or self._loop.stopping:
                    return False
                self._leader, took = me, True
                self.led += 1
                # under the lock: the socket is open, so its descriptor is still its own
                try:
                    self._io_set.unregister(self._fd)  # the I/O thread is not woken for replies
                except FileNotFoundError:
                    pass  # not given back by a lead that a Ctrl-C cut: taken out already
                if self.lanes is not None:
                    self.lanes.lead()
            waker = _Waker(self, self._wake_fd, me)
            try:
                if future.add_sleeper(waker):
                    self._lead_until(future, time.monotonic() + timeout)
            finally:
                future.remove_sleeper(waker)
        finally:
            if took:
                self._resign()
        return True

    def _lead_again(self, future: Sleepy, timeout: float) -> bool:
        """(The leader, re-entered: a signal handler's ``get()`` on the main thread while it
        leads) Wait reading as the outer lead does, which gives the socket back later. Reading
        is reentrant (:attr:`handling`); a handler that interrupted a use of the socket itself
        (a receive or a send, under :attr:`lock`) would wait for ever, as one that submits
        while that thread sends always did."""
        waker = _Waker(self, self._wake_fd, threading.get_ident())
        try:
            if future.add_sleeper(waker):
                self._lead_until(future, time.monotonic() + timeout)
        finally:
            future.remove_sleeper(waker)
        return True

    # ------------------------------------------------------------------ the leader

    def _lead_until(self, future: Sleepy, deadline: float) -> None:
        lead_set, wake_fd = self._lead_set, self._wake_fd
        while True:
            more = self._read()  # what waits now: the descriptor tells only of changes
            if future.done():
                return
            if more:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for fd, _ in lead_set.poll(left):
                if fd == wake_fd:
                    try:
                        os.eventfd_read(wake_fd)
                    except BlockingIOError:
                        pass

    def _read(self) -> bool:
        """(Leader) What earlier readers left, then a batch received and handled, in order;
        whether more may wait."""
        with self.handling:
            self._handle_queue()
            with self.lock:
                if self.order.closed:
                    return False
                count = self._receive_batch()
            self._handle_queue()
        return count >= self._batch

    def _receive_batch(self) -> int:
        """(Holding ``handling`` and the lock) Receive up to a batch into the queue; how many."""
        sock, batch, queue = self.sock, self._batch, self._unhandled
        lanes = self.lanes
        laned = lanes is not None and bool(lanes.lanes)
        count = 0
        while count < batch and cast(int, _backend_get(sock, _EVENTS)) & _POLLIN:
            if not _receive(sock, queue):
                break
            count += 1
            if laned:  # a reply the engine sent on its ROUTER answers its lane too
                cast(LaneSet, lanes).answered(queue[-1][0])
        if lanes is not None and count < batch:
            count += lanes.receive(queue, batch - count)
        return count

    def _handle_queue(self) -> None:
        """(Holding ``handling``) Hand on each message received and not yet handled, in order,
        a bundle's one by one. The queue is the gate's, so a reader that re-enters (a signal
        handler's get() on a leading thread) handles what the interrupted one had left, in
        order. If a KeyboardInterrupt (or anything) cuts this, the I/O thread finishes the
        cut message, with how far it got, then the rest (see the module doc); a message cut
        where it may have been handled already is refused as a replay or found settled."""
        queue = self._unhandled
        decode, handle = self._reader.decode, self._reader.handle
        current: Sequence[Any] | None = None
        msg: Message | None = None
        try:
            while queue:
                current = queue.popleft()
                msg = None
                if type(current) is tuple:
                    # a message of a bundle split here: its small frames bytes already, and
                    # never a bundle itself (as the loop hands them on), so not looked at again
                    small: Sequence[Any] = current
                else:
                    small = [
                        f.bytes if type(f) is _FRAME and len(f) < COPY_BELOW else f for f in current
                    ]
                    try:
                        parts = split_bundle(small)
                    except CorralError as err:
                        self._dropped(err)
                        current = None
                        continue
                    if parts is not None:
                        queue.extendleft([tuple(part) for part in reversed(parts)])
                        current = None
                        continue
                try:
                    msg = decode(small)
                    handle(msg)
                except Exception as err:  # noqa: BLE001 - counted and logged as the loop does
                    self._dropped(err)
                current = None
        except BaseException:
            self._hand_back(current, msg)
            raise

    def _dropped(self, err: Exception) -> None:
        """A message that failed to decode or handle: counted and logged as the loop does
        (:meth:`corral.loop.Loop.deliver`)."""
        self.rejected += 1
        name = self._loop.name
        if isinstance(err, ReplayError):
            log.info("%s: dropped a message received before: %s", name, err)
        elif isinstance(err, CorralError):
            log.warning("%s: dropped a message: %s", name, err)
        else:
            log.error("%s: error while handling a message; dropped it", name, exc_info=err)

    def _hand_back(self, cut: Sequence[Any] | None, msg: Message | None) -> None:
        """(A leader, interrupted) Have the I/O thread finish the ``cut`` message (``msg`` if
        it was decoded) and handle what is left in the queue."""
        reader = self._reader

        def finish() -> None:
            with self.handling:
                if cut is not None:
                    try:
                        frames = [_small(frame) for frame in cut]
                        parts = split_bundle(frames)
                        if msg is not None:
                            reader.handle_again(msg)
                        else:
                            for part in parts if parts is not None else (frames,):
                                reader.handle_again(reader.decode_again(part))
                    except Exception as err:  # noqa: BLE001 - counted and logged
                        self._dropped(err)
                self._handle_queue()

        try:
            self._loop.call_soon_threadsafe(finish)
        except ConnectionError:
            pass  # closing: the records fail what is pending

    def _resign(self) -> None:
        """(Leader) Give the socket back to the I/O thread: its descriptor back in the loop's
        set, and a drain if a message waits (the descriptor tells of changes only)."""
        with self.lock:
            if self.order.closed:
                self._leader = None
                self._close_sets()
                return
            try:
                self._io_set.register(self._fd, select.EPOLLIN)
            except FileExistsError:
                pass  # cut before it was taken out
            if self.lanes is not None:
                self.lanes.resign()
            self._leader = None  # after the descriptor is back: a cut here leaves no one deaf
            wake = self._take_readable()
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except ConnectionError:
                pass  # closing: nothing more is read

    # ------------------------------------------------------------------ I/O thread

    def install(self, lanes: bool = False) -> None:
        """Have the loop wake on the socket's descriptor (through an epoll set a leader can
        take it out of), and send what a turn queued at its end. ``lanes``: this gate may
        own lanes (the direct gate, where epoll is), whose backlogs the loop flushes."""
        self._fd = cast(int, self.sock.get(zmq.FD))
        if LEADING:
            self._io_set = select.epoll()
            self._io_set.register(self._fd, select.EPOLLIN)
            self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._lead_set = select.epoll()
            self._lead_set.register(self._fd, select.EPOLLIN)
            self._lead_set.register(self._wake_fd, select.EPOLLIN)
            self._loop.add_reader(self._io_set.fileno(), self._drain)
            if lanes:
                self.lanes = LaneSet()
                self.lanes.attach(self._io_set, self._lead_set)
                self._loop.add_reader(self.lanes.writable.fileno(), self._flush_lanes)
        else:
            self._loop.add_reader(self._fd, self._drain)
        self._loop.at_turn_end(self._flush)

    def add_lane(self, peer: bytes, lane: Lane) -> bool:
        """(Any thread, before any request to ``peer`` is sent) Send ``peer``'s requests on
        ``lane`` and read its replies there; False (the lane closed) if this gate has no
        lanes or is closed."""
        with self.lock:
            if self.lanes is not None and not self.order.closed:
                self.lanes.add(peer, lane)
                return True
        lane.close()
        return False

    def drop_lane(self, peer: bytes) -> None:
        """(Any thread) Close ``peer``'s lane, if it has one: its engine is gone."""
        with self.lock:
            if self.lanes is not None and not self.order.closed:
                self.lanes.drop(peer)

    def _flush_lanes(self) -> None:
        """(I/O thread, a lane with a backlog writable) Send the lanes' backlogs."""
        with self.lock:
            if self.lanes is not None and not self.order.closed:
                self.lanes.flush()

    def _take_handed(self) -> None:
        """(I/O thread) Send what submitting threads handed over, in order: on a lane at once,
        else in the outbox for the turn's end."""
        outbox = self._outbox
        with self.lock:
            handed = self._handed
            self._handed = []
            self._handed_asked = False
            lanes = self.lanes
            if lanes is not None and lanes.lanes and not self.order.closed:
                sent, handed = lanes.send_all(handed)
                self.order.sent(sent)
        for frames in handed:
            outbox.put(frames)

    def _take_back(self, frames: Sequence[Frame]) -> None:
        """(Lock held) ``frames`` will never be sent (the loop refused the hand-off):
        neither handed nor counted any more."""
        handed = self._handed
        for index in range(len(handed) - 1, -1, -1):
            if handed[index] is frames:
                del handed[index]
                self.order.sent(1)
                return

    def put(self, frames: Sequence[Frame]) -> None:
        """Send ``frames`` at the end of this turn, after what was queued before (on its
        engine's lane, if it has one: at once, after what that lane has taken)."""
        with self.lock:
            lanes = self.lanes
            if lanes is not None and not self.order.closed and lanes.send(frames):
                return
            self.order.queue()
        self._outbox.put(frames)

    def close(self) -> None:
        """Close the socket (teardown): a submitting thread finds it closed and hands over; a
        leader is woken, and closes the epoll sets and the eventfd when it stops."""
        with self.lock:
            self.order.closed = True
            self.sock.close(linger=0)
            if self.lanes is not None:
                self.lanes.close()
            if self._leader is None:
                self._close_sets()
            else:
                os.eventfd_write(self._wake_fd, 1)

    def _close_sets(self) -> None:
        """(Lock held, no leader) Close the epoll sets and the eventfd, once."""
        if self._lead_set is None:
            return  # the loop no longer runs: its poller forgets the set's descriptor
        for epoll in (self._io_set, self._lead_set):
            epoll.close()
        wake_fd, self._wake_fd = self._wake_fd, -1  # wakers left behind check it (_Waker)
        os.close(wake_fd)
        self._lead_set = self._io_set = None

    def _take_readable(self) -> bool:
        """(Lock held, after using the socket) Whether a message waits that nobody will be
        told of, the descriptor's notice consumed: True once per drain to ask for."""
        if self._drain_asked or not cast(int, _backend_get(self.sock, _EVENTS)) & _POLLIN:
            return False
        self._drain_asked = True
        return True

    def _drain(self) -> None:
        """Receive a batch under the lock, then hand each message on without it, its small
        frames as bytes: every step of decoding a reply (identities, signature, four JSON
        frames, the result's pickle) reads them, and a zmq.Frame's memoryview, made anew at
        each read, cost more than one copy (a reply fed and settled in 16 us instead of 29,
        warm). A message that came in a bundle gets them so too (corral.bundles)."""
        with self.handling:
            with self.lock:
                self._drain_asked = False
                if self.order.closed:
                    return
                count = self._receive_batch()
            if count >= self._batch:
                self._loop.call_soon(self._drain)  # more may wait: the descriptor says no more
            self._handle_queue()

    def catch_up(self) -> None:
        """(I/O thread) Read and handle at once every message already here, whoever leads:
        before the client acts on news from another socket that is later than those messages
        (an engine's unregistration fails what that engine has not answered, and a reply the
        engine sent before it left must settle its request first; with a leader slow to get a
        core, that reply could wait unread while the I/O thread read the news)."""
        more = True
        while more:
            with self.handling:
                with self.lock:
                    if self.order.closed:
                        return
                    count = self._receive_batch()
                self._handle_queue()
            more = count >= self._batch

    def _flush(self) -> None:
        """(Turn end) Send what this turn queued, a bundle per peer."""
        outbox = self._outbox
        if not len(outbox):
            return
        with self.lock:
            if self.order.closed:
                return
            count = len(outbox)
            failures = outbox.flush()
            self.order.sent(count)
            wake = self._take_readable()
        if wake:
            self._loop.call_soon(self._drain)
        for error, tags in failures:
            log.error("%s: %d message(s) not sent: %s", self._loop.name, len(tags), error)
