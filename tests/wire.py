"""Sending and receiving one signed message on a socket, for tests that play a peer.

corral's processes never do this in one call (they hand frames between threads, or route
frames they did not decode), so it lives here rather than on :class:`Session`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any
from weakref import WeakKeyDictionary

import zmq

from corral.bundles import split_bundle
from corral.protocol.session import Frame, JSONDict, Message, Session, frame_view

# messages of a bundle not read yet, per socket
_unread: WeakKeyDictionary[zmq.Socket[Any], deque[list[Any]]] = WeakKeyDictionary()


def send_msg(
    session: Session,
    sock: zmq.Socket[Any],
    msg_or_type: Message | str,
    content: JSONDict | None = None,
    parent: Message | JSONDict | None = None,
    metadata: JSONDict | None = None,
    buffers: Iterable[Frame] = (),
    idents: Sequence[bytes] = (),
) -> Message:
    """Build (if given a type), sign and send a message; the Message sent."""
    if isinstance(msg_or_type, Message):
        msg = msg_or_type
    else:
        msg = session.msg(msg_or_type, content, parent, metadata, buffers)
    sock.send_multipart(session.serialize(msg, idents), copy=False)
    return msg


def recv_msg(
    session: Session, sock: zmq.Socket[Any], flags: int = 0, *, content: bool = True
) -> Message:
    """Receive and decode one message (buffers stay zmq Frames, or views of a bundle)."""
    return session.feed(recv_one(sock, flags, copy=False), content=content)


def recv_one(sock: zmq.Socket[Any], flags: int = 0, *, copy: bool = True) -> list[Any]:
    """The next message on ``sock`` as corral's loops see it: the messages of a bundle
    (:mod:`corral.bundles`) one at a time; ``copy``: as ``bytes``."""
    queue = _unread.get(sock)
    if queue:
        return queue.popleft()
    frames = sock.recv_multipart(flags, copy=False)
    messages: list[list[Any]] = split_bundle(frames) or [frames]  # type: ignore[assignment]
    if copy:
        messages = [[bytes(frame_view(frame)) for frame in message] for message in messages]
    if len(messages) > 1:
        _unread.setdefault(sock, deque()).extend(messages[1:])
    return messages[0]


def readable(sock: zmq.Socket[Any], timeout_ms: int = 0) -> bool:
    """Whether :func:`recv_one` has a message, waiting at most ``timeout_ms``."""
    return bool(_unread.get(sock)) or bool(sock.poll(timeout_ms))


def send_when_routable(router: zmq.Socket[Any], frames: Sequence[Any], what: str) -> None:
    """Send ``frames`` on a ROUTER with ``ROUTER_MANDATORY`` once their first frame's peer
    has connected (EHOSTUNREACH until then), trying every 10 ms for at most 10 s;
    AssertionError naming ``what`` (the peer's socket) after that."""
    pause = threading.Event()
    for _ in range(1000):  # bounded
        try:
            router.send_multipart(frames)
            return
        except zmq.ZMQError as err:
            assert err.errno == zmq.EHOSTUNREACH
            pause.wait(0.01)
    raise AssertionError(f"{what} never connected")
