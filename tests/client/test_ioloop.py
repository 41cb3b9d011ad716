"""The client's I/O thread against a real cluster: the hand-off from user threads, and what
happens to every later call once the thread has died."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from corral.client.client import Client
from corral.errors import ConnectionError
from tests.conftest import running_cluster
from tests.polling import file_appears

cloudpickle.register_pickle_by_value(sys.modules[__name__])

PROMPT = 10.0  # seconds: far more than a failing call needs, far less than for ever


def outcome_within(call: Callable[[], Any], timeout: float = PROMPT) -> BaseException | None:
    """Run ``call`` on a helper thread and return what it raised (None if it returned); fail
    the test, instead of hanging it, if the call is still blocked after ``timeout``."""
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result.append(exc)
        else:
            result.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the call was still blocked after {timeout} s"
    return result[0]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Any]:
    """Two engines this test may leave busy: they are stopped with the cluster."""
    with running_cluster(tmp_path / "clusters", 2) as cluster:
        yield cluster


def test_a_failed_io_thread_makes_every_call_fail_at_once(own_cluster: Any, tmp_path: Path) -> None:
    """A user's done callback that calls sys.exit() runs on the I/O thread and ends its loop
    (concurrent.futures catches only Exception). The request still in flight then fails, and
    every later call raises ConnectionError naming the cause instead of blocking for ever."""
    rc = Client(own_cluster.path / "corral-client.json", timeout=30)
    try:
        rc.wait_for_engines(2, timeout=30)
        in_flight = rc[1].apply_async(file_appears, str(tmp_path / "never"), 120)
        go = tmp_path / "go"
        fatal = rc[0].apply_async(file_appears, str(go), 60)
        fatal.add_done_callback(lambda _: sys.exit("a done callback called sys.exit"))
        go.touch()
        assert fatal.get(timeout=30) == str(go)
        rc._io._thread.join(30)  # noqa: SLF001
        assert not rc._io._thread.is_alive(), "the I/O thread did not end"  # noqa: SLF001

        error = outcome_within(lambda: in_flight.get(timeout=60))
        assert isinstance(error, ConnectionError)
        assert "SystemExit" in str(error)

        calls: dict[str, Callable[[], Any]] = {
            "apply_sync": lambda: rc[0].apply_sync(abs, -1),
            "load-balanced apply": lambda: rc.load_balanced_view().apply_async(abs, -1),
            "queue_status": rc.queue_status,
            "clear": rc.clear,
            "get_result": lambda: rc.get_result("an-id-this-client-never-sent"),
            "wait_for_engines": lambda: rc.wait_for_engines(3),
        }
        for name, call in calls.items():
            started = time.monotonic()
            error = outcome_within(call)
            assert isinstance(error, ConnectionError), (name, error)
            assert "I/O thread failed" in str(error) and "SystemExit" in str(error), name
            assert time.monotonic() - started < PROMPT, name
        assert rc._io.closed  # noqa: SLF001
    finally:
        assert outcome_within(rc.close) is None
    assert outcome_within(rc.close) is None  # closing again does nothing


def test_closed_client_refuses_calls_with_a_clear_error(own_cluster: Any) -> None:
    rc = Client(own_cluster.path / "corral-client.json", timeout=30)
    rc.wait_for_engines(2, timeout=30)
    rc.close()
    error = outcome_within(lambda: rc[0].apply_sync(abs, -1))
    assert isinstance(error, ConnectionError)
    assert "client is closed" in str(error)


def test_many_short_lived_submitting_threads_leak_no_file_descriptor(rc: Client) -> None:
    """Each thread submits and waits for its result, then ends. The hand-off to the I/O
    thread must not hold anything per thread: the process's descriptors stay flat."""
    view = rc.load_balanced_view()
    assert view.apply_async(abs, -1).get(timeout=30) == 1  # warm: lazily opened files, if any
    before = open_fds()
    failures: list[BaseException] = []

    def submit(value: int) -> None:
        try:
            assert view.apply_async(abs, -value).get(timeout=60) == value
            assert rc[value % 2].apply_sync(abs, -value) == value
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    for batch in range(10):
        threads = [threading.Thread(target=submit, args=(batch * 20 + i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive()
    assert not failures, failures[:3]
    assert open_fds() - before <= 2, f"{open_fds() - before} descriptors more after 200 threads"
