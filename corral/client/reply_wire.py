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

from corral.protocol.messages import CATALOGUE, KNOWN_TYPES, STATUS, validate_content
from corral.protocol.session import DELIMITER, Frame, Message, Session

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
    ident, delimiter, signature, header_bytes, parent_bytes, metadata_bytes, content_bytes = (
        frames[0],
        frames[1],
        frames[2],
        frames[3],
        frames[4],
        frames[5],
        frames[6],
    )
    limit = session.max_header_bytes
    if not (
        ident.__class__ is bytes
        and delimiter.__class__ is bytes
        and delimiter == DELIMITER
        and ident != DELIMITER
        and signature.__class__ is bytes
        and header_bytes.__class__ is bytes
        and parent_bytes.__class__ is bytes
        and metadata_bytes.__class__ is bytes
        and content_bytes.__class__ is bytes
        and len(header_bytes) <= limit
        and len(parent_bytes) <= limit
    ):
        return session.feed(frames)
    session.verify_signature(signature, (header_bytes, parent_bytes, metadata_bytes, content_bytes))
    try:
        header = _loads(header_bytes)
        parent = _loads(parent_bytes)
        metadata = _loads(metadata_bytes)
        content = _loads(content_bytes)
    except _JSONDecodeError:
        return _checked(session, frames)
    if not (
        header.__class__ is dict
        and parent.__class__ is dict
        and metadata.__class__ is dict
        and content.__class__ is dict
    ):
        return _checked(session, frames)
    get = header.get
    msg_type = get("msg_type")
    if not (
        get("msg_id").__class__ is str
        and msg_type.__class__ is str
        and get("session").__class__ is str
        and get("username").__class__ is str
        and get("date").__class__ is str
        and get("version").__class__ is str
    ):
        return _checked(session, frames)
    if session.check_msg_type:
        if msg_type not in KNOWN_TYPES:
            return _checked(session, frames)
        if msg_type not in _STATUS_ONLY or content.get("status").__class__ is not str:
            validate_content(msg_type, content)  # InvalidContent, as Session.deserialize raises
    return Message(header, parent, metadata, content, tuple(frames[7:]), (ident,))


def _checked(session: Session, frames: Sequence[Frame]) -> Message:
    """The general way, for a message whose signature :func:`feed` checked and recorded: it
    names the fault (or decodes what the inline way does not take)."""
    ident = cast(bytes, frames[0])  # bytes: checked by feed
    return session.deserialize(list(frames[2:]), idents=[ident], verify=False)
