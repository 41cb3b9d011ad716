"""The Hub's rules that its shell used to hold, driven by a clock the test moves: beats, the
registration repeats, probes, request validation, engine ids after a restore, and what engine
loss and a controller restart do to the records. No sockets, no sleeps: milliseconds."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from corral.controller.hub import Send
from corral.controller.hub_actions import AddRecord, UpdateRecord
from corral.controller.hub_beat import PROBE_PERIOD, REGISTRATION_PING
from corral.controller.store.memory import MemoryStore
from corral.protocol.session import Message
from tests.controller.hub_harness import HubHarness
from tests.controller.test_hub import (
    CLIENT_ADDRESSES,
    ENGINE_ADDRESSES,
    register,
    reply_for,
    request,
    session,
    submit_mux,
)

PERIOD = 2.0


@pytest.fixture
def hub() -> HubHarness:
    return HubHarness.create(MemoryStore(), ENGINE_ADDRESSES, CLIENT_ADDRESSES, PERIOD, 2)


def headers_only(msg_type: str) -> Message:
    """A request as the shell passes it: header parsed, content left in its frame."""
    msg = session.msg("connection_request", {})
    return replace(msg, header={**msg.header, "msg_type": msg_type}, content=None)


def beats(pings: list[bytes]) -> list[int]:
    return [int(payload.split(b".")[0]) for payload in pings]


def test_the_first_wake_beats_at_once_then_once_per_period(hub: HubHarness) -> None:
    start = hub.now
    assert hub.next_deadline(hub.now) == start
    pings, _ = hub.wake()
    assert beats(pings) == [1]
    assert hub.next_deadline(hub.now) == start + PERIOD
    hub.now += PERIOD / 4
    assert hub.wake() == ([], [])  # woken early (another timer): nothing is due
    pings, _ = hub.advance_to_deadline()
    assert hub.now == start + PERIOD and beats(pings) == [2]
    # a wake a whole period late beats once, and the next beat is not crammed in after it
    hub.now += 2.5 * PERIOD
    assert beats(hub.wake()[0]) == [3]
    assert hub.next_deadline(hub.now) - hub.now >= PERIOD / 2


def test_a_clock_set_back_never_stops_the_beat(hub: HubHarness) -> None:
    hub.wake()
    hub.now -= 3600.0  # an hour back: the armed deadline is now far away
    assert hub.next_deadline(hub.now) <= hub.now + PERIOD
    assert beats(hub.wake()[0]) == [2]
    assert hub.next_deadline(hub.now) == hub.now + PERIOD


def test_an_engine_waiting_to_register_gets_the_beat_repeated_until_it_answers(
    hub: HubHarness,
) -> None:
    hub.wake()
    (reply,) = hub.handle_request([b"e1"], request("registration_request", uuid="e1"))
    assert isinstance(reply, Send) and reply.content["status"] == "ok"
    assert hub.next_deadline(hub.now) == hub.now  # the repeat is due at once
    pings, _ = hub.wake()
    assert beats(pings) == [1]  # the current beat again: no heart is judged by a repeat
    assert hub.next_deadline(hub.now) == pytest.approx(hub.now + REGISTRATION_PING)
    pings, _ = hub.advance_to_deadline()
    (note,) = hub.handle_pong("e1", pings[0])
    assert isinstance(note, Send) and note.msg_type == "registration_notification"
    # registered: back to one beat per period
    assert hub.next_deadline(hub.now) > hub.now + 10 * REGISTRATION_PING


def test_a_closed_connection_is_probed_and_a_dead_engine_unregistered_within_the_limit(
    hub: HubHarness,
) -> None:
    register(hub, "killed")
    register(hub, "alive")
    hub.wake()
    direct = submit_mux(hub, "killed")
    closed_at = hub.now
    hub.connection_closed("killed")
    hub.connection_closed("alive")
    assert hub.next_deadline(hub.now) == hub.now
    notes: list[Send] = []
    while "killed" in hub.by_uuid:
        pings, actions = hub.advance_to_deadline()
        for payload in pings:
            hub.handle_pong("alive", payload)
        notes.extend(a for a in actions if isinstance(a, Send))
        assert hub.now - closed_at < 1.0, "a dead engine must go well within a period"
    assert hub.now - closed_at == pytest.approx(hub.hearts.probe_limit * PROBE_PERIOD)
    assert [(n.msg_type, n.content["uuid"]) for n in notes] == [
        ("unregistration_notification", "killed")
    ]
    record = hub.store.get_record(direct.msg_id)
    assert record["status"] == "error" and "died" in record["result_content"]["evalue"]
    assert record["completed"].startswith("2026-01-01T00:00")  # the Hub's given clock
    assert set(hub.by_uuid) == {"alive"} and not hub.hearts.suspects


def test_an_engine_that_stops_beating_is_lost_after_max_misses_periods(hub: HubHarness) -> None:
    register(hub, "quiet")
    register(hub, "alive")
    req = submit_mux(hub, "quiet")
    start = hub.now
    notes: list[Send] = []
    while "quiet" in hub.by_uuid:
        pings, actions = hub.advance_to_deadline()
        for payload in pings:
            hub.handle_pong("alive", payload)
        notes.extend(a for a in actions if isinstance(a, Send))
        assert hub.now - start <= 5 * PERIOD
    assert [n.content["why"] for n in notes if n.msg_type == "unregistration_notification"] == [
        "heartbeat stopped"
    ]
    assert hub.store.get_record(req.msg_id)["status"] == "error"
    late = hub.handle_monitor(b"mux_out", [b"client-1", b"quiet"], reply_for(req))
    assert late == [] and hub.store.get_record(req.msg_id)["status"] == "error"


def test_the_hub_validates_requests_from_the_raw_content_frame(hub: HubHarness) -> None:
    def ask(msg_type: str, raw: bytes) -> dict[str, object]:
        msg = headers_only(msg_type)
        (reply,) = hub.hub.handle_request([b"c"], msg, hub.now, raw)
        assert isinstance(reply, Send) and reply.idents == (b"c",)
        assert reply.msg_type == msg_type.replace("_request", "_reply")
        return reply.content

    assert ask("connection_request", b"{}")["status"] == "ok"
    assert ask("queue_request", b"not json")["ename"] == "JSONDecodeError"
    assert ask("queue_request", b"[1, 2]")["ename"] == "InvalidContent"
    assert ask("result_request", b'{"msg_ids": 7}')["ename"] == "InvalidContent"
    assert ask("nonsense_request", b"{}")["ename"] == "UnknownMessageType"
    assert ask("apply_request", b"{}")["ename"] == "InvalidRequest"  # not the Hub's to answer
    # a message that is not a request is dropped: nobody waits for an answer
    assert hub.hub.handle_request([b"c"], headers_only("status"), hub.now, b"[]") == []
    assert hub.rejected == 6 and hub.queries == 1


def test_monitor_copies_become_store_writes_not_calls() -> None:
    store = MemoryStore()
    harness = HubHarness.create(store, ENGINE_ADDRESSES, CLIENT_ADDRESSES, PERIOD, 2)
    register(harness, "e1")
    req = session.msg("apply_request", {})
    (write,) = harness.hub.handle_monitor(b"mux_in", [b"e1", b"client-1"], req, harness.now)
    assert isinstance(write, AddRecord) and write.msg_id == req.msg_id
    assert store.get_records([req.msg_id]) == {}  # the core wrote nothing itself
    harness.perform([write])
    (update,) = harness.hub.handle_monitor(
        b"mux_out", [b"client-1", b"e1"], reply_for(req), harness.now
    )
    assert isinstance(update, UpdateRecord) and update.changes["status"] == "ok"
    assert update.changes["received"] == "2026-01-01T00:00:00+00:00"


def test_a_restored_hub_numbers_new_engines_after_stored_ones_and_settles_by_beats() -> None:
    """A controller restart (``--restore``): pending tasks are re-marked, the one an engine
    that came back reports stays pending, the others fail after 2 * max_misses beats."""
    before = HubHarness.create(MemoryStore(), ENGINE_ADDRESSES, CLIENT_ADDRESSES, PERIOD, 2)
    for uuid in ("a", "b", "c"):
        register(before, uuid)
    held = submit_mux(before, "b")
    lost = submit_mux(before, "c")
    done = submit_mux(before, "a")
    before.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(done))

    after = HubHarness.create(before.store, ENGINE_ADDRESSES, CLIENT_ADDRESSES, PERIOD, 2)
    after.restore()
    assert set(after.pending) == {held.msg_id, lost.msg_id}
    assert register(after, "new") == 3  # above every stored engine id (0, 1, 2)
    assert register(after, "b", id=1, tasks=[held.msg_id]) == 1
    start = after.now
    while after.restored:
        pings, _ = after.advance_to_deadline()
        for payload in pings:
            after.handle_pong("b", payload)
            after.handle_pong("new", payload)
    assert after.hearts.beat == 2 * after.hearts.max_misses
    assert after.now - start <= 2 * after.hearts.max_misses * PERIOD
    record = after.store.get_record(lost.msg_id)
    assert record["status"] == "error" and "did not come back" in record["result_content"]["evalue"]
    assert after.store.get_record(held.msg_id)["status"] == "pending"
    after.handle_monitor(b"mux_out", [b"client-1", b"b"], reply_for(held))
    assert after.store.get_record(held.msg_id)["status"] == "ok"


def test_purge_of_an_unknown_engine_drops_nothing(hub: HubHarness) -> None:
    register(hub, "e1")
    req = submit_mux(hub, "e1")
    hub.handle_monitor(b"mux_out", [b"client-1", b"e1"], reply_for(req))
    (reply,) = hub.handle_request([b"c"], request("purge_request", msg_ids="all", engine_ids=[9]))
    assert isinstance(reply, Send) and reply.content["ename"] == "QueryError"
    assert hub.store.get_record(req.msg_id)["status"] == "ok"


def test_raw_content_is_parsed_by_the_hub_not_the_shell(hub: HubHarness) -> None:
    msg = headers_only("db_request")
    raw = orjson.dumps({"query": {"status": "ok"}, "keys": ["msg_id"]})
    (reply,) = hub.hub.handle_request([b"c"], msg, hub.now, raw)
    assert isinstance(reply, Send) and reply.content == {"status": "ok", "records": []}
