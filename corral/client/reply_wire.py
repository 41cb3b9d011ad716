"""Decoding the messages a client receives, the usual shape read inline (sans-I/O).

Every reply a client reads goes through :meth:`corral.protocol.session.Session.feed`: find the
delimiter, check the signature, load four JSON frames, check the header's fields, the type and
the content. For a no-op task that was about half of what the client's reader spends on a
reply (``bench/bench_client_path.py``, "reply"), much of it calls per frame. Nearly every
message a client gets has one shape: one routing identity (the engine's uuid, or the topic),
the delimiter, a signature and four JSON frames, all ``bytes`` (the client's sockets read small
frames as bytes). :func:`feed` reads that shape inline and hands anything else, and any fault,
to ``Session.feed`` (or, once the signature is checked and recorded, to
``Session.deserialize`` without checking it again, which would refuse it as a replay): the
same :class:`~corral.protocol.session.Message`, or the same error, either way
(tests/client/test_reply_wire.py compares the two).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import orjson

from corral.protocol.messages import CATALOGUE, STATUS, validate_content
from corral.protocol.session import DELIMITER, Frame, Message, Session
from corral.protocol.usual import load_objects, usual_header, usual_json

__all__ = ["feed"]

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
# replies whose content is valid as soon as its status is a string (every engine's reply):
# checked inline, the catalogue's check for every other type and any other content
_STATUS_ONLY = frozenset(
    msg_type
    for msg_type, spec in CATALOGUE.items()
    if spec.required == STATUS and not spec.optional and spec.open
)


def feed(session: Session, frames: Sequence[Frame]) -> Message:
    """``session.feed(frames)`` (see the module doc)."""
    if len(frames) < 7:
        return session.feed(frames)
    ident = frames[0]
    delimiter = frames[1]
    if not (
        ident.__class__ is bytes
        and delimiter.__class__ is bytes
        and delimiter == DELIMITER
        and ident != DELIMITER
    ):
        return session.feed(frames)
    parts = usual_json(session, frames, 2)
    if parts is None:
        return session.feed(frames)
    loaded = load_objects(parts)
    if loaded is None or not usual_header(session, loaded[0]):
        return _checked(session, frames)
    header, parent, metadata, content = loaded
    msg_type = header["msg_type"]
    if session.check_msg_type:
        if msg_type not in _STATUS_ONLY or content.get("status").__class__ is not str:
            validate_content(msg_type, content)  # InvalidContent, as Session.deserialize raises
    return Message(header, parent, metadata, content, tuple(frames[7:]), (ident,))


def _checked(session: Session, frames: Sequence[Frame]) -> Message:
    """The general way, for a message whose signature :func:`feed` checked and recorded: it
    names the fault (or decodes what the inline way does not take)."""
    ident = cast(bytes, frames[0])  # bytes: checked by feed
    return session.deserialize(list(frames[2:]), idents=[ident], verify=False)
