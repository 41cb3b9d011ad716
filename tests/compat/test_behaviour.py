"""The four behaviours issue 11 found different from ipyparallel, and the Client calls it
added, each on a real cluster."""

from __future__ import annotations

import concurrent.futures
import importlib
import os
import sys

import pytest

import corral
from corral import error
from corral.client.asyncresult import AsyncHubResult
from corral.client.client import Client
from tests.compat.conftest import loud_sleep
from tests.polling import until


@corral.interactive
def marked() -> bool:
    return bool(globals().get("can_run_here"))


def test_an_unmet_depend_is_tried_on_another_engine(rc) -> None:  # type: ignore[no-untyped-def]
    """Not an error: the scheduler sends the task where the condition holds (no retries set),
    and raises ImpossibleDependency only when no engine can run it."""
    chosen = rc.ids[-1]
    rc[:].push({"can_run_here": False}, block=True)
    rc[chosen].push({"can_run_here": True}, block=True)

    @corral.depend(marked)
    def where() -> int:
        return os.getpid()

    view = rc.load_balanced_view()
    pid = rc[chosen].apply_sync(os.getpid)
    for _ in range(4):  # whichever engine the scheduler tries first
        ar = view.apply_async(where)
        assert ar.get(30) == pid and ar.engine_id == chosen
    rc[:].push({"can_run_here": False}, block=True)
    with pytest.raises(error.ImpossibleDependency, match="could not meet"):
        view.apply_sync(where)


def test_a_require_that_fails_everywhere_is_impossible(rc) -> None:  # type: ignore[no-untyped-def]
    @corral.require("no_such_module_anywhere")
    def needs() -> int:
        return 1

    with pytest.raises(error.ImpossibleDependency):
        rc.load_balanced_view().apply_sync(needs)

    @corral.require("colorsys")
    def fine() -> str:
        return colorsys.__name__  # type: ignore[name-defined]  # noqa: F821

    assert rc.load_balanced_view().apply_sync(fine) == "colorsys"


def test_after_and_follow_on_direct_tasks_are_honoured(rc) -> None:  # type: ignore[no-untyped-def]
    target = rc.ids[0]
    direct = rc[target].apply_async(loud_sleep, 0.5)
    view = rc.load_balanced_view()
    with view.temp_flags(after=direct):
        later = view.apply_async(loud_sleep, 0)
    with view.temp_flags(follow=direct):
        there = [view.apply_async(os.getpid) for _ in range(4)]
    assert later.get(30) == 0
    assert later.started >= direct.completed  # ran after the direct task, not refused
    pid = rc[target].apply_sync(os.getpid)
    assert [ar.get(30) for ar in there] == [pid] * 4  # ran where it ran
    failed = rc[target].apply_async(lambda: 1 / 0)
    with view.temp_flags(after=failed):
        impossible = view.apply_async(os.getpid)
    with pytest.raises(error.ImpossibleDependency):
        impossible.get(30)


def test_a_second_client_gets_pending_results_and_errors(rc, cluster) -> None:  # type: ignore[no-untyped-def]
    running = rc[0].apply_async(loud_sleep, 1)
    failing = rc[1].apply_async(lambda: 1 / 0)
    with cluster.connect() as other:
        # asked at once: the Hub may not have seen them yet, and that is not an error
        fetched = other.get_result(running.msg_ids[0])
        assert isinstance(fetched, AsyncHubResult) and not fetched.done()
        assert fetched.get(30) == 1
        with pytest.raises(error.RemoteError) as info:
            other.get_result(failing.msg_ids[0]).get(30)
        assert info.value.ename == "ZeroDivisionError"
    # a msg_id the Hub never sees fails once the client's own timeout has passed
    with Client(cluster.path / "corral-client.json", timeout=1) as impatient:
        with pytest.raises(corral.errors.QueryError, match="no such msg_id"):
            impatient.get_result("never-submitted").get(30)


def test_queue_status_verbose_lists_msg_ids(rc) -> None:  # type: ignore[no-untyped-def]
    ar = rc[0].apply_async(loud_sleep, 2)
    until(lambda: ar.stdout, 30, "the task to start")
    # the Hub learns of a direct request from the engine's copy, on a path of its own: the
    # task's output can reach the client (and its query the Hub) a moment before that copy
    status = until(
        lambda: ar.msg_ids[0] in (found := rc.queue_status(verbose=True))[0]["queue"] and found,
        1.5,
        "the Hub to list the running task",
    )
    assert isinstance(status["unassigned"], list)
    assert ar.msg_ids[0] in status[0]["queue"]
    ar.get(30)
    counts = rc.queue_status()
    assert isinstance(counts["unassigned"], int) and isinstance(counts[0]["completed"], int)
    assert set(rc.queue_status(0)) == {"queue", "tasks", "completed"}


def test_client_calls_of_ipyparallel(rc, cluster) -> None:  # type: ignore[no-untyped-def]
    info = dict(__import__("orjson").loads(cluster.connect().connection_file.read_bytes()))
    by_dict = Client(info)
    by_profile = Client(profile=cluster.cluster_id, ipython_dir=cluster.base_dir)
    by_url = Client(url_file=str(cluster.path / "corral-client.json"), context=object())
    try:
        for client in (by_dict, by_profile, by_url):
            assert client.ids == rc.ids
        by_dict.spin()
        by_dict.spin_thread()
        by_dict.stop_spin_thread()
        assert by_dict.wait_for_engines(len(rc.ids)) is None
        future = by_dict.wait_for_engines(len(rc.ids), block=False)
        assert isinstance(future, concurrent.futures.Future) and future.result(30) is None
        with pytest.raises(TimeoutError):
            by_dict.wait_for_engines(len(rc.ids) + 1, timeout=0.1)
        later = by_dict.wait_for_engines(len(rc.ids) + 1, timeout=0.2, block=False)
        with pytest.raises(TimeoutError):
            later.result(30)
        with pytest.raises(ValueError, match="restart"):
            by_dict.shutdown(restart=True)
        with pytest.raises(ValueError, match="SSH"):
            Client(info, sshserver="somewhere")
        plain = concurrent.futures.Future()
        plain.set_result(1)
        assert by_dict.wait([plain, by_dict[0].apply_async(os.getpid)], timeout=30)
        assert isinstance(by_dict.broadcast_view(), corral.BroadcastView)
        with pytest.raises(IndexError):
            by_dict[99]
    finally:
        for client in (by_dict, by_profile, by_url):
            client.close(linger=0)


def test_an_owning_asyncresult_takes_its_results_from_the_client(rc, cluster) -> None:  # type: ignore[no-untyped-def]
    """ipyparallel's owner rule: a view's AsyncResult (and get_result's by default) takes its
    results and metadata out of client.results/metadata once done, and keeps them."""
    ar = rc[rc.ids[-1]].apply_async(os.getpid)
    pid = ar.get(30)
    msg_id = ar.msg_ids[0]
    assert msg_id not in rc.results and msg_id not in rc.metadata
    assert rc.metadata[msg_id]["status"] is None  # reads as empty, as there
    assert ar.metadata["status"] == "ok" and ar.get(0) == pid  # the owner keeps them
    assert rc.get_result(msg_id).get(0) == pid  # still found without the Hub
    with cluster.connect() as other:
        until(lambda: msg_id in other.hub_history(), 30, "the Hub to record it")
        kept = other.get_result(msg_id, owner=False)
        assert kept.get(30) == pid
        assert other.results[msg_id] == pid and other.metadata[msg_id]["status"] == "ok"
        assert dict(other.results) == {msg_id: pid} and len(other.metadata) == 1
        owned = other.get_result(msg_id)  # owner=True: takes them once done
        assert owned.get(30) == pid
        assert msg_id not in other.results and not other.results
        other.results[msg_id] = "written back"  # the client holds it again
        assert other.results[msg_id] == "written back"


def test_purging_results(rc) -> None:  # type: ignore[no-untyped-def]
    ar = rc[:].apply_async(os.getpid)
    ar.get(30)
    busy = rc[0].apply_async(loud_sleep, 1)
    with pytest.raises(RuntimeError):
        rc.purge_local_results(busy)
    with pytest.raises(RuntimeError):
        rc.purge_local_results("all")
    busy.get(30)
    rc.purge_local_results(ar)
    assert not set(ar.msg_ids) & set(rc._records.results)
    until(lambda: set(ar.msg_ids) <= set(rc.hub_history()), 30, "the Hub to record them")
    rc.purge_hub_results(ar)
    assert not set(ar.msg_ids) & set(rc.hub_history())
    rc[:].apply_sync(os.getpid)
    rc.wait(timeout=30)
    until(lambda: not rc.queue_status()["unassigned"], 30, "the Hub to settle")
    rc.purge_everything()
    assert not rc._records.results and not rc.history and rc.hub_history() == []
    md = rc.metadata["never-sent"]  # metadata reads as empty for unknown ids, as there
    assert md["engine_id"] is None


def test_dependent_prepickled_and_canned_on_engines(rc) -> None:  # type: ignore[no-untyped-def]
    """ipyparallel's ``dependent`` moves a task to the engine where its condition holds;
    PrePickled and Canned objects reach engines as the objects they wrap."""
    chosen = rc.ids[0]
    rc[:].push({"can_run_here": False}, block=True)
    rc[chosen].push({"can_run_here": True}, block=True)
    where = corral.dependent(os.getpid, marked)
    assert rc.load_balanced_view().apply_sync(where) == rc[chosen].apply_sync(os.getpid)
    rc[:].push({"can_run_here": False}, block=True)
    with pytest.raises(error.ImpossibleDependency):
        rc.load_balanced_view().apply_async(where).get(30)
    shared = corral.PrePickled(list(range(1000)))
    assert rc[:].apply_sync(lambda values: (type(values).__name__, sum(values)), shared) == [
        ("list", 499500)
    ] * len(rc.ids)
    canned = corral.can(lambda x: x * 3)
    assert rc[:].apply_sync(lambda c, x: corral.uncan(c)(x), canned, 5) == [15] * len(rc.ids)


def test_hub_history_is_in_submission_order(rc) -> None:  # type: ignore[no-untyped-def]
    """As ipyparallel's (its test_hub_history): oldest ``submitted`` first, although the Hub
    learns of direct requests from their engines and of load-balanced ones from the scheduler,
    in another order than they were sent."""
    balanced = rc.load_balanced_view()
    results = []
    for _ in range(20):
        results.append(rc[0].apply_async(os.getpid))
        results.append(balanced.apply_async(os.getpid))
        results.append(rc[1].apply_async(os.getpid))
    sent = [msg_id for result in results for msg_id in result.msg_ids]
    rc.wait(results, timeout=30)
    until(lambda: not rc.result_status(sent)["pending"], 30, "the Hub to record every task")
    history = rc.hub_history()
    records = {r["msg_id"]: r["submitted"] for r in rc.db_query({"msg_id": {"$in": sent}})}
    ours = [msg_id for msg_id in history if msg_id in records]
    assert sorted(ours) == sorted(sent)
    dates = [records[msg_id] for msg_id in ours]
    assert dates == sorted(dates)


def test_engines_import_from_their_working_directory(rc, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """As ipyparallel's engines (its daVinci example): after ``view.apply(os.chdir, folder)``
    a module in that folder is importable there, also when a function of it is pickled by
    reference."""
    name = f"corral_cwd_probe_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text("def triple(x):\n    return 3 * x\n")
    view = rc[:]
    before = view.apply_sync(os.getcwd)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)
        view.apply_sync(os.chdir, str(tmp_path))
        assert view.apply_sync(lambda n: __import__(n).triple(2), name) == [6, 6]
        assert view.apply_sync(module.triple, 5) == [15, 15]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
        for engine_id, folder in zip(rc.ids, before, strict=True):
            rc[engine_id].apply_sync(os.chdir, folder)


@corral.interactive
def save_to_history(value: int) -> None:
    global history  # the engine's namespace: pushed there
    history.append(value)  # type: ignore[name-defined]  # noqa: F821


def test_an_interactive_callback_argument_writes_the_engine_namespace(rc) -> None:  # type: ignore[no-untyped-def]
    """As ipyparallel (its wave2D example passes ``user_action=wave_saver``): a ``__main__``
    or ``@interactive`` function given as an argument, or inside a list argument, runs with
    the engine's namespace as its globals, so it sees and updates pushed names."""
    view = rc[:]
    view.push({"history": []}, block=True)

    def run(steps: int, user_action=None, more=()) -> int:  # type: ignore[no-untyped-def]
        for step in range(steps):
            user_action(step)
            for action in more:
                action(10 + step)
        return steps

    assert view.apply_sync(run, 2, user_action=save_to_history) == [2, 2]
    assert view.apply_sync(run, 1, save_to_history, [save_to_history]) == [1, 1]
    assert view.pull("history", block=True) == [[0, 1, 0, 10], [0, 1, 0, 10]]
