"""The Hub with a bounded store: omitted results are reported, not silently empty, and purged
results leave the Hub's own tables; then the same through a real cluster and two clients."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from corral.controller.hub import Send
from corral.controller.store.memory import MemoryStore
from corral.controller.store.retention import RetentionSettings
from corral.controller.store.sqlite import SQLiteStore
from corral.errors import QueryError, ResultNotStored, ResultPurged
from corral.protocol.session import Message
from tests.conftest import kill_and_restore_controller, running_cluster
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
from tests.polling import until


def bounded_hub(settings: RetentionSettings) -> tuple[HubHarness, MemoryStore]:
    store = MemoryStore(settings)
    hub = HubHarness.create(
        store, ENGINE_ADDRESSES, CLIENT_ADDRESSES, heartbeat_period=1.0, max_misses=2
    )
    return hub, store


def test_result_request_for_omitted_buffers_says_which_setting_to_raise() -> None:
    hub, _ = bounded_hub(RetentionSettings(buffer_limit=1000))
    register(hub, "e1")
    small, large = submit_mux(hub, "e1"), submit_mux(hub, "e1")
    hub.handle_monitor(b"mux_out", [b"client-1", b"e1"], reply_for(small, buffers=(b"x" * 10,)))
    hub.handle_monitor(b"mux_out", [b"client-1", b"e1"], reply_for(large, buffers=(b"x" * 2000,)))
    (answer,) = hub.handle_request(
        [b"client-2"], request("result_request", msg_ids=[small.msg_id, large.msg_id])
    )
    assert isinstance(answer, Send) and answer.content["status"] == "ok"
    assert answer.content["completed"] == [small.msg_id, large.msg_id]
    assert "not_stored" not in answer.content[small.msg_id]
    message = answer.content[large.msg_id]["not_stored"]
    assert "--store-buffer-limit" in message and large.msg_id in message
    assert answer.content[large.msg_id]["buffer_count"] == 0
    assert [bytes(b) for b in answer.buffers] == [b"x" * 10]


def test_expired_results_leave_the_store_and_the_hubs_tables() -> None:
    hub, store = bounded_hub(RetentionSettings(ttl=60))
    assert store.retention is not None
    now = [1000.0]
    store.retention.clock = lambda: now[0]
    register(hub, "e1")
    done = submit_mux(hub, "e1")
    hub.handle_monitor(b"mux_out", [b"client-1", b"e1"], reply_for(done))
    running = submit_mux(hub, "e1")
    entry = hub.by_uuid["e1"]
    assert list(entry.completed) == [done.msg_id]
    hub.tick()
    assert list(entry.completed) == [done.msg_id]
    now[0] += 61
    hub.tick()
    assert not entry.completed
    assert store.get_history() == [running.msg_id]
    assert list(entry.queue) == [running.msg_id]  # a pending task is never purged


def over_the_size_limit() -> tuple[HubHarness, MemoryStore, list[Message]]:
    """A Hub whose store holds 50,000 bytes at most, after twenty 9,000-byte results of one
    engine: the oldest purged."""
    hub, store = bounded_hub(RetentionSettings(buffer_limit=None, size_limit=50_000, ttl=None))
    register(hub, "e1")
    requests = [submit_mux(hub, "e1") for _ in range(20)]
    for req in requests:
        hub.handle_monitor(b"mux_out", [b"client-1", b"e1"], reply_for(req, buffers=(b"y" * 9000,)))
    return hub, store, requests


def test_results_purged_for_size_leave_the_hubs_tables() -> None:
    hub, store, requests = over_the_size_limit()
    assert store.stored_size() <= 50_000
    hub.tick()
    completed = list(hub.by_uuid["e1"].completed)
    assert completed == store.get_history()
    assert completed[-1] == requests[-1].msg_id and len(completed) < 10


def test_a_purged_result_is_said_purged_and_why_not_unknown() -> None:
    hub, store, requests = over_the_size_limit()
    first, last = requests[0].msg_id, requests[-1].msg_id
    assert store.purged_reasons([first, last]).keys() == {first}
    (answer,) = hub.handle_request(
        [b"client-2"],
        request("result_request", msg_ids=[first, last, "never-seen"], unknown_pending=True),
    )
    assert answer.content["status"] == "ok"
    assert answer.content["completed"] == [last] and answer.content["unknown"] == ["never-seen"]
    assert "--store-size-limit" in answer.content["purged"][first]
    (refused,) = hub.handle_request([b"client-2"], request("result_request", msg_ids=[first]))
    assert refused.content["ename"] == "ResultPurged"
    assert first in refused.content["evalue"] and "size limit" in refused.content["evalue"]
    (refused,) = hub.handle_request(
        [b"client-2"], request("resubmit_request", msg_ids=[first], controller=hub.instance)
    )
    assert refused.content["ename"] == "KeyError"  # as ipyparallel's, saying why
    assert "purged from the Hub's result store" in refused.content["evalue"]


def test_a_reply_sent_again_does_not_bring_a_purged_record_back() -> None:
    """A restarted controller gets the replies an engine kept, and the tasks it says it holds;
    those of records the store purged (and remembers) are not recorded anew."""
    hub, store, requests = over_the_size_limit()
    purged = [req for req in requests if store.purged_reasons([req.msg_id])]
    assert len(purged) >= 2
    hub.tick()  # the Hub forgets the purged tasks too
    size = store.stored_size()
    again = reply_for(purged[0], buffers=(b"y" * 9000,))
    hub.handle_monitor(b"mux_out", [b"client-1", b"e1"], again)
    register(hub, "e2", tasks=[purged[1].msg_id])  # an engine back, saying it holds one
    hub.handle_monitor(b"mux_out", [b"client-1", b"e2"], reply_for(purged[1]))
    history = store.get_history()
    assert purged[0].msg_id not in history and purged[1].msg_id not in history
    assert store.stored_size() == size


def test_another_client_is_told_a_purged_result_was_purged(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 1, store_size_limit="1M", store_buffer_limit="512K") as cluster:
        rc = cluster.client
        first = rc[0].apply_async(lambda: b"x" * 200_000)
        assert len(first.get(timeout=30)) == 200_000
        later = [rc[0].apply_async(lambda: b"y" * 200_000) for _ in range(8)]
        for ar in later:
            ar.get(timeout=30)
        ids = [ar.msg_ids[0] for ar in later]
        newest = {"msg_id": ids[-1], "status": "ok"}  # its copy may come after its reply
        until(lambda: rc.db_query(newest, keys=["status"]), 10, "the Hub to record the last")
        with pytest.raises(ResultPurged, match="size limit"):  # a status query says so too
            rc.result_status([first.msg_ids[0]])
        with cluster.connect() as other:
            with pytest.raises(ResultPurged, match="--store-size-limit") as info:
                other.get_result(first.msg_ids[0]).get(timeout=30)
            assert isinstance(info.value, QueryError)
            assert other.get_result(ids[-1]).get(timeout=30) == b"y" * 200_000


def test_a_controller_killed_and_restarted_still_says_a_result_was_purged(tmp_path: Path) -> None:
    """Its store kept why. The submitting client is gone before the kill: it would report
    the results it got to the restarted Hub, which records them again (and purges them anew)."""
    with running_cluster(tmp_path, 1, store_size_limit="1M", store_buffer_limit="512K") as cluster:
        with cluster.connect() as submitter:
            ars = [submitter[0].apply_async(lambda: b"z" * 200_000) for _ in range(9)]
            for ar in ars:
                ar.get(timeout=30)
            ids = [ar.msg_ids[0] for ar in ars]
            newest = {"msg_id": ids[-1], "status": "ok"}
            until(lambda: submitter.db_query(newest, keys=["status"]), 10, "the last recorded")
            with pytest.raises(ResultPurged, match="size limit"):
                submitter.result_status([ids[0]])
        log = Path(cluster.path) / "controller.log"
        purges = log.read_text().count("oldest completed result(s)")
        kill_and_restore_controller(cluster)
        with cluster.connect() as after:
            with pytest.raises(ResultPurged, match="--store-size-limit"):
                after.get_result(ids[0]).get(timeout=30)
            assert after.get_result(ids[-1]).get(timeout=30) == b"z" * 200_000
        assert log.read_text().count("oldest completed result(s)") == purges  # none again


def test_another_client_is_told_a_large_result_was_not_stored(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 1, store_buffer_limit="1M") as cluster:
        rc = cluster.client
        array = np.arange(500_000, dtype=np.float64)  # 4 MB
        small_ar = rc[0].apply_async(lambda: b"small")
        large_ar = rc[0].apply_async(lambda a: a, array)
        assert np.array_equal(large_ar.get(timeout=30), array)  # the submitter has it
        assert small_ar.get(timeout=30) == b"small"
        ids = [small_ar.msg_ids[0], large_ar.msg_ids[0]]
        until(lambda: not rc.result_status(ids)["pending"], 10, "the Hub to record the replies")
        with cluster.connect() as other:
            assert other.get_result(ids[0]).get(timeout=30) == b"small"
            with pytest.raises(ResultNotStored, match="--store-buffer-limit"):
                other.get_result(ids[1]).get(timeout=30)
            (record,) = other.db_query({"msg_id": ids[1]}, keys=["buffers_omitted", "status"])
            assert record["status"] == "ok" and record["buffers_omitted"]["bytes"] > 4_000_000


def test_a_short_time_to_live_empties_the_hub(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 1, result_ttl="1s") as cluster:
        rc = cluster.client
        ar = rc[0].apply_async(lambda: "soon gone")
        assert ar.get(timeout=30) == "soon gone"
        until(
            lambda: (
                ar.msg_ids[0] not in rc.hub_history()
                and not rc.queue_status(verbose=True)[0]["completed"]
            ),
            30,
            "the result to expire",
        )
        assert rc[0].apply_sync(lambda: "still serving") == "still serving"


def parsed_reply(req: Message) -> Message:
    """``req``'s reply as the Hub reads it from a copy: its parent's msg_id is a string of its
    own, equal to the request's (both parsed from frames), not the same object."""
    parent = {**req.header, "msg_id": req.msg_id.encode().decode()}
    return session.msg("apply_reply", {"status": "ok"}, parent=parent, metadata={"stdout": ""})


def test_a_stored_task_costs_the_hub_a_bounded_few_bytes_and_queries_stay_right(
    tmp_path: Path,
) -> None:
    """With the default SQLite store and its retention, a stored task leaves in the Hub's
    memory one msg_id string (the reply's, which every table shares), an entry in its
    engine's completed tasks and in the retention's table, and two log slots: counted from
    the tables themselves, not the process's RSS (0578385 kept two strings, and a float and
    an int of their own, about 320 bytes). Every query still answers from them as before:
    queue status, result status, history, db queries, purges, the time to live, a reopened
    store."""
    store = SQLiteStore(tmp_path / "tasks.db", retention=RetentionSettings())
    count = 3000
    try:
        hub = HubHarness.create(store, ENGINE_ADDRESSES, CLIENT_ADDRESSES, heartbeat_period=1.0)
        register(hub, "e1")
        requests = []
        for index in range(count):
            req = session.msg("apply_request", {})
            if index % 5:  # dispatched at once, or waited (then named by a task_dest copy)
                hub.handle_monitor(b"task_in", [b"client-1", b"e1"], req)
            else:
                hub.handle_monitor(b"task_in", [b"client-1"], req)
                hub.handle_destination(req.msg_id, "e1")
            hub.handle_monitor(b"task_out", [b"client-1", b"e1"], parsed_reply(req))
            requests.append(req)
        store.flush()
        ids = [req.msg_id for req in requests]
        entry = hub.by_uuid["e1"]
        retention = store.retention
        assert retention is not None and len(retention) == count
        assert not hub.pending and not entry.tasks and list(entry.completed) == ids
        kept = {id(msg_id) for msg_id in retention.log_entries()}
        assert len(kept) == count and all(id(msg_id) in kept for msg_id in entry.completed)
        strings = sum(map(sys.getsizeof, entry.completed))
        per_task = (retention.footprint() + sys.getsizeof(entry.completed) + strings) / count
        assert per_task < 240, per_task

        (status,) = hub.handle_request([b"c"], request("queue_request"))
        assert status.content["0"] == {"completed": count, "queue": 0, "tasks": 0}
        (verbose,) = hub.handle_request([b"c"], request("queue_request", verbose=True))
        assert verbose.content["0"]["completed"] == ids
        (results,) = hub.handle_request(
            [b"c"], request("result_request", msg_ids=ids[:10], statusonly=True)
        )
        assert results.content["completed"] == ids[:10] and not results.content["pending"]
        (history,) = hub.handle_request([b"c"], request("history_request"))
        assert history.content["history"] == ids
        (found,) = hub.handle_request(
            [b"c"], request("db_request", query={"status": "ok"}, keys=["msg_id"])
        )
        assert [record["msg_id"] for record in found.content["records"]] == ids

        (purged,) = hub.handle_request([b"c"], request("purge_request", msg_ids=ids[:100]))
        assert purged.content["status"] == "ok"
        assert list(entry.completed) == ids[100:] and retention.completed == ids[100:]
        assert store.get_history() == ids[100:]
    finally:
        store.close()

    # completed at the harness's clock, months ago: no time to live until the checks below
    reopened = SQLiteStore(tmp_path / "tasks.db", retention=RetentionSettings(ttl=None))
    try:
        retention = reopened.retention
        assert retention is not None and len(retention) == count - 100
        assert set(retention.completed) == set(ids[100:])
        assert reopened.stored_size() == sum(retention.sizes.values())
        hub = HubHarness.create(reopened, ENGINE_ADDRESSES, CLIENT_ADDRESSES, heartbeat_period=1.0)
        hub.restore()
        assert not hub.pending
        retention.settings = RetentionSettings(ttl=60)
        hub.tick()  # the time to live: every result goes
        assert reopened.get_history() == [] and len(retention) == 0
        assert reopened.stored_size() == 0 and retention.log_entries() == []
    finally:
        reopened.close()
