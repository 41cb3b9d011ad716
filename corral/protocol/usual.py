"""The usual envelope read inline: the first steps every role's fast reader shares (sans-I/O).

Nearly every message on the task path has one shape: a signature and four JSON frames, all
``bytes`` (small frames are read as bytes, and a bundle's messages are bytes slices:
:func:`corral.sockets.recv_small_as_bytes`), each JSON frame an object, the header's fields
strings. The engine (:mod:`corral.engine.envelope`), the scheduler
(:mod:`corral.controller.scheduler_wire`) and the client (:mod:`corral.client.reply_wire`)
read that shape with these helpers, without a call per frame, and hand anything else, and any
fault, to the general parser of :class:`~corral.protocol.session.Session`, which names it.
Types are tested as ``type(x) is bytes``, not ``x.__class__ is bytes``: compiled (``make
native``) the first is a pointer comparison and the second a generic attribute lookup, 10 to
30 ns each, and a message is checked by a dozen of them in every role it passes.
Once :func:`usual_json` has checked a signature, the general parser must run with
``verify=False``: the signature is recorded, and a second check would refuse it as a replay,
hiding the real fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TypeAlias

import orjson

from corral.protocol.messages import KNOWN_TYPES
from corral.protocol.session import DELIMITER, Frame, Message, Session

__all__ = ["load_objects", "read_routed", "usual_header", "usual_json"]

_loads: Final = orjson.loads
_JSONDecodeError: Final = orjson.JSONDecodeError
JSONDict: TypeAlias = dict[str, Any]


def usual_json(
    session: Session, frames: Sequence[Frame], at: int, verify: bool = True
) -> tuple[bytes, bytes, bytes, bytes] | None:
    """The four JSON frames after the signature at ``frames[at]``, when the five are ``bytes``
    and the headers within the session's size limit, the signature checked and recorded when
    ``verify``; None for any other shape (nothing checked then)."""
    if len(frames) < at + 5:
        return None
    # compiled, a list is indexed as one (a Sequence's item is a generic PyObject_GetItem)
    listed = frames if type(frames) is list else list(frames)
    signature = listed[at]
    header = listed[at + 1]
    parent = listed[at + 2]
    metadata = listed[at + 3]
    content = listed[at + 4]
    limit = session.max_header_bytes
    if not (
        type(signature) is bytes
        and type(header) is bytes
        and type(parent) is bytes
        and type(metadata) is bytes
        and type(content) is bytes
        and len(header) <= limit
        and len(parent) <= limit
    ):
        return None
    parts: tuple[bytes, bytes, bytes, bytes] = (header, parent, metadata, content)
    if verify:
        session.verify_signature(signature, parts)
    return parts


def load_objects(
    parts: tuple[bytes, bytes, bytes, bytes],
) -> tuple[JSONDict, JSONDict, JSONDict, JSONDict] | None:
    """The four JSON frames parsed, when each is a JSON object; None otherwise."""
    try:
        header = _loads(parts[0])
        parent = _loads(parts[1])
        metadata = _loads(parts[2])
        content = _loads(parts[3])
    except _JSONDecodeError:
        return None
    if (
        type(header) is dict
        and type(parent) is dict
        and type(metadata) is dict
        and type(content) is dict
    ):
        return header, parent, metadata, content
    return None


def usual_header(session: Session, header: Any) -> bool:
    """Whether a parsed header is what the general parser accepts: an object whose fields
    (the session's ``HEADER_FIELDS``) are strings, of a known type if the session checks."""
    if type(header) is not dict:
        return False
    fields: JSONDict = header  # typed: compiled, its gets are the dict's own, not method calls
    return (
        type(fields.get("msg_id")) is str
        and type(fields.get("msg_type")) is str
        and type(fields.get("session")) is str
        and type(fields.get("username")) is str
        and type(fields.get("date")) is str
        and type(fields.get("version")) is str
        and (not session.check_msg_type or fields["msg_type"] in KNOWN_TYPES)
    )


def read_routed(session: Session, frames: Sequence[Frame]) -> Message:
    """``session.feed(frames)`` for a message received with one routing identity (a request
    on an engine's task sockets, a reply on a client's): the same Message, or the same error
    (SignatureError, ReplayError, MalformedMessage, UnknownMessageType), the usual shape read
    inline. The content is not checked against the message catalogue (``feed`` checks it when
    the session checks types): the caller checks what it needs."""
    if len(frames) < 7:
        return session.feed(frames)
    # compiled, a list is indexed as one (a Sequence's item is a generic PyObject_GetItem)
    listed = frames if type(frames) is list else list(frames)
    ident = listed[0]
    delimiter = listed[1]
    if not (
        type(ident) is bytes
        and ident != DELIMITER
        and type(delimiter) is bytes
        and delimiter == DELIMITER
    ):
        return session.feed(frames)
    parts = usual_json(session, listed, 2)
    if parts is None:
        return session.feed(frames)
    loaded = load_objects(parts)
    if loaded is None or not usual_header(session, loaded[0]):
        # signature recorded: the general parse without it names the fault (not a replay)
        return session.deserialize(listed[2:], idents=[ident], verify=False)
    header, parent, metadata, content = loaded
    return Message(header, parent, metadata, content, tuple(listed[7:]), (ident,))
