"""The request sockets shared by submitting threads and the I/O thread
(corral/client/socket_gate.py): the sending rule without sockets, then a ClientIO against
stand-in controller sockets on loopback: order per thread across many threads, replies that
arrive while other threads send (none may wait unnoticed), and closing while threads send;
last, which requests a Client on a real cluster sends from the submitting thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from corral.bundles import split_bundle
from corral.client.client import Client
from corral.client.socket_gate import SendOrder, send_whole
from corral.errors import ConnectionError
from corral.protocol.session import Message, Session
from tests.client.standin import ControllerStandIn
from tests.polling import file_appears, until

BOUND = 10.0  # seconds: only separates "happened" from "hung"
KEY = b"socket-gate-test-key"

# ------------------------------------------------------------------ the rule, without sockets


def test_a_submitting_thread_sends_itself_only_when_asked_and_nothing_is_queued() -> None:
    order = SendOrder()
    assert order.may_send_now(at_once=True)
    assert not order.may_send_now(at_once=False)
    order.queue()
    assert not order.may_send_now(at_once=True)  # it would overtake the queued one
    order.queue(2)
    order.sent(3)
    assert order.queued == 0 and order.may_send_now(at_once=True)
    order.closed = True
    assert not order.may_send_now(at_once=True)


def test_sending_more_than_was_queued_is_a_bug_that_raises() -> None:
    order = SendOrder()
    order.queue()
    with pytest.raises(ValueError, match="sent 2 messages of 1 queued"):
        order.sent(2)


class InterruptedAt(list[bytes]):
    """Frames whose iteration raises KeyboardInterrupt before frame ``at``, as Ctrl-C may
    between two frames of a send on the main thread."""

    def __init__(self, frames: list[bytes], at: int) -> None:
        super().__init__(frames)
        self.at = at

    def __iter__(self) -> Iterator[bytes]:
        for index, frame in enumerate(list.__iter__(self)):
            if index == self.at:
                raise KeyboardInterrupt
            yield frame


def test_a_send_interrupted_between_frames_ends_its_message_so_the_next_is_whole() -> None:
    """Half a message left open would swallow the socket's next message; the interrupted
    send ends it (an empty frame), so the peer gets one short message and the next one as
    it was sent."""
    context: zmq.Context[Any] = zmq.Context()
    try:
        pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        with pytest.raises(KeyboardInterrupt):
            send_whole(push, InterruptedAt([b"a", b"b", b"c", b"d"], at=2))
        send_whole(push, [b"next", b"whole"])
        assert pull.poll(int(BOUND * 1000))
        assert pull.recv_multipart() == [b"a", b"b", b""]
        assert pull.poll(int(BOUND * 1000))
        assert pull.recv_multipart() == [b"next", b"whole"]
        for sock in (pull, push):
            sock.close(linger=0)
    finally:
        context.term()


# ------------------------------------------------------------------ a ClientIO on loopback


class Recorder:
    """A Handler that keeps the replies it is given (on the I/O thread)."""

    def __init__(self) -> None:
        self.replies: list[Message] = []
        self.closed = threading.Event()

    def on_reply(self, msg: Message) -> None:
        self.replies.append(msg)

    def on_reply_again(self, msg: Message) -> None:
        self.replies.append(msg)

    def on_notification(self, msg: Message) -> None: ...

    def on_iopub(self, msg: Message) -> None: ...

    def on_closed(self) -> None:
        self.closed.set()

    def on_link(self, up: bool) -> None: ...


class StandIn(ControllerStandIn):
    """Controller-side sockets bound on loopback, and a ClientIO connected to them."""

    def __init__(self) -> None:
        self.handler = Recorder()
        super().__init__(KEY, self.handler, BOUND)

    def receive(self, name: str, count: int) -> list[list[bytes]]:
        """``count`` messages as the controller's ROUTER gets them, bundles opened, each
        without the client's identity."""
        sock = self.sockets[name]
        found: list[list[bytes]] = []
        while len(found) < count:
            assert sock.poll(int(BOUND * 1000)), f"{len(found)} of {count} messages arrived"
            frames = sock.recv_multipart()
            messages = split_bundle(frames[1:]) or [frames[1:]]
            found.extend([bytes(frame) for frame in message] for message in messages)
        return found


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    with StandIn() as running:
        yield running


def test_each_threads_requests_leave_in_the_order_it_submitted_them(stand_in: StandIn) -> None:
    """Eight threads send to two engines at once, each alternating between sending itself
    and handing over (the I/O thread then has some queued): every message arrives, and each
    thread's messages to one engine arrive in the order that thread sent them."""
    threads, each = 8, 400
    engines = [b"engine-a", b"engine-b"]

    def submit(thread: int) -> None:
        for index in range(each):
            engine = engines[index % 2]
            body = f"{thread}:{index}".encode()
            stand_in.io.send(b"mux", [engine, body], at_once=index % 3 != 0)

    gate = stand_in.io._gates[b"mux"]  # noqa: SLF001
    stand_in.io.send(b"mux", [engines[0], f"{threads}:0".encode()], at_once=True)
    assert gate.sent_at_once == 1  # nothing was queued: this thread sent it
    workers = [threading.Thread(target=submit, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    received = stand_in.receive("mux", threads * each + 1)
    for worker in workers:
        worker.join(BOUND)
        assert not worker.is_alive()
    seen: dict[tuple[bytes, int], int] = {}
    for engine, body in received:
        thread, index = (int(part) for part in body.split(b":"))
        assert engines[index % 2] == engine
        assert seen.get((engine, thread), -1) < index, "a request overtook an earlier one"
        seen[(engine, thread)] = index
    assert len(received) == threads * each + 1
    assert gate.sent_at_once < threads * each  # some were handed over
    until(lambda: gate.order.queued == 0, BOUND, "the I/O thread to count what it sent")


def test_a_burst_handed_over_while_the_io_thread_is_busy_is_taken_in_one_call(
    stand_in: StandIn,
) -> None:
    """Requests handed over while the I/O thread is busy wait in the gate, not one loop
    call each: the first asks the loop to take them, the rest join it; all leave in order."""
    gate = stand_in.io._gates[b"mux"]  # noqa: SLF001
    take = gate._take_handed_call  # noqa: SLF001
    calls: list[int] = []

    def counted() -> None:
        calls.append(len(gate._handed))  # noqa: SLF001
        take()

    gate._take_handed_call = counted  # noqa: SLF001
    busy, release = threading.Event(), threading.Event()

    def occupy() -> None:
        busy.set()
        release.wait(BOUND)

    stand_in.io._loop.call_soon_threadsafe(occupy)  # noqa: SLF001
    assert busy.wait(BOUND)
    burst = 100
    for index in range(burst):
        stand_in.io.send(b"mux", [b"engine-a", str(index).encode()], at_once=False)
    release.set()
    received = stand_in.receive("mux", burst)
    assert [int(body) for _, body in received] == list(range(burst))
    assert calls == [burst]
    until(lambda: gate.order.queued == 0, BOUND, "the I/O thread to count what it sent")


def test_replies_that_arrive_while_threads_send_are_all_read(stand_in: StandIn) -> None:
    """A send on another thread may consume the socket's notice that a reply arrived; the
    sender must then have the I/O thread read it. Replies stream in while two threads send
    on the same socket: every reply reaches the handler, none waits unnoticed."""
    replies = 2000
    engine_session = Session(KEY)
    request = stand_in.session.msg("apply_request", {})
    identity = stand_in.session.session_id.encode()
    stop = threading.Event()

    def send_requests() -> None:
        while not stop.is_set():
            stand_in.io.send(b"task", stand_in.session.serialize(request), at_once=True)

    senders = [threading.Thread(target=send_requests) for _ in range(2)]
    for sender in senders:
        sender.start()
    try:
        task = stand_in.sockets["task"]
        for _ in range(replies):
            reply = engine_session.msg("apply_reply", {"status": "ok"}, parent=request)
            task.send_multipart([identity, *engine_session.serialize(reply)])
        until(lambda: len(stand_in.handler.replies) >= replies, BOUND, "every reply read")
    finally:
        stop.set()
        for sender in senders:
            sender.join(BOUND)
    assert len(stand_in.handler.replies) == replies


def test_closing_while_threads_send_ends_every_send_with_success_or_connection_error() -> None:
    """Threads sending (themselves and through the I/O thread) while the client closes:
    each send returns or raises ConnectionError, none hangs or meets a closed socket."""
    running = StandIn()
    outcomes: list[BaseException | None] = []
    started = threading.Barrier(5)

    def send_until_refused(at_once: bool) -> None:
        started.wait(BOUND)
        frames = [b"engine-a", b"request"]
        try:
            while True:
                running.io.send(b"mux", frames, at_once=at_once)
        except BaseException as exc:  # noqa: BLE001 - the test checks what it was
            outcomes.append(exc)

    senders = [threading.Thread(target=send_until_refused, args=(n % 2 == 0,)) for n in range(4)]
    try:
        for sender in senders:
            sender.start()
        started.wait(BOUND)
        running.io.close()
        for sender in senders:
            sender.join(BOUND)
            assert not sender.is_alive(), "a send blocked after the client closed"
    finally:
        running.close()
    assert len(outcomes) == 4
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes), outcomes
    assert running.handler.closed.is_set()


# ------------------------------------------------------------------ a Client on a cluster


def test_a_request_alone_in_flight_leaves_from_its_thread_and_a_burst_through_the_io_thread(
    rc: Client, tmp_path: Path
) -> None:
    """The client's rule for ``at_once``: a round trip's request is sent by the submitting
    thread itself (no I/O thread wake-up on the way out); while another request is in
    flight, each is handed over, so that the I/O thread sends them in bundles. Both ways,
    every result comes back. (The burst waits behind a task that runs until the test says
    go: a reply coming back mid-burst would make the next request alone in flight again.)"""
    direct, balanced = rc[0], rc.load_balanced_view()
    rc.wait(timeout=BOUND)
    for view, channel in ((direct, b"mux"), (balanced, b"task")):
        gate = rc._io.gate_of(channel.decode(), rc._engines[0])  # noqa: SLF001
        assert gate is not None
        before = gate.sent_at_once
        assert [view.apply_async(abs, -n).get(BOUND) for n in range(5)] == list(range(5))
        assert gate.sent_at_once == before + 5
        go = tmp_path / f"go-{channel.decode()}"
        blocker = view.apply_async(file_appears, str(go), BOUND)
        before = gate.sent_at_once
        burst = [view.apply_async(abs, -n) for n in range(50)]
        assert gate.sent_at_once == before, "in a burst behind a request in flight: handed over"
        go.touch()
        assert blocker.get(BOUND) == str(go)
        assert [result.get(BOUND) for result in burst] == list(range(50))
