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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, cast

import zmq
import zmq.backend

from corral.bundles import Outbox
from corral.errors import ConnectionError
from corral.loop import FrameHandler, Loop
from corral.protocol.session import Frame
from corral.sockets import recv_small_as_bytes, send_frames

log = logging.getLogger("corral.client")

__all__ = ["SendOrder", "SocketGate", "send_whole"]

_EVENTS = zmq.SocketOption.EVENTS
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_backend_get = zmq.backend.Socket.get
_backend_send = zmq.backend.Socket.send


def send_whole(sock: zmq.Socket[Any], frames: Sequence[Frame]) -> None:
    """:func:`~corral.sockets.send_frames`, from a thread that a signal may interrupt.

    A KeyboardInterrupt (the main thread, Ctrl-C) raised between two frames would leave the
    message open, and the socket's next message would continue it: two requests garbled
    into one. So a send that did not finish ends the message with an empty frame (the peer
    drops one malformed message, counted and logged) before the error goes on. The I/O
    thread never needs this: signals interrupt only the main thread."""
    complete = False
    try:
        send_frames(sock, frames)
        complete = True
    finally:
        if not complete:
            _backend_send(sock, b"", 0, True)


class SendOrder:
    """Who may send on a shared socket now (sans-I/O; its owner holds the gate's lock).

    ``queued`` is the number of messages the I/O thread will send later: each counted once,
    when handed over or put by the I/O thread, and uncounted once sent.
    """

    __slots__ = ("queued", "closed")

    def __init__(self) -> None:
        self.queued = 0
        self.closed = False

    def may_send_now(self, at_once: bool) -> bool:
        """Whether a submitting thread may send its message itself: asked to, the socket
        open, and nothing queued ahead of it."""
        return at_once and not self.closed and self.queued == 0

    def queue(self, count: int = 1) -> None:
        """``count`` messages are now the I/O thread's to send."""
        self.queued += count

    def sent(self, count: int) -> None:
        """The I/O thread sent ``count`` of the messages queued."""
        if count > self.queued:
            raise ValueError(f"sent {count} messages of {self.queued} queued")
        self.queued -= count


class SocketGate:
    """A request socket (mux or task) shared under a lock (see the module doc).

    Created and installed on the I/O thread (:meth:`install`); :meth:`submit` from any thread;
    :meth:`put` and :meth:`close` on the I/O thread only. ``handle`` gets each message
    received (a bundle's messages one by one), on the I/O thread, without the lock held.
    """

    def __init__(
        self,
        loop: Loop,
        sock: zmq.Socket[Any],
        route_length: int,
        handle: FrameHandler,
        batch: int,
    ) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.order = SendOrder()
        self.sent_at_once = 0  # requests a submitting thread sent itself
        self._loop = loop
        self._outbox = Outbox(sock, route_length)
        self._handle = handle
        self._batch = batch
        self._drain_asked = False  # a drain is queued on the loop: no second one

    # ------------------------------------------------------------------ any thread

    def submit(self, frames: Sequence[Frame], at_once: bool) -> None:
        """Send ``frames`` now, on this thread, if ``at_once`` and nothing is queued ahead;
        else hand them to the I/O thread, which sends them at the end of its turn.
        ConnectionError if the loop refuses hand-offs (closed) and this thread may not send."""
        wake = False
        with self.lock:
            at_once = self.order.may_send_now(at_once) and self._loop.closed_because is None
            if at_once:
                send_whole(self.sock, frames)
                self.sent_at_once += 1
                wake = self._take_readable()
            else:
                self.order.queue()  # counted before it is handed over: never sent uncounted
        if not at_once:
            # after the lock, which the I/O thread takes to send what it is handed: waking
            # it while holding that lock made the two threads take turns at it and the GIL.
            # Another thread may hand over in between: threads submitting at the same time
            # have no order; one thread's requests keep theirs (this one counted, each later
            # one is handed over after it).
            try:
                self._loop.call_soon_threadsafe(self._outbox.put, frames)
            except ConnectionError:
                with self.lock:
                    self.order.sent(1)  # never handed over: nothing of it to send
                raise
        elif wake:
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except ConnectionError:
                pass  # closing: nothing more is read

    # ------------------------------------------------------------------ I/O thread

    def install(self) -> None:
        """Have the loop wake on the socket's descriptor, and send what a turn queued at its
        end."""
        self._loop.add_reader(cast(int, self.sock.get(zmq.FD)), self._drain)
        self._loop.at_turn_end(self._flush)

    def put(self, frames: Sequence[Frame]) -> None:
        """Send ``frames`` at the end of this turn, after what was queued before."""
        with self.lock:
            self.order.queue()
        self._outbox.put(frames)

    def close(self) -> None:
        """Close the socket (teardown): a submitting thread finds it closed and hands over."""
        with self.lock:
            self.order.closed = True
            self.sock.close(linger=0)

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
        received: list[list[bytes | zmq.Frame]] = []
        with self.lock:
            self._drain_asked = False
            if self.order.closed:
                return
            sock, batch = self.sock, self._batch
            while len(received) < batch and cast(int, _backend_get(sock, _EVENTS)) & _POLLIN:
                try:
                    received.append(recv_small_as_bytes(sock, _NOBLOCK))
                except zmq.Again:
                    break
        if len(received) >= self._batch:
            self._loop.call_soon(self._drain)  # more may wait: the descriptor says no more
        deliver, handle = self._loop.deliver, self._handle
        for frames in received:
            deliver(handle, cast(list[zmq.Frame], frames))  # handlers read any Frame

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
