"""What the scheduler reads of the messages it routes, and how the Hub reads its copies of them.

The scheduler forwards a client's request and an engine's reply as the frames they came in;
it decides on a few fields only. A request: its signature, its header (msg_id and msg_type,
every header field checked as :meth:`Session.deserialize
<corral.protocol.session.Session.deserialize>` checks them, so that the Hub, which trusts the
scheduler's copies, never gets one it cannot read) and its metadata (the scheduling fields);
its content and buffers are never parsed. A reply: its signature, its header (checked the
same way), the parent's msg_id and the content's status (and, for an unmet dependency, the
error's name and value); its metadata, which is most of a reply's JSON, is for the client and
the Hub. Cutting out the general path's :class:`~corral.protocol.session.Message`, its views
per frame and the checks of fields nobody here reads halves the scheduler's parsing per task.

The Hub reads the copies it records with :func:`read_hub_copy`: :meth:`Session.deserialize`
without its view and check per frame, nor its :class:`~corral.protocol.session.Message`
(a :class:`HubCopy`), with the signature checked for the devices' copies and not for the
scheduler's, whose header (checked by the scheduler) is parsed only when read
(docs/wire-flows.md, "Who checks what").

The scheduler's and the Hub's loops read small frames as ``bytes`` (a bundle's are sliced
from one, :mod:`corral.bundles`; a message alone's are copied as received,
:func:`corral.sockets.recv_small_as_bytes`), which are read without a view per frame; frames
of 64 KiB and more stay ``zmq.Frame`` objects, and those are read too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson
import zmq

from corral.errors import MalformedMessage, UnknownMessageType
from corral.protocol.messages import KNOWN_TYPES, validate_content
from corral.protocol.session import (
    DELIMITER,
    HEADER_FIELDS,
    Frame,
    Message,
    Session,
    frame_view,
    split_identities,
)
from corral.protocol.usual import usual_header, usual_json

JSONDict = dict[str, Any]
MAX_ROUTE: Final = 4
"""A message the scheduler reads has at most an engine's and a client's identity before its
delimiter; further in, :func:`split_route` takes the general way."""
_DELIMITER_LENGTH: Final = len(DELIMITER)
_loads: Final = orjson.loads  # compiled, a module attribute is looked up at every call
_JSONDecodeError: Final = orjson.JSONDecodeError
#: An empty JSON object as ``orjson`` writes it (a request's parent header and content).
_EMPTY_OBJECT: Final = b"{}"
_FRAME: Final = zmq.Frame  # compiled, zmq.Frame is a lookup in zmq's module each time


def split_route(frames: Sequence[Frame]) -> tuple[list[bytes], list[Frame]]:
    """The identities and the message frames, as :func:`~corral.protocol.session.
    split_identities` splits them. Frames that are ``bytes`` are compared as they are (no
    view per frame); a route of ``zmq.Frame`` objects (a shell reading Frames) is told from
    the delimiter by their length and read through ``Frame.bytes``; anything
    else (a frame of the delimiter's length among the first, a memoryview, no delimiter among
    the first :data:`MAX_ROUTE`) takes the general way.

    The two routes the scheduler reads nearly always (a client's identity, then the
    delimiter; an engine's and a client's, then the delimiter), all ``bytes`` as a bundle's
    messages and the small-as-bytes sockets give them, are taken first without the loop."""
    # compiled, a list is indexed and sliced as one (a Sequence's are generic calls)
    listed = frames if type(frames) is list else list(frames)
    if len(listed) > 2:
        first, second = listed[0], listed[1]
        if type(first) is bytes and type(second) is bytes and first != DELIMITER:
            if second == DELIMITER:
                return [first], listed[2:]
            third = listed[2]
            if type(third) is bytes and third == DELIMITER:
                return [first, second], listed[3:]
    for index in range(min(len(listed), MAX_ROUTE)):
        frame = listed[index]
        if isinstance(frame, bytes):
            if frame == DELIMITER:
                # before it: bytes, or zmq.Frame objects (their bytes copied once and cached)
                idents = [
                    f if isinstance(f, bytes) else f.bytes  # type: ignore[union-attr]
                    for f in listed[:index]
                ]
                return idents, listed[index + 1 :]
        elif not isinstance(frame, _FRAME) or len(frame) == _DELIMITER_LENGTH:
            break
    return split_identities(frames)


def _json_parts(
    session: Session, msg_frames: Sequence[Frame], *, verify: bool = True
) -> list[bytes | memoryview]:
    """The four JSON frames of an envelope, once its signature is checked (and recorded, for
    replay protection; not with ``verify=False``): MalformedMessage for too few frames or an
    oversized header or parent header, SignatureError or ReplayError from the session, as
    :meth:`Session.verify`."""
    if len(msg_frames) < 5:
        raise MalformedMessage(
            f"too few frames: {len(msg_frames)} after the delimiter, need at least 5 "
            "(signature, header, parent_header, metadata, content)"
        )
    parts = [frame if isinstance(frame, bytes) else frame_view(frame) for frame in msg_frames[1:5]]
    limit = session.max_header_bytes
    for name, part in (("header", parts[0]), ("parent_header", parts[1])):
        if len(part) > limit:
            raise MalformedMessage(f"oversized {name}: {len(part)} bytes (limit {limit})")
    if not verify:
        return parts
    signature = msg_frames[0]
    session.verify_signature(
        signature if isinstance(signature, bytes) else bytes(frame_view(signature)), parts
    )
    return parts


def _load(part: bytes | memoryview, name: str) -> JSONDict:
    try:
        value = _loads(part)
    except orjson.JSONDecodeError as err:
        raise MalformedMessage(f"invalid JSON in {name} frame: {err}") from None
    if type(value) is not dict:
        raise MalformedMessage(f"{name} is a JSON {type(value).__name__}, expected an object")
    return value


def _header(session: Session, part: bytes | memoryview) -> JSONDict:
    header = _load(part, "header")
    for name in HEADER_FIELDS:
        if type(header.get(name)) is not str:
            raise MalformedMessage(f"header field {name!r} is missing or not a string")
    if session.check_msg_type and header["msg_type"] not in KNOWN_TYPES:
        raise UnknownMessageType(f"unknown msg_type {header['msg_type']!r}")
    return header


def read_request(session: Session, msg_frames: Sequence[Frame]) -> tuple[JSONDict, JSONDict]:
    """``(header, metadata)`` of a request (frames after the delimiter), once its signature is
    checked; its parent header is checked to be an object, its content is not read. The
    errors of :meth:`Session.deserialize` for the same faults."""
    parts = usual_json(session, msg_frames, 0)
    if parts is None:
        return _read_request_checked(session, msg_frames, verify=True)
    try:
        header = _loads(parts[0])
        parent = _loads(parts[1])
        metadata = _loads(parts[2])
    except orjson.JSONDecodeError:
        return _read_request_checked(session, msg_frames, verify=False)
    if usual_header(session, header) and type(parent) is dict and type(metadata) is dict:
        return header, metadata
    return _read_request_checked(session, msg_frames, verify=False)


def _read_request_checked(
    session: Session, msg_frames: Sequence[Frame], *, verify: bool
) -> tuple[JSONDict, JSONDict]:
    parts = _json_parts(session, msg_frames, verify=verify)
    header = _header(session, parts[0])
    _load(parts[1], "parent_header")
    return header, _load(parts[2], "metadata")


def read_reply(session: Session, msg_frames: Sequence[Frame]) -> tuple[str | None, JSONDict]:
    """``(parent msg_id, content)`` of a reply (frames after the delimiter), once its signature
    and header are checked. The content is an object with a ``status`` string (MalformedMessage
    otherwise); the rest of it is the client's to check."""
    parts = usual_json(session, msg_frames, 0)
    if parts is None:
        return _read_reply_checked(session, msg_frames, verify=True)
    try:
        header = _loads(parts[0])
        parent = _loads(parts[1])
        content = _loads(parts[3])
    except orjson.JSONDecodeError:
        return _read_reply_checked(session, msg_frames, verify=False)
    if (
        usual_header(session, header)
        and type(parent) is dict
        and type(content) is dict
        and type(content.get("status")) is str
    ):
        parent_id = parent.get("msg_id")
        return (str(parent_id) if parent_id is not None else None), content
    return _read_reply_checked(session, msg_frames, verify=False)


def _read_reply_checked(
    session: Session, msg_frames: Sequence[Frame], *, verify: bool
) -> tuple[str | None, JSONDict]:
    parts = _json_parts(session, msg_frames, verify=verify)
    _header(session, parts[0])
    parent_id = _load(parts[1], "parent_header").get("msg_id")
    content = _load(parts[3], "content")
    if type(content.get("status")) is not str:
        raise MalformedMessage("a reply's content has no status string")
    return (str(parent_id) if parent_id is not None else None), content


class HubCopy:
    """A copy as the Hub records it: a message's four JSON objects and its buffers, without
    the :class:`~corral.protocol.session.Message` the general parser makes (whose ``__init__``
    sets its frozen slots through generic calls: about 4k instructions a copy, twice a task,
    and as much again to free it). Compiled, this is a plain native object: its attributes are
    set and read in C. The Hub never changes a copy's dicts (it stores them).

    ``header_text``: the header's frame, when the header is parsed only once it is read (a
    copy from the task scheduler, which checked it: :func:`read_hub_copy`); a reply's header
    is only stored, which SQLite does from the frame (:data:`~.store.base.IN_TEXTS`)."""

    parent_header: Final[JSONDict]
    metadata: Final[JSONDict]
    content: Final[JSONDict]
    buffers: Final[tuple[Frame, ...]]
    header_text: Final[bytes]

    def __init__(
        self,
        header: JSONDict | None,
        parent_header: JSONDict,
        metadata: JSONDict,
        content: JSONDict,
        buffers: tuple[Frame, ...],
        header_text: bytes = b"",
    ) -> None:
        self._header = header
        self.parent_header = parent_header
        self.metadata = metadata
        self.content = content
        self.buffers = buffers
        self.header_text = header_text

    @property
    def header(self) -> JSONDict:
        """The header, parsed from ``header_text`` when first read (and checked as
        :func:`read_hub_copy` checks a header: MalformedMessage)."""
        header = self._header
        if header is None:
            header = _load(self.header_text, "header")
            if not _usual_copy_header(header):
                raise MalformedMessage("a header field is missing or not a string")
            self._header = header
        return header

    @property
    def header_unread(self) -> bool:
        """Whether the header is still only its frame (``header_text``)."""
        return self._header is None

    @staticmethod
    def of(msg: Message) -> HubCopy:
        """The copy of a decoded message (its content None: an empty one)."""
        content = msg.content
        return HubCopy(
            msg.header,
            msg.parent_header,
            msg.metadata,
            content if content is not None else {},
            msg.buffers,
        )

    def message(self, idents: Sequence[bytes]) -> Message:
        """The :class:`~corral.protocol.session.Message` of this copy, routed by ``idents``."""
        return Message(
            self.header,
            self.parent_header,
            self.metadata,
            self.content,
            self.buffers,
            tuple(idents),
        )

    @property
    def msg_id(self) -> str:
        return str(self.header["msg_id"])

    @property
    def msg_type(self) -> str:
        return str(self.header["msg_type"])

    @property
    def parent_id(self) -> str | None:
        parent = self.parent_header.get("msg_id")
        return str(parent) if parent is not None else None


def read_copy(
    session: Session, msg_frames: Sequence[Frame], idents: Sequence[bytes], *, verify: bool = True
) -> Message:
    """A whole message from a copy (frames after the delimiter): what
    ``session.deserialize(msg_frames, idents=idents, verify=verify)`` gives, with its checks
    and errors (:func:`read_hub_copy`, which the Hub's shell calls, as a Message)."""
    return read_hub_copy(session, msg_frames, verify=verify).message(idents)


def read_hub_copy(
    session: Session,
    msg_frames: Sequence[Frame],
    *,
    verify: bool = True,
    header_checked: bool = False,
) -> HubCopy:
    """A copy for the Hub (frames after the delimiter), with the checks of
    ``session.deserialize(msg_frames, verify=verify)`` (the signature unless ``verify`` is
    False, the frames' count and header sizes, every header field a string, each JSON frame
    an object, the content against the catalogue when the session checks types) and its
    errors, without its view and checks per frame.

    The Hub reads every copy, so the usual one (four JSON frames as ``bytes``, each an
    object, a header of strings, in a session that does not check types: the controller's)
    is read inline, without a call per frame, and an empty object (a request's parent header
    and content, ``{}``) without a parse; anything else, and any fault, takes the checked way
    below, which names it. ``header_checked``: the sender checked the header already as the
    general parser does (the task scheduler, :func:`read_request` and :func:`read_reply`, for
    the copies it sends the Hub on its private socket): on the usual path it is parsed only
    when read (:attr:`HubCopy.header`)."""
    # a session that checks types validates the content: the checked way does
    parts = None if session.check_msg_type else usual_json(session, msg_frames, 0, verify)
    if parts is None:
        return HubCopy.of(_read_copy_checked(session, msg_frames, (), verify=verify))
    try:
        parent_header = _object(parts[1])
        metadata = _object(parts[2])
        content = _object(parts[3])
        if (
            header_checked
            and isinstance(parent_header, dict)
            and isinstance(metadata, dict)
            and isinstance(content, dict)
        ):
            buffers = tuple(msg_frames[5:])
            return HubCopy(None, parent_header, metadata, content, buffers, parts[0])
        header = _loads(parts[0])
    except _JSONDecodeError:
        return HubCopy.of(_read_copy_checked(session, msg_frames, (), verify=False))
    if (
        isinstance(header, dict)
        and _usual_copy_header(header)
        and isinstance(parent_header, dict)
        and isinstance(metadata, dict)
        and isinstance(content, dict)
    ):
        return HubCopy(header, parent_header, metadata, content, tuple(msg_frames[5:]))
    return HubCopy.of(_read_copy_checked(session, msg_frames, (), verify=False))


def _object(part: bytes) -> Any:
    """A JSON frame parsed; an empty object (``{}``, as a request's parent header and content
    come) made without the parser."""
    if part == _EMPTY_OBJECT:
        return {}
    return _loads(part)


def _usual_copy_header(header: JSONDict) -> bool:
    """:func:`~corral.protocol.usual.usual_header` of a dict in a session that does not check
    types (the caller's), its fields read as a dict's (compiled: no call per field)."""
    return (
        isinstance(header.get("msg_id"), str)
        and isinstance(header.get("msg_type"), str)
        and isinstance(header.get("session"), str)
        and isinstance(header.get("username"), str)
        and isinstance(header.get("date"), str)
        and isinstance(header.get("version"), str)
    )


def _read_copy_checked(
    session: Session, msg_frames: Sequence[Frame], idents: Sequence[bytes], *, verify: bool
) -> Message:
    """:func:`read_copy` frame by frame, each check raising its own error."""
    parts = _json_parts(session, msg_frames, verify=verify)
    header = _header(session, parts[0])
    parent_header = _load(parts[1], "parent_header")
    metadata = _load(parts[2], "metadata")
    content = _load(parts[3], "content")
    if session.check_msg_type:
        validate_content(header["msg_type"], content)
    return Message(header, parent_header, metadata, content, tuple(msg_frames[5:]), tuple(idents))
