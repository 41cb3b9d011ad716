"""A thread waiting for a result reads the request socket's replies itself
(corral/client/socket_gate.py, ``SocketGate.lead``): its own reply, other threads' replies in
the order the socket gave them, many threads at once, timeouts kept, a close while it waits,
a Ctrl-C that cuts its handling; then the same through a Client on a real cluster."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from corral import native
from corral.bundles import bundle
from corral.client.client import Client
from corral.client.records import Records
from corral.client.requestfuture import RequestFuture
from corral.client.socket_gate import LEADING, SocketGate, _Waker
from corral.protocol.session import Message, Session
from tests.client.standin import ControllerStandIn
from tests.polling import until

BOUND = 10.0  # seconds: only separates "happened" from "hung"
KEY = b"reading-while-waiting-key"

pytestmark = pytest.mark.skipif(not LEADING, reason="a waiting thread reads only on Linux")


def _run_now(call: Any) -> None:
    call()


class Settler:
    """A Handler that settles a future per request, noting which thread handled each reply."""

    def __init__(self) -> None:
        self.futures: dict[str, RequestFuture] = {}
        self.handled: list[tuple[str, int]] = []  # (parent msg_id, thread ident), in order
        self.again: list[str] = []
        self.interrupt_next = threading.Event()  # the next reply read off the I/O thread raises
        self.nested: Any = None  # called (once) from the next reply's handling off the I/O thread
        self.io_thread: int | None = None
        self.lock = threading.Lock()
        self.on_news: Any = None  # called with each notification

    def expect(self, msg_id: str) -> RequestFuture:
        future = RequestFuture(_run_now, "mux")
        self.futures[msg_id] = future
        return future

    def on_reply(self, msg: Message) -> None:
        parent = msg.parent_id or ""
        me = threading.get_ident()
        if me != self.io_thread and self.interrupt_next.is_set():
            self.interrupt_next.clear()
            raise KeyboardInterrupt  # as Ctrl-C would, in the middle of handling
        nested, self.nested = self.nested, None
        if nested is not None and me != self.io_thread:
            nested()  # as a signal handler calling get() would, in the middle of handling
        with self.lock:
            self.handled.append((parent, me))
        self.futures[parent].set_result(msg)

    def on_reply_again(self, msg: Message) -> None:
        self.again.append(msg.parent_id or "")
        self.on_reply(msg)

    def on_notification(self, msg: Message) -> None:
        if self.on_news is not None:
            self.on_news(msg)

    def on_iopub(self, msg: Message) -> None: ...

    def on_closed(self) -> None:
        for future in self.futures.values():
            if not future.done():
                future.set_exception(ConnectionError("closed"))

    def on_link(self, up: bool) -> None: ...


class StandIn(ControllerStandIn):
    """A controller's mux ROUTER on loopback (and the other sockets a ClientIO connects to),
    an engine's session to answer with, and a ClientIO."""

    def __init__(self) -> None:
        self.engine = Session(KEY)
        self.handler = Settler()
        super().__init__(KEY, self.handler, BOUND)
        self.io.call_soon(lambda: setattr(self.handler, "io_thread", threading.get_ident()))
        until(lambda: self.handler.io_thread is not None, BOUND, "the I/O thread's ident")
        self.identity = self.session.session_id.encode()
        self.gate: SocketGate = self.io._gates[b"mux"]  # noqa: SLF001

    def request(self) -> tuple[Message, RequestFuture]:
        msg = self.session.msg("apply_request", {})
        return msg, self.handler.expect(msg.msg_id)

    def reply(self, request: Message) -> None:
        """The engine's reply to ``request``, sent from the controller's mux socket."""
        reply = self.engine.msg("apply_reply", {"status": "ok"}, parent=request)
        self.sockets["mux"].send_multipart([self.identity, *self.engine.serialize(reply)])

    def notify(self, number: int = 0) -> None:
        """A notification from the Hub (what it says does not matter to the ClientIO; the
        tests number their probes by its ``id``)."""
        msg = self.session.msg("unregistration_notification", {"id": number, "uuid": "e"})
        self.sockets["notification"].send_multipart(self.session.serialize(msg))

    def subscribed(self) -> None:
        """Wait until notifications reach the client and none of the probes sent to find out
        is still on its way: a late probe would make the I/O thread read the mux socket
        (``catch_up``) in the middle of what a test arranges. Probes before the subscription
        took hold are dropped; those after one that arrived all arrive, in order."""
        seen: list[int] = []
        self.handler.on_news = lambda msg: seen.append(msg.content["id"])
        sent = 0

        def probe() -> bool:
            nonlocal sent
            if seen:
                return seen[-1] == sent  # the last probe arrived: none is on its way
            sent += 1
            self.notify(sent)
            return False

        until(probe, BOUND, "the notification subscription")

    def leading(self) -> bool:
        """Whether a thread leads, its lead wholly taken: ``_leader`` is set under the gate's
        lock before the socket's descriptor leaves the I/O thread's set, so a reply sent as
        soon as it is set could still wake the I/O thread, which then read it (and a test that
        expected the leader to read it failed: a CI run's
        test_a_notification_is_handled_after_the_replies_already_received). The lock free
        again after it was set means the leader's block under it has ended."""
        gate = self.gate
        return gate._leader is not None and not gate.lock.locked()  # noqa: SLF001


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    with StandIn() as running:
        yield running


def _running(thread: int | None, function: str) -> bool:
    """Whether ``thread`` is inside a call of ``function`` now."""
    frame = sys._current_frames().get(thread or 0)  # noqa: SLF001
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def _after(condition: Any, then: Any) -> threading.Thread:
    """A thread that runs ``then()`` once ``condition()`` holds (bounded)."""

    def run() -> None:
        until(condition, BOUND, "the condition to send on")
        then()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_waiting_thread_reads_and_settles_its_own_reply(stand_in: StandIn) -> None:
    request, future = stand_in.request()
    replier = _after(stand_in.leading, lambda: stand_in.reply(request))
    assert stand_in.io.wait_reading("mux", future, BOUND)
    replier.join(BOUND)
    assert future.done()
    assert stand_in.handler.handled == [(request.msg_id, threading.get_ident())]
    assert not stand_in.leading()
    assert stand_in.gate.led == 1


def test_the_leader_settles_other_threads_replies_in_the_order_they_came(
    stand_in: StandIn,
) -> None:
    """One thread leads, waiting for the last of five replies; four other threads wait on
    theirs as followers. The leader reads and settles all five, in the socket's order, and
    wakes the others."""
    requests = [stand_in.request() for _ in range(5)]
    woken: list[Any] = []

    def follow(future: RequestFuture) -> None:
        woken.append(future.result(BOUND))

    followers = [threading.Thread(target=follow, args=(f,)) for _, f in requests[:4]]
    for follower in followers:
        follower.start()

    def reply_all() -> None:
        for request, _ in requests:
            stand_in.reply(request)

    replier = _after(stand_in.leading, reply_all)
    last = requests[-1][1]
    assert stand_in.io.wait_reading("mux", last, BOUND)
    for thread in (replier, *followers):
        thread.join(BOUND)
        assert not thread.is_alive()
    assert last.done() and len(woken) == 4
    me = threading.get_ident()
    assert stand_in.handler.handled == [(request.msg_id, me) for request, _ in requests]


def test_only_one_thread_leads_and_the_others_wait_as_before(stand_in: StandIn) -> None:
    first, first_future = stand_in.request()
    second, second_future = stand_in.request()
    outcome: list[bool] = []
    leader = threading.Thread(
        target=lambda: outcome.append(stand_in.io.wait_reading("mux", first_future, BOUND))
    )
    leader.start()
    until(stand_in.leading, BOUND, "the first thread to lead")
    assert not stand_in.io.wait_reading("mux", second_future, BOUND)  # refused at once
    stand_in.reply(second)
    stand_in.reply(first)
    assert second_future.result(BOUND).parent_id == second.msg_id
    leader.join(BOUND)
    assert outcome == [True] and first_future.done()


def test_many_threads_in_round_trips_each_get_their_own_reply(stand_in: StandIn) -> None:
    """Eight threads, each 150 round trips (send itself, then wait reading or following),
    an engine answering every request in the order it came: every result reaches its own
    thread, and the replies are handled in the order the socket gave them."""
    threads, each = 8, 150
    stop = threading.Event()
    answered: list[str] = []

    def engine() -> None:
        mux = stand_in.sockets["mux"]
        poller = zmq.Poller()
        poller.register(mux, zmq.POLLIN)
        while not stop.is_set():
            if not poller.poll(50):
                continue
            frames = mux.recv_multipart()
            request = stand_in.session.feed(frames[2:])
            answered.append(request.msg_id)
            stand_in.reply(request)

    failures: list[BaseException] = []

    def round_trips() -> None:
        try:
            for _ in range(each):
                request, future = stand_in.request()
                frames = stand_in.session.serialize(request, [b"engine-a"])
                stand_in.io.send(b"mux", frames, at_once=True)
                deadline = time.monotonic() + BOUND
                while not future.done() and time.monotonic() < deadline:
                    if not stand_in.io.wait_reading("mux", future, 0.05):
                        _follow(future, 0.05)
                assert future.result(0).parent_id == request.msg_id
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            failures.append(exc)

    server = threading.Thread(target=engine)
    server.start()
    workers = [threading.Thread(target=round_trips) for _ in range(threads)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(4 * BOUND)
            assert not worker.is_alive()
    finally:
        stop.set()
        server.join(BOUND)
    assert not failures, failures
    handled = [parent for parent, _ in stand_in.handler.handled]
    assert handled == answered  # each reply once, in the socket's order
    assert len(handled) == threads * each
    assert stand_in.gate.led > 0


def _follow(future: RequestFuture, timeout: float) -> None:
    try:
        future.exception(timeout)
    except TimeoutError:
        pass


def test_a_wait_that_times_out_gives_the_socket_back_to_the_io_thread(
    stand_in: StandIn,
) -> None:
    request, future = stand_in.request()
    started = time.monotonic()
    assert stand_in.io.wait_reading("mux", future, 0.2)
    waited = time.monotonic() - started
    assert not future.done()
    assert 0.2 <= waited < 0.2 + BOUND / 2  # never early; late only by the machine's load
    assert not stand_in.leading()
    stand_in.reply(request)  # read by the I/O thread now
    assert future.result(BOUND).parent_id == request.msg_id
    assert stand_in.handler.handled == [(request.msg_id, stand_in.handler.io_thread)]


def test_a_notification_is_handled_after_the_replies_already_received(
    stand_in: StandIn,
) -> None:
    """An engine's unregistration fails what it has not answered: a reply it sent before it
    left, received while the thread leading the socket is busy, is handled first."""
    stand_in.subscribed()
    request_b, future_b = stand_in.request()
    request_a, future_a = stand_in.request()
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:  # the leader, inside its handling of B's reply
        busy.set()
        release.wait(BOUND)

    stand_in.handler.nested = hold
    leader = threading.Thread(target=stand_in.gate.lead, args=(future_b, BOUND))
    leader.start()
    until(stand_in.leading, BOUND, "a leader")
    stand_in.reply(request_b)
    assert busy.wait(BOUND)
    stand_in.reply(request_a)  # here before the notification, unread: the leader is busy
    done_at_news: list[bool] = []
    stand_in.handler.on_news = lambda msg: done_at_news.append(future_a.done())
    stand_in.notify()
    io_thread = stand_in.handler.io_thread
    # the I/O thread handled the news at once (A unanswered), or waits to read A first; a
    # compiled socket_gate (make native) has no Python frame for catch_up to be seen in, so
    # there the leader is released at once and only the order below is checked
    if native.install():  # from source (install says why): catch_up's frame can be seen
        until(lambda: done_at_news or _running(io_thread, "catch_up"), BOUND, "the news received")
    release.set()
    until(lambda: done_at_news, BOUND, "the notification handled")
    assert done_at_news == [True]
    leader.join(BOUND)
    assert future_b.done()


def test_closing_the_client_wakes_a_thread_that_waits_reading() -> None:
    running = StandIn()
    _, future = running.request()
    returned = threading.Event()

    def wait() -> None:
        running.io.wait_reading("mux", future, 4 * BOUND)
        returned.set()

    waiter = threading.Thread(target=wait)
    try:
        waiter.start()
        until(running.leading, BOUND, "the waiting thread to lead")
        running.io.close()
        assert returned.wait(BOUND), "the waiting thread did not wake when the client closed"
        waiter.join(BOUND)
        assert isinstance(future.exception(0), ConnectionError)
        assert running.gate._lead_set is None  # noqa: SLF001 - closed by the leader
    finally:
        running.close()


def test_a_ctrl_c_that_cuts_the_handling_loses_no_reply(stand_in: StandIn) -> None:
    """The first reply read by the waiting thread raises KeyboardInterrupt in its handling
    (as Ctrl-C would): the wait raises it, and the I/O thread settles that reply and the one
    read with it, in order."""
    first, first_future = stand_in.request()
    second, second_future = stand_in.request()
    stand_in.handler.interrupt_next.set()

    def reply_both() -> None:
        stand_in.reply(first)
        stand_in.reply(second)

    replier = _after(stand_in.leading, reply_both)
    with pytest.raises(KeyboardInterrupt):
        deadline = time.monotonic() + BOUND
        while not second_future.done() and time.monotonic() < deadline:
            stand_in.io.wait_reading("mux", second_future, BOUND)
    replier.join(BOUND)
    assert first_future.result(BOUND).parent_id == first.msg_id
    assert second_future.result(BOUND).parent_id == second.msg_id
    assert [parent for parent, _ in stand_in.handler.handled] == [first.msg_id, second.msg_id]
    assert stand_in.handler.again == [first.msg_id]
    assert not stand_in.leading()


def test_a_bundles_replies_are_each_settled_once_in_order_and_a_ctrl_c_loses_none(
    stand_in: StandIn,
) -> None:
    """Six replies in one bundle (as the scheduler sends them): the waiting thread splits it
    once and handles its messages without looking at them again; a Ctrl-C cutting the
    handling of the first leaves it and the five after it to the I/O thread, in order."""
    requests = [stand_in.request() for _ in range(6)]
    stand_in.handler.interrupt_next.set()
    engine = stand_in.engine

    def reply_bundled() -> None:
        replies = [
            engine.serialize(engine.msg("apply_reply", {"status": "ok"}, parent=request))
            for request, _ in requests
        ]
        stand_in.sockets["mux"].send_multipart(bundle([stand_in.identity], replies))

    replier = _after(stand_in.leading, reply_bundled)
    last = requests[-1][1]
    with pytest.raises(KeyboardInterrupt):
        deadline = time.monotonic() + BOUND
        while not last.done() and time.monotonic() < deadline:
            stand_in.io.wait_reading("mux", last, BOUND)
    replier.join(BOUND)
    for request, future in requests:
        assert future.result(BOUND).parent_id == request.msg_id
    handled = [parent for parent, _ in stand_in.handler.handled]
    assert handled == [request.msg_id for request, _ in requests]
    assert stand_in.handler.again == [requests[0][0].msg_id]
    assert not stand_in.leading()


def test_a_waker_left_behind_writes_nothing_once_its_gate_closed() -> None:
    """A Ctrl-C between adding a leader's waker to a future and removing it leaves it there;
    settled after the client closed, the future must not write to a descriptor closed since
    (its number may be another file's by then)."""
    running = StandIn()
    gate = running.gate
    waker = _Waker(gate, gate._wake_fd, leader=-1)  # noqa: SLF001
    running.close()
    assert gate._wake_fd == -1  # noqa: SLF001
    waker.release()  # nothing written, nothing raised


def test_a_wait_reading_inside_the_leaders_handling_reads_on(stand_in: StandIn) -> None:
    """A signal handler that calls get() runs in the middle of whatever the main thread does,
    its handling of a reply too: that inner wait reads on (the leader's reading is
    reentrant, and the messages the interrupted reading had received but not handled are
    the gate's, handled first) instead of waiting for a reply nobody reads."""
    first, first_future = stand_in.request()
    second, second_future = stand_in.request()
    inner: list[bool] = []

    def wait_inside() -> None:
        inner.append(stand_in.io.wait_reading("mux", second_future, BOUND))

    def reply_both() -> None:
        stand_in.reply(first)
        stand_in.reply(second)  # read with the first, or after it: by the inner wait either way

    stand_in.handler.nested = wait_inside
    replier = _after(stand_in.leading, reply_both)
    assert stand_in.io.wait_reading("mux", first_future, BOUND)
    replier.join(BOUND)
    assert inner == [True]
    assert second_future.done() and first_future.done()
    me = threading.get_ident()
    assert stand_in.handler.handled == [(second.msg_id, me), (first.msg_id, me)]
    assert not stand_in.leading()


# ------------------------------------------------------------------ the records, without sockets


def test_a_reply_handled_again_settles_a_request_the_cut_took_from_pending() -> None:
    records = Records()
    session = Session(KEY)
    request = session.msg("apply_request", {})
    future = records.track(request, "mux")
    reply = session.msg("apply_reply", {"status": "ok"}, parent=request)
    records.pending.pop(request.msg_id)  # the cut: popped, never settled
    assert not records.handle_reply(reply)  # as a late reply: ignored
    assert records.handle_reply(reply, again=True)
    assert future.done()
    assert not records.handle_reply(reply, again=True)  # settled: late now


# ------------------------------------------------------------------ a Client on a cluster


def test_get_reads_its_reply_on_the_waiting_thread_and_threads_share_the_socket(
    rc: Client,
) -> None:
    direct, balanced = rc[0], rc.load_balanced_view()
    rc.wait(timeout=BOUND)
    for view, channel in ((direct, b"mux"), (balanced, b"task")):
        gate = rc._io.gate_of(channel.decode(), rc._engines[0])  # noqa: SLF001
        assert gate is not None
        before = gate.led
        assert [view.apply_async(abs, -n).get(BOUND) for n in range(20)] == list(range(20))
        assert gate.led > before
    results: dict[int, list[int]] = {}

    def round_trips(thread: int) -> None:
        view = direct if thread % 2 else balanced
        results[thread] = [view.apply_async(abs, -n).get(BOUND) for n in range(50)]

    workers = [threading.Thread(target=round_trips, args=(n,)) for n in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(4 * BOUND)
        assert not worker.is_alive()
    assert results == {n: list(range(50)) for n in range(6)}
    assert rc.wait([direct.apply_async(abs, -1), balanced.apply_async(abs, -2)], BOUND)


CTRL_C_SCRIPT = """
import pathlib, sys, time
import corral

def released(path, timeout):
    import os, time
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return path

rc = corral.Client(connection_file=sys.argv[1])
view = rc[rc.ids[0]]
result = view.apply_async(released, sys.argv[2], 60)
try:
    print("waiting", flush=True)
    result.get(60)
    print("not interrupted", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
pathlib.Path(sys.argv[2]).touch()
print(result.get(30) == sys.argv[2])
print([view.apply_async(abs, -n).get(30) for n in range(20)] == list(range(20)))
gate = rc._io.gate_of("mux", rc._engines[rc.ids[0]])
print(gate._leader is None, gate.led > 0)
rc.close()
"""


def test_ctrl_c_in_a_thread_waiting_in_get_leaves_the_client_working(
    cluster: Any, tmp_path: Path
) -> None:
    """Ctrl-C in a script waiting in ``get()`` (its main thread leading the mux socket, or
    about to): KeyboardInterrupt is raised there, and afterwards the same client gets that
    result and twenty more round trips, and nobody leads."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    child = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(cluster.path / "corral-client.json"),
            str(tmp_path / "go"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # SIGINT must raise KeyboardInterrupt in the child even when this run was started in
        # the background, whose children inherit SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "waiting"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=4 * BOUND)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(BOUND)
    assert child.returncode == 0, err
    assert out.split() == ["interrupted", "True", "True", "True", "True"], (out, err)
