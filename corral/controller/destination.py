"""The scheduler's ``task_dest`` copy for the Hub: where a task that waited went.

A task the scheduler could not send at once is announced to the Hub by a ``task_in`` copy
without an engine, and by this copy when it leaves (or leaves again, on a retry). It is the
only copy the scheduler makes up itself, so it need not be a whole envelope: three frames,
``[b"task_dest", signature, payload]``, the payload the JSON list ``[msg_id, engine_uuid,
attempt]`` and the signature the session's HMAC of the prefix and the payload (one frame, so
its fields cannot be re-split under the same signature). The attempt makes each dispatch's
signature new, so the Hub's replay protection drops a copy that comes twice and nothing else.
A full ``task_destination`` message cost the scheduler a header, four JSON encodings and the
Hub four JSON parses and a content check, per waiting task (docs/wire-flows.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from corral.errors import MalformedMessage
from corral.protocol.session import Frame, Session, frame_view

PREFIX = b"task_dest"
MAX_PAYLOAD = 4096  # bytes: two ids and a number


def destination_frames(
    session: Session, msg_id: str, engine_uuid: str, attempt: int, *, signed: bool = True
) -> list[bytes]:
    """The copy saying that ``msg_id`` was sent to ``engine_uuid`` (its ``attempt``-th dispatch).

    ``signed=False`` leaves the signature frame empty, for a Hub that does not check the
    scheduler's copies (they reach it over its private channel: docs/wire-flows.md, "Who
    checks what"); it saves the scheduler an HMAC per waiting task. A Hub that checks refuses
    such a copy (SignatureError), so both sides follow the same setting (``trusted_copies``)."""
    payload = orjson.dumps([msg_id, engine_uuid, attempt])
    return [PREFIX, session.sign([PREFIX, payload]) if signed else b"", payload]


def read_destination(
    session: Session, frames: Sequence[Frame], *, verify: bool = True
) -> tuple[str, str]:
    """``(msg_id, engine_uuid)`` of a ``task_dest`` copy, once its signature is checked.

    MalformedMessage for anything but the three frames above; SignatureError or ReplayError
    from the session (a copy altered, or received before). ``verify=False`` skips the
    signature, for a copy that came over the Hub's private channel from its own scheduler
    (see :meth:`Session.deserialize <corral.protocol.session.Session.deserialize>`)."""
    if len(frames) != 3 or bytes(frame_view(frames[0])) != PREFIX:
        raise MalformedMessage(f"a task_dest copy has 3 frames, not {len(frames)}")
    payload = frame_view(frames[2])
    if len(payload) > MAX_PAYLOAD:
        raise MalformedMessage(f"oversized task_dest copy: {len(payload)} bytes")
    if verify:
        session.verify_signature(bytes(frame_view(frames[1])), [PREFIX, payload])
    try:
        fields = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise MalformedMessage(f"invalid JSON in a task_dest copy: {err}") from None
    if (
        not isinstance(fields, list)
        or len(fields) != 3
        or not all(isinstance(field, str) and field for field in fields[:2])
    ):
        raise MalformedMessage("a task_dest copy names [msg_id, engine_uuid, attempt]")
    return fields[0], fields[1]
