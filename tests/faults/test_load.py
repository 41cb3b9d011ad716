"""Load: 64 engine processes registering at once get distinct ids 0..63 and every client sees
them all; 20000 load-balanced tasks, then 10000 direct requests to one engine, complete with
none lost, none run twice, and every one recorded by the Hub (100000 in bench/bench_load.py,
with the controller's memory, purged and not)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.cluster.cluster import Cluster
from corral.errors import QueryError
from corral.protocol.references import interactive
from tests.polling import until

ENGINES = 64
TASKS = 20_000
DIRECT_BURST = 10_000  # ten times a socket's default high-water mark


@interactive
def record(index: int) -> int:
    """Return ``index``, and keep it in the engine's namespace: proof of each execution."""
    global executed
    try:
        executed.append(index)  # type: ignore[name-defined]  # noqa: F821
    except NameError:
        executed = [index]
    return index


def hub_recorded(rc, msg_ids: list[str]) -> bool:  # type: ignore[no-untyped-def]
    """Whether the Hub has the results of all ``msg_ids`` (it may lag a burst a little)."""
    try:
        return not rc.result_status(msg_ids)["pending"]
    except QueryError:  # some not seen yet
        return False


@pytest.mark.timeout(180)
def test_64_engines_registering_at_once_get_distinct_ids(tmp_path: Path) -> None:
    # a longer beat than the other tests: 64 processes starting on 2 cores starve each other
    cluster = Cluster(n=ENGINES, cluster_dir=tmp_path, heartbeat_period=1.0, timeout=120)
    rc = cluster.start()  # spawns all 64 at once, then waits for the client to see them
    try:
        assert rc.ids == list(range(ENGINES))
        uuids = set(rc._engines.values())  # noqa: SLF001
        assert len(uuids) == ENGINES
        with cluster.connect() as other:
            assert other.ids == list(range(ENGINES))
            assert set(other._engines.values()) == uuids  # noqa: SLF001
        pids = rc[:].apply_sync(os.getpid)
        assert sorted(pids) == sorted(p.pid for p in cluster.engines)
        status = rc.queue_status()
        assert sorted(k for k in status if isinstance(k, int)) == list(range(ENGINES))
    finally:
        cluster.stop()
    assert all(p.poll() is not None for p in [cluster.controller, *cluster.engines])


@pytest.mark.timeout(180)
def test_20000_load_balanced_tasks_none_lost_none_duplicated(tmp_path: Path) -> None:
    cluster = Cluster(n=4, cluster_dir=tmp_path, heartbeat_period=1.0, timeout=60)
    rc = cluster.start()
    try:
        view = rc.load_balanced_view()
        results = [view.apply_async(record, index) for index in range(TASKS)]
        values = [ar.get(timeout=120) for ar in results]
        assert values == list(range(TASKS))
        executed = [i for part in rc[:].pull("executed", block=True) for i in part]
        assert len(executed) == TASKS and set(executed) == set(range(TASKS)), "lost or rerun"
        msg_ids = [ar.msg_ids[0] for ar in results]
        assert len(set(msg_ids)) == TASKS
        until(lambda: hub_recorded(rc, msg_ids), 60, "the Hub to record every task")
        assert len(rc.result_status(msg_ids)["completed"]) == TASKS
        engines = {ar.metadata["engine_id"] for ar in results}
        assert engines == {0, 1, 2, 3}

        # a burst of direct requests to one engine: queued in the controller, none dropped
        rc.clear(targets=0, block=True)
        direct = [rc[0].apply_async(record, index) for index in range(DIRECT_BURST)]
        assert [ar.get(timeout=120) for ar in direct] == list(range(DIRECT_BURST))
        assert rc[0].pull("executed", block=True) == list(range(DIRECT_BURST))
        direct_ids = [ar.msg_ids[0] for ar in direct]
        until(lambda: hub_recorded(rc, direct_ids), 60, "the Hub to record every request")
    finally:
        cluster.stop()
