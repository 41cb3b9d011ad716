"""The shared request sockets' wire-level parts (:mod:`corral.client.socket_gate`): a send that a
signal cannot leave half-done, a receive that reads a message whole, who may send now, and what
a gate hands its messages to.

Apart from the gate so that each stays small; both are compiled (``make native``).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any, Final, Protocol

import zmq
import zmq.backend

from corral.protocol.session import Frame, Message
from corral.sockets import COPY_BELOW, send_frames

__all__ = ["Reader", "SendOrder", "Sleepy", "receive_whole", "send_whole", "small_frame"]

_NOBLOCK: Final = int(zmq.NOBLOCK)
_backend_send: Final = zmq.backend.Socket.send
_backend_recv: Final = zmq.backend.Socket.recv


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


class Reader(Protocol):
    """What a gate does with each message it receives (one at a time, in order, under
    :attr:`SocketGate.handling`), on whichever thread read it."""

    def decode(self, frames: Sequence[Frame]) -> Message:
        """Verify and decode: ProtocolError (ReplayError for one seen before) to drop it."""
        ...

    def handle(self, msg: Message) -> None:
        """Act on a decoded message (settle the request it answers)."""
        ...

    def decode_again(self, frames: list[Frame]) -> Message:
        """(I/O thread) :meth:`decode` of a message whose decoding a KeyboardInterrupt cut:
        its signature may already be recorded as seen."""
        ...

    def handle_again(self, msg: Message) -> None:
        """(I/O thread) :meth:`handle` of a message whose handling a KeyboardInterrupt cut:
        its request may have been taken from the pending ones and not settled."""
        ...


class Sleepy(Protocol):
    """A future a leader can wait on (:class:`corral.client.requestfuture.LightFuture`)."""

    def done(self) -> bool: ...

    def add_sleeper(self, sleeper: Any) -> bool: ...

    def remove_sleeper(self, sleeper: Any) -> None: ...


def small_frame(frame: Any) -> Any:
    """A received zmq Frame under :data:`COPY_BELOW` as bytes (see ``_drain``)."""
    if type(frame) is bytes or len(frame) >= COPY_BELOW:
        return frame
    return frame.bytes if isinstance(frame, zmq.Frame) else frame


def receive_whole(sock: zmq.Socket[Any], received: collections.deque[Sequence[Any]]) -> bool:
    """Receive one waiting message into ``received`` as zmq Frames; False if none waited.
    The message is in ``received`` from its first frame on, and its other frames are read
    whatever interrupts the reading (Ctrl-C on the main thread): half a message left in the
    socket would be read as the start of the next one."""
    try:
        frame = _backend_recv(sock, _NOBLOCK, False)
    except zmq.Again:
        return False
    frames = [frame]
    received.append(frames)
    try:
        while frame.more:
            frame = _backend_recv(sock, 0, False)
            frames.append(frame)
    finally:
        while frames[-1].more:
            frames.append(_backend_recv(sock, 0, False))
    return True
