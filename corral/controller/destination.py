"""The scheduler's ``task_dest`` copy for the Hub: where tasks that waited went.

A task the scheduler could not send at once is announced to the Hub by a ``task_in`` copy
without an engine, and by this copy when it leaves (or leaves again, on a retry). It is the
only copy the scheduler makes up itself, so it need not be a whole envelope: three frames,
``[b"task_dest", signature, payload]``, the payload the JSON list of the turn's dispatches of
such tasks, each ``[msg_id, engine_uuid, attempt]`` (one copy per loop turn, not per task: at a
high rate most tasks wait, and a copy each cost the scheduler and the Hub a message's handling
per task), and the signature the session's HMAC of the prefix and the payload (one frame, so
its fields cannot be re-split under the same signature). The attempts make each copy's
signature new, so the Hub's replay protection drops a copy that comes twice and nothing else.
A full ``task_destination`` message cost the scheduler a header, four JSON encodings and the
Hub four JSON parses and a content check, per waiting task (docs/wire-flows.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import orjson

from corral.errors import MalformedMessage
from corral.protocol.session import Frame, Session, frame_view

PREFIX: Final = b"task_dest"
MAX_ENTRIES: Final = 256
"""Dispatches in one copy at most: the scheduler sends a longer turn's as several copies."""
MAX_PAYLOAD: Final = MAX_ENTRIES * 4096  # bytes: two ids and a number per dispatch

Dispatched = tuple[str, str, int]
"""``(msg_id, engine_uuid, attempt)``: the ``attempt``-th dispatch of a task, to that engine."""


def destinations_frames(
    session: Session, dispatched: Sequence[Dispatched], *, signed: bool = True
) -> list[bytes]:
    """The copy saying where each of ``dispatched`` (1 to :data:`MAX_ENTRIES`) went.

    ``signed=False`` leaves the signature frame empty, for a Hub that does not check the
    scheduler's copies (they reach it over its private channel: docs/wire-flows.md, "Who
    checks what"); it saves the scheduler an HMAC per copy. A Hub that checks refuses such a
    copy (SignatureError), so both sides follow the same setting (``trusted_copies``)."""
    if not 0 < len(dispatched) <= MAX_ENTRIES:
        raise ValueError(f"a task_dest copy names 1 to {MAX_ENTRIES} dispatches")
    payload = orjson.dumps(dispatched)
    return [PREFIX, session.sign([PREFIX, payload]) if signed else b"", payload]


def destination_frames(
    session: Session, msg_id: str, engine_uuid: str, attempt: int, *, signed: bool = True
) -> list[bytes]:
    """The copy of one dispatch: :func:`destinations_frames` of ``[(msg_id, engine_uuid,
    attempt)]``."""
    return destinations_frames(session, [(msg_id, engine_uuid, attempt)], signed=signed)


def read_destinations(
    session: Session, frames: Sequence[Frame], *, verify: bool = True
) -> list[tuple[str, str]]:
    """``(msg_id, engine_uuid)`` of each dispatch a ``task_dest`` copy names, in its order,
    once its signature is checked.

    MalformedMessage for anything but the three frames above (the whole copy: none of its
    dispatches is read then); SignatureError or ReplayError from the session (a copy altered,
    or received before). ``verify=False`` skips the signature, for a copy that came over the
    Hub's private channel from its own scheduler (see :meth:`Session.deserialize
    <corral.protocol.session.Session.deserialize>`)."""
    if len(frames) != 3 or bytes(frame_view(frames[0])) != PREFIX:
        raise MalformedMessage(f"a task_dest copy has 3 frames, not {len(frames)}")
    payload = frame_view(frames[2])
    if len(payload) > MAX_PAYLOAD:
        raise MalformedMessage(f"oversized task_dest copy: {len(payload)} bytes")
    if verify:
        session.verify_signature(bytes(frame_view(frames[1])), [PREFIX, payload])
    try:
        entries = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise MalformedMessage(f"invalid JSON in a task_dest copy: {err}") from None
    if type(entries) is not list or not 0 < len(entries) <= MAX_ENTRIES:
        raise MalformedMessage(f"a task_dest copy is a list of 1 to {MAX_ENTRIES} dispatches")
    found: list[tuple[str, str]] = []
    for entry in entries:
        if (
            type(entry) is not list
            or len(entry) != 3
            or type(entry[0]) is not str
            or type(entry[1]) is not str
            or not entry[0]
            or not entry[1]
        ):
            raise MalformedMessage("a task_dest copy names [msg_id, engine_uuid, attempt] each")
        found.append((entry[0], entry[1]))
    return found
