"""What a client reports to the Hub when an engine it sent direct requests to ends
(corral.client.link.answered_by): the tasks that engine answered lately, whose copies may have
died queued on its copies PUSH. Records filled by hand, no sockets; the whole path with real
processes is in tests/faults/test_engine_death.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from corral.client.link import ANSWERED_WINDOW, answered_by
from corral.client.records import Records
from corral.errors import EngineError
from corral.protocol.session import Message, Session

SESSION = Session(b"key")
STARTED = "2026-01-01T00:00:00+00:00"
COMPLETED = "2026-01-01T00:00:01+00:00"


def _sent(records: Records, engine: str, msg_type: str = "apply_request") -> Message:
    msg = SESSION.msg(msg_type, {})
    records.track(
        msg,
        "mux" if msg_type == "apply_request" else "control",
        engine,
        0,
        in_history=msg_type == "apply_request",
    )
    return msg


def _answer(records: Records, request: Message, engine: str, status: str = "ok") -> None:
    metadata = {"status": status, "engine_uuid": engine, "engine_id": 0}
    metadata.update(started=STARTED, completed=COMPLETED)
    content = (
        {"status": status} if status == "ok" else {"status": status, "ename": "E", "evalue": ""}
    )
    reply = SESSION.msg(
        request.msg_type.replace("_request", "_reply"), content, parent=request, metadata=metadata
    )
    assert records.handle_reply(reply)


def test_the_answers_of_the_engine_lately_newest_first_and_nothing_else() -> None:
    records = Records()
    first, second = _sent(records, "e"), _sent(records, "e")
    elsewhere, control = _sent(records, "other"), _sent(records, "e", "abort_request")
    failed_here, purged = _sent(records, "e"), _sent(records, "e")
    for request in (first, elsewhere, control, purged):
        _answer(records, request, "other" if request is elsewhere else "e")
    _answer(records, second, "e", status="error")
    records.fail(failed_here.msg_id, EngineError("EngineError", "gone"))
    report = answered_by(records, "e", {purged.msg_id})
    assert [item[0] for item in report] == [second.msg_id, first.msg_id]
    msg_id, submitted, status, started, completed = report[0]
    assert status == "error" and submitted == records.metadata[msg_id]["submitted"].isoformat()
    assert started == STARTED and completed == COMPLETED
    assert answered_by(records, "nobody", ()) == []


def test_answers_older_than_the_window_are_not_reported() -> None:
    records = Records()
    _answer(records, _sent(records, "e"), "e")
    later = datetime.now(UTC) + timedelta(seconds=ANSWERED_WINDOW + 1)
    assert answered_by(records, "e", (), later) == []
    assert len(answered_by(records, "e", ())) == 1
