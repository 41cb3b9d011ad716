"""Decoding the messages a client receives, the usual shape read inline (sans-I/O).

Every reply a client reads goes through :meth:`corral.protocol.session.Session.feed`: find the
delimiter, check the signature, load four JSON frames, check the header's fields, the type and
the content. For a no-op task that was about half of what the client's reader spends on a
reply (``bench/bench_client_path.py``, "reply"), much of it calls per frame. Nearly every
message a client gets has one shape: one routing identity (the engine's uuid, or the topic),
the delimiter, a signature and four JSON frames, all ``bytes`` (the client's sockets read small
frames as bytes). :func:`feed` reads that shape inline
(:func:`corral.protocol.usual.read_routed`, as the engine reads its requests) and hands
anything else, and any fault, to the general parser: the same
:class:`~corral.protocol.session.Message`, or the same error, either way
(tests/client/test_reply_wire.py compares the two); an engine's reply's content is checked
inline when its status is a string, any other by the message catalogue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from corral.protocol.messages import CATALOGUE, STATUS, validate_content
from corral.protocol.session import Frame, Message, Session
from corral.protocol.usual import read_routed

__all__ = ["feed"]

# replies whose content is valid as soon as its status is a string (every engine's reply):
# checked inline, the catalogue's check for every other type and any other content
_STATUS_ONLY: Final = frozenset(
    msg_type
    for msg_type, spec in CATALOGUE.items()
    if spec.required == STATUS and not spec.optional and spec.open
)


def feed(session: Session, frames: Sequence[Frame]) -> Message:
    """``session.feed(frames)`` (see the module doc)."""
    msg = read_routed(session, frames)
    if session.check_msg_type:
        content = msg.content or {}
        if msg.msg_type not in _STATUS_ONLY or type(content.get("status")) is not str:
            validate_content(msg.msg_type, content)  # InvalidContent, as feed raises
    return msg
