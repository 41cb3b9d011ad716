"""The engine's main-thread loop over its task sockets (corral.engine.task_shell), and how the
I/O thread borrows those sockets: real DEALERs on loopback, a ROUTER playing the MUX, the loop
on a thread of its own."""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import zmq

from corral.engine.alarm import open_alarm
from corral.engine.replies import parent_msg_id
from corral.engine.runner import EngineIdentity, Request, TaskRunner
from corral.engine.task_shell import HOLD_REPLIES, TaskShell
from corral.loop import Loop, LoopThread
from corral.protocol.serialize import deserialize_object, pack_apply_message
from corral.protocol.session import Message, Session
from corral.sharedmem import SharedMemory
from tests.wire import readable, recv_one, send_when_routable

WAIT = 10.0  # every wait bounded
KEY = b"task-shell-test-key"


@dataclass
class Served:
    shell: TaskShell
    mux: zmq.Socket[Any]  # the ROUTER the engine's mux DEALER connects to
    session: Session  # the client's
    limited: list[Request]
    task: zmq.Socket[Any]  # the ROUTER the engine's task DEALER connects to (the scheduler's)


@contextmanager
def served(guard: str = "alarm") -> Iterator[Served]:
    """A TaskShell serving DEALERs connected to a ROUTER, on a thread, stopped at the end.
    ``guard``: how held replies are sent at their deadline, as the engine does on Linux (an
    alarm polled by an I/O loop) or elsewhere (a deadline handed to the I/O thread)."""
    ctx: zmq.Context[Any] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a request before the DEALER connects: refused
    port = router.bind_to_random_port("tcp://127.0.0.1")
    task_router = ctx.socket(zmq.ROUTER)
    task_port = task_router.bind_to_random_port("tcp://127.0.0.1")
    dealers = []
    for at in (port, task_port):
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, b"engine")
        dealer.connect(f"tcp://127.0.0.1:{at}")
        dealers.append(dealer)
    engine_session = Session(KEY, session_id="engine")
    identity = EngineIdentity("engine", 0)
    limited: list[Request] = []
    failures: list[str] = []
    timers: list[threading.Timer] = []

    def hold_until(deadline: float) -> None:  # what the I/O thread does (Engine._send_held_at)
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), shell.send_held)
        timers.append(timer)
        timer.start()

    alarm = open_alarm() if guard == "alarm" else None
    assert guard == "hand-off" or alarm is not None, "no timerfd on this Linux"
    shell = TaskShell(
        engine_session,
        identity,
        SharedMemory(),
        logging.getLogger("test.task_shell"),
        watch_time_limit=limited.append,
        on_failure=failures.append,
        hold_until=hold_until,
        alarm=alarm,
    )
    shell.attach(dealers[0], dealers[1])

    def io_setup(loop: Loop) -> None:  # the engine's I/O thread polls the alarm so
        if alarm is not None:
            loop.add_reader(alarm.fd, shell.on_alarm)

    io_thread = LoopThread("task-shell-test-io", io_setup)
    io_thread.start()
    runner = TaskRunner(  # as the engine makes it: replies name their request
        engine_session,
        identity,
        shell.reply,
        mark_queue=shell.mark_queue,
        shm=SharedMemory(),
        reply=shell.reply,
    )
    thread = threading.Thread(target=shell.run, args=(runner,), name="task-shell-test")
    thread.start()
    try:
        yield Served(shell, router, Session(KEY, session_id="client"), limited, task_router)
    finally:
        shell.loop.stop()
        io_thread.stop()
        if alarm is not None:
            alarm.close()
        for timer in timers:
            timer.join(WAIT)
        thread.join(WAIT)
        assert not thread.is_alive(), "the task loop did not stop"
        shell.loop.close()
        assert failures == []
        for sock in (*dealers, router, task_router):
            sock.close(linger=0)
        ctx.term()


def send_apply(served: Served, f: Any, *args: Any, **metadata: Any) -> Message:
    msg = served.session.msg(
        "apply_request", {}, metadata=metadata, buffers=pack_apply_message(f, args, {})
    )
    frames = [b"engine", *served.session.serialize(msg, [b"client"])]
    send_when_routable(served.mux, frames, "the engine's mux DEALER")
    return msg


def reply_to(served: Served, request: Message) -> Message:
    """The next message the engine sends on mux, which must answer ``request``."""
    assert readable(served.mux, int(WAIT * 1000)), f"no reply to {request.msg_id}"
    frames = recv_one(served.mux)
    assert frames[0] == b"engine"
    reply = served.session.feed(frames[1:])
    assert reply.parent_id == request.msg_id
    assert reply.idents == (b"client",)
    return reply


def add(x: int, y: int) -> int:
    return x + y


def test_requests_are_run_and_answered_by_the_loop() -> None:
    with served() as s:
        requests = []
        for n in range(3):
            request = send_apply(s, add, n, 1)
            requests.append(request.msg_id)
            reply = reply_to(s, request)
            assert reply.content == {"status": "ok"}
            assert deserialize_object(list(reply.buffers)) == n + 1
        received = [note for note in s.shell.notes if note[0] == "received"]
        assert [note[1] for note in received] == requests  # left for the I/O thread's link core
        replied = [note for note in s.shell.notes if note[0] == "replied"]
        assert [note[3] for note in replied] == requests  # named: not parsed again there
        assert [parent_msg_id(note[2]) for note in replied] == requests


def test_a_load_balanced_request_is_noted_with_its_retries() -> None:
    """The I/O thread's link core keeps them, for a restarted controller that never recorded
    the request (corral.engine.replies.ReplyLog.balanced_tasks); a direct one has none."""
    with served() as s:
        direct = send_apply(s, add, 1, 1)
        reply_to(s, direct)
        requests = []
        for metadata in ({"retries": 3}, {}):
            msg = s.session.msg(
                "apply_request", {}, metadata=metadata, buffers=pack_apply_message(add, (2, 2), {})
            )
            frames = [b"engine", *s.session.serialize(msg, [b"client"])]
            send_when_routable(s.task, frames, "the engine's task DEALER")
            assert readable(s.task, int(WAIT * 1000)), "no reply on the task channel"
            recv_one(s.task)
            requests.append(msg.msg_id)
        received = [note[1:3] for note in s.shell.notes if note[0] == "received"]
        assert received == [(direct.msg_id, None), (requests[0], 3), (requests[1], 0)]


def test_a_time_limited_request_is_handed_to_the_io_thread() -> None:
    with served() as s:
        request = send_apply(s, add, 1, 1, time_limit=30)
        reply_to(s, request)
        assert [r.msg.msg_id for r in s.limited] == [request.msg_id]


def test_borrowing_while_the_loop_waits_ends_its_turn_and_gives_the_sockets_back() -> None:
    with served() as s:
        reply_to(s, send_apply(s, add, 1, 2))  # the loop is up, now waiting in its poll
        lent = threading.Event()

        def borrow() -> None:
            with s.shell.borrow():
                lent.set()

        borrower = threading.Thread(target=borrow)
        borrower.start()
        borrower.join(WAIT)
        assert lent.is_set() and not borrower.is_alive()
        reply = reply_to(s, send_apply(s, add, 2, 3))  # and the loop serves on
        assert deserialize_object(list(reply.buffers)) == 5


def test_while_a_task_runs_its_queue_is_aborted_at_once() -> None:
    """What an abort_request for every queued task does (IOShell._abort_queued): the I/O
    thread borrows the sockets while user code runs, reads what waits in them and answers it
    as aborted; the running task still ends and answers."""
    started, release = threading.Event(), threading.Event()

    def blocking() -> str:
        started.set()
        assert release.wait(WAIT)
        return "done"

    _CALLS["blocking"] = blocking  # run by name: the loop thread shares this process
    with served() as s:
        running = send_apply(s, _call, "blocking")
        assert started.wait(WAIT)
        queued = [send_apply(s, add, n, n) for n in range(3)]
        with s.shell.borrow():
            until_queued(s.shell, 3)
            s.shell.abort_queued("aborted by the test")
        for request in queued:
            assert (reply_to(s, request).content or {})["status"] == "aborted"
        release.set()
        assert deserialize_object(list(reply_to(s, running).buffers)) == "done"


_CALLS: dict[str, Any] = {}


def _call(name: str) -> Any:
    """Run the callable registered in this process under ``name`` (pickled by reference, so
    the loop thread finds the test's own objects)."""
    return _CALLS.pop(name)()


def until_queued(shell: TaskShell, count: int) -> None:
    """With the lock held: until ``count`` requests have been read into the queue."""
    deadline = threading.Event()
    for _ in range(1000):
        if shell.take_available() >= count:
            return
        deadline.wait(0.01)
    pytest.fail(f"{count} requests never reached the queue")


@pytest.mark.parametrize("guard", ["alarm", "hand-off"])
def test_replies_of_short_tasks_are_not_held_back_by_a_long_one(guard: str) -> None:
    """Tasks queued together run in one turn and their replies leave together; but a reply
    waits for the tasks behind it at most HOLD_REPLIES seconds: a long task behind a short
    one does not hold the short one's reply until it ends."""
    gate, long_task = threading.Event(), threading.Event()
    started = threading.Event()

    def first() -> str:
        started.set()
        assert gate.wait(WAIT)
        return "first"

    def last() -> str:
        assert long_task.wait(WAIT)
        return "last"

    _CALLS["first"], _CALLS["last"] = first, last
    with served(guard) as s:
        running = send_apply(s, _call, "first")
        assert started.wait(WAIT)
        short = send_apply(s, add, 20, 22)
        long_request = send_apply(s, _call, "last")
        with s.shell.borrow():
            until_queued(s.shell, 2)  # both wait behind the first: the same turn runs them
        gate.set()
        assert deserialize_object(list(reply_to(s, running).buffers)) == "first"
        assert deserialize_object(list(reply_to(s, short).buffers)) == 42
        assert not long_task.is_set()  # both answered while the long task still runs
        long_task.set()
        assert deserialize_object(list(reply_to(s, long_request).buffers)) == "last"


def test_a_bursts_last_alarm_is_left_armed_and_its_wake_up_sends_nothing_again() -> None:
    """The alarm armed for a batch's held replies is not disarmed when they leave (a system
    call per batch): it fires after the burst, and the I/O thread, finding nothing held and
    nothing running, sends nothing; the next request's reply is the next message."""
    gate, started = threading.Event(), threading.Event()

    def first() -> str:
        started.set()
        assert gate.wait(WAIT)
        return "first"

    _CALLS["first"] = first
    with served("alarm") as s:
        alarm = s.shell.alarm
        assert alarm is not None
        running = send_apply(s, _call, "first")
        assert started.wait(WAIT)
        queued = [send_apply(s, add, n, 1) for n in range(2)]
        with s.shell.borrow():
            until_queued(s.shell, 2)  # run in the first one's turn: started with replies held
        gate.set()
        assert deserialize_object(list(reply_to(s, running).buffers)) == "first"
        for n, request in enumerate(queued):
            assert deserialize_object(list(reply_to(s, request).buffers)) == n + 1
        assert alarm.armed  # left armed once the batch's replies left
        # its deadline is HOLD_REPLIES after the batch: readable then, until the I/O thread
        # reads it (which may be first: the wait is bounded by ten times that)
        select.select([alarm.fd], [], [], 10 * HOLD_REPLIES)
        after = send_apply(s, add, 2, 3)
        assert deserialize_object(list(reply_to(s, after).buffers)) == 5
        assert not readable(s.mux, 0)


@pytest.mark.parametrize("guard", ["alarm", "hand-off"])
def test_replies_too_young_at_a_deadline_get_a_deadline_of_their_own(guard: str) -> None:
    """A deadline that fires while a task runs and finds only replies younger than
    HOLD_REPLIES asks for theirs. Such a deadline is the direct socket's watch, armed as the
    task before started; the task after it started with those replies held and asked for
    none (one was pending): without a deadline of their own they waited for the running
    task's end, however long. The shell's state is set as its loop leaves it then (no
    socket carries anything: the decision alone is tested)."""
    ctx: zmq.Context[Any] = zmq.Context()
    dealers = [ctx.socket(zmq.DEALER) for _ in range(2)]
    asked: list[float] = []
    alarm = open_alarm() if guard == "alarm" else None
    assert guard == "hand-off" or alarm is not None, "no timerfd on this Linux"
    shell = TaskShell(
        Session(KEY, session_id="engine"),
        EngineIdentity("engine", 0),
        SharedMemory(),
        logging.getLogger("test.task_shell"),
        watch_time_limit=lambda request: None,
        on_failure=lambda reason: None,
        hold_until=asked.append,
        alarm=alarm,
    )
    try:
        shell.attach(dealers[0], dealers[1])
        shell._running = True  # noqa: SLF001 - a task runs
        shell._hold_asked = True  # noqa: SLF001 - the pending deadline, firing now
        held = time.monotonic() + 0.5  # young whenever send_held looks (not a wait)
        shell._held_since = held  # noqa: SLF001
        shell.send_held()
        if alarm is None:
            assert asked == [held + HOLD_REPLIES]
        else:
            assert alarm.armed
            readable_at = select.select([alarm.fd], [], [], WAIT)[0]
            assert readable_at == [alarm.fd], "no deadline asked for the young replies"
            assert time.monotonic() >= held
    finally:
        shell.loop.close()
        if alarm is not None:
            alarm.close()
        for dealer in dealers:
            dealer.close(linger=0)
        ctx.term()
