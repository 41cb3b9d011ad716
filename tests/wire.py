"""Sending and receiving one signed message on a socket, for tests that play a peer.

corral's processes never do this in one call (they hand frames between threads, or route
frames they did not decode), so it lives here rather than on :class:`Session`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import zmq

from corral.protocol.session import Frame, JSONDict, Message, Session


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
    """Receive and decode one message (buffers stay zmq Frames)."""
    return session.feed(sock.recv_multipart(flags, copy=False), content=content)
