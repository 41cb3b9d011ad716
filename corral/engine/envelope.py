"""The engine's reading of a task request: the usual envelope inline, anything else the general way.

Every task an engine runs is read here first, so the general parser's steps add up: a search
for the delimiter, a view of each frame, a method call and an ``isinstance`` per JSON frame.
A request from the MUX or the scheduler nearly always comes as one client identity, the
delimiter and five or more ``bytes`` frames (small frames are read as bytes, and a bundle's
messages are bytes slices: :func:`corral.sockets.recv_small_as_bytes`). For that shape
:func:`read_request` checks the signature with the session (recorded against replays as
always), parses the four JSON frames and checks them inline. Anything else, or any fault
found in that shape, goes to :meth:`Session.feed <corral.protocol.session.Session.feed>` /
:meth:`Session.deserialize <corral.protocol.session.Session.deserialize>`, which raise the
same errors as ever (after a verified signature, the general parse runs without verifying it
again: it is recorded now, and would be refused as a replay, hiding the real fault).
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.protocol.session import Frame, Message, Session
from corral.protocol.usual import read_routed


def read_request(session: Session, frames: Sequence[Frame]) -> Message:
    """The verified, parsed request in ``frames`` (as received: identities included).

    The same Message, and the same errors (SignatureError, ReplayError, MalformedMessage,
    UnknownMessageType), as ``session.feed(frames)``."""
    if session.check_msg_type:  # the catalogue's check of the content: feed's
        return session.feed(frames)
    return read_routed(session, frames)
