"""The scheduler's socket shell with real sockets on loopback: the test plays the Hub (its
notification PUB and monitor SUB), a client and an engine, around a SchedulerShell running its
loop on a thread of this process. Every wait polls a socket with a deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import pytest
import zmq

from corral.bundles import split_bundle
from corral.controller.scheduler_shell import BURST_PREFETCH, SchedulerShell, _cpus_from
from corral.protocol.messages import RESENT
from corral.protocol.session import Frame, Message, Session
from tests.polling import until
from tests.wire import readable, recv_msg, send_msg

KEY = "scheduler-shell-test-key"
LOCALHOST = "tcp://127.0.0.1"
WAIT = 30.0  # generous: the machine may be loaded; only a hang reaches it


@dataclass
class Peers:
    """The sockets the test plays, and the shell under test."""

    shell: SchedulerShell
    hub: zmq.Socket[Any]  # PUB: registration notifications
    client: zmq.Socket[Any]  # DEALER on the clients ROUTER
    engine: zmq.Socket[Any]  # DEALER on the engines ROUTER, identity = its uuid
    session: Session  # the client's and the Hub's
    engine_session: Session

    def register_engine(self, uuid: str, first_task: Message) -> Message:
        """Announce the engine until the scheduler sends it ``first_task`` (a notification
        published before its SUB is connected is lost, so it is published again)."""
        for _ in range(int(WAIT / 0.1)):
            send_msg(self.session, self.hub, "registration_notification", {"id": 0, "uuid": uuid})
            if self.engine.poll(100):
                request = recv_msg(self.engine_session, self.engine)
                assert request.msg_id == first_task.msg_id
                return request
        raise AssertionError("the scheduler never sent a task to the announced engine")

    def next_request(self) -> Message:
        assert self.engine.poll(int(WAIT * 1000)), "no task reached the engine"
        return recv_msg(self.engine_session, self.engine)

    def reply(self, request: Message) -> None:
        reply = self.engine_session.msg("apply_reply", {"status": "ok"}, request, {"status": "ok"})
        send_msg(self.engine_session, self.engine, reply, idents=request.idents)

    def next_reply(self) -> Message:
        assert self.client.poll(int(WAIT * 1000)), "no reply reached the client"
        return recv_msg(self.session, self.client)


@pytest.fixture
def peers() -> Iterator[Peers]:
    with running_peers() as running:
        yield running


@contextmanager
def running_peers(**extra_settings: Any) -> Iterator[Peers]:
    """A SchedulerShell on its own thread with the test's sockets around it; stopped and
    joined on exit."""
    context: zmq.Context[Any] = zmq.Context()
    hub = context.socket(zmq.PUB)
    notify_port = hub.bind_to_random_port(LOCALHOST)
    monitor = context.socket(zmq.SUB)
    monitor.subscribe(b"")
    monitor_port = monitor.bind_to_random_port(LOCALHOST)
    settings = {
        "key": KEY,
        "signature_scheme": "hmac-sha256",
        "url": LOCALHOST,
        "notification": f"{LOCALHOST}:{notify_port}",
        "monitor": f"{LOCALHOST}:{monitor_port}",
        "max_outstanding": 1,
        **extra_settings,
    }
    built = threading.Event()
    box: list[SchedulerShell] = []

    def run() -> None:  # the shell's sockets belong to the thread that runs its loop
        shell = SchedulerShell(settings)
        box.append(shell)
        built.set()
        try:
            shell.loop.run()
        finally:
            shell.close()

    thread = threading.Thread(target=run, name="scheduler-under-test")
    thread.start()
    sockets = [hub, monitor]
    try:
        assert built.wait(WAIT), "the scheduler shell did not start"
        shell = box[0]
        client = context.socket(zmq.DEALER)
        client.connect(f"{LOCALHOST}:{shell.client_port}")
        engine = context.socket(zmq.DEALER)
        engine.setsockopt(zmq.IDENTITY, b"engine-a")
        engine.connect(f"{LOCALHOST}:{shell.engine_port}")
        sockets += [client, engine]
        yield Peers(shell, hub, client, engine, Session(KEY), Session(KEY))
    finally:
        if box:
            box[0].loop.call_soon_threadsafe(box[0].loop.stop)
        thread.join(WAIT)
        for sock in sockets:
            sock.close(linger=0)
        context.term()
    assert not thread.is_alive(), "the scheduler's loop did not stop"


def test_a_request_sent_again_while_held_is_dropped_and_the_held_one_keeps_its_outcome(
    peers: Peers,
) -> None:
    """A client sends a load-balanced request again (same msg_id, a new signature) when a
    controller restart may have lost it. Before, the copy replaced the held request and was
    failed as already submitted, so the held task had no request left to send: its dispatch
    raised, and the tasks dispatched with it were never sent either, waiting for ever."""
    session = peers.session
    first = send_msg(session, peers.client, "apply_request", {}, metadata={"retries": 2})
    request = peers.register_engine("engine-a", first)  # running there: the one slot is taken
    held = send_msg(session, peers.client, "apply_request", {}, metadata={"retries": 2})
    again = replace(held, metadata={**held.metadata, RESENT: 1})
    send_msg(session, peers.client, again)  # queued behind the running one, sent again
    later = send_msg(session, peers.client, "apply_request", {})
    peers.reply(request)
    assert peers.next_reply().parent_id == first.msg_id
    # the held task and the one after it both reach the engine, each once, and are answered
    for expected in (held, later):
        request = peers.next_request()
        assert request.msg_id == expected.msg_id
        peers.reply(request)
        reply = peers.next_reply()
        assert reply.parent_id == expected.msg_id
        assert reply.content is not None and reply.content["status"] == "ok"
    assert not peers.client.poll(200), "a second outcome reached the client"
    assert peers.shell.counts["duplicates"] == 1


def test_freed_memory_goes_back_after_enough_tasks_once_none_is_pending() -> None:
    """Trimming (corral.heap) waits for the schedule's work (here 3 finished tasks) and, while
    tasks are still pending, for its longest interval (here never): the 4 tasks queued at once
    are answered one by one, and the one trim comes with the last, when none is left."""
    with running_peers(trim_schedule=[3, 0.0, 3600.0]) as peers:
        session = peers.session
        tasks = [send_msg(session, peers.client, "apply_request", {}) for _ in range(4)]
        request = peers.register_engine("engine-a", tasks[0])
        for index, task in enumerate(tasks):
            if index:
                request = peers.next_request()
            assert request.msg_id == task.msg_id
            peers.reply(request)
            assert peers.next_reply().parent_id == task.msg_id
            if index < 3:
                assert peers.shell.counts["trims"] == 0
        until(lambda: peers.shell.counts["trims"] == 1, WAIT, "the trim once idle")
        assert peers.shell.counts["completed"] == 4


def test_an_engine_answering_in_bursts_is_sent_more_than_max_outstanding() -> None:
    """The shell times each reply (the core decides, test_scheduling_burst.py): an engine
    whose replies come back to back, as a run of short tasks' replies do, is soon sent more
    than max_outstanding tasks at once (BURST_PREFETCH times as many at most)."""
    with running_peers(max_outstanding=2) as peers:
        session = peers.session
        for _ in range(400):
            send_msg(session, peers.client, "apply_request", {})
        notice = {"id": 0, "uuid": "engine-a"}
        until(  # published again until the scheduler's SUB heard it and sent tasks
            lambda: (
                send_msg(session, peers.hub, "registration_notification", notice) is not None
                and peers.engine.poll(100) != 0
            ),
            WAIT,
            "the scheduler to send tasks to the announced engine",
        )
        held: list[Message] = []
        most = 0
        for _ in range(150):  # answer everything held back to back, then take what came
            held += received(peers, wait=held == [])
            most = max(most, len(held))
            if most > 2:
                break
            for request in held:
                peers.reply(request)
            held = []
        assert 2 < most <= 2 * BURST_PREFETCH, f"at most {most} tasks held at once"
        assert peers.shell.core.capacity("engine-a") == 2 * BURST_PREFETCH


def test_burst_prefetch_one_keeps_every_engine_at_max_outstanding() -> None:
    """The controller's ``--burst-prefetch`` reaches the core through the settings: with 1,
    an engine answering back to back is never sent more than max_outstanding."""
    with running_peers(max_outstanding=2, burst_prefetch=1) as peers:
        session = peers.session
        for _ in range(100):
            send_msg(session, peers.client, "apply_request", {})
        notice = {"id": 0, "uuid": "engine-a"}
        until(
            lambda: (
                send_msg(session, peers.hub, "registration_notification", notice) is not None
                and peers.engine.poll(100) != 0
            ),
            WAIT,
            "the scheduler to send tasks to the announced engine",
        )
        answered = most = 0
        while answered < 40:  # answer what is held back to back, then take what came
            held = received(peers, wait=True)
            most = max(most, len(held))
            for request in held:
                peers.reply(request)
            answered += len(held)
        assert most <= 2, f"{most} tasks held at once"
        assert peers.shell.core.capacity("engine-a") == 2


def test_a_burst_is_packed_on_the_first_engines_of_an_oversubscribed_host() -> None:
    """The engines' machine and CPUs reach the core in the Hub's notification: four engines
    on one core, two per core pack (corral.controller.packing; the rule's cases are in
    test_scheduling_packing.py). While the first two answer back to back, the other two are
    held; once those stop, the shell's timer releases the held engines when the packing
    lapses, not before, and they take queued tasks though no engine replied since."""
    with running_peers(max_outstanding=2, burst_packing=2) as peers, zmq.Context() as context:
        session, core = peers.session, peers.shell.core
        uuids = ["engine-a", "engine-b", "engine-c", "engine-d"]
        with engines_on_one_core(peers, context, uuids, queued=3000) as sockets:
            replied = 0
            for _ in range(300):  # a and b answer what they hold back to back
                for uuid in uuids[:2]:
                    for request in received_on(sockets[uuid], peers.engine_session, wait=True):
                        reply_on(sockets[uuid], peers.engine_session, request)
                        replied += 1
                if core.held("engine-c") and core.held("engine-d"):
                    break
            assert core.held("engine-c") and core.held("engine-d"), "never packed"
            assert not core.held("engine-a") and not core.held("engine-b")
            for _ in range(replied):  # every reply sent has been handled: the lapse is set
                assert readable(peers.client, int(WAIT * 1000)), "a reply did not come back"
                recv_msg(session, peers.client)
            lapse = core.packed_until("engine-c")
            assert lapse is not None
            held_by_c = received_on(sockets["engine-c"], peers.engine_session, wait=False)
            for request in held_by_c:  # c has room now, but is held
                reply_on(sockets["engine-c"], peers.engine_session, request)
            assert sockets["engine-c"].poll(int(WAIT * 1000)), "c was never released"
            assert time.monotonic() >= lapse, "c was sent a task before the packing lapsed"
            assert not core.held("engine-c") and core.packed_until("engine-c") is None


def test_a_packing_outlives_the_pause_after_its_burst() -> None:
    """Once a packed burst is done (nothing held, nothing waiting) the shell's timer does not
    release the held engines but keeps the packing (counted 'kept'), and the next tasks, after
    the pause, go to the packing engines, one each, not to the held ones."""
    with running_peers(max_outstanding=2, burst_packing=2) as peers, zmq.Context() as context:
        session, core = peers.session, peers.shell.core
        uuids = ["engine-a", "engine-b", "engine-c", "engine-d"]
        with engines_on_one_core(peers, context, uuids, queued=100) as sockets:
            sent = replies = 100
            for _ in range(20):  # bursts answered back to back by all four, until one packed
                deadline = time.monotonic() + WAIT
                while replies:
                    assert time.monotonic() < deadline, f"{replies} replies did not come back"
                    for uuid in uuids:
                        for request in received_on(sockets[uuid], peers.engine_session, wait=False):
                            reply_on(sockets[uuid], peers.engine_session, request)
                    while replies and readable(peers.client):
                        recv_msg(session, peers.client)
                        replies -= 1
                if core.held("engine-c"):
                    break
                for _ in range(100):
                    send_msg(session, peers.client, "apply_request", {})
                replies = 100
                sent += replies
            assert core.held("engine-c") and core.held("engine-d"), f"never packed ({sent} sent)"
            until(lambda: core.packing_counts()["kept"] == 1, WAIT, "the packing to be kept")
            assert core.held("engine-c") and core.held("engine-d")
            assert core.packed_until("engine-c") == float("inf")
            for _ in range(2):
                send_msg(session, peers.client, "apply_request", {})
            for uuid in uuids[:2]:  # one each: an idle packing engine takes one, then waits
                (request,) = received_on(sockets[uuid], peers.engine_session, wait=True)
                reply_on(sockets[uuid], peers.engine_session, request)
            assert core.outstanding("engine-c") == 0 == core.outstanding("engine-d")
            for _ in range(2):
                assert readable(peers.client, int(WAIT * 1000)), "a reply did not come back"
                recv_msg(session, peers.client)


def test_a_deadline_set_by_a_message_is_armed_at_the_end_of_its_turn(peers: Peers) -> None:
    """The shell asks the core for its next deadline once a turn, after the turn's messages:
    a task that waits for a running one with a timeout, sent right behind it, still fails
    with DependencyTimeout when its time runs out, and the running one is answered as usual."""
    first = peers.session.msg("apply_request", {})
    send_msg(peers.session, peers.client, first)
    running = peers.register_engine("engine-a", first)
    started = time.monotonic()
    waiter = send_msg(
        peers.session,
        peers.client,
        "apply_request",
        {},
        metadata={"after": [first.msg_id], "timeout": 0.2},
    )
    reply = peers.next_reply()
    assert reply.parent_header["msg_id"] == waiter.msg_id
    assert reply.content["status"] == "error" and reply.content["ename"] == "DependencyTimeout"
    assert time.monotonic() - started >= 0.2
    peers.reply(running)
    assert peers.next_reply().parent_header["msg_id"] == first.msg_id


@contextmanager
def engines_on_one_core(
    peers: Peers, context: zmq.Context[Any], uuids: list[str], *, queued: int
) -> Iterator[dict[str, zmq.Socket[Any]]]:
    """Engine sockets for ``uuids`` (the first is ``peers.engine``), registered in this order
    as engines of one machine with one core, after ``queued`` tasks were submitted (each is
    announced until it gets one); closed on exit."""
    sockets = {uuids[0]: peers.engine}
    try:
        for uuid in uuids[1:]:
            sock = sockets[uuid] = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, uuid.encode())
            sock.linger = 0
            sock.connect(f"{LOCALHOST}:{peers.shell.engine_port}")
        for _ in range(queued):
            send_msg(peers.session, peers.client, "apply_request", {})
        cpus = {"machine": "boot:one-core", "ids": [0]}
        for index, uuid in enumerate(uuids):  # in this order: the first ones pack
            announce(peers, sockets[uuid], {"id": index, "uuid": uuid, "cpus": cpus})
        yield sockets
    finally:
        for sock in sockets.values():
            if sock is not peers.engine:
                sock.close(linger=0)


def announce(peers: Peers, engine: zmq.Socket[Any], notice: dict[str, Any]) -> None:
    """Publish the engine's registration until the scheduler sends it a task (its SUB may
    not be connected yet, or the engine's connection not up: a notification can be lost)."""
    until(
        lambda: (
            send_msg(peers.session, peers.hub, "registration_notification", notice) is not None
            and engine.poll(100) != 0
        ),
        WAIT,
        f"the scheduler to send tasks to {notice['uuid']}",
    )


def test_an_engines_cpus_are_used_only_when_well_formed() -> None:
    assert _cpus_from({"machine": "boot:x", "ids": [0, 3]}) == ("boot:x", [0, 3])
    for malformed in (
        None,
        "boot:x",
        {"machine": "boot:x"},
        {"machine": "", "ids": [0]},
        {"machine": "boot:x", "ids": []},
        {"machine": "boot:x", "ids": [0, -1]},
        {"machine": "boot:x", "ids": [True]},
        {"machine": "boot:x", "ids": [0, 1 << 40]},
        {"machine": 3, "ids": [0]},
    ):
        assert _cpus_from(malformed) == (None, []), malformed


def received(peers: Peers, *, wait: bool) -> list[Message]:
    """Every request waiting at the engine (a turn's dispatches come as one bundle); with
    ``wait``, at least one."""
    return received_on(peers.engine, peers.engine_session, wait=wait)


def received_on(sock: zmq.Socket[Any], session: Session, *, wait: bool) -> list[Message]:
    """Every request waiting at this engine socket; with ``wait``, at least one."""
    found: list[Message] = []
    while sock.poll(int(WAIT * 1000) if wait and not found else 20):
        frames: list[Frame] = list(sock.recv_multipart(copy=False))
        for message in split_bundle(frames) or [frames]:
            found.append(session.feed(message))
    return found


def reply_on(sock: zmq.Socket[Any], session: Session, request: Message) -> None:
    reply = session.msg("apply_reply", {"status": "ok"}, request, {"status": "ok"})
    send_msg(session, sock, reply, idents=request.idents)
