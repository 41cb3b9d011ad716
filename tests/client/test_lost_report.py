"""What a client reports to the Hub when an engine it sent direct requests to ends
(corral.client.link.answered_by): the tasks that engine answered lately, whose copies may have
died queued on its copies PUSH. Records filled by hand, no sockets; the whole path with real
processes is in tests/faults/test_engine_death.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from corral.client.forgotten_answers import ANSWERS_KEPT
from corral.client.link import ANSWERED_WINDOW, answered_by, engines_answered
from corral.client.records import Records
from corral.errors import EngineError
from corral.protocol.serialize import serialize_object
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
        request.msg_type.replace("_request", "_reply"),
        content,
        parent=request,
        metadata=metadata,
        buffers=serialize_object(None) if status == "ok" else (),
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


def test_answers_whose_records_were_forgotten_are_reported_too() -> None:
    """``rc[0].apply_async(f).get()`` keeps no AsyncResult: the records forget the task at
    once, but the engine's copy of its reply may still be queued when the engine dies (on
    a86b37c such a task was never recorded: bench/chaos_mixed.py seed 34)."""
    records = Records()
    held, dropped, balanced = _sent(records, "e"), _sent(records, "e"), _sent(records, None)
    elsewhere = _sent(records, "other")
    for request in (held, dropped, balanced, elsewhere):
        _answer(records, request, "other" if request is elsewhere else "e")
    assert records.forget([dropped.msg_id, balanced.msg_id, elsewhere.msg_id]) == 3
    assert dropped.msg_id not in records.results and dropped.msg_id not in records.metadata
    report = answered_by(records, "e", ())
    assert [item[0] for item in report] == [held.msg_id, balanced.msg_id, dropped.msg_id]
    assert report[2][2:] == ["ok", STARTED, COMPLETED]
    # the load-balanced one is kept too, under the engine its reply named, and says so (on
    # 8d57fb1 it was not: a controller killed before its Hub wrote the reply's copy, its
    # engine killed before it sent it again, and the task was never recorded: seed 68)
    assert report[1][2:] == ["ok", STARTED, COMPLETED, "task"]
    kept = [msg_id for msg_id, _ in records.forgotten_answers("e")]
    assert kept == [dropped.msg_id, balanced.msg_id]
    assert [msg_id for msg_id, _ in records.forgotten_answers("other")] == [elsewhere.msg_id]
    assert answered_by(records, "e", (), datetime.now(UTC) + timedelta(ANSWERED_WINDOW)) == []


def _answered_and_forgotten(records: Records, engine: str, count: int) -> list[Message]:
    requests = [_sent(records, engine) for _ in range(count)]
    for request in requests:
        _answer(records, request, engine)
    assert records.forget([request.msg_id for request in requests]) == count
    return requests


def test_forgotten_answers_are_bounded_per_engine_the_newest_kept() -> None:
    """An engine that hung (its copies unsent) keeps its latest answers however many the
    other engines gave since: on ffe8498 one bound held every engine's, so 10,000 answers of
    the others pushed out those a hung engine was found dead with."""
    records = Records()
    hung = _answered_and_forgotten(records, "hung", 3)
    requests = _answered_and_forgotten(records, "e", ANSWERS_KEPT + 5)
    kept = records.forgotten_answers("e")
    assert len(kept) == ANSWERS_KEPT and kept[0][0] == requests[5].msg_id
    report = answered_by(records, "e", ())
    assert len(report) == ANSWERS_KEPT and report[0][0] == requests[-1].msg_id
    assert [item[0] for item in answered_by(records, "hung", ())] == [
        request.msg_id for request in reversed(hung)
    ]
    records.drop_forgotten_answers("hung")
    assert records.forgotten_answers("hung") == []


def test_the_engines_answered_lately_are_found_in_one_pass() -> None:
    """After an outage the client names the engines the new table lacks that it has answers
    from: found once for all of them (a scan of the held results per engine was quadratic
    for a client holding many)."""
    records = Records()
    held = _sent(records, "e")
    _answer(records, held, "e")
    dropped = _sent(records, None)  # load-balanced: its engine is the reply's
    _answer(records, dropped, "lb")
    records.forget([dropped.msg_id])
    assert engines_answered(records) == {"e", "lb"}
    later = datetime.now(UTC) + timedelta(seconds=ANSWERED_WINDOW + 1)
    assert engines_answered(records, later) == {"lb"}  # the held answer is too old by then
