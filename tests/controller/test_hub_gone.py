"""The Hub and the direct tasks of an engine that is gone (corral.controller.hub_gone): a
request whose copy comes after the engine's unregistration is failed at once, never pending
for ever; a client's report of direct tasks whose copies never left the engine records those
the Hub does not know as failed (and releases the Hub's links to their segments), and of the
tasks it answered whose copies died, records them without results; an engine named but never
registered (after a restart) is awaited, then gone. The Hub core alone, no sockets."""

from __future__ import annotations

import math
from typing import Any

import pytest

from corral.controller.hub import Send
from corral.controller.hub_actions import ForgetSegments
from corral.controller.hub_gone import AWAIT_AT_LEAST, MAX_ANSWERABLE, MAX_GONE, GoneEngines
from corral.controller.store.memory import MemoryStore
from corral.protocol.session import Message, Session
from tests.controller.hub_harness import HubHarness
from tests.controller.test_hub import (
    CLIENT_ADDRESSES,
    ENGINE_ADDRESSES,
    register,
    reply_for,
    request,
    submit_mux,
)

session = Session(b"hub-test-key")


@pytest.fixture
def hub() -> HubHarness:
    return HubHarness.create(
        MemoryStore(), ENGINE_ADDRESSES, CLIENT_ADDRESSES, heartbeat_period=1.0, max_misses=2
    )


def kill(hub: HubHarness, uuid: str) -> None:
    """Its heart stops: unregistered after missed beats."""
    while uuid in hub.by_uuid:
        hub.tick()


def lost(hub: HubHarness, engine_uuid: str, *msg_ids: str, client: bytes = b"c") -> Send:
    tasks = [[msg_id, "2026-01-01T00:00:00+00:00"] for msg_id in msg_ids]
    (reply,) = [
        a
        for a in hub.handle_request(
            [client], request("direct_lost_request", engine_uuid=engine_uuid, tasks=tasks)
        )
        if isinstance(a, Send) and a.msg_type == "direct_lost_reply"
    ]
    return reply


def test_a_request_copied_after_its_engine_was_unregistered_is_failed_not_pending(
    hub: HubHarness,
) -> None:
    """Its copy was still on the engine's copies PUSH (or in a monitor socket) when the Hub
    declared the engine dead: on 08c2997 it stayed pending for ever."""
    register(hub, "a")
    kill(hub, "a")
    late = submit_mux(hub, "a")
    assert late.msg_id not in hub.pending
    record = hub.store.get_record(late.msg_id)
    assert record["status"] == "error"
    assert record["result_content"]["ename"] == "EngineError"
    assert "heartbeat stopped" in record["result_content"]["evalue"]
    assert record["engine_id"] == 0 and record["client_uuid"] == "client-1"
    (status,) = hub.handle_request([b"c"], request("result_request", msg_ids=[late.msg_id]))
    assert status.content["status"] == "ok" and status.content["pending"] == []
    (queues,) = hub.handle_request([b"c"], request("queue_request"))
    assert queues.content["unassigned"] == 0


def sent(actions: list[Any], msg_type: str) -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and a.msg_type == msg_type]


def beats(hub: HubHarness, count: int, *alive: str) -> list[Any]:
    """``count`` beats, the hearts of ``alive`` answering each; what they sent."""
    out: list[Any] = []
    for _ in range(count):
        out += hub.tick()[1]
        for uuid in alive:
            hub.handle_pong(uuid, hub.hearts.payload())
    return out


# a registration's time, in beats of 1 s (max_misses=2 here), and one more
WINDOW = max(2 * 2 + 2, math.ceil(AWAIT_AT_LEAST)) + 1


def test_a_copy_naming_an_engine_never_registered_waits_then_fails_with_it(
    hub: HubHarness,
) -> None:
    """After a controller restart an engine's copies PUSH reconnects by itself, so a copy
    may name an engine that has not registered again yet: pending while it may still
    register, then, if it never does, failed with an EngineError and the engine announced
    gone (clients drop its direct address). On 1015c07 it stayed pending for ever."""
    req = submit_mux(hub, "never")
    assert hub.pending[req.msg_id] == "never"
    out = beats(hub, WINDOW - 2)
    assert hub.pending[req.msg_id] == "never" and not sent(out, "unregistration_notification")
    out = beats(hub, 2)
    assert req.msg_id not in hub.pending
    record = hub.store.get_record(req.msg_id)
    assert record["status"] == "error" and record["result_content"]["ename"] == "EngineError"
    assert "never registered" in record["result_content"]["evalue"]
    (note,) = sent(out, "unregistration_notification")
    assert note.content["uuid"] == "never" and note.content["id"] == -1
    assert "never registered" in note.content["why"]
    # its clients' reports are taken; a later copy fails at once; it may not register now
    assert lost(hub, "never", "unseen").content["recorded"] == ["unseen"]
    assert submit_mux(hub, "never").msg_id not in hub.pending
    (refused, _) = hub.handle_request([b"never"], request("registration_request", uuid="never"))
    assert refused.content["status"] == "error"
    (queues,) = hub.handle_request([b"c"], request("queue_request"))
    assert queues.content["unassigned"] == 0


def test_a_shorter_reregistration_grace_leaves_the_beats_to_decide() -> None:
    """``await_at_least`` (the controller's --reregistration-grace) 0: the engine has the
    ``2 * max_misses + 2`` beats a registration may take, no more."""
    hub = HubHarness.create(
        MemoryStore(), ENGINE_ADDRESSES, CLIENT_ADDRESSES, 1.0, max_misses=2, await_at_least=0.0
    )
    window = 2 * 2 + 2 + 1  # as WINDOW, without the 15 s
    req = submit_mux(hub, "never")
    assert not sent(beats(hub, window - 2), "unregistration_notification")
    assert hub.pending[req.msg_id] == "never"
    (note,) = sent(beats(hub, 2), "unregistration_notification")
    assert note.content["uuid"] == "never" and req.msg_id not in hub.pending


def test_a_copy_naming_an_engine_that_registers_in_time_is_its_task(hub: HubHarness) -> None:
    """The engine registers within the window: the task is its queue's, failed if it dies,
    answered if it answers; nothing is announced."""
    early = submit_mux(hub, "late")
    answered = submit_mux(hub, "late")
    register(hub, "late")
    assert set(hub.by_uuid["late"].queue) == {early.msg_id, answered.msg_id}
    hub.handle_monitor(b"mux_out", [b"client-1", b"late"], reply_for(answered), direct=True)
    assert not sent(beats(hub, WINDOW, "late"), "unregistration_notification")
    assert hub.pending == {early.msg_id: "late"}
    kill(hub, "late")
    assert hub.store.get_record(early.msg_id)["status"] == "error"
    assert hub.store.get_record(answered.msg_id)["status"] == "ok"


def test_after_a_restart_an_engine_that_never_comes_back_is_announced_gone() -> None:
    """Its restored tasks were failed at the window's end already; now its clients hear it
    is gone too (its id from the records), so they stop reconnecting to its direct address
    and fail what they sent it since (reported, and recorded, as for any gone engine)."""
    before = HubHarness.create(MemoryStore(), ENGINE_ADDRESSES, CLIENT_ADDRESSES, 1.0, max_misses=2)
    register(before, "back")
    register(before, "gone")
    orphan = submit_mux(before, "gone")
    hub = HubHarness.create(
        before.store, ENGINE_ADDRESSES, CLIENT_ADDRESSES, heartbeat_period=1.0, max_misses=2
    )
    hub.restore()
    register(hub, "back", id=0, tasks=[])
    out = beats(hub, WINDOW, "back")
    notes = sent(out, "unregistration_notification")
    assert [(n.content["id"], n.content["uuid"]) for n in notes] == [(1, "gone")]
    assert "after the controller restarted" in notes[0].content["why"]
    record = hub.store.get_record(orphan.msg_id)
    assert record["status"] == "error" and "did not come back" in str(record["result_content"])
    assert lost(hub, "gone", "sent-meanwhile").content["recorded"] == ["sent-meanwhile"]
    (refused, _) = hub.handle_request([b"gone"], request("registration_request", uuid="gone", id=1))
    assert refused.content["status"] == "error"


def test_a_restored_engine_whose_id_was_taken_is_announced_without_it() -> None:
    """A supervisor restarted the dead engine with its id and a new uuid: the old one is
    announced gone with id -1, so a view keyed on ids does not drop the new engine."""
    before = HubHarness.create(MemoryStore(), ENGINE_ADDRESSES, CLIENT_ADDRESSES, 1.0, max_misses=2)
    register(before, "old")
    submit_mux(before, "old")
    hub = HubHarness.create(
        before.store, ENGINE_ADDRESSES, CLIENT_ADDRESSES, heartbeat_period=1.0, max_misses=2
    )
    hub.restore()
    register(hub, "new", id=0)
    notes = sent(beats(hub, WINDOW, "new"), "unregistration_notification")
    assert [(n.content["id"], n.content["uuid"]) for n in notes] == [(-1, "old")]
    assert "new" in hub.by_uuid


def restarted_without(engine: str, *, keep_records: bool = True) -> tuple[HubHarness, Message]:
    """A Hub restarted (restored from the store of the one before, or from an empty store,
    as with ``--db memory``) after ``engine`` had a direct task that the Hub before recorded
    pending; ``engine`` never comes back. The restarted Hub and that task's request."""
    before = HubHarness.create(MemoryStore(), ENGINE_ADDRESSES, CLIENT_ADDRESSES, 1.0, max_misses=2)
    register(before, engine)
    task = submit_mux(before, engine)
    store = before.store if keep_records else MemoryStore()
    hub = HubHarness.create(store, ENGINE_ADDRESSES, CLIENT_ADDRESSES, 1.0, max_misses=2)
    hub.restore()
    return hub, task


def answered_report(*msg_ids: str) -> list[list[Any]]:
    dates = ["2026-01-01T00:00:00+00:00", "2026-01-01T00:00:01+00:00"]
    return [[msg_id, dates[0], "ok", dates[0], dates[1]] for msg_id in msg_ids]


def test_an_answer_its_client_got_replaces_the_restarts_failure() -> None:
    """A direct task answered while the controller was down (the reply goes straight to the
    client), its engine then killed: the restarted Hub fails the task it restored pending,
    since the engine did not come back, but its client has the answer and reports it once
    the engine's end is announced. On 73d62bb the failure stayed: the record said EngineError
    ("lost in a controller restart") for a task whose client had its value."""
    hub, task = restarted_without("e")
    notes = sent(beats(hub, WINDOW), "unregistration_notification")
    assert [n.content["uuid"] for n in notes] == ["e"]
    assert "lost in a controller restart" in str(hub.store.get_record(task.msg_id))
    (reply,) = hub.handle_request(
        [b"client-1"],
        request(
            "direct_lost_request", engine_uuid="e", tasks=[], answered=answered_report(task.msg_id)
        ),
    )
    assert reply.content["recorded"] == [task.msg_id]
    record = hub.store.get_record(task.msg_id)
    assert record["status"] == "ok" and record["completed"] == "2026-01-01T00:00:01+00:00"
    (results,) = hub.handle_request([b"c"], request("result_request", msg_ids=[task.msg_id]))
    assert "only the client that submitted the task received it" in str(results.content)


def test_an_engine_a_restart_lost_track_of_is_awaited_when_its_client_names_it() -> None:
    """The restarted Hub has no record naming the engine (``--db memory``, or copies lost
    with the killed controller), so nothing would ever announce its end, and its client
    would never report the tasks it answered: they stayed unknown to every other client
    ("no such msg_id"), found by bench/chaos_mixed.py seed 21. The client names the engine
    when the restarted Hub's table lacks it: the Hub awaits it, records nothing yet, and
    announces its end if it does not register in time; the client's report then records
    what it got."""
    hub, task = restarted_without("e", keep_records=False)
    assert not sent(beats(hub, WINDOW), "unregistration_notification")
    (named,) = hub.handle_request(
        [b"client-1"], request("direct_lost_request", engine_uuid="e", tasks=[], engine_id=3)
    )
    assert named.content["status"] == "ok" and named.content["awaited"] is True
    assert named.content["recorded"] == [] and "e" in hub.awaited
    out = beats(hub, WINDOW - 2)
    assert not sent(out, "unregistration_notification")
    notes = sent(beats(hub, 2), "unregistration_notification")
    assert [(n.content["id"], n.content["uuid"]) for n in notes] == [(3, "e")]
    (reply,) = hub.handle_request(
        [b"client-1"],
        request(
            "direct_lost_request",
            engine_uuid="e",
            tasks=[["never-answered", None]],
            answered=answered_report(task.msg_id),
        ),
    )
    assert reply.content["recorded"] == ["never-answered", task.msg_id]
    assert hub.store.get_record(task.msg_id)["status"] == "ok"
    assert hub.store.get_record("never-answered")["status"] == "error"


def test_a_load_balanced_answer_nobody_recorded_is_recorded_as_such() -> None:
    """After a controller outage a client reports its load-balanced answers too (marked
    ``"task"``): the Hub killed before it wrote their copies, their engine killed before it
    sent its kept replies again, only the client knows them (bench/chaos_mixed.py seed 68:
    ten tasks of a map never recorded). Recorded answered, in the task queue; a queue other
    than mux or task is refused."""
    hub, _ = restarted_without("e", keep_records=False)
    hub.handle_request([b"client-1"], request("direct_lost_request", engine_uuid="e", tasks=[]))
    assert sent(beats(hub, WINDOW), "unregistration_notification")
    (bad,) = hub.handle_request(
        [b"client-1"],
        request(
            "direct_lost_request",
            engine_uuid="e",
            tasks=[],
            answered=[[*answered_report("lb")[0], "elsewhere"]],
        ),
    )
    assert bad.content["ename"] == "QueryError" and "queue mux or task" in str(bad.content)
    (reply,) = hub.handle_request(
        [b"client-1"],
        request(
            "direct_lost_request",
            engine_uuid="e",
            tasks=[],
            answered=[[*answered_report("lb")[0], "task"], answered_report("direct")[0]],
        ),
    )
    assert reply.content["recorded"] == ["lb", "direct"]
    records = hub.store.get_records(["lb", "direct"])
    assert records["lb"]["status"] == "ok" and records["lb"]["queue"] == "task"
    assert records["direct"]["queue"] == "mux"


def test_a_named_engine_that_registers_in_time_is_not_announced() -> None:
    hub, _ = restarted_without("e", keep_records=False)
    hub.handle_request([b"client-1"], request("direct_lost_request", engine_uuid="e", tasks=[]))
    register(hub, "e", id=0, tasks=[])
    assert "e" not in hub.awaited
    assert not sent(beats(hub, WINDOW + 2, "e"), "unregistration_notification")
    refused = lost(hub, "e", "x")
    assert refused.content["ename"] == "QueryError"


def test_a_clients_report_records_the_direct_tasks_the_hub_never_saw(hub: HubHarness) -> None:
    register(hub, "a")
    seen = submit_mux(hub, "a")
    answered = submit_mux(hub, "a")
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(answered))
    kill(hub, "a")
    reply = lost(hub, "a", "never-copied", seen.msg_id, answered.msg_id, client=b"client-1")
    assert reply.content["status"] == "ok"
    assert reply.content["recorded"] == ["never-copied"]  # the others were known
    record = hub.store.get_record("never-copied")
    assert record["status"] == "error" and record["result_content"]["ename"] == "EngineError"
    assert record["client_uuid"] == "client-1" and record["engine_uuid"] == "a"
    assert record["submitted"] == "2026-01-01T00:00:00+00:00"
    assert hub.store.get_record(answered.msg_id)["status"] == "ok"  # left as it was
    (refused,) = hub.handle_request(
        [b"c"], request("resubmit_request", msg_ids=["never-copied"], controller=hub.instance)
    )
    assert refused.content["ename"] == "RequestNotStored"
    assert "died before it sent the controller a copy" in refused.content["evalue"]
    # the request's copy, late after all: the record gets the request, still failed
    late: Message = session.msg("apply_request", {})
    lost(hub, "a", late.msg_id)
    hub.handle_monitor(b"mux_in", [b"a", b"client-1"], late, direct=True)
    record = hub.store.get_record(late.msg_id)
    assert record["status"] == "error" and record["header"]["msg_type"] == "apply_request"
    assert late.msg_id not in hub.pending
    (status,) = hub.handle_request([b"c"], request("status_request"))
    # each counted once: the one the unregistration failed, the two reported lost (the
    # second copied late too), the one answered
    assert status.content["counts"] == {"ok": 1, "error": 3}


def test_a_lost_report_releases_the_hubs_links_to_the_requests_segments(
    hub: HubHarness,
) -> None:
    """A lost task's request copy never came, so nothing would remove the Hub's link to
    its shared-memory segments until the controller stopped (on 1015c07 a report naming
    them was refused as malformed). The links of a task whose copy came are left alone: that
    copy released them, or the Hub holds them for its record."""
    register(hub, "a")
    seen = submit_mux(hub, "a")
    kill(hub, "a")
    refs = [{"index": 1, "size": 2 << 20, "writer": 4242, "token": "ab" * 16, "hold": True}]
    other = [{"index": 1, "size": 2 << 20, "writer": 4242, "token": "cd" * 16, "hold": True}]
    tasks = [["lost", None, refs], [seen.msg_id, None, other], ["small", None]]
    actions = hub.handle_request(
        [b"c"], request("direct_lost_request", engine_uuid="a", tasks=tasks)
    )
    assert [a.refs for a in actions if isinstance(a, ForgetSegments)] == [refs]
    (reply,) = sent(actions, "direct_lost_reply")
    assert reply.content["recorded"] == ["lost", "small"]


def test_answers_a_client_got_from_a_dead_engine_are_recorded_without_results(
    hub: HubHarness,
) -> None:
    """The copies of answered tasks can die queued on the engine's copies PUSH: the client
    reports what it got. A task the Hub never saw is recorded with the client's status and
    no result (a get_result elsewhere is told why); one the engine's death failed gets the
    answer instead, once; one recorded from its copies is left alone."""
    register(hub, "a")
    failed_by_death = submit_mux(hub, "a")
    copied = submit_mux(hub, "a")
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(copied), direct=True)
    kill(hub, "a")
    assert hub.store.get_record(failed_by_death.msg_id)["status"] == "error"
    dates = ["2026-01-01T00:00:00+00:00", "2026-01-01T00:00:01+00:00"]
    answered = [
        ["unseen", dates[0], "ok", dates[0], dates[1]],
        [failed_by_death.msg_id, dates[0], "ok", dates[0], dates[1]],
        [copied.msg_id, dates[0], "error", dates[0], dates[1]],
    ]
    (reply,) = hub.handle_request(
        [b"client-1"],
        request("direct_lost_request", engine_uuid="a", tasks=[], answered=answered),
    )
    assert reply.content["recorded"] == ["unseen", failed_by_death.msg_id]
    for msg_id in ("unseen", failed_by_death.msg_id):
        record = hub.store.get_record(msg_id)
        assert record["status"] == "ok" and record["completed"] == dates[1]
        assert record["engine_uuid"] == "a" and record["client_uuid"] in ("client-1", None)
    assert hub.store.get_record(copied.msg_id)["status"] == "ok"  # its own reply's
    (results,) = hub.handle_request([b"c"], request("result_request", msg_ids=["unseen"]))
    assert "died before it sent the controller a copy of the result" in str(
        results.content["unseen"]["not_stored"]
    )
    # once only: a second report changes nothing
    (again,) = hub.handle_request(
        [b"client-1"],
        request("direct_lost_request", engine_uuid="a", tasks=[], answered=answered),
    )
    assert again.content["recorded"] == []
    (bad,) = hub.handle_request(
        [b"c"],
        request("direct_lost_request", engine_uuid="a", tasks=[], answered=[["x", None, "?"]]),
    )
    assert bad.content["ename"] == "QueryError"


def test_answers_reported_after_a_purge_dropped_them_are_not_made_again(
    hub: HubHarness,
) -> None:
    """A client reports the answers it got from a dead engine; those another client's purge
    dropped (by msg_id, "all", or the engine's tasks, then completed before the purge) stay
    dropped, the others are recorded."""
    register(hub, "a")
    register(hub, "b")
    purged_by_id = submit_mux(hub, "a")
    hub.handle_monitor(b"mux_out", [b"client-1", b"a"], reply_for(purged_by_id), direct=True)
    (ok,) = hub.handle_request([b"c2"], request("purge_request", msg_ids=[purged_by_id.msg_id]))
    assert ok.content["status"] == "ok"
    (ok,) = hub.handle_request([b"c2"], request("purge_request", engine_ids=[1]))
    assert ok.content["status"] == "ok"
    kill(hub, "b")
    kill(hub, "a")
    before, after = "2026-01-01T00:00:00+00:00", "2999-01-01T00:00:00+00:00"
    reported = {
        "a": [
            [purged_by_id.msg_id, before, "ok", before, before],
            ["a-done-before", before, "ok", before, before],
            ["a-done-after", before, "ok", after, after],
        ],
        "b": [["b-done-before", before, "ok", before, before]],
    }
    recorded = {}
    for uuid, answered in reported.items():
        (reply,) = hub.handle_request(
            [b"client-1"],
            request("direct_lost_request", engine_uuid=uuid, tasks=[], answered=answered),
        )
        recorded[uuid] = reply.content["recorded"]
    assert recorded == {"a": ["a-done-before", "a-done-after"], "b": []}  # b's tasks purged
    (ok,) = hub.handle_request([b"c2"], request("purge_request", msg_ids="all"))
    assert ok.content["status"] == "ok"
    late = [
        ["late-before", before, "ok", before, before],
        ["late-after", after, "ok", after, after],
    ]
    register(hub, "c")
    kill(hub, "c")
    (reply,) = hub.handle_request(
        [b"client-1"], request("direct_lost_request", engine_uuid="c", tasks=[], answered=late)
    )
    assert reply.content["recorded"] == ["late-after"]


def test_a_purge_that_came_before_the_copies_takes_a_task_its_engines_death_settles(
    hub: HubHarness,
) -> None:
    """The client held the result (its reply came straight from the engine) and purged
    'all'; the task's finishing copy died with the engine, whose death then failed it: the
    purge takes it then, as it would have taken the copy's record. On 1015c07 the failed
    record stayed for ever."""
    register(hub, "a")
    settled = submit_mux(hub, "a")
    (ok,) = hub.handle_request(
        [b"c"], request("purge_request", msg_ids="all", settled=[settled.msg_id])
    )
    assert ok.content["status"] == "ok" and settled.msg_id in hub.pending
    kill(hub, "a")
    assert not hub.store.get_records([settled.msg_id])
    assert settled.msg_id not in hub.purge_on_record


def test_a_report_for_an_engine_registered_here_or_malformed_is_refused(
    hub: HubHarness,
) -> None:
    register(hub, "a")
    refused = lost(hub, "a", "x")
    assert refused.content["ename"] == "QueryError" and "is registered" in str(refused.content)
    assert not hub.store.get_records(["x"])
    (bad,) = hub.handle_request(
        [b"c"], request("direct_lost_request", engine_uuid="unknown", tasks=[], answered=[[1]])
    )
    assert bad.content["ename"] == "QueryError" and "unknown" not in hub.awaited
    kill(hub, "a")
    (bad,) = hub.handle_request(
        [b"c"], request("direct_lost_request", engine_uuid="a", tasks=[["x", 5]])
    )
    assert bad.content["status"] == "error" and bad.content["ename"] == "QueryError"


def test_a_reply_copied_after_a_clean_unregistration_replaces_the_failure(
    hub: HubHarness,
) -> None:
    """An engine that leaves answers first, then unregisters; its replies' copies come on
    another socket and may be read after the unregistration failed the tasks: they are the
    answers (the client has them). A dead engine's late reply is not."""
    register(hub, "leaving")
    answered = submit_mux(hub, "leaving")
    late = session.msg("apply_request", {})
    hub.handle_request([b"leaving"], request("unregistration_request", uuid="leaving"))
    assert hub.store.get_record(answered.msg_id)["status"] == "error"
    hub.handle_monitor(b"mux_in", [b"leaving", b"client-1"], late, direct=True)
    assert hub.store.get_record(late.msg_id)["status"] == "error"
    for req in (answered, late):
        hub.handle_monitor(b"mux_out", [b"client-1", b"leaving"], reply_for(req), direct=True)
        record = hub.store.get_record(req.msg_id)
        assert record["status"] == "ok" and record["stdout"] == "hi\n"
        assert record["engine_uuid"] == "leaving" and record["result_content"]["status"] == "ok"
    # once only: a duplicate changes nothing
    again = reply_for(answered, status="error")
    hub.handle_monitor(b"mux_out", [b"client-1", b"leaving"], again, direct=True)
    assert hub.store.get_record(answered.msg_id)["status"] == "ok"
    register(hub, "dead")
    settled = submit_mux(hub, "dead")
    kill(hub, "dead")
    hub.handle_monitor(b"mux_out", [b"client-1", b"dead"], reply_for(settled), direct=True)
    assert hub.store.get_record(settled.msg_id)["status"] == "error"


def test_gone_engines_are_bounded() -> None:
    gone = GoneEngines()
    for n in range(MAX_GONE + 3):
        gone.add(n, f"e{n}", "test", 0.0, clean=True)
    assert len(gone) == MAX_GONE
    assert gone.get("e0") is None and gone.get(f"e{MAX_GONE + 2}") is not None
    for n in range(MAX_ANSWERABLE + 2):
        gone.failed(f"t{n}", "e")
    assert not gone.take_answer("t0", "e") and gone.take_answer(f"t{MAX_ANSWERABLE + 1}", "e")
