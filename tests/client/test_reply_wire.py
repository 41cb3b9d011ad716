"""The client's inline reading of the usual message (corral/client/reply_wire.py) gives what
``Session.feed`` gives: the same Message, or the same error, for the usual shape and for every
way a message can differ from it or be wrong."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
import zmq

from corral.client import reply_wire
from corral.protocol.session import DELIMITER, Message, Session

KEY = b"reply-wire-test-key"


def _reply(**metadata: Any) -> tuple[Session, Message]:
    client, engine = Session(KEY), Session(KEY)
    request = client.msg("apply_request", {})
    reply = engine.msg(
        "apply_reply", {"status": "ok"}, parent=request, metadata=metadata, buffers=[b"value"]
    )
    return engine, reply


def _usual() -> list[Any]:
    engine, reply = _reply(engine_id=0, stdout="")
    return [b"engine-uuid", *(bytes(f) for f in engine.serialize(reply))]


def _resigned(frames: list[Any], change: Callable[[list[Any]], None]) -> list[Any]:
    """``frames`` changed, then signed again with the key, so only the change is wrong."""
    changed = list(frames)
    change(changed)
    changed[2] = Session(KEY).sign(changed[3:7])
    return changed


def _json(index: int, value: Any) -> Callable[[list[Any]], None]:
    def change(frames: list[Any]) -> None:
        frames[index] = orjson.dumps(value)

    return change


def _header(**fields: Any) -> Callable[[list[Any]], None]:
    def change(frames: list[Any]) -> None:
        header = orjson.loads(frames[3])
        header.update(fields)
        frames[3] = orjson.dumps({k: v for k, v in header.items() if v is not ...})

    return change


def _cases() -> dict[str, list[Any]]:
    usual = _usual()
    bad_signature = list(usual)
    bad_signature[2] = b"0" * len(usual[2])
    return {
        "usual": usual,
        "no buffers": usual[:7],
        "two identities": [b"hop", *usual],
        "no identity": usual[1:],
        "as zmq Frames": [zmq.Frame(f) for f in usual],
        "a zmq Frame buffer": [*usual[:7], zmq.Frame(b"value")],
        "bad signature": bad_signature,
        "no delimiter": [f for f in usual if f != DELIMITER],
        "too few frames": usual[:6],
        "header not JSON": _resigned(usual, lambda f: f.__setitem__(3, b"{nope")),
        "content not JSON": _resigned(usual, lambda f: f.__setitem__(6, b"[")),
        "header a list": _resigned(usual, _json(3, [1])),
        "parent a string": _resigned(usual, _json(4, "parent")),
        "metadata a list": _resigned(usual, _json(5, [])),
        "content a number": _resigned(usual, _json(6, 7)),
        "msg_id missing": _resigned(usual, _header(msg_id=...)),
        "date a number": _resigned(usual, _header(date=5)),
        "unknown type": _resigned(usual, _header(msg_type="no_such_reply")),
        "invalid content": _resigned(usual, _json(6, {"status": 7})),
        "no status": _resigned(usual, _json(6, {"value": 1})),
        "status and more": _resigned(usual, _json(6, {"status": "error", "ename": "E"})),
        "a request's content": _resigned(
            _resigned(usual, _header(msg_type="execute_request")), _json(6, {"silent": 1})
        ),
        "oversized header": _resigned(usual, _header(padding="x" * 70_000)),
    }


def _outcome(read: Callable[[Session, list[Any]], Message], frames: list[Any]) -> Any:
    session = Session(KEY)
    try:
        first = read(session, frames)
    except Exception as err:  # noqa: BLE001 - compared
        return type(err), str(err)
    try:
        read(session, frames)
    except Exception as err:  # noqa: BLE001 - the replay, compared too
        again: Any = (type(err), str(err))
    else:
        again = "accepted twice"
    buffers = [bytes(f) if isinstance(f, zmq.Frame) else f for f in first.buffers]
    fields = (first.header, first.parent_header, first.metadata, first.content, first.idents)
    return fields, buffers, again


@pytest.mark.parametrize("case", sorted(_cases()))
def test_the_inline_reading_gives_what_session_feed_gives(case: str) -> None:
    frames = _cases()[case]
    inline = _outcome(reply_wire.feed, frames)
    general = _outcome(lambda session, f: session.feed(f), frames)
    assert inline == general
    if case == "usual":
        assert isinstance(inline[0][0], dict) and inline[2][0].__name__ == "ReplayError"


def test_replies_with_a_status_alone_are_the_catalogues_status_only_types() -> None:
    assert "apply_reply" in reply_wire._STATUS_ONLY  # noqa: SLF001
    assert "execute_request" not in reply_wire._STATUS_ONLY  # noqa: SLF001


def test_an_unsigned_session_reads_the_usual_shape_inline_too() -> None:
    engine = Session(b"")
    reply = engine.msg("apply_reply", {"status": "ok"})
    frames = [b"engine-uuid", *(bytes(f) for f in engine.serialize(reply))]
    assert reply_wire.feed(Session(b""), frames).header == reply.header
