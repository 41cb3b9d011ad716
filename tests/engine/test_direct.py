"""Direct requests at the engine (corral.engine.task_shell): a client's ROUTER connected to the
engine's own ROUTER gets its replies there, and the Hub's PULL gets the copies the MUX device
would have published, in its format, after the replies; a long task's request is copied at
the held replies' deadline, not when the task ends. Real sockets on loopback, the task loop
on a thread of its own."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import zmq

from corral.engine.alarm import open_alarm
from corral.engine.runner import EngineIdentity, TaskRunner
from corral.engine.task_shell import HOLD_REPLIES, WATCH_AT_MOST, WATCH_EVERY, TaskShell
from corral.lane import HELLO, Lane, LaneListener, lane_name
from corral.loop import Loop, LoopThread
from corral.protocol.serialize import deserialize_object, pack_apply_message
from corral.protocol.session import DELIMITER, Message, Session
from corral.sharedmem import SharedMemory
from tests.polling import until
from tests.wire import readable, recv_one, send_when_routable

WAIT = 10.0  # seconds: every wait bounded
WAIT_MS = int(WAIT * 1000)  # the same, for readable()
KEY = b"direct-test-key"


@dataclass
class Direct:
    shell: TaskShell
    client: zmq.Socket[Any]  # the client's ROUTER, connected to the engine's direct ROUTER
    copies: zmq.Socket[Any]  # the Hub's PULL
    session: Session  # the client's
    scheduler: zmq.Socket[Any]  # the ROUTER the engine's task DEALER connects to
    lanes: LaneListener | None = None  # the engine's lane listener (served(lanes=True))
    hub_lane: Lane | None = None  # the Hub's end of the copies lane (served(copies_lane=True))
    direct_address: str = ""  # the engine's direct ROUTER, for a client that connects late


@contextmanager
def served(lanes: bool = False, copies_lane: bool = False) -> Iterator[Direct]:
    """A TaskShell with a direct ROUTER and a copies PUSH (and a lane listener with
    ``lanes``, a copies lane to this test as the Hub with ``copies_lane``), served on a
    thread."""
    ctx: zmq.Context[Any] = zmq.Context()
    sockets: list[zmq.Socket[Any]] = []

    def socket(kind: int) -> zmq.Socket[Any]:
        sock = ctx.socket(kind)
        sockets.append(sock)
        return sock

    queues, routers = [], []
    for _ in ("mux", "task"):  # the device's and the scheduler's sides
        router = socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        routers.append(router)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer = socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, b"engine")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        queues.append(dealer)
    direct = socket(zmq.ROUTER)
    direct_port = direct.bind_to_random_port("tcp://127.0.0.1")
    hub = socket(zmq.PULL)
    hub_port = hub.bind_to_random_port("tcp://127.0.0.1")
    push = socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{hub_port}")
    client = socket(zmq.ROUTER)
    client.setsockopt(zmq.IDENTITY, b"client")
    client.setsockopt(zmq.CONNECT_ROUTING_ID, b"engine")  # routed at once, as ClientIO does
    client.connect(f"tcp://127.0.0.1:{direct_port}")
    session = Session(KEY, session_id="engine")
    identity = EngineIdentity("engine", 0)
    alarm = open_alarm()
    assert alarm is not None, "no timerfd on this Linux"
    failures: list[str] = []
    shell = TaskShell(
        session,
        identity,
        SharedMemory(),
        logging.getLogger("test.direct"),
        watch_time_limit=lambda request: None,
        on_failure=failures.append,
        alarm=alarm,
    )
    listener = LaneListener(lane_name("engine")) if lanes else None
    engine_end = hub_end = None
    if copies_lane:
        hub_listener = LaneListener(lane_name("hub"))
        engine_end = Lane.connect(hub_listener.name, b"engine", b"hub")
        (hub_end,) = hub_listener.accept()
        hub_listener.close()
        assert hub_end.receive(1)[0] == [[HELLO, b"engine"]]
    shell.attach(queues[0], queues[1], direct, push, listener, engine_end)

    def io_setup(loop: Loop) -> None:  # the engine's I/O thread polls the alarm
        loop.add_reader(alarm.fd, shell.on_alarm)

    io_thread = LoopThread("direct-test-io", io_setup)
    io_thread.start()
    runner = TaskRunner(
        session, identity, shell.reply, mark_queue=shell.mark_queue, shm=SharedMemory()
    )
    thread = threading.Thread(target=shell.run, args=(runner,), name="direct-test")
    thread.start()
    try:
        yield Direct(
            shell,
            client,
            hub,
            Session(KEY, session_id="client"),
            routers[1],
            listener,
            hub_end,
            f"tcp://127.0.0.1:{direct_port}",
        )
    finally:
        shell.loop.stop()
        io_thread.stop()
        alarm.close()
        thread.join(WAIT)
        assert not thread.is_alive(), "the task loop did not stop"
        shell.loop.close()
        shell.close_lanes()
        assert failures == []
        for sock in sockets:
            sock.close(linger=0)
        for lane in (listener, engine_end, hub_end):
            if lane is not None:
                lane.close()
        ctx.term()


def send_apply(direct: Direct, f: Any, *args: Any) -> Message:
    msg = direct.session.msg("apply_request", {}, buffers=pack_apply_message(f, args, {}))
    direct.client.send_multipart([b"engine", *direct.session.serialize(msg)])
    return msg


def reply_to(direct: Direct, request: Message) -> Message:
    assert readable(direct.client, WAIT_MS), f"no reply to {request.msg_id}"
    frames = recv_one(direct.client)
    assert frames[0] == b"engine"  # routed by the engine's uuid, as through the MUX
    reply = direct.session.feed(frames[1:])
    assert reply.parent_id == request.msg_id
    return reply


def next_copy(direct: Direct) -> list[bytes]:
    assert readable(direct.copies, WAIT_MS), "no copy for the Hub"
    return recv_one(direct.copies)


def check_copies(
    hub: Session, request: Message, copy_in: list[bytes], copy_out: list[bytes]
) -> None:
    """The Hub's two copies of a direct round trip, in the MUX device's format: ``[mux_in,
    engine, client, msg]`` of ``request``, ``[mux_out, client, engine, msg]`` of its reply."""
    assert copy_in[:4] == [b"mux_in", b"engine", b"client", DELIMITER]
    assert hub.feed(copy_in[3:]).msg_id == request.msg_id
    assert copy_out[:4] == [b"mux_out", b"client", b"engine", DELIMITER]
    assert hub.feed(copy_out[3:]).parent_id == request.msg_id


def add(x: int, y: int) -> int:
    return x + y


def test_a_direct_request_is_answered_there_and_both_copies_reach_the_hub() -> None:
    hub = Session(KEY, session_id="hub")  # checks the copies as the Hub does
    with served() as s:
        for n in range(3):
            request = send_apply(s, add, n, 1)
            reply = reply_to(s, request)
            assert deserialize_object(list(reply.buffers)) == n + 1
            check_copies(hub, request, next_copy(s), next_copy(s))
        # kept for a restarted controller on a channel of its own: the Hub confirms direct
        # replies apart from the MUX's (corral.engine.replies), whose device copies them on
        # another path
        replied = [note for note in s.shell.notes if note[0] == "replied"]
        assert [note[1] for note in replied] == [b"direct"] * 3


_CALLS: dict[str, Any] = {}


def _call(name: str) -> Any:
    """Run the callable registered in this process under ``name``."""
    return _CALLS.pop(name)()


def blocking_task() -> tuple[threading.Event, threading.Event, threading.Event]:
    """Register ``blocking`` (run by name: the loop thread shares this process), a task that
    returns "done" once released: its (started, release, ended) events."""
    started, release, ended = threading.Event(), threading.Event(), threading.Event()

    def blocking() -> str:
        started.set()
        try:
            assert release.wait(WAIT)
        finally:
            ended.set()
        return "done"

    _CALLS["blocking"] = blocking
    return started, release, ended


def test_a_long_tasks_request_is_copied_at_the_deadline_not_at_its_end() -> None:
    """The Hub learns of a direct request that runs long (queue_status, the engine's death
    while it runs) within HOLD_REPLIES, from the I/O thread, and of those that wait behind it
    within WATCH_EVERY: no copy waits for the task's end."""
    started, release, ended = blocking_task()
    hub = Session(KEY, session_id="hub")
    with served() as s:
        request = send_apply(s, _call, "blocking")
        assert started.wait(WAIT)
        assert readable(s.copies, WAIT_MS), "the request's copy waited for the task"
        copy_in = next_copy(s)
        assert copy_in[:3] == [b"mux_in", b"engine", b"client"]
        assert HOLD_REPLIES < WAIT
        # a request sent while the task runs waits behind it, and is copied meanwhile too
        queued = send_apply(s, add, 40, 2)
        copy_queued = next_copy(s)
        assert copy_queued[:3] == [b"mux_in", b"engine", b"client"]
        assert hub.feed(copy_queued[3:]).msg_id == queued.msg_id
        assert not ended.is_set(), "the copies waited for the task's end"
        assert not readable(s.client, 0)  # no reply yet: the task still runs
        # the I/O thread looks ever less often while the task runs on, up to WATCH_AT_MOST
        until(lambda: s.shell._watch_every >= 4 * WATCH_EVERY, WAIT, "the looks spaced out")  # noqa: SLF001
        assert s.shell._watch_every <= WATCH_AT_MOST  # noqa: SLF001
        release.set()
        assert deserialize_object(list(reply_to(s, request).buffers)) == "done"
        assert deserialize_object(list(reply_to(s, queued).buffers)) == 42
        outs = [next_copy(s), next_copy(s)]
        assert [copy[:3] for copy in outs] == [[b"mux_out", b"client", b"engine"]] * 2


def send_load_balanced(direct: Direct, f: Any, *args: Any) -> Message:
    """A request as the scheduler sends it, once the engine's task DEALER is connected."""
    msg = direct.session.msg("apply_request", {}, buffers=pack_apply_message(f, args, {}))
    frames = [b"engine", *direct.session.serialize(msg, [b"client"])]
    send_when_routable(direct.scheduler, frames, "the engine's task DEALER")
    return msg


def test_behind_a_load_balanced_task_a_direct_request_is_copied_while_it_runs() -> None:
    """Once the engine has served a direct request, every task arms the alarm: a direct
    request that comes while a load-balanced task runs (no copies held when it started)
    reaches the Hub before that task ends."""
    started, release, ended = blocking_task()
    hub = Session(KEY, session_id="hub")
    with served() as s:
        first = send_apply(s, add, 1, 2)
        assert deserialize_object(list(reply_to(s, first).buffers)) == 3
        assert [next_copy(s)[0], next_copy(s)[0]] == [b"mux_in", b"mux_out"]
        balanced = send_load_balanced(s, _call, "blocking")
        assert started.wait(WAIT)
        behind = send_apply(s, add, 40, 2)
        copy = next_copy(s)
        assert copy[:3] == [b"mux_in", b"engine", b"client"]
        assert hub.feed(copy[3:]).msg_id == behind.msg_id
        assert not ended.is_set(), "the copy waited for the task's end"
        release.set()
        assert readable(s.scheduler, WAIT_MS)
        reply = s.session.feed(recv_one(s.scheduler)[1:])
        assert reply.parent_id == balanced.msg_id
        assert deserialize_object(list(reply_to(s, behind).buffers)) == 42
