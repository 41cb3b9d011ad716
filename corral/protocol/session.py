"""The signed multipart envelope (docs/wire-flows.md, Jupyter wire protocol 5.3).

Wire form: ``[ident, ..., b"<IDS|MSG>", signature, header, parent_header, metadata, content,
buffer, ...]``. The signature is the hex HMAC of the four JSON frames. Buffers are never signed,
parsed or copied: on send they go to zmq with ``copy=False``; on receive they stay ``zmq.Frame``
objects (or whatever the caller passed) so a 100 MB array crosses a router without a copy.

The Session is pure: it turns frames into a :class:`Message` and back, and never touches a
socket (the caller sends and receives the frames). The only state is the digest history used
to reject replays.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import zmq

from corral.errors import MalformedMessage, ReplayError, SignatureError, UnknownMessageType
from corral.protocol.messages import KNOWN_TYPES, validate_content

DELIMITER: Final = b"<IDS|MSG>"
_DELIMITER_LENGTH: Final = len(DELIMITER)
PROTOCOL_VERSION: Final = "5.3"
SIGNATURE_SCHEMES: Final = {"hmac-sha256": hashlib.sha256, "hmac-sha512": hashlib.sha512}
MAX_HEADER_BYTES: Final = 64 * 1024
JOIN_BELOW: Final = 64 * 1024  # bytes of JSON joined before signing (see Session.sign)
DIGEST_HISTORY_SIZE: Final = 1 << 17
HEADER_FIELDS: Final = ("msg_id", "msg_type", "session", "username", "date", "version")

Frame = bytes | memoryview | zmq.Frame
JSONDict = dict[str, Any]


_this_second: tuple[int, str] = (-1, "")
_ID_COUNTER_START: Final = 1 << 48  # see Session.new_msg_id
_ID_COUNTER_END: Final = 1 << 49


def utcnow() -> str:
    """ISO 8601 timestamp with time zone and microseconds, as every date on the wire.

    Every message has one and an engine's reply three: the date and time part is formatted
    once a second, which makes this four times cheaper than ``datetime.now(UTC).isoformat()``
    (that one also leaves out a zero microsecond part; ``datetime.fromisoformat`` reads both).
    The microseconds are written as ``str`` of a seventh leading digit cut off, with integer
    ``//`` and ``%``: compiled (``make native``), a format spec (``:06d``) and ``divmod`` are
    generic calls, and this was 0.85 us a call against 0.19.
    """
    global _this_second
    now = time.time_ns()
    seconds = now // 1_000_000_000
    second, prefix = _this_second
    if second != seconds:
        prefix = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _this_second = (seconds, prefix)
    return prefix + str(now // 1000 % 1_000_000 + 1_000_000)[1:] + "+00:00"


def new_key() -> bytes:
    """A fresh random signing key (hex, so it can live in a JSON connection file)."""
    return os.urandom(32).hex().encode("ascii")


def frame_view(frame: Frame) -> bytes | memoryview:
    """The bytes of a frame without copying them (a zmq Frame's buffer, or the object)."""
    return frame.buffer if isinstance(frame, zmq.Frame) else frame


def _view(frame: Frame) -> bytes | memoryview:
    """:func:`frame_view`, with the common case (bytes, e.g. sliced from a bundle) first:
    every message is parsed through a dozen of these."""
    return frame if type(frame) is bytes else frame_view(frame)


def _bytes(frame: Frame) -> bytes:
    """A frame's bytes: itself if it is bytes, else a copy."""
    return frame if type(frame) is bytes else bytes(frame_view(frame))


_DUMPS_OPTIONS: Final = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _dumps(obj: Any) -> bytes:
    """JSON of a header, metadata or content (the options read once: four per message)."""
    return orjson.dumps(obj, option=_DUMPS_OPTIONS)


_EMPTY_OBJECT: Final[bytes] = _dumps({})  # what an empty header, metadata or content is written as


@dataclass(frozen=True, slots=True, init=False)
class Message:
    """One decoded message. ``content`` is None when the receiver asked for headers only.

    Every process makes a few per task, so ``__init__`` sets the slots through their
    descriptors (what a frozen dataclass's own ``__init__`` does through
    ``object.__setattr__``, a third slower: 0.92 against 0.65 us)."""

    header: JSONDict
    parent_header: JSONDict
    metadata: JSONDict
    content: JSONDict | None
    buffers: tuple[Frame, ...] = ()
    idents: tuple[bytes, ...] = field(default=())

    def __init__(
        self,
        header: JSONDict,
        parent_header: JSONDict,
        metadata: JSONDict,
        content: JSONDict | None,
        buffers: tuple[Frame, ...] = (),
        idents: tuple[bytes, ...] = (),
    ) -> None:
        _set_header(self, header)
        _set_parent_header(self, parent_header)
        _set_metadata(self, metadata)
        _set_content(self, content)
        _set_buffers(self, buffers)
        _set_idents(self, idents)

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


def _slot_setter(name: str) -> Any:
    """The ``__set__`` of ``Message``'s slot ``name`` (what a frozen dataclass forbids by
    assignment)."""
    return getattr(Message, name).__set__


# Final: compiled, each is a constant, not a lookup in the module's dict (six per Message)
_set_header: Final = _slot_setter("header")
_set_parent_header: Final = _slot_setter("parent_header")
_set_metadata: Final = _slot_setter("metadata")
_set_content: Final = _slot_setter("content")
_set_buffers: Final = _slot_setter("buffers")
_set_idents: Final = _slot_setter("idents")


def split_identities(frames: Sequence[Frame]) -> tuple[list[bytes], list[Frame]]:
    """Split routing identities from the message proper, at the delimiter.

    Raises MalformedMessage if there is no delimiter. Only frames of the delimiter's length are
    compared, so a large buffer is never copied while searching.
    """
    for index, frame in enumerate(frames):
        view = _view(frame)
        if len(view) == _DELIMITER_LENGTH and _bytes(view) == DELIMITER:
            idents = [_bytes(f) for f in frames[:index]]
            return idents, list(frames[index + 1 :])
    raise MalformedMessage("no <IDS|MSG> delimiter in the frames")


class Session:
    """Builds, signs, verifies and parses messages for one process (one session id).

    ``key`` empty disables signing; callers must make that an explicit choice (the controller
    refuses unless --insecure). ``check_msg_type`` rejects types outside the catalogue.
    """

    def __init__(
        self,
        key: bytes | str = b"",
        *,
        signature_scheme: str = "hmac-sha256",
        username: str = "corral",
        session_id: str | None = None,
        check_msg_type: bool = True,
        max_header_bytes: int = MAX_HEADER_BYTES,
        digest_history_size: int = DIGEST_HISTORY_SIZE,
    ) -> None:
        if isinstance(key, str):
            key = key.encode("ascii")
        if signature_scheme not in SIGNATURE_SCHEMES:
            raise ValueError(
                f"unsupported signature scheme {signature_scheme!r}; "
                f"use one of {sorted(SIGNATURE_SCHEMES)}"
            )
        self.key = key
        self.signature_scheme = signature_scheme
        self.username = username
        self.session_id = session_id or str(uuid.uuid4())
        self.check_msg_type = check_msg_type
        self.max_header_bytes = max_header_bytes
        self.digest_history_size = digest_history_size
        self._auth = hmac.new(key, digestmod=SIGNATURE_SCHEMES[signature_scheme]) if key else None
        # the C HMAC inside hmac.HMAC when OpenSSL provides it; the wrapper otherwise (both
        # have copy, update and hexdigest)
        self._prototype: Any = getattr(self._auth, "_hmac", None) or self._auth
        # the signatures seen (a dict: the check and the record are a lookup and a store,
        # adjacent steps, see verify_signature), and the same, oldest first, to forget them by
        self._digests: dict[bytes, None] = {}
        self._digest_order: deque[bytes] = deque()
        self._id_prefix = str(uuid.uuid4())[:24]
        # next() is atomic: safe across threads
        self._id_counter = itertools.count(_ID_COUNTER_START + 1)

    @property
    def session(self) -> str:
        """The session id under its Jupyter name (``jupyter_client.Session.session``, as
        ipyparallel's client has it): the ``client_uuid`` of this client's task records, so
        ``rc.db_query({'client_uuid': rc.session.session})`` finds the tasks it sent."""
        return self.session_id

    # ------------------------------------------------------------------ building

    def new_msg_id(self) -> str:
        """A unique msg_id in UUID form: a random per-session prefix (the first 20 hex digits of
        a uuid4) and a 48-bit counter, unique across processes and restarts, ten times cheaper
        than a uuid4 per message. The counter runs from ``2**48 + 1``, so its ``hex`` is
        ``0x1`` and twelve digits, the counter's (compiled, that is 0.27 us against 0.81 for
        a ``:012x`` format spec); past 48 bits it is written in full, still unique."""
        count = next(self._id_counter)
        if count < _ID_COUNTER_END:
            return self._id_prefix + hex(count)[3:]
        return self._id_prefix + format(count - _ID_COUNTER_START, "x")

    def header(self, msg_type: str, date: str | None = None) -> JSONDict:
        """A new message's header, dated now or ``date`` (a :func:`utcnow` string the caller
        just took: an engine's reply is dated when its task completed, one clock read less)."""
        return {
            "msg_id": self.new_msg_id(),
            "msg_type": msg_type,
            "session": self.session_id,
            "username": self.username,
            "date": date or utcnow(),
            "version": PROTOCOL_VERSION,
        }

    def msg(
        self,
        msg_type: str,
        content: JSONDict | None = None,
        parent: Message | JSONDict | None = None,
        metadata: JSONDict | None = None,
        buffers: Iterable[Frame] = (),
        header: JSONDict | None = None,
    ) -> Message:
        """A new message; content is validated against the catalogue."""
        content = {} if content is None else content
        validate_content(msg_type, content)
        if isinstance(parent, Message):
            parent_header = parent.header
        else:
            parent_header = dict(parent or {})
        return Message(
            header=header or self.header(msg_type),
            parent_header=parent_header,
            metadata=dict(metadata or {}),
            content=content,
            buffers=tuple(buffers),
        )

    # ------------------------------------------------------------------ signing

    @staticmethod
    def json_frame(obj: JSONDict) -> bytes:
        """The frame :meth:`serialize` writes for ``obj`` (a header, metadata or content)."""
        return _dumps(obj) if obj else _EMPTY_OBJECT

    def sign(self, json_frames: Sequence[bytes | memoryview]) -> bytes:
        """Hex HMAC of the four JSON frames; empty when signing is disabled.

        A copy of the keyed HMAC prepared at start (OpenSSL's own object when the ``hmac``
        module wraps one, skipping the pure-Python wrapper) is fed the frames joined in one
        ``update``. Below 2 KiB an update holds the GIL, unlike ``hmac.digest``, which always
        releases it: in a process whose other thread waits for the GIL (the engine's and the
        client's I/O threads) each release can hand the GIL over and wait to get it back, and
        the one-shot call was slower anyway (1.2 against 1.85 microseconds for 800 bytes of
        JSON). Large frames are fed as they are, not joined."""
        prototype = self._prototype
        if prototype is None:
            return b""
        auth = prototype.copy()
        total = 0
        for part in json_frames:  # (compiled, a loop: sum(map(len, ...)) is generic calls)
            total += len(part)
        if total < JOIN_BELOW:  # bytes, or views of bytes
            auth.update(b"".join(json_frames))
        else:
            for part in json_frames:
                auth.update(part)
        digest: str = auth.hexdigest()
        return digest.encode("ascii")

    def serialize(
        self, msg: Message, idents: Sequence[bytes] = (), metadata_json: bytes | None = None
    ) -> list[Frame]:
        """Frames ready for ``send_multipart(copy=False)``; buffers are passed as they are.
        An empty dict is written as the bytes ``orjson`` writes for it, without the call
        (a client's every request has an empty parent header, and an apply an empty content).
        ``metadata_json``: the metadata's frame as :meth:`json_frame` wrote it, for a dict the
        caller puts unchanged in many messages (a client's shared-memory readers, in every
        apply request it sends)."""
        parent, metadata, content = msg.parent_header, msg.metadata, msg.content
        if metadata_json is None:
            metadata_json = _dumps(metadata) if metadata else _EMPTY_OBJECT
        json_frames = [
            _dumps(msg.header),
            _dumps(parent) if parent else _EMPTY_OBJECT,
            metadata_json,
            _dumps(content) if content else _EMPTY_OBJECT,
        ]
        frames: list[Frame] = [*idents, DELIMITER, self.sign(json_frames), *json_frames]
        frames.extend(msg.buffers)
        return frames

    # ------------------------------------------------------------------ parsing

    def verify(self, msg_frames: Sequence[Frame]) -> None:
        """Check the signature of message frames (after the delimiter) and record it.

        Raises SignatureError on a bad or missing signature and ReplayError on a signature seen
        before. Does not parse anything.
        """
        self._check_sizes(msg_frames)
        if self._auth is None:
            return
        signature = _bytes(msg_frames[0])
        self.verify_signature(signature, [_view(f) for f in msg_frames[1:5]])

    def _check_sizes(self, msg_frames: Sequence[Frame]) -> None:
        """MalformedMessage unless there are the five frames of an envelope and its header and
        parent header are within :attr:`max_header_bytes`."""
        if len(msg_frames) < 5:
            raise MalformedMessage(
                f"too few frames: {len(msg_frames)} after the delimiter, need at least 5 "
                "(signature, header, parent_header, metadata, content)"
            )
        if len(_view(msg_frames[1])) > self.max_header_bytes:
            raise MalformedMessage(
                f"oversized header: {len(frame_view(msg_frames[1]))} bytes "
                f"(limit {self.max_header_bytes})"
            )
        if len(_view(msg_frames[2])) > self.max_header_bytes:
            raise MalformedMessage(
                f"oversized parent_header: {len(frame_view(msg_frames[2]))} bytes "
                f"(limit {self.max_header_bytes})"
            )

    def verify_signature(self, signature: bytes, parts: Sequence[bytes | memoryview]) -> None:
        """Check ``signature`` over ``parts`` (as :meth:`sign` made it) and record it, so that
        the same signed parts are refused when they come again: :meth:`verify`'s check, for
        the few compact messages that are not a whole envelope (the scheduler's ``task_dest``
        copy). SignatureError or ReplayError as :meth:`verify`; nothing when unsigned."""
        if self._auth is None:
            return
        if not signature:
            raise SignatureError("unsigned message (empty signature) on a signed session")
        expected = self.sign(parts)
        if not hmac.compare_digest(signature, expected):
            raise SignatureError("invalid signature: wrong key, or the message was altered")
        if signature in self._digests:
            raise ReplayError(
                f"replayed message: signature {signature[:16].decode()}... seen before"
            )
        self._digests[signature] = None
        order = self._digest_order
        order.append(signature)
        if len(order) > self.digest_history_size:
            self._forget_oldest(order)

    def _forget_oldest(self, order: deque[bytes]) -> None:
        """Forget the oldest signature, keeping memory bounded: one per signature recorded
        once the history is full. (It used to drop the oldest tenth at once, listing the whole
        dict of them every tenth.) Two threads may feed one session (a client's I/O thread and
        a thread reading its own reply): each forgets at most one per signature it recorded,
        so the order never runs empty under them."""
        self._digests.pop(order.popleft(), None)

    def _load(self, frame: Frame, name: str) -> JSONDict:
        try:
            value = orjson.loads(_view(frame))
        except orjson.JSONDecodeError as err:
            raise MalformedMessage(f"invalid JSON in {name} frame: {err}") from None
        if not isinstance(value, dict):
            raise MalformedMessage(f"{name} is a JSON {type(value).__name__}, expected an object")
        return value

    def deserialize(
        self,
        msg_frames: Sequence[Frame],
        *,
        content: bool = True,
        idents: Sequence[bytes] = (),
        verify: bool = True,
    ) -> Message:
        """Verify and decode message frames (those after the delimiter).

        With ``content=False`` only header, parent_header and metadata are parsed: what a router
        or the Hub's monitor needs. Buffers are returned as given, never copied.
        ``verify=False`` checks the frames' count and sizes but not the signature, and records
        nothing for replay protection: only for frames that reached this process over a channel
        no one but a process that verified them can write to (the Hub's copies from its own
        scheduler, docs/wire-flows.md "Who checks what").
        """
        if verify:
            self.verify(msg_frames)
        else:
            self._check_sizes(msg_frames)
        header = self._load(msg_frames[1], "header")
        for name in HEADER_FIELDS:
            if not isinstance(header.get(name), str):
                raise MalformedMessage(f"header field {name!r} is missing or not a string")
        msg_type = header["msg_type"]
        if self.check_msg_type and msg_type not in KNOWN_TYPES:
            raise UnknownMessageType(f"unknown msg_type {msg_type!r}")
        parent_header = self._load(msg_frames[2], "parent_header")
        metadata = self._load(msg_frames[3], "metadata")
        body: JSONDict | None = None
        if content:
            body = self._load(msg_frames[4], "content")
            if self.check_msg_type:
                validate_content(msg_type, body)
        return Message(
            header=header,
            parent_header=parent_header,
            metadata=metadata,
            content=body,
            buffers=tuple(msg_frames[5:]),
            idents=tuple(idents),
        )

    def feed(self, frames: Sequence[Frame], *, content: bool = True) -> Message:
        """Decode a whole multipart message as received (identities included)."""
        idents, msg_frames = split_identities(frames)
        return self.deserialize(msg_frames, content=content, idents=idents)

    def feed_verified(self, frames: Sequence[Frame]) -> Message:
        """:meth:`feed` of a message whose signature this session has verified and recorded
        already (a decoding cut by Ctrl-C after that, done again): not checked again, which
        would refuse it as a replay."""
        idents, msg_frames = split_identities(frames)
        return self.deserialize(msg_frames, idents=idents, verify=False)
