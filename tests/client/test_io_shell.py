"""The client's I/O shell (its loop thread) against a real cluster: the hand-off from user
threads, callbacks kept off that thread, and what happens to every later call once the thread
has died."""

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
from tests.polling import file_appears, until

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


def _end_the_loop() -> None:
    """Runs on the I/O thread: SystemExit is not an Exception, so it leaves the loop."""
    raise SystemExit("the I/O loop was made to fail")


def test_a_failed_io_thread_makes_every_call_fail_at_once(own_cluster: Any, tmp_path: Path) -> None:
    """A failure that leaves the I/O thread's loop (SystemExit from a call on it) ends the
    thread. The request still in flight then fails, and every later call (get, apply, wait,
    queries) raises ConnectionError naming the cause instead of blocking for ever."""
    rc = Client(own_cluster.path / "corral-client.json", timeout=30)
    try:
        rc.wait_for_engines(2, timeout=30)
        in_flight = rc[1].apply_async(file_appears, str(tmp_path / "never"), 120)
        waited = rc[0].apply_async(file_appears, str(tmp_path / "never-either"), 120)
        io_thread = rc._io._owner  # noqa: SLF001
        rc._io.call_soon(_end_the_loop)  # noqa: SLF001
        until(lambda: not io_thread.alive, 30, "the I/O thread to end")
        assert isinstance(io_thread.failure, SystemExit)

        error = outcome_within(lambda: in_flight.get(timeout=60))
        assert isinstance(error, ConnectionError)
        assert "SystemExit" in str(error)
        assert outcome_within(lambda: waited.wait(60)) is None
        assert waited.done() and isinstance(waited.exception(), ConnectionError)

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
        assert outcome_within(lambda: rc.wait(timeout=60)) is None  # nothing left to wait for
        assert rc._io.closed  # noqa: SLF001
    finally:
        assert outcome_within(rc.close) is None
    assert outcome_within(rc.close) is None  # closing again does nothing


def test_a_blocking_done_callback_delays_no_other_result(rc: Client, tmp_path: Path) -> None:
    """A user's done-callback runs on the client's callbacks thread, not the routing thread:
    while one blocks (until the test releases it), other results still arrive and complete,
    and the blocked callback's own result is complete too."""
    release = threading.Event()
    entered = threading.Event()

    def blocking(_: Any) -> None:
        entered.set()
        release.wait(PROMPT * 6)

    try:
        # both requests stay unfinished until their callback is added (a request done
        # already runs it at once, on this thread)
        started = str(tmp_path / "start")
        first = rc[0].apply_async(file_appears, started, PROMPT * 3)
        first.add_done_callback(blocking)
        Path(started).touch()
        assert entered.wait(PROMPT * 3), "the done-callback never ran"
        assert first.done() and first.get(0) == started
        later = rc.load_balanced_view().map_async(abs, range(-50, 0), chunksize=5)
        assert later.get(timeout=PROMPT * 3) == list(range(50, 0, -1))
        assert not release.is_set()  # the callback was still blocked all along
        ran: list[str] = []
        ran_now = threading.Event()

        def record(done: Any) -> None:
            ran.append(done.result())
            ran_now.set()

        go = str(tmp_path / "go")
        queued = rc[1].apply_async(file_appears, go, PROMPT * 3)
        queued.add_done_callback(record)
        Path(go).touch()
        assert queued.get(timeout=PROMPT * 3) == go
        assert ran == []  # callbacks run in order: this one waits behind the blocked one
    finally:
        release.set()
    assert ran_now.wait(PROMPT * 3), "the queued callback never ran"
    assert ran == [go]


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


def test_close_stops_and_joins_every_thread_the_client_started(own_cluster: Any) -> None:
    """The I/O thread, the results and callbacks workers and a non-blocking wait_for_engines
    helper all end by the time close() returns; the wait fails with ConnectionError."""
    before = set(threading.enumerate())
    rc = Client(own_cluster.path / "corral-client.json", timeout=30)
    rc.wait_for_engines(2, timeout=30)
    tracked = rc[0].apply_async(abs, -1)
    tracked.add_done_callback(lambda _: None)
    assert tracked.get(timeout=PROMPT * 3) == 1
    waiting = rc.wait_for_engines(99, timeout=None, block=False)
    assert waiting is not None
    started = set(threading.enumerate()) - before
    names = sorted(thread.name for thread in started)
    assert any("client-io" in name for name in names), names
    assert any("wait-for-engines" in name for name in names), names
    assert outcome_within(rc.close) is None
    assert isinstance(waiting.exception(timeout=PROMPT), ConnectionError)
    alive = [thread.name for thread in started if thread.is_alive()]
    assert alive == [], alive


def _bound(sock: Any, port: int) -> bool:
    """Bind ``sock`` to ``port`` on loopback; False while the port is still taken."""
    import zmq

    try:
        sock.bind(f"tcp://127.0.0.1:{port}")
    except zmq.ZMQError:
        return False
    return True


class _LinkRecorder:
    """A Handler that keeps what the I/O thread reports of the controller link."""

    def __init__(self) -> None:
        self.links: list[bool] = []

    def on_reply(self, msg: Any) -> None: ...

    def on_reply_again(self, msg: Any) -> None: ...

    def on_notification(self, msg: Any) -> None: ...

    def on_iopub(self, msg: Any) -> None: ...

    def on_closed(self) -> None: ...

    def on_link(self, up: bool) -> None:
        self.links.append(up)


def test_a_drop_and_reconnection_read_in_one_turn_are_heard_as_down_then_up() -> None:
    """A controller restarted while the I/O thread was busy: its monitors then hold the
    disconnection and the new handshake together. The handler must still hear the link go
    down and come back (that is what makes the client resynchronise and resend), not nothing."""
    import zmq

    from corral.client.io_shell import ClientIO
    from corral.protocol.session import Session

    ctx: zmq.Context[Any] = zmq.Context()
    kinds = {"hub": zmq.ROUTER, "notification": zmq.XPUB, "mux": zmq.ROUTER}
    kinds |= {"control": zmq.ROUTER, "task": zmq.ROUTER, "iopub": zmq.XPUB}
    socks: dict[str, zmq.Socket[Any]] = {}
    ports: dict[str, int] = {}
    for name, kind in kinds.items():
        socks[name] = ctx.socket(kind)
        socks[name].linger = 0
        ports[name] = socks[name].bind_to_random_port("tcp://127.0.0.1")
    handler = _LinkRecorder()
    io = ClientIO(
        Session(b"link-test-key"),
        {name: f"tcp://127.0.0.1:{port}" for name, port in ports.items()},
        handler,
    )
    io.start(PROMPT)
    try:
        busy, release = threading.Event(), threading.Event()

        def hold() -> None:
            busy.set()
            release.wait(PROMPT)

        io.call_soon(hold)
        assert busy.wait(PROMPT)
        for name in ("hub", "notification"):  # the controller goes and comes back
            socks[name].close(linger=0)
        accepted: dict[str, zmq.Socket[Any]] = {}
        for name, kind in (("hub", zmq.ROUTER), ("notification", zmq.XPUB)):
            socks[name] = ctx.socket(kind)
            socks[name].linger = 0
            socks[name].monitor(f"inproc://{name}-accepted", zmq.EVENT_HANDSHAKE_SUCCEEDED)
            accepted[name] = ctx.socket(zmq.PAIR)
            accepted[name].connect(f"inproc://{name}-accepted")
            # the old socket releases its port soon
            sock, port = socks[name], ports[name]
            until(lambda: _bound(sock, port), PROMPT, f"{name} to bind again")  # noqa: B023
        # both client sockets are connected again before the I/O thread reads its monitors
        for name, events in accepted.items():
            assert events.poll(int(PROMPT * 1000)), f"the client's {name} did not come back"
            socks[name].monitor(None, 0)
            events.close(linger=0)
        release.set()
        until(lambda: handler.links[-1:] == [True], PROMPT, "the link to be reported up")
        # down, then up: once per socket when each monitor is read in turn, never nothing
        links = handler.links
        assert links[0] is False and links[-1] is True and len(links) in (2, 4), links
        assert all(a != b for a, b in zip(links, links[1:], strict=False)), links
    finally:
        io.close()
        for sock in socks.values():
            sock.close(linger=0)
        ctx.term()
