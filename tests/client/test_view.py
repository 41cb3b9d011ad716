"""DirectView against a real controller and two engines: code, data, errors, output."""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from typing import Any

import cloudpickle
import numpy as np
import pytest

from corral.client.asyncresult import AsyncMapResult, AsyncResult
from corral.client.records import ExecuteReply
from corral.errors import CompositeError, InvalidTarget, RemoteError, TimeoutError
from corral.protocol.references import Reference, interactive

# the engines cannot import this test module: send its functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def double(x: Any) -> Any:
    return x * 2


def fail(message: str) -> None:
    raise ValueError(message)


@interactive
def read_global(name: str) -> Any:
    return globals()[name]


@interactive
def scaled(x: int) -> int:
    return x * factor  # type: ignore[name-defined]  # noqa: F821 - pushed to the engines


def test_apply_on_one_some_and_all_engines(rc) -> None:  # type: ignore[no-untyped-def]
    assert rc[0].apply_sync(double, 21) == 42
    assert rc[[1]].apply_sync(double, 1) == [2]
    assert rc[::2].apply_sync(double, "ab") == ["abab"]
    everyone = rc[:]
    ar = everyone.apply_async(os.getpid)
    assert isinstance(ar, AsyncResult)
    pids = ar.get(timeout=30)
    assert len(pids) == 2 and len(set(pids)) == 2 and os.getpid() not in pids
    assert ar.metadata[0]["engine_id"] == 0 and ar.metadata[1]["engine_id"] == 1
    assert ar.get_dict() == dict(zip([0, 1], pids, strict=True))
    with pytest.raises(InvalidTarget):
        rc[99]
    with pytest.raises(InvalidTarget):
        rc[[0, 99]]


def test_block_flag_and_temp_flags(rc) -> None:  # type: ignore[no-untyped-def]
    dv = rc[0]
    assert isinstance(dv.apply(double, 1), AsyncResult)
    with dv.temp_flags(block=True):
        assert dv.apply(double, 2) == 4
    assert dv.block is False
    dv.set_flags(block=True)
    assert dv.apply(double, 3) == 6
    with pytest.raises(TypeError, match="no flags"):
        dv.set_flags(retries=2)
    with pytest.raises(KeyError, match="no flags"):  # ipyparallel's error (not a flag)
        dv.set_flags(retries=2)
    bview = rc.broadcast_view()
    with pytest.raises(KeyError, match=r"\['coalescing'\]"):  # as its broadcast examples pass
        rc.broadcast_view(coalescing=True)
    assert bview.is_coalescing is False


def test_execute_captures_stdout_and_result(rc) -> None:  # type: ignore[no-untyped-def]
    dv = rc[:]
    ar = dv.execute("import os\nprint('hello from', os.getpid())\n6 * 7")
    replies = ar.get(timeout=30)
    assert all(isinstance(reply, ExecuteReply) for reply in replies)
    assert all(out.startswith("hello from ") for out in ar.stdout)
    assert [md["execute_result"] for md in ar.metadata] == [None] * 2  # silent by default
    shown = dv.execute("6 * 7", silent=False, block=True)
    assert [r["data"] for r in shown.execute_result] == [{"text/plain": "42"}] * 2
    assert rc[1].execute("x_exec = 5", block=True).get().execution_count is not None
    assert rc[1].pull("x_exec", block=True) == 5


def test_stdout_and_stderr_of_apply_land_in_metadata(rc) -> None:  # type: ignore[no-untyped-def]
    def chatty(n: int) -> int:
        print("out", n)
        print("err", n, file=sys.stderr)
        return n

    ar = rc[0].apply_async(chatty, 7)
    assert ar.get(timeout=30) == 7
    assert ar.stdout == "out 7\n" and ar.stderr == "err 7\n"
    assert rc.get_result(ar.msg_ids[0], owner=False).metadata["stdout"] == "out 7\n"


def test_push_pull_and_item_access(rc) -> None:  # type: ignore[no-untyped-def]
    dv = rc[:]
    dv.push({"a": 1, "b": [1, 2]}, block=True)
    assert dv.pull("a", block=True) == [1, 1]
    assert dv.pull(["a", "b"], block=True) == [[1, [1, 2]], [1, [1, 2]]]
    dv["c"] = "see"
    assert dv["c"] == ["see", "see"]
    assert rc[1]["c"] == "see"
    assert dv.apply_sync(read_global, "a") == [1, 1]
    dv.push({"factor": 3}, block=True)
    assert dv.apply_sync(scaled, 2) == [6, 6]
    assert dv.apply_sync(len, Reference("b")) == [2, 2]
    with pytest.raises(CompositeError) as info:
        dv.pull("never_defined", block=True)
    assert {e.ename for e in info.value.elist} == {"NameError"}
    names = set(rc[0].apply_sync(interactive(lambda: sorted(globals()))))
    leaked = {"functools", "cloudpickle", "guarded", "bind_namespace", "push_namespace"}
    assert not leaked & names, "push/pull must not copy their module's globals to the engine"


def test_numpy_round_trip_is_bit_exact(rc) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    arrays = [
        rng.standard_normal((512, 513)),
        np.asfortranarray(rng.integers(0, 1 << 60, (40, 30))),
        np.arange(10, dtype=">i4"),
        rng.standard_normal(1000).astype(np.float32)[::3],  # not contiguous
        np.zeros(0, dtype=np.complex128),
    ]
    for array in arrays:
        back = rc[0].apply_sync(lambda a: a, array)
        assert back.dtype == array.dtype and back.shape == array.shape
        assert back.tobytes() == array.tobytes()
    rc[:].push({"big": arrays[0]}, block=True)
    pulled = rc[1].pull("big", block=True)
    assert pulled.tobytes() == arrays[0].tobytes()


def test_scatter_and_gather(rc) -> None:  # type: ignore[no-untyped-def]
    dv = rc[:]
    dv.scatter("part", list(range(9)), block=True)
    assert dv.pull("part", block=True) == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]
    assert dv.gather("part", block=True) == list(range(9))
    gathered = dv.gather("part")
    assert isinstance(gathered, AsyncMapResult) and gathered.get(30) == list(range(9))

    array = np.random.default_rng(1).standard_normal((101, 3))
    dv.scatter("array", array, block=True)
    back = dv.gather("array", block=True)
    assert back.dtype == array.dtype and back.tobytes() == array.tobytes()

    dv.scatter("text", "abcde", block=True)
    assert dv.gather("text", block=True) == "abcde"
    dv.scatter("one", [10, 20], flatten=True, block=True)
    assert dv.pull("one", block=True) == [10, 20]
    assert dv.gather("one", block=True) == [10, 20]
    dv.push({"table": {"k": 1}}, block=True)  # not a sequence: one item per engine
    assert dv.gather("table", block=True) == [{"k": 1}, {"k": 1}]
    assert list(dv.gather("table", block=False)) == [{"k": 1}, {"k": 1}]
    rc[[1]].scatter("solo", [1, 2, 3], block=True)
    assert rc[1].pull("solo", block=True) == [1, 2, 3]


def test_direct_map(rc) -> None:  # type: ignore[no-untyped-def]
    dv = rc[:]
    assert dv.map_sync(double, range(11)) == [2 * i for i in range(11)]
    assert dv.map_sync(lambda a, b: a + b, [1, 2, 3], (10, 20, 30)) == [11, 22, 33]
    assert rc[0].map_sync(double, [1, 2]) == [2, 4]
    assert dv.map_sync(double, []) == []
    assert dv.map_sync(double, [5]) == [10]  # fewer items than engines
    ar = dv.map_async(os.getpid, [])
    assert ar.get(5) == []
    pids = dv.map_sync(lambda _: os.getpid(), range(4))
    assert len(set(pids)) == 2
    # sequences of different lengths are cut to the shortest, as the builtin map does
    assert dv.map_sync(lambda a, b: a + b, [1, 2, 3], [10]) == [11]
    items = list(dv.map_async(double, range(6)))
    assert items == [0, 2, 4, 6, 8, 10]


def test_remote_errors_carry_name_message_traceback_and_engine(rc) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RemoteError) as info:
        rc[1].apply_sync(fail, "bad input")
    error = info.value
    assert error.ename == "ValueError" and error.evalue == "bad input"
    assert error.engine_id == 1
    assert isinstance(error.traceback, str) and "bad input" in error.traceback
    assert any("in fail" in line for line in error.render_traceback())  # the remote frame
    with pytest.raises(CompositeError) as composite:
        rc[:].apply_sync(fail, "everywhere")
    assert sorted(e.engine_id for e in composite.value.elist) == [0, 1]
    ar = rc[:].execute("1/0")
    with pytest.raises(CompositeError):
        ar.get(30)
    assert all(e.ename == "ZeroDivisionError" for e in ar.exception().elist)


def test_remote_and_parallel_decorators(rc) -> None:  # type: ignore[no-untyped-def]
    dv = rc[:]

    @dv.remote(block=True)
    def where() -> int:
        return os.getpid()

    assert len(set(where())) == 2

    @dv.parallel(block=True)
    def lengths(part: Any) -> list[int]:
        return [len(part)]

    assert lengths(list(range(10))) == [5, 5]  # one call per engine, on its part
    assert lengths.map(["ab", "c", ""]) == [[2], [1], [0]]  # one call per element


def test_view_reprs_show_targets_as_ipyparallel(rc) -> None:  # type: ignore[no-untyped-def]
    assert repr(rc[:]) == "<DirectView [0, 1]>"
    assert repr(rc.direct_view("all")) == "<DirectView all>"  # not 'all'
    assert repr(rc[1]) == "<DirectView 1>"
    assert repr(rc.load_balanced_view()) == "<LoadBalancedView None>"
    view = rc[:]
    view.targets = [0, 1, 0, 1, 0, 1]  # long lists are cut: one short line for 100s of engines
    assert repr(view) == "<DirectView [0, 1, 0, 1,...]>"


def test_parallel_call_keeps_each_calls_value_whole(rc) -> None:  # type: ignore[no-untyped-def]
    """A call's result is one element unless it is a list, tuple or array (ipyparallel's
    join): strings are not run together nor dicts cut into their keys."""
    dv = rc[:]
    echo = dv.parallel(block=True)(str)
    assert echo(range(5)) == ["range(0, 3)", "range(3, 5)"]
    assert echo.map(range(3)) == ["0", "1", "2"]
    assert dv.parallel(block=True)(lambda part: {"n": len(part)})("abc") == [{"n": 2}, {"n": 1}]
    assert dv.parallel(block=True)(tuple)((1, 2, 3)) == [1, 2, 3]
    doubled = dv.parallel(block=True)(lambda part: part * 2)(np.arange(5))
    assert isinstance(doubled, np.ndarray) and doubled.tolist() == [0, 2, 4, 6, 8]
    assert dv.parallel(block=True)(np.sum)(np.arange(5)) == [3, 7]
    pending = dv.parallel(block=False)(str)(range(5))
    assert list(pending) == ["range(0, 3)", "range(3, 5)"]  # iteration: whole values too
    assert len(pending) == pending.progress == 2  # counted in calls, as the result holds them


def test_parallel_return_exceptions(rc) -> None:  # type: ignore[no-untyped-def]
    """ipyparallel's ``parallel(return_exceptions=True)``: a failed call's error stands in its
    place (once per call; once per item for ``.map``)."""

    def inverse_sum(part: Any) -> float:
        return 1 / sum(part)

    for view, parts in ((rc[:], {}), (rc.load_balanced_view(), {"chunksize": 2})):
        # two engines, or two items a task: the same two calls
        pf = view.parallel(block=True, return_exceptions=True, **parts)(inverse_sum)
        first, second = pf([0, 0, 1, 1])
        assert isinstance(first, RemoteError) and first.ename == "ZeroDivisionError"
        assert second == 0.5
        mapped = view.parallel(block=True, return_exceptions=True)(inverse_sum).map([[0], [2]])
        assert isinstance(mapped[0], RemoteError) and mapped[1:] == [0.5] and len(mapped) == 2
        with pytest.raises(CompositeError):
            view.parallel(block=True, **parts)(inverse_sum)([0, 0, 1, 1])


def test_await_async_result_in_asyncio(rc) -> None:  # type: ignore[no-untyped-def]
    async def main() -> list[Any]:
        first = rc[0].apply_async(double, 5)
        both = rc[:].apply_async(double, 1)
        return [await first, await both]

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [10, [2, 2]]


def test_get_timeout_does_not_lose_the_result(rc) -> None:  # type: ignore[no-untyped-def]
    import time

    ar = rc[0].apply_async(time.sleep, 0.5)
    with pytest.raises(TimeoutError):
        ar.get(timeout=0.01)
    assert ar.get(timeout=30) is None
    assert rc.wait([ar], timeout=0)
    assert ar.msg_ids[0] in rc.history and ar.msg_ids[0] not in rc.outstanding


def test_chunksize_of_a_direct_parallel_function_is_said_to_be_ignored(rc) -> None:  # type: ignore[no-untyped-def]
    """A direct view splits the sequence once per engine: ``chunksize`` is ignored there, and
    a warning says so (as ipyparallel's); a load-balanced view uses it, without one."""
    with pytest.warns(UserWarning, match="`chunksize` is ignored unless load balancing"):
        direct = rc[:].parallel(chunksize=2, block=True)(len)
    assert sum(direct(list(range(8)))) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        balanced = rc.load_balanced_view().parallel(chunksize=2, block=True)(len)
    assert balanced(list(range(8))) == [2, 2, 2, 2]
