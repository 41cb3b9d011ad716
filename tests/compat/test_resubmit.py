"""``Client.resubmit`` (ipyparallel's), on a real cluster: the Hub sends recorded tasks again
under new msg_ids, from its store, and the client follows them as results held by the Hub."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import corral
from corral.client.asyncresult import AsyncHubResult
from corral.sharedmem import SHM_DIR
from tests.conftest import running_cluster
from tests.polling import file_appears, until


def fresh() -> float:
    import random

    return random.random()


def test_resubmit_after_finish(rc) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view()
    first = view.apply_async(fresh)
    value = first.get(30)
    again = rc.resubmit(first.msg_ids)
    assert isinstance(again, AsyncHubResult)
    assert again.msg_ids != first.msg_ids
    (other,) = again.get(30)  # a list, as ipyparallel's AsyncHubResult of a list of ids
    assert isinstance(other, float) and other != value
    old, new = rc.db_query(
        {"msg_id": {"$in": first.msg_ids + again.msg_ids}},
        keys=["resubmitted", "resubmitted_as", "resubmitted_from", "status"],
    )
    assert old["msg_id"] == first.msg_id and old["resubmitted"] is True
    assert old["resubmitted_as"] == again.msg_ids[0]
    assert new["resubmitted_from"] == first.msg_id and new["status"] == "ok"


def test_resubmit_defaults_to_the_last_request(rc) -> None:  # type: ignore[no-untyped-def]
    rc.load_balanced_view().apply_async(pow, 3, 4).get(30)
    assert rc.resubmit(block=True).get(0) == [81]


def test_resubmit_chain_keeps_the_header(rc) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view()
    first = view.apply_async(lambda x: x, "x" * 1024)
    first.get(30)
    chain = [first]
    for _ in range(5):
        chain.append(rc.resubmit(chain[-1].msg_ids))
    for result in chain[1:]:
        assert result.get(30) == ["x" * 1024]
    ids = [result.msg_ids[0] for result in chain]
    records = rc.db_query({"msg_id": {"$in": ids}}, keys=["header", "resubmitted_from"])
    assert [r["msg_id"] for r in records] == ids
    for before, after in zip(records, records[1:], strict=False):
        assert after["resubmitted_from"] == before["msg_id"]
        h1, h2 = before["header"], after["header"]
        assert h1.keys() == h2.keys()
        for key in h1:
            assert (h1[key] != h2[key]) == (key in ("msg_id", "date")), key


def test_resubmit_aborted(rc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view()
    view.targets = [rc.ids[-1]]
    go = tmp_path / "go"
    blocker = view.apply_async(file_appears, str(go))
    aborted = view.apply_async(fresh)
    aborted.abort()  # queued behind the blocker: answered aborted once the engine is free
    go.touch()
    blocker.get(30)
    with pytest.raises(corral.TaskAborted):
        aborted.get(30)
    assert isinstance(rc.resubmit(aborted.msg_ids).get(30)[0], float)


def test_resubmit_in_flight_runs_a_second_copy(rc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """As in ipyparallel: a running task may be resubmitted; both finish."""
    go = tmp_path / "go"
    running = rc.load_balanced_view().apply_async(file_appears, str(go))

    def on_an_engine() -> bool:
        status = rc.queue_status(verbose=True)
        return any(running.msg_id in v["tasks"] for k, v in status.items() if isinstance(k, int))

    until(on_an_engine, 30, "the task to reach an engine")
    copy = rc.resubmit(running.msg_ids)
    go.touch()
    assert running.get(30) == str(go)
    assert copy.get(30) == [str(go)]


def test_resubmit_bad_key_sends_nothing(rc) -> None:  # type: ignore[no-untyped-def]
    history = rc.hub_history()
    with pytest.raises(corral.RemoteError) as raised:
        rc.resubmit(["invalid"])
    assert raised.value.ename == "KeyError" and "invalid" in raised.value.evalue
    assert rc.hub_history() == history


def test_resubmit_direct_runs_on_the_same_engine(rc) -> None:  # type: ignore[no-untyped-def]
    engine = rc.ids[-1]
    first = rc[engine].apply_async(os.getpid)
    pid = first.get(30)
    again = rc.resubmit(first)
    assert again.get(30) == [pid]
    assert again.metadata[0]["engine_id"] == engine


def test_resubmit_keeps_dependencies_and_large_buffers(rc) -> None:  # type: ignore[no-untyped-def]
    """A request of a few MiB (shared memory between processes of one host) is kept by the
    Hub and sent again; its ``after`` is checked again by the scheduler."""
    view = rc.load_balanced_view()
    before = view.apply_async(pow, 2, 3)
    before.get(30)
    payload = os.urandom(3 << 20)
    with view.temp_flags(after=[before]):
        first = view.apply_async(len, payload)
    assert first.get(30) == 3 << 20
    assert rc.resubmit(first).get(30) == [3 << 20]


def test_resubmit_refusals_name_their_reason(tmp_path: Path) -> None:
    """A request larger than the store keeps, and a direct task whose engine is gone, are
    refused with the reason, and nothing is sent."""
    with running_cluster(tmp_path, 1, store_buffer_limit="1K") as cluster:
        rc = cluster.client
        rc.wait_for_engines(1, timeout=30)
        large = rc.load_balanced_view().apply_async(len, b"x" * 4096)
        assert large.get(30) == 4096
        with pytest.raises(corral.RemoteError) as raised:
            rc.resubmit(large)
        assert raised.value.ename == "RequestNotStored"
        assert "--store-buffer-limit" in raised.value.evalue
        # the scheduler left the buffers out of the Hub's copy (the store's marker would count
        # them): only their size reached the controller
        (record,) = rc.db_query({"msg_id": large.msg_id}, keys=["request_buffers_omitted"])
        marker = record["request_buffers_omitted"]
        assert marker["bytes"] > 4096 and marker["limit"] == 1024 and "count" not in marker
        direct = rc[0].apply_async(os.getpid)
        direct.get(30)
        rc[0].shutdown(block=True)
        until(lambda: not rc.ids, 30, "the engine to be gone")
        started = time.monotonic()
        with pytest.raises(corral.RemoteError) as raised:
            rc.resubmit(direct)
        assert raised.value.ename == "EngineError"
        assert time.monotonic() - started < 30


def written_names() -> list[str]:
    """This process's shared-memory names of messages on their way (not yet settled)."""
    mine = f"-{os.getpid()}-"
    return [n for n in os.listdir(SHM_DIR) if mine in n and n.endswith("-w")]


def test_a_large_request_answered_before_the_hub_read_its_copy_can_be_resubmitted(
    tmp_path: Path,
) -> None:
    """The Hub reads a request's copy off the task's path, at a lower priority: under load the
    reply can reach the client, which settles the request and takes its shared-memory name
    back, before the Hub has read the copy. Here the controller is stopped while a
    load-balanced task (client, scheduler and engine only) runs and is answered; once it runs
    again the Hub still finds the request's data (the link the client made for it), so the
    task can be sent again."""
    with running_cluster(tmp_path, 1) as cluster:
        rc = cluster.client
        rc.wait_for_engines(1, timeout=30)
        view = rc.load_balanced_view()
        assert view.apply_async(len, b"warm").get(30) == 4
        payload = os.urandom(3 << 20)
        controller = cluster.controller
        os.kill(controller.pid, signal.SIGSTOP)
        try:
            first = view.apply_async(len, payload)
            assert first.get(30) == 3 << 20  # answered while the Hub could read nothing
            until(lambda: not written_names(), 10, "the client to settle the request")
        finally:
            os.kill(controller.pid, signal.SIGCONT)
        assert rc.resubmit(first).get(30) == [3 << 20]
        (record,) = rc.db_query({"msg_id": first.msg_id}, keys=["request_buffers_omitted"])
        assert not record.get("request_buffers_omitted")
