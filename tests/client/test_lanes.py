"""The client's lanes (corral/client/lanes.py, through the direct gate of
corral/client/socket_gate.py): a real ClientIO against a stand-in engine made of real sockets
(its direct ROUTER on loopback and a LaneListener), driven by the test: requests go on the
lane in order, sent at once or by the I/O thread, replies are read from the lane and the
ROUTER alike, a full lane keeps its backlog in order until the engine reads, a lane the engine
closes is dropped and its later requests go on zmq, a thread waiting for its reply reads it
from the lane itself, and the client's close closes its lanes."""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cloudpickle  # type: ignore[import-untyped]
import pytest
import zmq

from corral.bundles import split_bundle
from corral.client.client import Client
from corral.client.requestfuture import RequestFuture
from corral.client.socket_gate import LEADING, SocketGate
from corral.cluster.cluster import Cluster
from corral.errors import EngineError
from corral.lane import AVAILABLE, Lane, LaneListener, lane_name, read_hello
from corral.protocol.session import Message, Session
from tests.client.standin import ControllerStandIn
from tests.polling import file_appears, until
from tests.wire import send_when_routable

cloudpickle.register_pickle_by_value(sys.modules[__name__])

BOUND = 10.0  # seconds: only separates "happened" from "hung"
KEY = b"lanes-test-key"

pytestmark = pytest.mark.skipif(not (AVAILABLE and LEADING), reason="lanes exist on Linux only")


def _run_now(call: Any) -> None:
    call()


class Settler:
    """A Handler that keeps every reply and settles the future expected for it, noting on
    which thread each was handled."""

    def __init__(self) -> None:
        self.replies: list[Message] = []
        self.threads: list[int] = []
        self.futures: dict[str, RequestFuture] = {}
        self.lock = threading.Lock()

    def expect(self, msg_id: str) -> RequestFuture:
        future = RequestFuture(_run_now, "mux")
        self.futures[msg_id] = future
        return future

    def on_reply(self, msg: Message) -> None:
        with self.lock:
            self.replies.append(msg)
            self.threads.append(threading.get_ident())
        future = self.futures.get(msg.parent_id or "")
        if future is not None:
            future.set_result(msg)

    def on_reply_again(self, msg: Message) -> None:
        self.on_reply(msg)

    def on_notification(self, msg: Message) -> None: ...

    def on_iopub(self, msg: Message) -> None: ...

    def on_closed(self) -> None: ...

    def on_link(self, up: bool) -> None: ...


class Engine:
    """An engine's two doors, as real sockets the test drives: its direct ROUTER on loopback
    and its lane listener; the lane a client connects, once accepted."""

    def __init__(self, context: zmq.Context[Any]) -> None:
        self.uuid = str(uuid.uuid4())
        self.ident = self.uuid.encode()
        self.session = Session(KEY)
        self.router = context.socket(zmq.ROUTER)
        self.router.linger = 0
        self.router.sndhwm = self.router.rcvhwm = 0
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown route raises, not drops
        self.address = f"tcp://127.0.0.1:{self.router.bind_to_random_port('tcp://127.0.0.1')}"
        self.listener = LaneListener(lane_name(self.uuid))
        self.lane: Lane | None = None
        self.client: bytes | None = None
        self._early: list[list[object]] = []

    def accept(self) -> Lane:
        """The client's lane, once connected and its hello read."""

        def accepted() -> bool:
            if self.lane is None:
                lanes = self.listener.accept()
                if lanes:
                    self.lane = lanes[0]
            if self.lane is not None and self.client is None:
                messages, _ = self.lane.receive(64)
                if messages:
                    self.client = read_hello(messages[0])
                    self._early.extend(messages[1:])
            return self.client is not None

        until(accepted, BOUND, "the client's lane and its hello")
        assert self.lane is not None
        return self.lane

    def lane_requests(self, count: int) -> list[list[bytes]]:
        """``count`` messages read from the lane (waiting for them, bounded)."""
        lane = self.accept()
        found: list[list[bytes]] = []
        # what came with the hello may be a bundle too (requests the I/O thread sent together)
        for message in self._early:
            found.extend(requests_in(message))
        self._early = []
        deadline = time.monotonic() + BOUND
        while len(found) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"{len(found)} of {count} requests came on the lane"
            select.select([lane.sock], [], [], left)
            messages, still_open = lane.receive(count - len(found))
            for message in messages:
                found.extend(requests_in(message))
            assert still_open or len(found) >= count, "the lane closed"
        return found

    def router_requests(self, count: int) -> list[list[bytes]]:
        """``count`` messages from the ROUTER, each without the client's identity."""
        found = []
        while len(found) < count:
            assert self.router.poll(int(BOUND * 1000)), f"{len(found)} of {count} on the ROUTER"
            found.append(self.router.recv_multipart()[1:])
        return found

    def reply(self, request: Message, on_lane: bool, size: int = 0) -> None:
        """An apply reply to ``request`` on the lane or on the ROUTER (``size`` bytes of a
        buffer with it)."""
        reply = self.session.msg("apply_reply", {"status": "ok"}, parent=request)
        frames = self.session.serialize(reply)
        if size:
            frames = [*frames, b"r" * size]
        if on_lane:
            lane = self.accept()
            deadline = time.monotonic() + BOUND
            done = lane.send(frames)
            while not done:  # a message larger than the socket's buffer: the client reads on
                left = deadline - time.monotonic()
                assert left > 0, "the client did not read the lane"
                select.select([], [lane.sock], [], left)
                done = lane.flush()
        else:  # once the client's DEALER is routable: it has sent nothing on it yet
            assert self.client is not None
            send_when_routable(self.router, [self.client, *frames], "the client's DEALER")

    def close(self) -> None:
        if self.lane is not None:
            self.lane.close()
        self.listener.close()
        self.router.close(linger=0)


class StandIn(ControllerStandIn):
    """A ClientIO (its controller sockets on loopback) and an engine it sends direct to."""

    def __init__(self, lane: str | None = "") -> None:
        self.handler = Settler()
        super().__init__(KEY, self.handler, BOUND)
        self.engine = Engine(self.context)
        lane = self.engine.listener.name if lane == "" else lane  # "": the engine's
        self.io.connect_direct(self.engine.uuid, self.engine.address, lane)
        gate = self.io.gate_of("mux", self.engine.uuid)
        assert gate is not None and gate is self.io._direct  # noqa: SLF001
        self.gate: SocketGate = gate

    def request(self, body: bytes = b"") -> tuple[Message, RequestFuture]:
        msg = self.session.msg("apply_request", {})
        return msg, self.handler.expect(msg.msg_id)

    def send(self, body: bytes, at_once: bool) -> None:
        """A direct request's frames as the client sends them: the engine's route first."""
        self.io.send(b"mux", [self.engine.ident, body], at_once=at_once)

    def close(self) -> None:
        self.io.close()
        self.engine.close()
        super().close()


def requests_in(message: Sequence[object]) -> list[list[bytes]]:
    """The requests of one lane message: itself, or a bundle's (a burst comes as one), split
    as the engine splits it."""
    frames = [bytes(frame) for frame in message]  # type: ignore[call-overload]
    parts = split_bundle(frames)
    if parts is None:
        return [frames]
    return [[bytes(f) for f in part] for part in parts]  # type: ignore[arg-type]


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    with StandIn() as running:
        yield running


def _lanes(gate: SocketGate) -> Any:
    assert gate.lanes is not None
    return gate.lanes


def test_requests_go_on_the_lane_in_order_and_replies_come_on_either_path(
    stand_in: StandIn,
) -> None:
    """Requests sent at once and handed to the I/O thread alike leave on the lane, in order,
    without their route, none on the ROUTER; replies on the lane and on the ROUTER are all
    handled."""
    engine, lanes = stand_in.engine, _lanes(stand_in.gate)
    count = 200
    for index in range(count):
        stand_in.send(str(index).encode(), at_once=index % 3 != 0)
    received = engine.lane_requests(count)
    assert [int(body) for (body,) in received] == list(range(count))
    assert not engine.router.poll(0)
    # the I/O thread counts a bundle once written: the engine may read it before that
    until(lambda: stand_in.gate.order.queued == 0, BOUND, "the I/O thread to count its sends")
    assert lanes.sent == count
    requests = [stand_in.request()[0] for _ in range(10)]
    for index, request in enumerate(requests):
        engine.reply(request, on_lane=index % 2 == 0)
    until(lambda: len(stand_in.handler.replies) == 10, BOUND, "every reply")
    assert {msg.parent_id for msg in stand_in.handler.replies} == {r.msg_id for r in requests}
    assert lanes.received >= 5


def test_a_burst_to_a_busy_engine_waits_for_the_io_thread_after_its_first_request(
    stand_in: StandIn,
) -> None:
    """A request to an engine whose previous one has no reply on the lane yet is handed to the
    I/O thread, which sends those that gathered as bundles, in order; once a reply came (on
    the lane or on the ROUTER), the next request goes at once again."""
    engine, gate, lanes = stand_in.engine, stand_in.gate, _lanes(stand_in.gate)
    before = gate.sent_at_once
    count = 50
    for index in range(count):
        stand_in.send(str(index).encode(), at_once=True)
    received = engine.lane_requests(count)
    assert [int(body) for (body,) in received] == list(range(count))
    assert gate.sent_at_once == before + 1  # the first; the others waited for the I/O thread
    until(lambda: gate.order.queued == 0, BOUND, "the I/O thread to send what it was handed")
    assert lanes.sent == count and not engine.router.poll(0)  # counted once it was written
    request, future = stand_in.request()
    engine.reply(request, on_lane=True)
    until(future.done, BOUND, "the reply on the lane")
    stand_in.send(b"after", at_once=True)
    assert gate.sent_at_once == before + 2  # answered: at once
    assert engine.lane_requests(1) == [[b"after"]]
    request, future = stand_in.request()
    engine.reply(request, on_lane=False)  # a reply on the ROUTER answers the lane too
    until(future.done, BOUND, "the reply on the ROUTER")
    stand_in.send(b"again", at_once=True)
    assert gate.sent_at_once == before + 3
    assert engine.lane_requests(1) == [[b"again"]]


def test_a_reply_of_several_packets_on_the_lane_is_read_whole(stand_in: StandIn) -> None:
    request, future = stand_in.request()
    stand_in.engine.reply(request, on_lane=True, size=1 << 20)
    until(future.done, BOUND, "the reply")
    msg = future.result()
    assert msg.parent_id == request.msg_id
    assert [bytes(buffer) for buffer in msg.buffers] == [b"r" * (1 << 20)]


def test_a_full_lane_keeps_its_backlog_in_order_until_the_engine_reads(
    stand_in: StandIn,
) -> None:
    """The engine reads nothing (a long task) while requests of 64 KiB and more pile up:
    the socket fills, the lane keeps the rest, later requests (sent at once or handed over)
    queue behind it, and once the engine reads, the I/O thread sends it all, in order."""
    engine, gate = stand_in.engine, stand_in.gate
    lanes = _lanes(gate)
    engine.accept()
    count, size = 80, 100_000
    for index in range(count):
        body = index.to_bytes(4, "little") * (size // 4)
        stand_in.send(body, at_once=index % 2 == 0)
    until(lambda: lanes.backlog == 1, BOUND, "the lane's backlog")
    received = engine.lane_requests(count)  # reading makes room: the I/O thread flushes
    for index, (body,) in enumerate(received):
        assert len(body) == size and body[:4] == index.to_bytes(4, "little"), index
    assert body == index.to_bytes(4, "little") * (size // 4)
    until(lambda: lanes.backlog == 0, BOUND, "the backlog to empty")
    assert not engine.router.poll(0)


def test_a_lane_the_engine_closes_is_dropped_and_later_requests_go_on_zmq(
    stand_in: StandIn,
) -> None:
    engine, gate = stand_in.engine, stand_in.gate
    lanes = _lanes(gate)
    stand_in.send(b"first", at_once=True)
    assert engine.lane_requests(1) == [[b"first"]]
    lane = engine.lane
    assert lane is not None
    lane.close()  # the engine is gone, as far as the lane can tell
    until(lambda: not lanes.lanes, BOUND, "the client to drop the lane")
    assert lanes.dropped == 1
    stand_in.send(b"second", at_once=True)
    stand_in.send(b"third", at_once=False)
    assert engine.router_requests(2) == [[b"second"], [b"third"]]


@pytest.mark.parametrize("lane", [None, "corral-lane-nobody-listens"])
def test_an_engine_without_a_lane_or_whose_lane_cannot_connect_stays_on_zmq(
    lane: str | None,
) -> None:
    with StandIn(lane) as running:
        assert not _lanes(running.gate).lanes
        running.send(b"alone", at_once=True)
        running.send(b"handed", at_once=False)
        assert running.engine.router_requests(2) == [[b"alone"], [b"handed"]]
        assert not running.engine.listener.accept()


def test_a_waiting_thread_reads_its_reply_from_the_lane_itself(stand_in: StandIn) -> None:
    """The leader waits on the lane's descriptor too: the reply that comes there is read and
    settled on the waiting thread, and the lane is given back to the I/O thread after."""
    request, future = stand_in.request()
    engine, gate = stand_in.engine, stand_in.gate
    engine.accept()

    def reply_when_led() -> None:
        until(lambda: gate._leader is not None, BOUND, "a leader")  # noqa: SLF001
        engine.reply(request, on_lane=True)

    replier = threading.Thread(target=reply_when_led)
    replier.start()
    assert gate.lead(future, BOUND)
    replier.join(BOUND)
    assert future.done()
    assert stand_in.handler.threads == [threading.get_ident()]
    # given back: the I/O thread reads the next one
    other, later = stand_in.request()
    engine.reply(other, on_lane=True)
    until(later.done, BOUND, "the I/O thread to read a lane reply")
    assert stand_in.handler.threads[-1] != threading.get_ident()


def test_closing_the_client_closes_its_lanes() -> None:
    running = StandIn()
    try:
        lane = running.engine.accept()
        running.io.close()
        select.select([lane.sock], [], [], BOUND)
        _, still_open = lane.receive(1)
        assert not still_open  # the client's end is closed
    finally:
        running.close()


# ------------------------------------------------------------------ a Client on a cluster


def lane_counts() -> tuple[int, int]:
    """(On an engine) Requests its task shell read from lanes, and replies it sent on them."""
    import gc

    shells = [item for item in gc.get_objects() if type(item).__name__ == "TaskShell"]
    assert len(shells) == 1, f"{len(shells)} task shells in this engine"
    lanes = shells[0].lanes
    return (lanes.requests, lanes.replies) if lanes is not None else (0, 0)


def record(key: str, n: int, payload: bytes = b"") -> int:
    """(On an engine) Append ``n`` to a list kept under ``key``; how long the list is now,
    which is ``n + 1`` exactly when every earlier one came first."""
    seen: list[int] = sys.__dict__.setdefault(key, [])
    seen.append(n)
    return len(seen) if seen == list(range(len(seen))) else -1


def _client_lanes(rc: Client, target: int) -> Any:
    gate = rc._io.gate_of("mux", rc._engines[target])  # noqa: SLF001
    assert gate is not None and gate.lanes is not None
    return gate.lanes


def test_apply_goes_over_the_lane_both_ways(rc: Client) -> None:
    lanes = _client_lanes(rc, 0)
    assert rc._engines[0].encode() in lanes.lanes  # noqa: SLF001
    rc.wait(timeout=BOUND)
    requests, replies = rc[0].apply_sync(lane_counts)
    sent, received = lanes.sent, lanes.received
    for n in range(5):
        assert rc[0].apply_async(abs, -n).get(BOUND) == n
    # a request the I/O thread sent is counted just after its write: its reply may come first
    until(lambda: lanes.sent == sent + 5, BOUND, "five requests counted on the lane")
    assert lanes.received == received + 5
    assert rc[0].apply_sync(lane_counts) == (requests + 6, replies + 6)


def test_a_push_of_a_megabyte_goes_over_the_lane_in_several_packets(rc: Client) -> None:
    lanes = _client_lanes(rc, 1)
    requests, _ = rc[1].apply_sync(lane_counts)
    sent = lanes.sent
    data = bytes(range(256)) * 4096  # 1 MiB
    rc[1].push({"lane_data": data}, block=True)
    assert rc[1].apply_sync(lane_counts)[0] == requests + 2
    until(lambda: lanes.sent == sent + 2, BOUND, "two requests counted on the lane")
    assert rc[1].pull("lane_data", block=True) == data  # the reply: several packets, on zmq


def test_requests_queued_behind_a_long_task_keep_their_order(rc: Client, tmp_path: Path) -> None:
    """A burst of large requests behind a task that runs until the test says go: the
    engine's socket fills (the client keeps a backlog, flushed as the engine reads), and
    every request arrives, in order."""
    key = f"_corral_lane_order_{tmp_path.name}"
    lanes = _client_lanes(rc, 0)
    go = tmp_path / "go"
    blocker = rc[0].apply_async(file_appears, str(go), BOUND)
    payload = b"p" * 200_000
    burst = []
    for n in range(60):
        burst.append(rc[0].apply_async(record, key, n, payload))
        if n == 30:
            burst.append(rc[0].apply_async(record, key + "-alone", 0))  # another list, at once
    go.touch()
    assert blocker.get(BOUND) == str(go)
    assert [result.get(BOUND) for result in burst if result is not burst[31]] == list(range(1, 61))
    until(lambda: lanes.backlog == 0, BOUND, "the lane's backlog to empty")


def test_a_client_without_direct_requests_keeps_the_mux(rc: Client, cluster: Any) -> None:
    requests, _ = rc[0].apply_sync(lane_counts)
    with Client(cluster.path / "corral-client.json", timeout=BOUND, direct=False) as other:
        assert other._io._direct is None  # noqa: SLF001
        assert other[0].apply_async(abs, -7).get(BOUND) == 7
    assert rc[0].apply_sync(lane_counts)[0] == requests + 1  # only rc's own question


def test_an_engine_killed_with_requests_on_its_lane_fails_them(tmp_path: Path) -> None:
    """Requests pending on an engine's lane, some still in the client's backlog, when the
    engine dies: each fails with EngineError, none waits for ever; the lane is dropped."""
    own = Cluster(n=1, cluster_dir=tmp_path, heartbeat_period=0.5, timeout=30, restart=False)
    own.start()
    try:
        rc = own.client
        assert rc is not None
        rc.wait_for_engines(1, timeout=BOUND)
        lanes = _client_lanes(rc, 0)
        pid = rc[0].apply_sync(os.getpid)
        (process,) = [p for p in own.engines if p.pid == pid]
        running = rc[0].apply_async(file_appears, str(tmp_path / "never"), 120)
        # stopped, the engine reads nothing (a running task's watch would drain the lane as
        # fast as the client refills it), so the requests fill its socket and then the backlog
        os.kill(pid, signal.SIGSTOP)
        payload = b"k" * 200_000
        queued = [rc[0].apply_async(record, "_corral_lane_killed", n, payload) for n in range(40)]
        until(lambda: lanes.backlog == 1, BOUND, "a backlog on the lane")
        process.kill()
        process.wait(BOUND)
        for result in (running, *queued):
            with pytest.raises(EngineError, match="engine 0"):
                result.get(timeout=BOUND * 3)
        until(lambda: not lanes.lanes, BOUND, "the lane to be dropped")
    finally:
        own.stop()
