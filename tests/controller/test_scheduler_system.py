"""The load-balanced scheduler with real engine processes: dependencies, retries, timeouts,
targets, a large DAG, engine death, and load balance."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from corral.controller.packing import BURST_PACKING
from corral.controller.scheduler_shell import BURST_PREFETCH
from corral.errors import (
    DependencyTimeout,
    EngineError,
    ImpossibleDependency,
    RemoteError,
    TaskTimeout,
)
from corral.protocol.dependency import Dependency
from corral.protocol.references import interactive
from tests.conftest import start_cluster
from tests.polling import file_appears, until


def append_line(path: str, text: str, delay: float = 0.0) -> str:
    time.sleep(delay)
    with open(path, "a") as handle:
        handle.write(text + "\n")
    return text


def fail_after(delay: float) -> None:
    time.sleep(delay)
    raise ValueError("planned failure")


def test_after_orders_by_side_effect(rc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = str(tmp_path / "order.log")
    view = rc.load_balanced_view()
    first = view.apply_async(append_line, log, "first", 0.4)
    with view.temp_flags(after=[first]):
        second = view.apply_async(append_line, log, "second")
    assert first.get(timeout=20) == "first"
    assert second.get(timeout=20) == "second"
    assert Path(log).read_text().splitlines() == ["first", "second"]


def test_follow_runs_on_the_same_engine(rc) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view()
    for _ in range(4):
        where = view.apply_async(os.getpid)
        with view.temp_flags(follow=[where]):
            again = view.apply_async(os.getpid)
        assert again.get(timeout=20) == where.get(timeout=20)


def test_any_runs_after_the_first_of_its_dependencies(rc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view()
    release = tmp_path / "release"
    slow = view.apply_async(file_appears, str(release))  # runs until released below
    quick = view.apply_async(time.sleep, 0.1)
    with view.temp_flags(after=Dependency.of([slow, quick], all=False)):
        dependent = view.apply_async(lambda: "ran")
    try:
        assert dependent.get(timeout=20) == "ran"
        assert not slow.ready(), "an any-dependency waited for all of its tasks"
    finally:
        release.touch()
    assert slow.get(timeout=20) == str(release)


def test_all_waits_for_every_dependency(rc) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view()
    slow = view.apply_async(time.sleep, 0.6)
    quick = view.apply_async(time.sleep, 0.05)
    with view.temp_flags(after=Dependency.of([slow, quick], all=True)):
        dependent = view.apply_async(lambda: "ran")
    dependent.get(timeout=20)
    assert slow.ready()


def test_failure_only_dependency(rc) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view()
    failing = view.apply_async(fail_after, 0.3)
    with view.temp_flags(after=Dependency.of([failing], success=False, failure=True)):
        on_failure = view.apply_async(lambda: "cleanup ran")
    assert on_failure.get(timeout=20) == "cleanup ran"
    succeeding = view.apply_async(time.sleep, 0.3)
    with view.temp_flags(after=Dependency.of([succeeding], success=False, failure=True)):
        never = view.apply_async(lambda: "must not run")
    with pytest.raises(ImpossibleDependency):
        never.get(timeout=20)


def test_impossible_dependency_fails_fast(rc) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view()
    failing = view.apply_async(fail_after, 0.3)
    with view.temp_flags(after=[failing], timeout=60):
        dependent = view.apply_async(lambda: "must not run")
    started = time.monotonic()
    with pytest.raises(ImpossibleDependency):
        dependent.get(timeout=20)
    assert time.monotonic() - started < 30, "an impossible dependency waited for its timeout"
    chained = []
    with view.temp_flags(after=[dependent]):
        chained.append(view.apply_async(lambda: "neither"))
    with pytest.raises(ImpossibleDependency):
        chained[0].get(timeout=20)


def test_dependency_timeout(rc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view()
    release = tmp_path / "release"
    slow = view.apply_async(file_appears, str(release))  # unfinished until the timeout fired
    with view.temp_flags(after=[slow], timeout=0.3):
        impatient = view.apply_async(lambda: "must not run")
    try:
        with pytest.raises(DependencyTimeout):
            impatient.get(timeout=20)
        assert not slow.ready()
    finally:
        release.touch()
    assert slow.get(timeout=20) == str(release)


def flaky(marker: str) -> int:
    """Fails the first time it runs anywhere, succeeds after."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return os.getpid()


def test_retries_resubmit_a_failed_task(rc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view()
    with view.temp_flags(retries=1):
        assert isinstance(view.apply_async(flaky, str(tmp_path / "a")).get(timeout=20), int)
    with pytest.raises(RemoteError, match="first attempt fails"):
        view.apply_async(flaky, str(tmp_path / "b")).get(timeout=20)


def fail_here() -> int:
    raise ValueError(f"failed on {os.getpid()}")


def test_timed_retries_never_return_to_a_failed_engine(rc) -> None:  # type: ignore[no-untyped-def]
    """ipyparallel's rule (and its test_retries): with more retries than engines and a
    timeout, the task fails on each engine once, then times out with TaskTimeout."""
    view = rc.load_balanced_view()
    with view.temp_flags(retries=len(rc.ids) + 2, timeout=0.1):
        with pytest.raises(TaskTimeout, match=f"each of the {len(rc.ids)} engine"):
            view.apply_async(fail_here).get(timeout=30)
    with view.temp_flags(retries=len(rc.ids) - 1):  # as many attempts as engines: all fail
        with pytest.raises(RemoteError, match="failed on"):
            view.apply_async(fail_here).get(timeout=30)


def test_targets_restrict_engines(rc) -> None:  # type: ignore[no-untyped-def]
    target = rc.ids[-1]
    pid = rc[target].apply_sync(os.getpid)
    view = rc.load_balanced_view(targets=[target])
    results = [view.apply_async(os.getpid) for _ in range(20)]
    assert {r.get(timeout=20) for r in results} == {pid}


def add(*values: int) -> int:
    return sum(values)


def test_diamond_dag_of_1000_tasks(rc) -> None:  # type: ignore[no-untyped-def]
    """Layers fan out and back in; every task depends on tasks of the layer before."""
    view = rc.load_balanced_view()
    layer = [view.apply_async(add, 1)]
    expected = [1]
    submitted = 1
    width = 1
    while submitted < 1000:
        width = min(width * 2, 32) if submitted < 500 else max(width // 2, 1)
        next_layer, next_expected = [], []
        for i in range(width):
            parents = [layer[i % len(layer)], layer[(i + 1) % len(layer)]]
            parent_values = [expected[i % len(layer)], expected[(i + 1) % len(layer)]]
            with view.temp_flags(after=parents):
                next_layer.append(view.apply_async(add, i, 1))
            next_expected.append(i + 1)
            del parent_values
        layer, expected = next_layer, next_expected
        submitted += width
    results = [ar.get(timeout=60) for ar in layer]
    assert results == expected
    assert rc.queue_status()["unassigned"] == 0


def sleepy_pid(marker: str) -> int:
    """Sleeps a minute the first time (then gets killed), answers at once afterwards."""
    if not os.path.exists(marker):
        open(marker, "w").write(str(os.getpid()))
        time.sleep(60)
    return os.getpid()


def test_engine_killed_mid_task(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "c", 2)
    rc = cluster.start()
    try:
        view = rc.load_balanced_view()
        for retries, name in ((0, "no-retry"), (1, "retry")):
            marker = tmp_path / name
            with view.temp_flags(retries=retries):
                task = view.apply_async(sleepy_pid, str(marker))
            until(lambda m=marker: m.exists() and m.read_text(), 20, "the task to start")
            victim = int(marker.read_text())
            os.kill(victim, signal.SIGKILL)
            if retries:
                survivor = task.get(timeout=30)
                assert survivor != victim
            else:
                with pytest.raises(EngineError):
                    task.get(timeout=30)
            cluster.start_engines(1)
            rc.wait_for_engines(2, timeout=30)
    finally:
        cluster.stop()


@interactive
def sleep_here() -> int:
    time.sleep(delay)  # noqa: F821 (pushed to each engine)
    return engine_id  # noqa: F821


def test_a_slow_engine_gets_fewer_tasks(rc) -> None:  # type: ignore[no-untyped-def]
    slow, fast = rc.ids[0], rc.ids[1]
    rc[slow].push({"delay": 0.05, "engine_id": slow}, block=True)
    rc[fast].push({"delay": 0.0, "engine_id": fast}, block=True)
    view = rc.load_balanced_view()
    ran_on = [ar.get(timeout=60) for ar in [view.apply_async(sleep_here) for _ in range(300)]]
    assert ran_on.count(fast) > 2 * ran_on.count(slow), (ran_on.count(fast), ran_on.count(slow))


def test_the_hub_learns_where_waiting_tasks_went(rc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Tasks that wait in the scheduler for a free slot reach an engine in a later turn, and
    the Hub learns which from the scheduler's ``task_dest`` copy (one per turn, unsigned over
    the Hub's private channel) while they run, not only from their results."""
    view = rc.load_balanced_view()
    first, second = tmp_path / "first", tmp_path / "second"
    # two engines, 16 tasks outstanding each (the controller's default), or BURST_PREFETCH
    # times that after earlier tests' short tasks: enough to fill them either way
    slots = 2 * 16 * BURST_PREFETCH
    try:
        blocking = [view.apply_async(file_appears, str(first)) for _ in range(slots)]
        waiting = [view.apply_async(file_appears, str(second)) for _ in range(4)]
        msg_ids = [result.msg_ids[0] for result in waiting]

        def engines_recorded() -> list[str | None]:
            records = rc.db_query({"msg_id": {"$in": msg_ids}}, keys=["engine_uuid"])
            return [record.get("engine_uuid") for record in records]

        until(lambda: len(engines_recorded()) == 4, 30, "the waiting tasks' records")
        assert engines_recorded() == [None] * 4, "the tasks did not wait for a slot"
        first.touch()
        until(
            lambda: all(engines_recorded()) and len(engines_recorded()) == 4,
            30,
            "the Hub to record where the waiting tasks went",
        )
        assert not any(result.ready() for result in waiting)
    finally:
        first.touch()
        second.touch()
    for result in blocking + waiting:
        result.get(timeout=30)


def test_a_burst_on_more_engines_than_cores_is_packed_and_none_is_lost(tmp_path: Path) -> None:
    """Engines report their machine and CPUs at registration (corral.engine.placement), the Hub
    passes them on, and the scheduler packs a burst of no-ops on a few engines of a host with
    more than BURST_PACKING engines per core (corral.controller.packing): its exit counts say
    it did, and every task ran once with its own result."""
    cores = len(os.sched_getaffinity(0))
    engines = BURST_PACKING * cores + 2
    if engines > 12:
        pytest.skip(f"{cores} cores: a cluster oversubscribed enough would be too large here")
    cluster = start_cluster(tmp_path / "c", engines, cluster_id="packed")  # kept at stop
    rc = cluster.start()
    try:
        view = rc.load_balanced_view()
        results = [view.apply_async(abs, -index) for index in range(3000)]
        assert [result.get(timeout=60) for result in results] == list(range(3000))
    finally:
        cluster.stop()
    (stats_file,) = Path(cluster.path).glob("controller-stats.json")
    packing = json.loads(stats_file.read_text())["scheduler"]["packing"]
    assert packing["started"] >= 1, packing


def test_long_tasks_right_after_a_packed_burst_each_get_an_engine(tmp_path: Path) -> None:
    """Tasks submitted right after a packed burst of no-ops (within BURST_HOLD of its last
    reply) may be long: an idle packing engine takes one and no more until it replies, and
    the packing lapses DRAIN_GAP after its engines' last reply while tasks wait
    (corral.controller.packing), so sleeping tasks, one per engine, each run on an engine of
    their own at once instead of one after another on the packing engines."""
    cores = len(os.sched_getaffinity(0))
    engines = BURST_PACKING * cores + 2
    if engines > 12:
        pytest.skip(f"{cores} cores: a cluster oversubscribed enough would be too large here")
    cluster = start_cluster(tmp_path / "c", engines)
    rc = cluster.start()
    try:
        view = rc.load_balanced_view()
        burst = [view.apply_async(abs, -index) for index in range(3000)]
        assert [result.get(timeout=60) for result in burst] == list(range(3000))
        sleepers = [view.apply_async(time.sleep, 1.0) for _ in range(engines)]
        for result in sleepers:
            result.get(timeout=60)
        ran_on = sorted(result.metadata["engine_id"] for result in sleepers)
        assert ran_on == list(range(engines)), ran_on
    finally:
        cluster.stop()
