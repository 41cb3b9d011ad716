"""ViewExecutor, asyncio and joblib against a real controller and two engines."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from concurrent import futures
from typing import Any

import cloudpickle
import joblib
import psutil
import pytest

from corral.client.executor import ViewExecutor
from corral.errors import RemoteError, TaskAborted, TimeoutError
from tests.polling import until

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def where(_: int) -> int:
    return os.getpid()


def test_executor_is_an_executor(rc) -> None:  # type: ignore[no-untyped-def]
    executor = rc.executor()
    assert isinstance(executor, futures.Executor) and isinstance(executor, ViewExecutor)
    future = executor.submit(add, 2, y=3)
    assert isinstance(future, futures.Future)
    assert future.result(timeout=30) == 5
    done, _ = futures.wait([executor.submit(square, i) for i in range(6)], timeout=30)
    assert sorted(f.result() for f in done) == [0, 1, 4, 9, 16, 25]
    as_completed = [f.result() for f in futures.as_completed([executor.submit(square, 3)], 30)]
    assert as_completed == [9]


def test_executor_map_chunks_and_errors(rc) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view()
    executor = view.executor
    before = len(view.history)
    assert list(executor.map(add, range(10), range(100, 110), chunksize=4)) == [
        i + 100 + i for i in range(10)
    ]
    assert len(view.history) - before == 3  # 10 items in tasks of 4, 4 and 2
    assert list(executor.map(square, [])) == []
    assert list(executor.map(add, [1, 2, 3], [1])) == [2]  # stops at the shortest
    results = executor.map(fail, range(3))
    with pytest.raises(RemoteError, match="bad 0"):
        list(results)
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(square, [1], chunksize=0)


def test_executor_map_timeout_leaves_work_running(rc) -> None:  # type: ignore[no-untyped-def]
    executor = rc.executor()
    results = executor.map(nap, [1.0, 1.0], timeout=0.05)
    with pytest.raises(TimeoutError, match="the work goes on"):
        list(results)
    executor.shutdown(wait=True)
    assert rc.wait(timeout=30)


def test_shutdown_waits_then_refuses_work(rc) -> None:  # type: ignore[no-untyped-def]
    executor = rc[:].executor
    future = executor.submit(nap, 0.3)
    executor.shutdown(wait=True)
    assert future.done() and future.result() == [0.3, 0.3]
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(square, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.map(square, [1])
    with rc.executor() as context_executor:  # the Executor context manager waits on exit
        late = context_executor.submit(nap, 0.2)
    assert late.done()


def test_shutdown_cancel_futures_aborts_unfinished_work(rc) -> None:  # type: ignore[no-untyped-def]
    executor = rc[0].executor
    running = executor.submit(nap, 60)
    queued = executor.submit(nap, 60)
    # both requests reached the engine: one runs, one waits
    until(lambda: rc.queue_status(0)["queue"] >= 2, 30, "both requests to reach the engine")
    started = time.monotonic()
    executor.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - started < 30
    for future in (running, queued):
        with pytest.raises(TaskAborted):
            future.result(timeout=0)
    assert rc[0].apply_sync(square, 7) == 49  # the engine is usable again


def test_asyncio_await_wrap_future_and_gather_without_threads(rc) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view()

    async def main() -> tuple[Any, Any, list[int], int]:
        one = await view.apply_async(square, 4)
        wrapped = await asyncio.wrap_future(view.apply_async(square, 5))
        threads_before = threading.active_count()
        results = [view.apply_async(square, i) for i in range(300)]
        gathered = await asyncio.gather(*results)
        return one, wrapped, list(gathered), threading.active_count() - threads_before

    one, wrapped, gathered, extra_threads = asyncio.run(main())
    assert (one, wrapped) == (16, 25)
    assert gathered == [i * i for i in range(300)]
    assert extra_threads <= 0  # awaiting 300 results started no thread per result


def test_joblib_parallel_on_the_cluster_equals_local(rc) -> None:  # type: ignore[no-untyped-def]
    view = rc.load_balanced_view()
    view.register_joblib_backend()
    local = joblib.Parallel(n_jobs=1)(joblib.delayed(add)(i, i * 3) for i in range(40))
    with joblib.parallel_config(backend="corral"):
        parallel = joblib.Parallel(n_jobs=-1)
        remote = parallel(joblib.delayed(add)(i, i * 3) for i in range(40))
        assert parallel._effective_n_jobs() == len(rc)
        pids = set(parallel(joblib.delayed(where)(i) for i in range(20)))
    assert remote == local
    assert os.getpid() not in pids and pids  # the batches ran on the engines
    with joblib.parallel_config(backend="corral"), pytest.raises(RemoteError, match="bad"):
        joblib.Parallel(n_jobs=-1)(joblib.delayed(fail)(i) for i in range(4))


def test_joblib_parallel_without_n_jobs_uses_every_engine(rc) -> None:  # type: ignore[no-untyped-def]
    """ipyparallel's joblib example: ``register_joblib_backend(make_default=True)``, then
    ``Parallel()`` with no n_jobs runs on every engine (joblib's own default is one worker);
    an explicit ``n_jobs=1`` still means one."""
    view = rc.load_balanced_view()
    view.register_joblib_backend(name="corral-default-test")
    with joblib.parallel_config(backend="corral-default-test"):
        parallel = joblib.Parallel()
        assert parallel._effective_n_jobs() == len(rc) == 2
        assert parallel(joblib.delayed(square)(i) for i in range(6)) == [i * i for i in range(6)]
        assert joblib.Parallel(n_jobs=1)._effective_n_jobs() == 1


def test_view_backend_of_a_direct_view(rc) -> None:  # type: ignore[no-untyped-def]
    from corral.client.joblib_backend import register_view_backend

    register_view_backend(rc[:], name="corral-direct")
    with joblib.parallel_config(backend="corral-direct"):
        parallel = joblib.Parallel(n_jobs=2)
        assert parallel._backend._view.client is rc  # ipyparallel's attribute
        result = parallel(joblib.delayed(square)(i) for i in range(5))
    assert result == [0, 1, 4, 9, 16]


def test_ipyparallels_register_joblib_backend_uses_the_default_cluster(  # type: ignore[no-untyped-def]
    rc, tmp_path, monkeypatch
) -> None:
    """``register_joblib_backend()`` with no view: each Parallel call connects a Client() to
    the default cluster (here: $CORRAL_DIR/default, holding this cluster's connection file)
    and closes it afterwards; the names "corral" and "ipyparallel" both work."""
    import shutil

    import corral

    (tmp_path / "default").mkdir()
    shutil.copy(rc.connection_file, tmp_path / "default" / "corral-client.json")
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    corral.register_joblib_backend()
    for name in ("ipyparallel", "corral"):
        with joblib.parallel_config(backend=name):
            parallel = joblib.Parallel(n_jobs=-1)
            pids = set(parallel(joblib.delayed(where)(i) for i in range(8)))
        assert pids and os.getpid() not in pids
        assert parallel._backend._own_view is None  # its client was closed after the call


def test_register_joblib_backend_starts_a_cluster_when_none_runs(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch
) -> None:
    """As ipyparallel's backend: with no default cluster, a Parallel call runs on a cluster
    the backend starts (a temporary one, in $CORRAL_DIR) and stops when joblib is done."""
    import corral

    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    corral.register_joblib_backend(name="corral-own-cluster")
    with joblib.parallel_config(backend="corral-own-cluster"):
        parallel = joblib.Parallel(n_jobs=-1)
        pids = set(parallel(joblib.delayed(where)(i) for i in range(8)))
    assert pids and os.getpid() not in pids
    backend = parallel._backend
    assert backend._own_view is None and backend._own_cluster is None  # stopped after
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert list(tmp_path.iterdir()) == []  # its folder went with it
