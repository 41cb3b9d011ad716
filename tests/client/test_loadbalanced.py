"""LoadBalancedView against a real controller, scheduler and two engines."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import cloudpickle
import pytest

from corral.client.asyncresult import AsyncMapResult
from corral.client.dependencies import depend, require
from corral.client.mapping import CHUNKS_PER_ENGINE
from corral.controller.scheduling_state import BURST_HOLD
from corral.errors import ImpossibleDependency, RemoteError, UnmetDependency
from corral.protocol.dependency import Dependency

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(x: int) -> int:
    return x * x


def nap(seconds: float) -> float:
    time.sleep(seconds)  # workload that keeps an engine busy, not synchronisation
    return seconds


def fail(message: str) -> None:
    raise ValueError(message)


def test_apply_and_map_ordered(rc) -> None:  # type: ignore[no-untyped-def]
    lb = rc.load_balanced_view()
    assert lb.apply_sync(square, 9) == 81
    ar = lb.apply_async(os.getpid)
    assert ar.get(30) in rc[:].apply_sync(os.getpid)
    assert ar.metadata["engine_id"] in (0, 1)
    result = lb.map_async(square, range(20))
    assert isinstance(result, AsyncMapResult)
    assert list(result) == [i * i for i in range(20)]
    assert result.get(30) == [i * i for i in range(20)]
    assert lb.map_sync(square, range(20), chunksize=6) == [i * i for i in range(20)]
    assert lb.map_sync(lambda a, b: a * b, "abc", [1, 2, 3]) == ["a", "bb", "ccc"]
    assert lb.map_sync(square, []) == []
    spread = lb.map_async(nap, [0.2] * 4)
    spread.get(30)
    assert {md["engine_id"] for md in spread.metadata} == {0, 1}  # type: ignore[union-attr]


def test_default_map_chunks_long_maps_but_not_failures(rc) -> None:  # type: ignore[no-untyped-def]
    lb = rc.load_balanced_view()
    items = 2 * CHUNKS_PER_ENGINE * 10 + 7
    result = lb.map_async(square, range(items))
    assert result.get(60) == [i * i for i in range(items)]
    assert len(result) == items
    assert len(result.msg_ids) == -(-items // 10)  # 10 items per task with 2 engines
    # with return_exceptions each item is its own task, so one failure marks only its item
    odd = lb.map_async(lambda x: fail("odd") if x % 2 else x, range(items), return_exceptions=True)
    values = odd.get(60)
    assert len(odd.msg_ids) == items
    assert values[::2] == list(range(0, items, 2))
    assert all(isinstance(v, RemoteError) for v in values[1::2])


def test_map_unordered_yields_in_completion_order(rc) -> None:  # type: ignore[no-untyped-def]
    lb = rc.load_balanced_view()
    result = lb.map_async(nap, [1.0, 0.0], ordered=False)
    assert list(result) == [0.0, 1.0]
    assert result.get(30) == [1.0, 0.0]  # the whole result keeps submission order


def test_imap(rc) -> None:  # type: ignore[no-untyped-def]
    lb = rc.load_balanced_view()
    endless = iter(range(10**9))
    seen = []
    for value in lb.imap(square, endless, max_outstanding=3):
        seen.append(value)
        if len(seen) == 7:
            break
    assert seen == [i * i for i in range(7)]
    assert sorted(lb.imap(square, range(5), ordered=False)) == [0, 1, 4, 9, 16]


def test_targets_restrict_where_tasks_run(rc) -> None:  # type: ignore[no-untyped-def]
    lb = rc.load_balanced_view(targets=[1])
    pid1 = rc[1].apply_sync(os.getpid)
    assert set(lb.map_sync(lambda _: os.getpid(), range(6))) == {pid1}
    with lb.temp_flags(targets=0):
        ar = lb.apply_async(os.getpid)
        assert ar.get(30) == rc[0].apply_sync(os.getpid)
    assert lb.targets == [1]


def test_after_dependencies(rc) -> None:  # type: ignore[no-untyped-def]
    lb = rc.load_balanced_view()
    first = lb.apply_async(nap, 0.3)
    then = lb.apply_async(lambda: time.time())
    with lb.temp_flags(after=[first]):
        later = lb.apply_async(time.time)
    assert later.get(30) >= first.metadata["completed"].timestamp() - 0.01
    assert then.get(30)

    # a dependency known to have succeeded is dropped; the task runs at once
    with lb.temp_flags(after=first):
        assert lb.apply_sync(square, 3) == 9

    broken = lb.apply_async(fail, "no")
    with pytest.raises(RemoteError):
        broken.get(30)
    with lb.temp_flags(after=broken):
        doomed = lb.apply_async(square, 2)
    assert doomed.done()  # failed here, never sent
    with pytest.raises(ImpossibleDependency, match="can never run"):
        doomed.get(0)
    with lb.temp_flags(after=Dependency.of(broken, success=False, failure=True)):
        assert lb.apply_sync(square, 4) == 16
    # a task depending on the doomed one is doomed too, from what this client knows
    with lb.temp_flags(after=[doomed]):
        with pytest.raises(ImpossibleDependency):
            lb.apply_sync(square, 5)


def test_follow_runs_where_the_followed_task_ran(rc) -> None:  # type: ignore[no-untyped-def]
    lb = rc.load_balanced_view()
    anchor = lb.apply_async(nap, 0.2)
    with lb.temp_flags(follow=anchor):
        pending_follow = [lb.apply_async(os.getpid) for _ in range(3)]
    anchor.get(30)
    with lb.temp_flags(follow=anchor):
        finished_follow = [lb.apply_async(os.getpid) for _ in range(3)]
    engine = anchor.metadata["engine_id"]
    expected = rc[engine].apply_sync(os.getpid)
    assert {ar.get(30) for ar in pending_follow + finished_follow} == {expected}


def test_retries_and_depend(rc) -> None:  # type: ignore[no-untyped-def]
    pid1 = rc[1].apply_sync(os.getpid)

    def on_engine(pid: int) -> bool:
        import os

        return os.getpid() == pid

    @depend(on_engine, pid1)
    def where() -> int:
        return os.getpid()

    lb = rc.load_balanced_view(retries=1)
    results = [lb.apply_async(where) for _ in range(4)]
    assert [ar.get(30) for ar in results] == [pid1] * 4
    with pytest.raises(UnmetDependency):
        rc[0].apply_sync(where)
    assert rc[1].apply_sync(where) == pid1


def test_require(rc) -> None:  # type: ignore[no-untyped-def]
    @require("json", "os.path")
    def encode(value: Any) -> str:
        return json.dumps(value)  # type: ignore[name-defined]  # noqa: F821 - required

    assert rc[0].apply_sync(encode, [1]) == "[1]"

    @require("a_module_nobody_has_installed")
    def impossible() -> None:
        return None

    with pytest.raises(UnmetDependency, match="a_module_nobody_has_installed"):
        rc.load_balanced_view().apply_sync(impossible)
    with pytest.raises(ValueError):
        require("not a module name")


def test_flag_validation(rc) -> None:  # type: ignore[no-untyped-def]
    lb = rc.load_balanced_view()
    with pytest.raises(ValueError):
        lb.retries = -1
    with pytest.raises(ValueError):
        lb.timeout = -2
    with pytest.raises(TypeError):
        lb.set_flags(nonsense=1)
    lb.set_flags(retries=2, timeout=5.0, block=True)
    assert lb.apply(square, 3) == 9


class _FlagsClient:
    """What a LoadBalancedView asks of its client to make a task's metadata from its flags
    (no dependencies: those need the records)."""

    def register_view(self, view: object) -> None:
        pass

    def resolve_targets(self, targets: Any) -> list[tuple[int, str]]:
        return [(engine_id, f"uuid-{engine_id}") for engine_id in targets]


def test_a_task_without_flags_has_empty_metadata_and_every_flag_is_seen() -> None:
    from corral.client.balanced import LoadBalancedView

    plain = LoadBalancedView(_FlagsClient())  # type: ignore[arg-type]
    assert not plain._flagged()
    assert plain._task_metadata(plain._flag_snapshot()) == {}
    flags: dict[str, Any] = {
        "targets": [1],
        "label": "x",
        "retries": 1,
        "timeout": 0.5,
        "priority": 2,
        "time_limit": 3.0,
    }
    for name, value in flags.items():
        view = LoadBalancedView(_FlagsClient())  # type: ignore[arg-type]
        view.set_flags(**{name: value})
        assert view._flagged(), name
        assert view._task_metadata(view._flag_snapshot()) != {}, name
    for name in ("after", "follow"):
        view = LoadBalancedView(_FlagsClient())  # type: ignore[arg-type]
        view.set_flags(**{name: ["some-msg-id"]})
        assert view._flagged(), name


def test_no_task_waits_behind_a_long_one_while_another_engine_is_idle(rc) -> None:  # type: ignore[no-untyped-def]
    """A long task and four short ones submitted together after a pause: each engine holds
    one task while its pace is unknown or its task runs long (the scheduler's long-task rule,
    ``corral controller --long-task``), so the short ones run one after the other on the
    other engine, none queued behind the long one. (With every engine prefetching 16, as
    before, leastload put two of them behind it: they waited 2 s while an engine was idle.)"""
    lb = rc.load_balanced_view()
    time.sleep(2 * BURST_HOLD)  # a pause between batches, as a user makes: pace unknown again
    long = lb.apply_async(nap, 2.0)
    short = [lb.apply_async(nap, 0.1) for _ in range(4)]
    long.get(30)
    for result in short:
        result.get(30)
    long_engine = long.metadata["engine_id"]
    assert [r.metadata["engine_id"] for r in short] == [1 - long_engine] * 4
