"""The Hub as a state machine: registration, records from monitor copies, and queries."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.controller import hub_beat, hub_queries
from corral.controller.hub import Send, Stop
from corral.controller.hub_actions import SetEngines
from corral.controller.store.memory import MemoryStore
from corral.controller.store.sqlite import SQLiteStore
from corral.protocol.messages import RESENDABLE
from corral.protocol.session import Message, Session
from tests.controller.hub_harness import HubHarness

KEY = b"hub-test-key"
ENGINE_ADDRESSES = {"mux": "tcp://127.0.0.1:1", "hb_ping": "tcp://127.0.0.1:2"}
CLIENT_ADDRESSES = {"mux": "tcp://127.0.0.1:3"}


@pytest.fixture
def hub() -> HubHarness:
    return HubHarness.create(
        MemoryStore(), ENGINE_ADDRESSES, CLIENT_ADDRESSES, heartbeat_period=1.0, max_misses=2
    )


session = Session(KEY)


def request(msg_type: str, **content: object) -> Message:
    return session.msg(msg_type, dict(content))


def register(hub: HubHarness, uuid: str, **extra: object) -> int:
    (reply,) = hub.handle_request(
        [uuid.encode()], request("registration_request", uuid=uuid, **extra)
    )
    assert isinstance(reply, Send) and reply.content["status"] == "ok", reply
    payload, _ = hub.tick()
    (note,) = hub.handle_pong(uuid, payload)
    assert isinstance(note, Send) and note.msg_type == "registration_notification"
    return int(reply.content["id"])


def reply_for(req: Message, status: str = "ok", buffers: tuple = ()) -> Message:
    return session.msg(
        "apply_reply",
        {"status": status},
        parent=req,
        metadata={
            "started": "2026-01-01T00:00:00+00:00",
            "completed": "2026-01-01T00:00:01+00:00",
            "stdout": "hi\n",
        },
        buffers=buffers,
    )


def submit_mux(hub: HubHarness, engine_uuid: str) -> Message:
    req = session.msg("apply_request", {})
    hub.handle_monitor(b"mux_in", [engine_uuid.encode(), b"client-1"], req)
    return req


def test_the_registration_notification_passes_on_the_engines_cpus(hub: HubHarness) -> None:
    """The scheduler learns where each engine runs from the notification (it checks the
    field itself: corral.controller.scheduler_shell); an engine that said nothing adds none."""
    cpus = {"machine": "boot:abc", "ids": [0, 1]}
    notes = []
    for uuid, extra in (("with", {"cpus": cpus}), ("without", {})):
        hub.handle_request([uuid.encode()], request("registration_request", uuid=uuid, **extra))
        payload, _ = hub.tick()
        (note,) = hub.handle_pong(uuid, payload)
        assert isinstance(note, Send)
        notes.append(note.content)
    assert notes[0]["cpus"] == cpus
    assert "cpus" not in notes[1]


def test_registration_reply_carries_id_and_addresses(hub: HubHarness) -> None:
    (reply,) = hub.handle_request([b"e1"], request("registration_request", uuid="e1"))
    assert reply.content["id"] == 0
    assert reply.content["heartbeat_period"] == 1.0
    assert reply.content["mux"] == ENGINE_ADDRESSES["mux"]
    assert reply.idents == (b"e1",)
    assert hub.engines == {}  # registered only once its heart beats


def test_ids_increase_and_are_never_reused(hub: HubHarness) -> None:
    assert register(hub, "a") == 0
    assert register(hub, "b") == 1
    hub.handle_request([b"a"], request("unregistration_request", uuid="a"))
    assert register(hub, "c") == 2


def test_uuid_or_id_in_use_is_an_error_reply(hub: HubHarness) -> None:
    register(hub, "a")
    (dup,) = hub.handle_request([b"a"], request("registration_request", uuid="a"))
    assert dup.content["status"] == "error" and "already registered" in dup.content["evalue"]
    (taken,) = hub.handle_request([b"x"], request("registration_request", uuid="x", id=0))
    assert taken.content["status"] == "error" and "in use" in taken.content["evalue"]


def test_requested_free_id_is_granted(hub: HubHarness) -> None:
    assert register(hub, "a", id=7) == 7
    assert register(hub, "b") == 8


def test_dead_heart_unregisters_and_fails_direct_tasks(hub: HubHarness) -> None:
    register(hub, "a")
    req = submit_mux(hub, "a")
    actions = []
    for _ in range(5):
        actions.extend(hub.tick()[1])
    notes = [a for a in actions if isinstance(a, Send)]
    assert [n.msg_type for n in notes] == ["unregistration_notification"]
    record = hub.store.get_record(req.msg_id)
    assert record["status"] == "error"
    assert record["result_content"]["ename"] == "EngineError"


def test_dropped_heart_is_told_to_stop_once(hub: HubHarness) -> None:
    register(hub, "paused")
    for _ in range(5):
        hub.tick()
    payload, _ = hub.tick()
    (stop,) = hub.handle_pong("paused", payload)
    assert stop.msg_type == "unregistration_notification" and stop.idents == (b"paused",)
    assert hub.handle_pong("paused", payload) == []


def test_dropped_engine_cannot_register_again_and_its_id_is_only_given_when_asked(
    hub: HubHarness,
) -> None:
    register(hub, "paused")
    register(hub, "other")
    hub.handle_request([b"other"], request("unregistration_request", uuid="other"))
    while "paused" in hub.by_uuid:
        hub.tick()
    # woken up, it asks to come back under its old id before its heart is heard
    refused, stop = hub.handle_request(
        [b"paused"], request("registration_request", uuid="paused", id=0)
    )
    assert refused.content["status"] == "error" and "must stop" in refused.content["evalue"]
    assert stop.msg_type == "unregistration_notification" and stop.idents == (b"paused",)
    payload, _ = hub.tick()
    assert hub.handle_pong("paused", payload) == []  # told once is enough
    assert register(hub, "new") == 2  # neither a dead nor a departed engine's id unasked
    # a restarted engine asks for its old id and gets it; an id in use is refused
    assert register(hub, "restarted-0", id=0) == 0
    (taken,) = hub.handle_request(
        [b"other-0"], request("registration_request", uuid="other-0", id=0)
    )
    assert taken.content["status"] == "error" and "in use" in taken.content["evalue"]
    assert register(hub, "restarted-1", id=1) == 1


def test_late_reply_of_a_dropped_engine_is_not_recorded(hub: HubHarness) -> None:
    register(hub, "paused")
    register(hub, "other")
    req = session.msg("apply_request", {})
    hub.handle_monitor(b"task_in", [b"client-1"], req)
    hub.handle_destination(req.msg_id, "paused")
    while "paused" in hub.by_uuid:
        hub.tick()
    # the scheduler resubmits it; the paused engine's late reply may come first
    hub.handle_monitor(b"task_out", [b"client-1", b"paused"], reply_for(req, buffers=(b"old",)))
    assert hub.store.get_record(req.msg_id)["status"] == "pending"
    hub.handle_destination(req.msg_id, "other")
    hub.handle_monitor(b"task_out", [b"client-1", b"other"], reply_for(req, buffers=(b"new",)))
    record = hub.store.get_record(req.msg_id)
    assert record["status"] == "ok" and record["engine_uuid"] == "other"
    assert [bytes(b) for b in record["result_buffers"]] == [b"new"]


def lapse(hub: HubHarness, uuid: str, **extra: object) -> int:
    """A registration answered, then its heart silent until the registration lapses."""
    (reply,) = hub.handle_request(
        [uuid.encode()], request("registration_request", uuid=uuid, **extra)
    )
    assert reply.content["status"] == "ok"
    for _ in range(2 * hub.hearts.max_misses + 2):
        hub.tick()
    assert uuid not in hub.pending_registrations and uuid not in hub.by_uuid
    return int(reply.content["id"])


def test_a_heart_that_beats_after_its_registration_lapsed_registers_then(
    hub: HubHarness,
) -> None:
    """The engine had its registration reply and counts itself registered: this controller's
    pings never tell it to ask again. Its heart beating late (slow to reconnect after a
    restart, a starved or paused process) must still register it, or it is lost for ever."""
    engine_id = lapse(hub, "late")
    payload, _ = hub.tick()
    (note,) = hub.handle_pong("late", payload)
    assert isinstance(note, Send) and note.msg_type == "registration_notification"
    assert note.content["id"] == engine_id and hub.by_uuid["late"].id == engine_id
    assert hub.handle_pong("late", payload) == []  # beats on as any registered engine
    (reply,) = hub.handle_request([b"c"], request("connection_request"))
    assert reply.content["engines"] == {str(engine_id): "late"}


def test_a_late_heart_whose_id_was_taken_meanwhile_is_told_to_stop(hub: HubHarness) -> None:
    lapse(hub, "late", id=4)
    assert register(hub, "supervised", id=4) == 4  # a supervisor restarted engine 4
    payload, _ = hub.tick()
    (stop,) = hub.handle_pong("late", payload)
    assert stop.msg_type == "unregistration_notification" and stop.idents == (b"late",)
    assert hub.engines[4].uuid == "supervised"
    assert hub.handle_pong("late", payload) == []  # told once


def test_a_lapsed_registration_is_superseded_by_a_new_request(hub: HubHarness) -> None:
    lapse(hub, "again")
    assert register(hub, "again") == 1  # asked again: a new registration, a new id
    assert "again" not in hub.lapsed_registrations


def test_lapsed_registrations_are_bounded(hub: HubHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_beat, "MAX_LAPSED_REGISTRATIONS", 2)
    for uuid in ("a", "b", "c"):
        lapse(hub, uuid)
    assert list(hub.lapsed_registrations) == ["b", "c"]  # the oldest forgotten
    payload, _ = hub.tick()
    assert hub.handle_pong("a", payload) == []  # left to register, as any unknown heart


def test_unknown_heart_is_left_to_register(hub: HubHarness) -> None:
    """After a controller restart, engines beat before they re-register: leave them be."""
    payload, _ = hub.tick()
    assert hub.handle_pong("from-before-restart", payload) == []


def test_connection_reply_lists_engines(hub: HubHarness) -> None:
    register(hub, "a")
    (reply,) = hub.handle_request([b"c"], request("connection_request"))
    assert reply.content["engines"] == {"0": "a"}
    assert reply.content["mux"] == CLIENT_ADDRESSES["mux"]


def test_records_and_result_request(hub: HubHarness) -> None:
    register(hub, "a")
    req = submit_mux(hub, "a")
    (status,) = hub.handle_request([b"c"], request("result_request", msg_ids=[req.msg_id]))
    assert status.content["pending"] == [req.msg_id]
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(req, buffers=(b"result",)))
    (full,) = hub.handle_request(
        [b"c"], request("result_request", msg_ids=[req.msg_id], statusonly=False)
    )
    assert full.content["completed"] == [req.msg_id]
    entry = full.content[req.msg_id]
    assert entry["content"]["status"] == "ok" and entry["buffer_count"] == 1
    assert [bytes(b) for b in full.buffers] == [b"result"]
    record = hub.store.get_record(req.msg_id)
    assert record["client_uuid"] == "client-1" and record["engine_id"] == 0
    assert record["stdout"] == "hi\n"


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_records_hold_execute_input_execute_result_and_error(backend: str, tmp_path: Path) -> None:
    """The TaskRecord fields of ipyparallel's db docs: ``execute_input`` (a non-silent
    execute's code), ``execute_result`` (its result bundle, ipyparallel's shape) and
    ``error`` (a failed reply's ename, evalue, traceback, engine_info); queries find them."""
    store = MemoryStore() if backend == "memory" else SQLiteStore(tmp_path / "tasks.db")
    try:
        hub = HubHarness.create(store, ENGINE_ADDRESSES, CLIENT_ADDRESSES, heartbeat_period=1.0)
        register(hub, "a")
        shown = session.msg("execute_request", {"code": "6 * 7", "silent": False})
        hidden = session.msg("execute_request", {"code": "x = 1", "silent": True})
        failing = session.msg("apply_request", {})
        for req in (shown, hidden, failing):
            hub.handle_monitor(b"mux_in", [b"a", b"client-1"], req)
        result = {"text/plain": "42"}
        replies = [
            session.msg(
                "execute_reply",
                {"status": "ok", "execution_count": 3},
                parent=shown,
                metadata={"execute_result": result, "execute_result_metadata": {"x": 1}},
            ),
            session.msg("execute_reply", {"status": "ok", "execution_count": 3}, parent=hidden),
        ]
        error = {
            "ename": "ZeroDivisionError",
            "evalue": "division by zero",
            "traceback": ["Traceback (most recent call last):", "ZeroDivisionError"],
            "engine_info": {"engine_id": 0, "engine_uuid": "a"},
        }
        replies.append(session.msg("apply_reply", {"status": "error", **error}, parent=failing))
        for reply in replies:
            hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply)
        store.flush()
        record = store.get_record(shown.msg_id)
        assert record["execute_input"] == "6 * 7"
        assert record["execute_result"] == {
            "data": result,
            "metadata": {"x": 1},
            "execution_count": 3,
        }
        assert record.get("error") is None
        quiet = store.get_record(hidden.msg_id)
        assert quiet.get("execute_input") is None and quiet.get("execute_result") is None
        assert store.get_record(failing.msg_id)["error"] == error
        found = store.find_records({"error": {"$ne": None}}, ["error"])
        assert [r["msg_id"] for r in found] == [failing.msg_id]
        found = store.find_records({"execute_input": {"$glob": "6 *"}}, None)
        assert [r["msg_id"] for r in found] == [shown.msg_id]
    finally:
        store.close()


def test_result_request_unknown_is_error(hub: HubHarness) -> None:
    (reply,) = hub.handle_request([b"c"], request("result_request", msg_ids=["nope"]))
    assert reply.content["status"] == "error" and "nope" in reply.content["evalue"]


def test_queue_request_counts_and_verbose(hub: HubHarness) -> None:
    register(hub, "a")
    done = submit_mux(hub, "a")
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(done))
    waiting = submit_mux(hub, "a")
    (counts,) = hub.handle_request([b"c"], request("queue_request", targets=[0]))
    assert counts.content["0"] == {"completed": 1, "queue": 1, "tasks": 0}
    (verbose,) = hub.handle_request([b"c"], request("queue_request", verbose=True))
    assert verbose.content["0"]["queue"] == [waiting.msg_id]
    (bad,) = hub.handle_request([b"c"], request("queue_request", targets=[42]))
    assert bad.content["status"] == "error" and "42" in bad.content["evalue"]


def test_task_destination_tracks_load_balanced_work(hub: HubHarness) -> None:
    register(hub, "a")
    req = session.msg("apply_request", {})
    hub.handle_monitor(b"task_in", [b"client-1"], req)
    hub.handle_destination(req.msg_id, "a")
    (counts,) = hub.handle_request([b"c"], request("queue_request"))
    assert counts.content["0"]["tasks"] == 1
    hub.handle_monitor(b"task_out", [b"client-1", b"a"], reply_for(req))
    assert hub.store.get_record(req.msg_id)["engine_id"] == 0


def test_a_turns_destinations_are_one_write_of_the_tasks_still_pending(hub: HubHarness) -> None:
    """A task_dest copy names a scheduler turn's dispatches: the Hub writes the engine of
    each task it still holds pending in one write (none when it holds none of them)."""
    register(hub, "a")
    first, second, done = (session.msg("apply_request", {}) for _ in range(3))
    for req in (first, second, done):
        hub.handle_monitor(b"task_in", [b"client-1"], req)
    hub.handle_destination(done.msg_id, "a")
    hub.handle_monitor(b"task_out", [b"client-1", b"a"], reply_for(done))
    (write,) = hub.hub.handle_destinations(
        [(first.msg_id, "a"), (done.msg_id, "a"), ("never-seen", "a"), (second.msg_id, "gone")]
    )
    assert isinstance(write, SetEngines)
    assert write.destinations == ((first.msg_id, "a", 0), (second.msg_id, "gone", None))
    assert hub.hub.handle_destinations([(done.msg_id, "a"), ("never-seen", "a")]) == []
    hub.perform([write])
    records = hub.store.get_records([first.msg_id, second.msg_id, done.msg_id])
    assert [(r["engine_uuid"], r["engine_id"]) for r in records.values()] == [
        ("a", 0),
        ("gone", None),
        ("a", 0),
    ]
    assert records[done.msg_id]["status"] == "ok"
    (counts,) = hub.handle_request([b"c"], request("queue_request"))
    assert isinstance(counts, Send)
    assert counts.content["0"]["tasks"] == 1  # the first: the other engine is not registered


def test_task_in_naming_its_engine_records_the_destination(hub: HubHarness) -> None:
    """The scheduler's copy of a task dispatched at once names the engine (client, engine):
    the record, the engine's tasks and the engine death handling see it as after a task_dest."""
    register(hub, "a")
    req = session.msg("apply_request", {})
    hub.handle_monitor(b"task_in", [b"client-1", b"a"], req)
    record = hub.store.get_record(req.msg_id)
    assert (record["engine_uuid"], record["engine_id"], record["client_uuid"]) == (
        "a",
        0,
        "client-1",
    )
    (counts,) = hub.handle_request([b"c"], request("queue_request"))
    assert counts.content["0"] == {"completed": 0, "queue": 0, "tasks": 1}
    hub.handle_monitor(b"task_out", [b"client-1", b"a"], reply_for(req))
    record = hub.store.get_record(req.msg_id)
    assert (record["status"], record["engine_id"]) == ("ok", 0)
    (counts,) = hub.handle_request([b"c"], request("queue_request"))
    assert counts.content["0"] == {"completed": 1, "queue": 0, "tasks": 0}


def test_purge(hub: HubHarness) -> None:
    register(hub, "a")
    done = submit_mux(hub, "a")
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(done))
    pending = submit_mux(hub, "a")
    (err,) = hub.handle_request([b"c"], request("purge_request", msg_ids=[pending.msg_id]))
    assert err.content["status"] == "error" and "pending" in err.content["evalue"]
    (err2,) = hub.handle_request([b"c"], request("purge_request", msg_ids=["zzz"]))
    assert "unknown" in err2.content["evalue"]
    (ok,) = hub.handle_request([b"c"], request("purge_request", msg_ids=[done.msg_id]))
    assert ok.content["status"] == "ok"
    assert hub.store.get_records([done.msg_id]) == {}
    (ok_all,) = hub.handle_request([b"c"], request("purge_request", msg_ids="all"))
    assert ok_all.content["status"] == "ok"
    assert hub.store.get_history() == [pending.msg_id]


def test_a_purge_of_results_whose_copies_have_not_come_drops_them_once_recorded(
    hub: HubHarness,
) -> None:
    """A client holds results the Hub has not recorded yet (their copies travel apart from
    the replies): named as ``settled``, they are purged when recorded, not refused or left."""
    register(hub, "a")
    running = submit_mux(hub, "a")  # the Hub has the request, not yet the reply's copy
    (ok,) = hub.handle_request(
        [b"c"], request("purge_request", msg_ids=[running.msg_id], settled=[running.msg_id])
    )
    assert ok.content["status"] == "ok"
    assert hub.store.get_history() == [running.msg_id]  # still pending here
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(running))
    assert hub.store.get_history() == []
    (counts,) = hub.handle_request([b"c"], request("queue_request"))
    assert counts.content["0"]["completed"] == 0
    # a direct task whose two copies both come after the purge: not known at all yet
    unseen = session.msg("apply_request", {})
    (ok,) = hub.handle_request(
        [b"c"], request("purge_request", msg_ids=[unseen.msg_id], settled=[unseen.msg_id])
    )
    assert ok.content["status"] == "ok"
    hub.handle_monitor(b"mux_in", [b"a", b"client-1"], unseen)
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(unseen))
    assert hub.store.get_history() == []
    # "all": the drop takes what is recorded, the settled pending one goes when it comes
    done, late = submit_mux(hub, "a"), submit_mux(hub, "a")
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(done))
    other = submit_mux(hub, "a")  # another client's task, still running: kept
    (ok,) = hub.handle_request(
        [b"c"], request("purge_request", msg_ids="all", settled=[done.msg_id, late.msg_id])
    )
    assert hub.store.get_history() == [late.msg_id, other.msg_id]
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(late))
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(other))
    assert hub.store.get_history() == [other.msg_id]
    assert hub.hub.purge_on_record == {}  # the recorded one was dropped at once: none waits
    # not settled by the asking client: a pending task still cannot be purged
    running = submit_mux(hub, "a")
    (err,) = hub.handle_request([b"c"], request("purge_request", msg_ids=[running.msg_id]))
    assert err.content["status"] == "error" and "pending" in err.content["evalue"]
    (bad,) = hub.handle_request([b"c"], request("purge_request", msg_ids="all", settled=[3]))
    assert bad.content["status"] == "error" and "strings" in bad.content["evalue"]


def test_the_msg_ids_waiting_for_their_copies_to_be_purged_are_bounded(
    hub: HubHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_queries, "PURGE_ON_RECORD_LIMIT", 3)
    ids = [f"never-{n}" for n in range(5)]  # e.g. an engine that died before sending copies
    (ok,) = hub.handle_request([b"c"], request("purge_request", msg_ids="all", settled=ids))
    assert ok.content["status"] == "ok"
    assert list(hub.hub.purge_on_record) == ids[2:]


def test_history_and_db_query(hub: HubHarness) -> None:
    register(hub, "a")
    first = submit_mux(hub, "a")
    second = submit_mux(hub, "a")
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(first, buffers=(b"xy",)))
    (history,) = hub.handle_request([b"c"], request("history_request"))
    assert history.content["history"] == [first.msg_id, second.msg_id]
    (found,) = hub.handle_request(
        [b"c"],
        request("db_request", query={"status": {"$in": ["ok"]}}, keys=["msg_id", "result_buffers"]),
    )
    records = found.content["records"]
    assert [r["msg_id"] for r in records] == [first.msg_id]
    assert records[0]["result_buffer_count"] == 1 and [bytes(b) for b in found.buffers] == [b"xy"]
    (bad,) = hub.handle_request([b"c"], request("db_request", query={"status": {"$where": 1}}))
    assert bad.content["status"] == "error" and "$where" in bad.content["evalue"]


def test_huge_msg_id_list_is_rejected(hub: HubHarness) -> None:
    ids = [str(i) for i in range(100_001)]
    (reply,) = hub.handle_request([b"c"], request("result_request", msg_ids=ids))
    assert reply.content["status"] == "error" and "too many" in reply.content["evalue"]


def test_the_task_queues_first_outcome_is_recorded_whichever_engine_gave_it(
    hub: HubHarness,
) -> None:
    """The scheduler passes on one outcome per task (and the client takes the first one it
    gets): the Hub records the same, even from another engine than its task_destination named,
    and a later reply is a duplicate. A direct task's reply from an engine it was not sent to
    is ignored."""
    register(hub, "a")
    register(hub, "b")
    req = session.msg("apply_request", {})
    hub.handle_monitor(b"task_in", [b"client-1"], req)
    hub.handle_destination(req.msg_id, "b")
    hub.handle_monitor(b"task_out", [b"client-1", b"a"], reply_for(req, status="error"))
    assert hub.store.get_record(req.msg_id)["status"] == "error"
    hub.handle_monitor(b"task_out", [b"client-1", b"b"], reply_for(req))
    assert hub.store.get_record(req.msg_id)["status"] == "error"
    direct = submit_mux(hub, "b")
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(direct))
    assert hub.store.get_record(direct.msg_id)["status"] == "pending"
    hub.handle_monitor(b"mux_out", [b"client-1", b"b"], reply_for(direct))
    assert hub.store.get_record(direct.msg_id)["status"] == "ok"


def test_a_reply_to_a_request_never_recorded_gets_one_whole_record(hub: HubHarness) -> None:
    """A controller killed before its request record was written: the engine hands the kept
    reply to the next Hub, which records the task from the reply, once."""
    register(hub, "a")
    req = session.msg("apply_request", {})  # its task_in copy never reached this Hub
    reply = reply_for(req, buffers=(b"value",))
    hub.handle_monitor(b"task_out", [b"client-1", b"a"], reply)
    record = hub.store.get_record(req.msg_id)
    assert record["status"] == "ok" and record["client_uuid"] == "client-1"
    assert record["engine_id"] == 0 and record["header"]["msg_id"] == req.msg_id
    assert [bytes(b) for b in record["result_buffers"]] == [b"value"]
    assert record["submitted"] == req.header["date"] and record["stdout"] == "hi\n"
    # the same reply again (an engine resending what was not yet confirmed): no second record
    hub.handle_monitor(b"task_out", [b"client-1", b"a"], reply_for(req, status="error"))
    assert hub.store.get_record(req.msg_id)["status"] == "ok"
    assert len(hub.store.find_records({"msg_id": req.msg_id})) == 1
    # a reply to something that is not a task is not turned into a record
    other = session.msg("clear_request", {})
    hub.handle_monitor(
        b"mux_out", [b"client-1", b"a"], session.msg("clear_reply", {"status": "ok"}, parent=other)
    )
    assert not hub.store.get_records([other.msg_id])


def test_hub_shutdown(hub: HubHarness) -> None:
    reply, stop = hub.handle_request([b"c"], request("hub_shutdown_request"))
    assert reply.content["status"] == "ok" and isinstance(stop, Stop)


def test_unknown_request_type_gets_error(hub: HubHarness) -> None:
    (reply,) = hub.handle_request([b"c"], request("clear_request"))
    assert reply.content["status"] == "error"


def test_engine_whose_connection_closed_and_answers_no_probe_is_unregistered(
    hub: HubHarness,
) -> None:
    register(hub, "killed")
    register(hub, "alive")
    req = submit_mux(hub, "killed")
    hub.connection_closed("killed")
    hub.connection_closed("alive")  # a descriptor reused by a live engine: it answers
    notes = []
    for _ in range(hub.hearts.probe_limit + 1):
        payload, actions = hub.probe()
        hub.handle_pong("alive", payload)
        notes.extend(actions)
    assert [(n.msg_type, n.content["uuid"]) for n in notes] == [
        ("unregistration_notification", "killed")
    ]
    assert set(hub.by_uuid) == {"alive"}
    record = hub.store.get_record(req.msg_id)
    assert record["status"] == "error" and "died" in record["result_content"]["evalue"]
    assert hub.tick()[1] == []  # failed once


def test_state_changing_requests_meant_for_another_run_are_refused(hub: HubHarness) -> None:
    (reply,) = hub.handle_request([b"c"], request("connection_request"))
    assert reply.content["controller"] == hub.instance
    for msg_type in ("hub_shutdown_request", "purge_request"):
        (refused,) = hub.handle_request([b"c"], request(msg_type, controller="earlier"))
        assert refused.content["ename"] == "StaleRequest", msg_type
    (ok,) = hub.handle_request(
        [b"c"], request("purge_request", msg_ids="all", controller=hub.instance)
    )
    assert ok.content["status"] == "ok"
    ok, stop = hub.handle_request([b"c"], request("hub_shutdown_request", controller=hub.instance))
    assert ok.content["status"] == "ok" and isinstance(stop, Stop)


def restarted_hub(store: MemoryStore) -> HubHarness:
    hub = HubHarness.create(
        store, ENGINE_ADDRESSES, CLIENT_ADDRESSES, heartbeat_period=1.0, max_misses=2
    )
    hub.restore()
    return hub


def test_after_a_restart_tasks_no_engine_holds_are_failed_and_held_ones_recorded() -> None:
    before = HubHarness.create(MemoryStore(), ENGINE_ADDRESSES, CLIENT_ADDRESSES, 1.0, max_misses=2)
    register(before, "back")
    register(before, "gone")
    held = submit_mux(before, "back")
    never_arrived = submit_mux(before, "back")
    orphan = submit_mux(before, "gone")
    hub = restarted_hub(before.store)
    # the engine that came back holds one task and will resend a reply the store never saw
    assert register(hub, "back", id=0, tasks=[held.msg_id, "unrecorded"]) == 0
    assert hub.store.get_record("unrecorded")["status"] == "pending"
    while hub.restored:
        hub.tick()
        hub.handle_pong("back", hub.hearts.payload())
    for req in (never_arrived, orphan):
        record = hub.store.get_record(req.msg_id)
        assert record["status"] == "error", record
        assert "lost in a controller restart" in record["result_content"]["evalue"]
    assert hub.store.get_record(held.msg_id)["status"] == "pending"
    late = session.msg("apply_reply", {"status": "ok"}, parent={"msg_id": "unrecorded"})
    hub.handle_monitor(b"mux_out", [b"client-1", b"back"], late)
    assert hub.store.get_record("unrecorded")["status"] == "ok"
    hub.handle_monitor(b"mux_out", [b"client-1", b"back"], reply_for(held))
    assert hub.store.get_record(held.msg_id)["status"] == "ok"


def test_an_engine_back_with_tasks_that_dies_before_its_first_beat_settles_them() -> None:
    """Back after a controller restart, an engine names the tasks it holds and is killed
    before its heart beats: its tasks fail (a direct one) as for any engine that dies, instead
    of staying pending for ever, and a later beat of that heart is told to stop."""
    before = HubHarness.create(MemoryStore(), ENGINE_ADDRESSES, CLIENT_ADDRESSES, 1.0, max_misses=2)
    register(before, "back")
    held = submit_mux(before, "back")
    hub = restarted_hub(before.store)
    (reply,) = hub.handle_request(
        [b"back"], request("registration_request", uuid="back", id=0, tasks=[held.msg_id])
    )
    assert reply.content["status"] == "ok"
    notes: list[str] = []
    for _ in range(3 * 2 + 4):  # past the registration's expiry; no pong ever comes
        _, sent = hub.tick()
        notes += [m.msg_type for m in sent if isinstance(m, Send)]
    record = hub.store.get_record(held.msg_id)
    assert record["status"] == "error" and record["result_content"]["ename"] == "EngineError"
    assert "unregistration_notification" in notes
    told = hub.handle_pong("back", hub.hearts.payload())
    assert [m.msg_type for m in told if isinstance(m, Send)] != ["registration_notification"]


def test_balanced_tasks_a_restarted_hub_never_recorded_are_resendable_if_their_engine_dies() -> (
    None
):
    """The controller died before it recorded two load-balanced requests (their copies died
    with it) that an engine held; the engine, back, names them with their ``retries`` and is
    killed before its first beat. The task with retries is marked for its client to send
    again, as a restored one is; on 320ec8e both failed with EngineError ("its heart never
    beat"), and a map with retries=2 failed (bench/chaos_mixed.py seed 40)."""
    hub = restarted_hub(MemoryStore())
    retried, once = session.msg("apply_request", {}), session.msg("apply_request", {})
    tasks = [retried.msg_id, once.msg_id]
    balanced = {retried.msg_id: 2, once.msg_id: 0}
    (reply,) = hub.handle_request(
        [b"back"],
        request("registration_request", uuid="back", id=1, tasks=tasks, balanced=balanced),
    )
    assert reply.content["status"] == "ok"
    for _ in range(3 * 2 + 4):  # past the registration's expiry; no pong ever comes
        hub.tick()
    retried_record, once_record = map(hub.store.get_record, tasks)
    assert retried_record["status"] == once_record["status"] == "error"
    assert "its heart never beat" in retried_record["result_content"]["evalue"]
    assert retried_record["result_metadata"].get(RESENDABLE) is True
    assert once_record["result_metadata"].get(RESENDABLE) is None  # may have run: no retries
    assert retried_record["queue"] == "task" and retried_record["metadata"] == {"retries": 2}
    # the client sends it again: pending anew, marked resubmitted
    hub.handle_monitor(b"task_in", [b"client-1"], retried)
    assert hub.store.get_record(retried.msg_id)["status"] == "pending"
    assert hub.store.get_record(retried.msg_id)["resubmitted"] is True


@pytest.mark.parametrize("balanced", [{"m": -1}, {"m": "2"}, {"m": True}, {"m": None}])
def test_a_malformed_balanced_list_is_refused(balanced: object) -> None:
    """(A ``balanced`` that is not a dict is refused by the message catalogue, as any field
    of the wrong type, before the Hub reads it.)"""
    hub = restarted_hub(MemoryStore())
    (reply,) = hub.handle_request(
        [b"back"],
        request("registration_request", uuid="back", tasks=["m"], balanced=balanced),
    )
    assert reply.content["status"] == "error" and "balanced" in reply.content["evalue"]


def submit_balanced(hub: HubHarness, retries: int = 0, engine_uuid: str | None = None) -> Message:
    req = session.msg("apply_request", {}, metadata={"retries": retries})
    hub.handle_monitor(b"task_in", [b"client-1"], req)
    if engine_uuid is not None:
        hub.handle_destination(req.msg_id, engine_uuid)
    return req


def settle_restored(hub: HubHarness, *alive: str) -> None:
    while hub.restored:
        hub.tick()
        for uuid in alive:
            hub.handle_pong(uuid, hub.hearts.payload())


def test_after_a_restart_lost_balanced_tasks_are_marked_for_their_client_to_send_again() -> None:
    before = HubHarness.create(MemoryStore(), ENGINE_ADDRESSES, CLIENT_ADDRESSES, 1.0, max_misses=2)
    register(before, "back")
    register(before, "gone")
    waiting = submit_balanced(before)  # in the old scheduler's queue
    on_gone = submit_balanced(before, retries=0, engine_uuid="gone")
    on_gone_retried = submit_balanced(before, retries=2, engine_uuid="gone")
    direct = submit_mux(before, "back")
    hub = restarted_hub(before.store)
    register(hub, "back", id=0, tasks=[])
    settle_restored(hub, "back")
    marks = {
        req.msg_id: hub.store.get_record(req.msg_id)["result_metadata"].get(RESENDABLE)
        for req in (waiting, on_gone, on_gone_retried, direct)
    }
    assert marks == {
        waiting.msg_id: True,  # never ran: always sent again
        on_gone.msg_id: None,  # may have run, no retries: EngineError as before
        on_gone_retried.msg_id: True,
        direct.msg_id: None,
    }
    # the client sends it again: the same record is pending anew, then answered once
    hub.handle_monitor(b"task_in", [b"client-1"], waiting)
    record = hub.store.get_record(waiting.msg_id)
    assert record["status"] == "pending" and record["resubmitted"] is True
    assert record["result_content"] is None
    hub.handle_monitor(b"task_out", [b"client-1", b"back"], reply_for(waiting))
    assert hub.store.get_record(waiting.msg_id)["status"] == "ok"
    assert len(hub.store.find_records({}, ["msg_id"])) == 4


def test_balanced_tasks_an_engine_held_across_a_restart_are_resendable_if_it_dies() -> None:
    before = HubHarness.create(MemoryStore(), ENGINE_ADDRESSES, CLIENT_ADDRESSES, 1.0, max_misses=2)
    register(before, "e")
    retried = submit_balanced(before, retries=1, engine_uuid="e")
    once = submit_balanced(before, retries=0, engine_uuid="e")
    hub = restarted_hub(before.store)
    register(hub, "e", id=0, tasks=[retried.msg_id, once.msg_id])
    settle_restored(hub, "e")
    hub.connection_closed("e")
    for _ in range(hub.hearts.probe_limit + 1):
        hub.probe()
    assert "e" not in hub.by_uuid
    retried_record = hub.store.get_record(retried.msg_id)
    once_record = hub.store.get_record(once.msg_id)
    assert retried_record["status"] == once_record["status"] == "error"
    assert retried_record["result_metadata"].get(RESENDABLE) is True
    assert once_record["result_metadata"].get(RESENDABLE) is None


# ------------------------------------------------------------ live status and pages


def test_status_request_reports_queues_counts_and_recent_completions(hub: HubHarness) -> None:
    uuid = "e-status"
    engine_id = register(hub, uuid)
    first, second = submit_mux(hub, uuid), submit_mux(hub, uuid)
    hub.handle_monitor(b"mux_out", [b"client-1", uuid.encode()], reply_for(first))
    (reply,) = hub.handle_request([b"c"], request("status_request", since=0))
    assert isinstance(reply, Send) and reply.msg_type == "status_reply"
    content = reply.content
    assert content["engines"][str(engine_id)]["queue"] == 1
    assert content["engines"][str(engine_id)]["completed"] == 1
    assert content["submitted"] == 2 and content["counts"] == {"ok": 1}
    assert content["pending"] == 1 and content["unassigned"] == 0
    ((seq, msg_id, completed_by, status, started, _),) = content["recent"]
    assert (msg_id, completed_by, status) == (first.msg_id, engine_id, "ok")
    assert started == "2026-01-01T00:00:00+00:00"
    hub.handle_monitor(b"mux_out", [b"client-1", uuid.encode()], reply_for(second, "error"))
    (later,) = hub.handle_request([b"c"], request("status_request", since=seq))
    assert isinstance(later, Send)
    assert [item[1] for item in later.content["recent"]] == [second.msg_id]
    assert later.content["counts"] == {"ok": 1, "error": 1}


def test_a_dead_engines_direct_tasks_count_as_failures(hub: HubHarness) -> None:
    uuid = "e-dies"
    register(hub, uuid)
    submit_mux(hub, uuid)
    for _ in range(4):
        hub.tick()
    (reply,) = hub.handle_request([b"c"], request("status_request"))
    assert isinstance(reply, Send)
    assert reply.content["counts"] == {"error": 1} and reply.content["engines"] == {}


def test_db_request_with_a_limit_answers_one_page_and_the_total(hub: HubHarness) -> None:
    uuid = "e-page"
    register(hub, uuid)
    requests = [submit_mux(hub, uuid) for _ in range(5)]
    page = request("db_request", query={}, keys=["status"], limit=2, skip=1)
    (reply,) = hub.handle_request([b"c"], page)
    assert isinstance(reply, Send) and reply.content["status"] == "ok"
    assert reply.content["total"] == 5
    ids = [r["msg_id"] for r in reply.content["records"]]
    assert ids == [requests[3].msg_id, requests[2].msg_id]
    (bad,) = hub.handle_request([b"c"], request("db_request", query={}, limit=0))
    assert isinstance(bad, Send) and bad.content["ename"] == "QueryError"


def test_engines_are_told_their_newest_recorded_reply_per_queue(hub: HubHarness) -> None:
    register(hub, "a")
    register(hub, "b")
    first, second, direct = submit_mux(hub, "a"), submit_mux(hub, "a"), submit_mux(hub, "b")
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(first))
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(second))
    task = session.msg("apply_request", {})
    hub.handle_monitor(b"task_in", [b"client-1"], task)
    hub.handle_monitor(b"task_out", [b"client-1", b"a"], reply_for(task))
    hub.handle_monitor(b"mux_out", [b"client-1", b"b"], reply_for(direct))
    hub.handle_monitor(b"mux_out", [b"client-1", b"b"], reply_for(direct))  # a duplicate too
    hub.handle_monitor(b"mux_out", [b"client-1", b"gone"], reply_for(direct))  # not registered
    _, actions = hub.tick()
    confirmed = {a.idents: a.content for a in actions if a.msg_type == "replies_recorded"}
    assert confirmed == {
        (b"a",): {"mux": second.msg_id, "task": task.msg_id},
        (b"b",): {"mux": direct.msg_id},
    }
    _, actions = hub.tick()
    assert not [a for a in actions if a.msg_type == "replies_recorded"]  # once each


def test_an_engines_own_copies_are_confirmed_on_a_channel_of_their_own(hub: HubHarness) -> None:
    """Issue 13, round twelve: a direct reply's copy comes on the engine's copies PUSH and a
    MUX reply's through the device, two paths no order ties together. Confirmed under one
    name, the Hub's newest MUX reply made the engine forget a direct reply sent before it
    whose copy the Hub had not read yet (lost if the controller died then)."""
    register(hub, "a")
    by_mux = submit_mux(hub, "a")
    by_direct = session.msg("apply_request", {})
    hub.handle_monitor(b"mux_in", [b"a", b"client-2"], by_direct, direct=True)
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(by_mux))
    _, actions = hub.tick()
    confirmed = [a.content for a in actions if a.msg_type == "replies_recorded"]
    assert confirmed == [{"mux": by_mux.msg_id}]  # nothing said of the direct channel yet
    hub.handle_monitor(b"mux_out", [b"client-2", b"a"], reply_for(by_direct), direct=True)
    _, actions = hub.tick()
    confirmed = [a.content for a in actions if a.msg_type == "replies_recorded"]
    assert confirmed == [{"direct": by_direct.msg_id}]
    assert hub.store.get_record(by_direct.msg_id)["status"] == "ok"


def test_replies_are_confirmed_every_quarter_second_between_beats(hub: HubHarness) -> None:
    """While replies come, the Hub confirms them every CONFIRM_PERIOD, not only at its beats
    (every heartbeat period): an engine keeps each reply until confirmed, and a burst's beat
    worth of them was more than it keeps. Idle, it wakes only for the beats."""
    register(hub, "a")
    hub.advance_to_deadline()
    beat_due = hub.next_beat
    assert hub.next_deadline(hub.now) == beat_due  # nothing to confirm: the beat
    req = submit_mux(hub, "a")
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(req))
    pings, actions = hub.advance_to_deadline()
    assert hub.now <= beat_due - hub_beat.CONFIRM_PERIOD / 2 and pings == []  # no beat
    confirmed = [a.content for a in actions if a.msg_type == "replies_recorded"]
    assert confirmed == [{"mux": req.msg_id}]
    assert hub.next_deadline(hub.now) == beat_due  # all confirmed: idle until the beat


def test_replies_are_confirmed_only_once_their_records_are_written(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "tasks.db")
    try:
        hub = HubHarness.create(store, ENGINE_ADDRESSES, CLIENT_ADDRESSES, heartbeat_period=1.0)
        register(hub, "a")
        req = submit_mux(hub, "a")
        hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(req))
        mark = store.write_mark()
        _, actions = hub.tick()
        confirmed = [a for a in actions if a.msg_type == "replies_recorded"]
        assert bool(confirmed) == store.written(mark)  # the writer thread may be done already
        store.flush()
        if not confirmed:
            _, actions = hub.tick()
            confirmed = [a for a in actions if a.msg_type == "replies_recorded"]
        assert [a.content for a in confirmed] == [{"mux": req.msg_id}]
        assert store.get_record(req.msg_id)["status"] == "ok"
    finally:
        store.close()


def hub_tables(hub: HubHarness) -> dict[str, int]:
    """The size of every table the Hub keeps per task (the activity log has a fixed capacity)."""
    return {
        "pending": len(hub.pending),
        "balanced": len(hub.balanced),
        "resendable": len(hub.resendable),
        "restored": len(hub.restored),
        "reported": len(hub.reported),
        "replies_seen": len(hub.replies_seen),
        "replies_writing": len(hub.replies_writing),
        "engine_queues": sum(len(e.queue) + len(e.tasks) for e in hub.engines.values()),
        "engine_completed": sum(len(e.completed) for e in hub.engines.values()),
        "stored": len(hub.store.get_history()),
    }


def test_tables_stay_bounded_over_rounds_with_purging(hub: HubHarness) -> None:
    register(hub, "a")
    register(hub, "b")
    for _ in range(3):
        for index in range(500):
            engine = "ab"[index % 2]
            balanced = submit_balanced(hub, retries=1, engine_uuid=engine)
            hub.handle_monitor(b"task_out", [b"client-1", engine.encode()], reply_for(balanced))
            direct = submit_mux(hub, engine)
            hub.handle_monitor(b"mux_out", [b"client-1", engine.encode()], reply_for(direct))
        payload, _ = hub.tick()
        for uuid in ("a", "b"):
            hub.handle_pong(uuid, payload)
        assert hub_tables(hub)["engine_completed"] == 1000
        (reply,) = hub.handle_request([b"client-1"], request("purge_request", msg_ids="all"))
        assert reply.content["status"] == "ok"
        assert set(hub_tables(hub).values()) == {0}, hub_tables(hub)
    assert len(hub.activity.recent) <= hub.activity.capacity


def test_a_task_sent_again_is_recorded_from_whichever_engine_answers_it() -> None:
    """After a restart, a load-balanced task is failed as lost and sent again by its client;
    the new scheduler gives it to another engine, and only then does the engine that held it
    come back and name it. The scheduler's reply (from the other engine) is the outcome: the
    record must not stay pending, waiting for the engine that named it (the scheduler drops
    that one's late reply). A chaos run left 16 records pending so."""
    before = HubHarness.create(MemoryStore(), ENGINE_ADDRESSES, CLIENT_ADDRESSES, 1.0, max_misses=2)
    register(before, "slow")
    held = submit_balanced(before, retries=2)  # the Hub died before its task_dest
    hub = restarted_hub(before.store)
    register(hub, "other", id=1)
    settle_restored(hub, "other")
    assert hub.store.get_record(held.msg_id)["result_metadata"].get(RESENDABLE) is True
    hub.handle_monitor(b"task_in", [b"client-1"], held)  # sent again
    hub.handle_destination(held.msg_id, "other")
    register(hub, "slow", id=0, tasks=[held.msg_id])  # back late, naming the task it held
    hub.handle_monitor(b"task_out", [b"client-1", b"other"], reply_for(held))
    record = hub.store.get_record(held.msg_id)
    assert record["status"] == "ok" and record["engine_uuid"] == "other"
    assert held.msg_id not in hub.pending
    hub.connection_closed("slow")  # the engine that named it dies: the result stays
    for _ in range(hub.hearts.probe_limit + 1):
        hub.probe()
    assert "slow" not in hub.by_uuid
    assert hub.store.get_record(held.msg_id)["status"] == "ok"
