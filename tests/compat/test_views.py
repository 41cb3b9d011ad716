"""Views and AsyncResults as ipyparallel programs use them (issue 11), on a real cluster."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

import corral
from corral import error
from corral.client.asyncresult import AsyncHubResult
from corral.errors import QueryError
from tests.compat.conftest import loud_sleep
from tests.polling import until


def slow_double(x: int) -> int:
    import time

    time.sleep(0.05)
    return 2 * x


def fail_on_2(n: int) -> int:
    if n == 2:
        raise ValueError("two!")
    return n


def test_flags_len_and_set_flags_returning_the_view(rc) -> None:  # type: ignore[no-untyped-def]
    assert len(rc[:]) == len(rc.ids) == 2 and len(rc[-1]) == 1
    assert len(rc.load_balanced_view()) == 2 and len(rc.broadcast_view()) == 2
    assert rc[-1].targets == rc.ids[-1] and rc.direct_view(-1).targets == rc.ids[-1]
    assert rc.load_balanced_view(-1).targets == [rc.ids[-1]]
    assert rc.load_balanced_view("all").targets is None
    view = rc.load_balanced_view()
    assert view.set_flags(label="tagged", block=False) is view
    ar = view.apply_async(os.getpid)
    ar.get(30)
    assert ar.label == "tagged"
    rc.wait(timeout=30)
    found = rc.db_query({"label": "tagged"}, keys=["label"])
    assert [r["msg_id"] for r in found] == ar.msg_ids
    default = rc.db_query({"msg_id": ar.msg_ids[0]})[0]
    assert "result_buffers" not in default and "buffers" not in default


def test_track_gives_a_message_tracker_on_zero_copy_sends(rc) -> None:  # type: ignore[no-untyped-def]
    view = rc[-1]
    data = np.zeros(4 * 1024 * 1024, dtype=np.uint8)
    untracked = view.apply_async(len, data)
    assert isinstance(untracked._tracker, zmq.MessageTracker) and untracked.sent
    with view.temp_flags(track=True):
        tracked = view.apply_async(len, data)
    tracked.wait_for_send(30)
    assert tracked.sent and tracked._tracker.done
    assert tracked.get(30) == untracked.get(30) == data.size
    pushed = view.push({"big": data}, block=False, track=True)
    assert pushed._sent_event.wait(30)  # ipyparallel's own tests wait on this private name
    pushed.wait_for_send(30)
    assert pushed._sent_event.is_set()
    pushed.get(30)


def test_execute_and_run_follow_ipyparallel(rc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    view = rc[:]
    quiet = view.execute("5", block=True)  # silent by default; returns the AsyncResult
    assert isinstance(quiet, corral.AsyncResult)
    assert quiet.execute_result == [None, None]
    shown = view.execute("5", silent=False, block=True)
    assert [r["data"] for r in shown.execute_result] == [{"text/plain": "5"}] * 2
    reply = rc[-1].execute("6 * 7", silent=False).get(30)
    assert str(reply) == f"<ExecuteReply[{reply.execution_count}]: 42>"
    assert reply.execute_result["data"]["text/plain"] == "42"
    with pytest.raises(error.CompositeError) as info:
        view.execute("1/0", block=True)
    assert [e[-1]["method"] for e in info.value.elist] == ["execute", "execute"]
    assert [e[-1]["engine_id"] for e in info.value.elist] == rc.ids
    script = tmp_path / "script.py"
    script.write_text("def from_file():\n    return 5")  # no trailing newline
    rc[-1].run(str(script), block=True)
    assert rc[-1].apply_sync(lambda f: f(), corral.Reference("from_file")) == 5


def test_any_failure_of_a_multi_engine_call_is_a_composite_error(rc) -> None:  # type: ignore[no-untyped-def]
    dv = rc[:]
    dv.scatter("rank", rc.ids, flatten=True, block=True)
    ar = dv.apply_async(
        lambda r, bad: 1 / 0 if r == bad else r, corral.Reference("rank"), rc.ids[1]
    )
    with pytest.raises(error.CompositeError) as info:
        ar.get(30)
    assert len(info.value.elist) == 1  # one engine failed: still a CompositeError
    result = ar.get(return_exceptions=True)
    assert result[0] == rc.ids[0] and isinstance(result[1], error.RemoteError)
    with pytest.raises(error.RemoteError):  # one target: the error itself
        rc[-1].apply_sync(lambda: 1 / 0)


def test_a_round_robin_gather_whose_parts_arrived_before_its_result_is_built_interleaves(
    rc, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The parts may all be back before ``gather`` builds its result (CI saw it once): the
    join must be the interleave from the start, never set on the result afterwards."""
    dv = rc[:]
    dv.scatter("part", list(range(11)), dist="r", block=True)
    build = type(dv)._map_result

    def after_the_parts(view, msg_ids, *args, **kwargs):  # type: ignore[no-untyped-def]
        parts = [rc.records.futures[msg_id] for msg_id in msg_ids]
        concurrent.futures.wait(parts, timeout=30)
        assert all(part.done() for part in parts)
        return build(view, msg_ids, *args, **kwargs)

    monkeypatch.setattr(type(dv), "_map_result", after_the_parts)
    assert dv.gather("part", dist="r", block=True) == list(range(11))


def test_scatter_gather_every_dist_and_nested_names(rc) -> None:  # type: ignore[no-untyped-def]
    dv = rc[:]
    for dist in ("b", "r"):
        dv.scatter("part", list(range(11)), dist=dist, block=True)
        assert dv.gather("part", dist=dist, block=True) == list(range(11))
    dv.scatter("arr", np.arange(10), dist="r", block=True)
    assert np.array_equal(dv.gather("arr", dist="r", block=True), np.arange(10))
    assert dv.pull("part", block=True) == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]
    with pytest.raises(ValueError, match="dist"):
        dv.scatter("x", [1], dist="z")
    one = rc[-1]
    one.execute("class A: pass\na = A()\na.b = 128", block=True)
    assert one["a.b"] == 128
    one["a.b"] = 0
    assert one.apply_sync(lambda x: x.b, corral.Reference("a")) == 0
    one["g"] = [7, 8]
    assert one.apply_sync(lambda x: x, corral.Reference("g[1]")) == 8
    assert one.apply_sync(lambda x: x, [corral.Reference("g")]) == [[7, 8]]


def test_map_flavours(rc) -> None:  # type: ignore[no-untyped-def]
    dv = rc[:]
    for view in (dv, rc.load_balanced_view()):
        assert view.map_sync(lambda a, b: a * b, range(10), range(4)) == [0, 1, 4, 9]
        amr = view.map_async(fail_on_2, range(4), return_exceptions=True)
        values = amr.get(30)
        assert values[:2] == [0, 1] and isinstance(values[2], error.RemoteError)
        # a failed part stands for each of its items: the direct view sends [2, 3] as one
        assert values[3] == 3 if view is not dv else values[3] is values[2]
        assert list(amr) == values
        with pytest.raises(error.CompositeError):
            view.map_sync(fail_on_2, range(4))
        amr = view.map_async(slow_double, range(6))
        assert len(amr) == 6  # items, not messages
        amr.wait(30)
        assert amr.progress == 6
    assert list(rc[:].imap(slow_double, range(4))) == [0, 2, 4, 6]
    gen = rc.load_balanced_view().imap(slow_double, iter(range(1000)), max_outstanding=2)
    assert [next(gen) for _ in range(3)] == [0, 2, 4]
    gen.cancel()
    assert len(list(gen)) <= 2  # only what was already in flight


def test_remote_and_parallel_with_flags(rc) -> None:  # type: ignore[no-untyped-def]
    @corral.remote(rc[-1], block=True, label="decorated")
    def times(x: int, y: int = 5) -> int:
        """multiply x * y"""
        return x * y

    assert times(5) == 25 and times(x=5, y=2) == 10
    assert "RemoteFunction" in times.__doc__ and "multiply x" in times.__doc__

    @corral.parallel(rc.load_balanced_view(), block=True)
    def scaled(x: int, y: int = 5) -> int:
        return x * y

    assert scaled.map([1, 2, 3]) == [5, 10, 15]
    assert scaled.map([1, 2, 3], [1, 2, 3]) == [1, 4, 9]


def test_sync_imports(rc) -> None:  # type: ignore[no-untyped-def]
    view = rc[-1]
    view.clear(block=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        with view.sync_imports():
            import colorsys  # noqa: F401
    assert "colorsys" in out.getvalue()
    assert view.apply_sync(corral.interactive(lambda: "colorsys" in globals()))
    with view.importer:
        import json  # noqa: F401
    assert view.apply_sync(corral.interactive(lambda: "json" in globals()))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        with view.sync_imports():
            from os import path, sep  # noqa: F401
    assert out.getvalue() == "importing path,sep from os on engine(s)\n"  # ipyparallel's words
    assert view.apply_sync(corral.interactive(lambda: "sep" in globals()))


def test_async_result_api(rc) -> None:  # type: ignore[no-untyped-def]
    dv = rc[:]
    parent = dv.apply_async(os.getpid)
    children = parent.split()
    assert [c.msg_ids for c in children] == [[m] for m in parent.msg_ids]
    assert children[0].split() == (children[0],)
    pids = parent.get(30)
    assert [c.get(30) for c in children] == pids
    assert corral.AsyncResult.join(*children).get(30) == pids
    assert parent.r == pids and parent.result_dict == dict(zip(rc.ids, pids, strict=True))
    assert parent.timedelta(parent.submitted, parent.received) >= 0
    assert parent.owner is True
    assert "stdout" in dir(parent) and parent.outputs == [[], []] and parent.data == [{}, {}]

    dv.scatter("rank", list(range(len(dv))), flatten=True, block=True)
    failing = dv.apply_async(
        corral.interactive(lambda: 1 / 0 if rank == 0 else time.sleep(2)),  # noqa: F821
    )
    done, pending = failing.wait(timeout=30, return_when=corral.FIRST_EXCEPTION)
    assert [d.msg_ids for d in done] == [failing.msg_ids[:1]] and len(pending) == 1
    with pytest.raises(error.RemoteError):
        failing.get(30, return_when=corral.FIRST_EXCEPTION)
    assert failing.wait(30) is True

    lb = rc.load_balanced_view(rc.ids[-1])
    blocker = lb.apply_async(loud_sleep, 1)
    queued = lb.apply_async(os.getpid)
    until(lambda: blocker.stdout, 30, "the first task to start")
    assert not blocker.cancel()  # running: left alone
    assert queued.cancel() and queued.cancelled()  # had not started
    assert blocker.get(30) == 1
    with pytest.raises(concurrent.futures.CancelledError):
        queued.get(30)


def test_get_result_gives_hub_results_for_other_clients(rc, cluster) -> None:  # type: ignore[no-untyped-def]
    with cluster.connect() as other:
        ar = other[-1].apply_async(slow_double, 21)
        fetched = rc.get_result(ar.msg_ids[0], owner=False)
        assert isinstance(fetched, AsyncHubResult)
        assert fetched.get(30) == ar.get(30) == 42
        again = rc.get_result(ar.msg_ids[0])
        assert not isinstance(again, AsyncHubResult) and again.get(0) == 42
        assert rc.get_result(again).msg_ids == again.msg_ids


def test_client_block_is_the_flag_new_views_start_with(cluster) -> None:  # type: ignore[no-untyped-def]
    """ipyparallel's ``rc.block = True; view = rc[:]`` (its interengine example): views made
    afterwards block, views made before keep their flag, and get_result waits."""
    with cluster.connect() as client:
        client.wait_for_engines(2, timeout=30)
        assert client.block is False
        before = client[:]
        assert before.block is False and client.load_balanced_view().block is False
        client.block = True
        views = [client[:], client[-1], client.load_balanced_view(), client.broadcast_view()]
        assert all(view.block for view in views) and before.block is False
        assert views[0].apply(os.getpid) == views[0].apply_sync(os.getpid)
        assert isinstance(views[2].apply(slow_double, 2), int)
        assert views[0].execute("x = 5").done()  # blocking: it waited
        assert client.direct_view(block=False).block is False  # flags still win
        ar = before.apply_async(slow_double, 3)
        fetched = client.get_result(ar.msg_ids[0], owner=False)
        assert fetched.done() and fetched.get(0) == 6  # get_result waited
        client.block = False
        assert client[:].block is False


def test_label_queries_of_ipyparallels_example(rc) -> None:  # type: ignore[no-untyped-def]
    """ipyparallel's basic_task_label example: labelled tasks found with ``$nin`` given one
    value (not a list) and with ``$glob`` patterns, on the module cluster's SQLite store."""
    prefix = f"ex{os.getpid()}"
    lview, dview = rc.load_balanced_view(), rc[:]
    ars = [
        lview.set_flags(label=f"{prefix}_bview_map_00").map_async(slow_double, [1]),
        lview.set_flags(label=f"{prefix}_bview_apply_00").apply_async(slow_double, 2),
        dview.set_flags(label=f"{prefix}_dview_map_10").map_async(slow_double, [3, 4]),
        dview.set_flags(label=f"{prefix}_dview_apply_10").apply_async(slow_double, 5),
    ]
    for ar in ars:
        ar.get(30)
    rc.wait(timeout=30)

    def labels(query: dict[str, Any]) -> list[str]:
        found = rc.db_query(query, keys=["msg_id", "label"])
        return sorted(r["label"] for r in found if (r["label"] or "").startswith(prefix))

    everything = labels({"label": {"$nin": ""}})
    assert len(everything) == 1 + 1 + 2 + 2
    assert labels({"label": {"$glob": f"{prefix}_dview_*"}}) == sorted(
        [f"{prefix}_dview_map_10"] * 2 + [f"{prefix}_dview_apply_10"] * 2
    )
    assert labels({"label": {"$glob": f"{prefix}*_map_*"}}) == sorted(
        [f"{prefix}_bview_map_00"] + [f"{prefix}_dview_map_10"] * 2
    )
    assert rc.db_query({"label": {"$glob": f"{prefix.upper()}*"}}) == []
    # every record has the keys asked for, and label, as ipyparallel's records do
    plain = rc.load_balanced_view().apply_async(slow_double, 6)
    plain.get(30)
    rc.wait(timeout=30)
    (record,) = rc.db_query({"msg_id": plain.msg_ids[0]})
    assert record["label"] is None
    (record,) = rc.db_query({"msg_id": plain.msg_ids[0]}, keys=["label", "engine_uuid"])
    assert record["label"] is None and isinstance(record["engine_uuid"], str)
    with pytest.raises(QueryError, match="string pattern"):
        rc.db_query({"label": {"$glob": 5}})


def test_an_interactive_function_uses_the_engines_value_of_an_unpicklable_client_global(
    rc,  # type: ignore[no-untyped-def]
) -> None:
    """ipyparallel's details page: ``@interactive def getx(): return x`` after
    ``dview['x'] = 11`` gives the engines' x, also when the client's own x (a notebook's
    earlier AsyncResult, say) cannot be pickled: it is left out, with a warning."""
    namespace: dict[str, Any] = {"__name__": "__main__", "x": threading.RLock()}
    exec("def getx():\n    return x\n", namespace)
    dview = rc[:]
    dview["x"] = 11
    with pytest.warns(RuntimeWarning, match="getx reads the global 'x'"):
        assert dview.apply_sync(corral.interactive(namespace["getx"])) == [11, 11]
