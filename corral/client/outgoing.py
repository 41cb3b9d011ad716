"""A request made ready to leave: built, signed, tracked and (load-balanced) held for a resend.

:meth:`corral.client.sending.RequestSending.prepare_request` runs once per request on the
user's thread. ``sending`` is a mixin of the Client, which users' code may subclass, so it
stays uncompiled; its per-request steps after the shared-memory choice are here instead, in a
module ``make native`` compiles (:mod:`corral.native`), where every call between them (the
session's header and signature, the records' tracking, the resend copy) is a call between
compiled classes. What a request is and when it is sent are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from corral.client.records import Records
from corral.client.recovery import Resender
from corral.protocol.session import Frame, Message, Session

__all__ = ["OutgoingRequest", "make_request"]


class OutgoingRequest:
    """A request signed and tracked but not yet sent (:meth:`Submitter.prepare_request`).

    A view builds what its call returns between the two halves, so that once the request
    leaves the submitting thread has little left to do but wait: while the request is in
    transit, every microsecond it runs takes a core from the processes and zmq threads the
    request goes through.
    """

    __slots__ = ("msg_id", "channel", "frames", "track_from", "engine_uuid", "engine_id")

    def __init__(
        self,
        msg_id: str,
        channel: str,
        frames: list[Frame],
        track_from: int | None,
        engine_uuid: str | None,
        engine_id: int | None,
    ) -> None:
        self.msg_id = msg_id
        self.channel = channel  # "mux", "control" or "task"
        self.frames = frames  # signed, ready to send
        self.track_from = track_from  # the frames tracked from there on (None: no tracking)
        self.engine_uuid = engine_uuid  # the target engine, if named
        self.engine_id = engine_id


def make_request(
    session: Session,
    records: Records,
    resender: Resender,
    channel: str,
    msg_type: str,
    content: dict[str, Any],
    buffers: Sequence[Frame],
    metadata: dict[str, Any] | None,
    shared_metadata: dict[str, Any],
    shared_json: bytes,
    target: tuple[int, str] | None,
    in_history: bool,
    track: bool,
    header: dict[str, Any] | None,
) -> OutgoingRequest:
    """Build, sign and track one request (not yet sent), as ``prepare_request`` documents.

    ``metadata`` is the request's (``shared_metadata`` itself when it is the client's shared
    dict of shared-memory readers, never changed, so neither copied nor written again: its
    frame is ``shared_json``, :meth:`Session.json_frame` of it); ``header`` one made earlier
    for a request already tracked (a held task): then it is not tracked again. A task is held
    by ``resender`` (its frames from the signature on) until it settles."""
    if msg_type == "apply_request" and not content:  # valid as it is: no catalogue check
        request_metadata = shared_metadata if metadata is shared_metadata else dict(metadata or {})
        msg = Message(
            header or session.header(msg_type), {}, request_metadata, content, tuple(buffers)
        )
    else:
        msg = session.msg(msg_type, content, metadata=metadata, buffers=buffers, header=header)
    msg_id: str = msg.header["msg_id"]
    idents: tuple[bytes, ...] = (target[1].encode(),) if target is not None else ()
    shared = msg.metadata is shared_metadata
    frames = session.serialize(msg, idents, shared_json if shared else None)
    engine_id: int | None = None
    uuid: str | None = None
    if target is not None:
        engine_id, uuid = target
    if header is None:
        records.track(msg, channel, uuid, engine_id, in_history=in_history, sweep=False)
    if channel == "task":  # until settled: Records calls release
        resender.hold(msg_id, frames[len(idents) + 1 :])  # from the signature on
    track_from = len(frames) - len(buffers) if track else None
    return OutgoingRequest(msg_id, channel, frames, track_from, uuid, engine_id)
