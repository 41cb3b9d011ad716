"""The Hub's shell (corral/controller/hub_shell.py) reading copies: whose signatures it checks,
and the scheduler's bundles read as one burst. Real sockets (unconnected: the copies are
handed to the shell's handlers as its loop hands them) and a real SQLite store."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import zmq

from corral.bundles import bundle
from corral.controller.destination import destination_frames, destinations_frames
from corral.controller.hub import Hub
from corral.controller.hub_shell import HubShell, _split_copy
from corral.controller.store import RetentionSettings, SQLiteStore
from corral.errors import MalformedMessage
from corral.lane import AVAILABLE as LANES_AVAILABLE
from corral.lane import Lane, LaneListener
from corral.loop import Loop
from corral.protocol.session import (
    DELIMITER,
    Message,
    Session,
    frame_view,
    new_key,
    split_identities,
)
from corral.sharedmem import SharedMemory
from tests.polling import until

KEY = new_key()
ENGINE = "a6f7a72a-f42a-46e2-8447-8860fbb91a7e"
CLIENT = Session(KEY, username="user")
WORKER = Session(KEY, username="engine")
SCHEDULER = Session(KEY, username="scheduler")
STRANGER = Session(new_key(), username="stranger")  # signs with another key


class Shell:
    """A HubShell with one registered engine, its store and its loop."""

    def __init__(
        self,
        folder: Path,
        trusted: bool,
        burst_trim: tuple[int, float, float] | None = None,
        **options: Any,
    ) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        kinds = {
            "registration": zmq.ROUTER,
            "notification": zmq.PUB,
            "ping": zmq.PUB,
            "pong": zmq.ROUTER,
            "monitor": zmq.SUB,
            "queue_monitor": zmq.SUB,
        }
        self.sockets: dict[str, zmq.Socket[Any]] = {
            name: self.context.socket(kind) for name, kind in kinds.items()
        }
        self.sockets["pong_events"] = self.sockets["pong"].get_monitor_socket(
            zmq.EVENT_DISCONNECTED
        )
        self.store = SQLiteStore(folder / "tasks.db", retention=RetentionSettings())
        self.hub = Hub(self.store, {}, {}, heartbeat_period=3.0)
        self.loop = Loop("test hub")
        session = Session(KEY, username="controller", check_msg_type=False)
        self.shell = HubShell(
            self.loop,
            self.hub,
            session,
            self.store,
            SharedMemory(None, hub=True),
            self.sockets,
            lambda failed: None,
            trusted_copies=trusted,
            **({} if burst_trim is None else {"burst_trim": burst_trim}),
            **options,
        )
        registration = CLIENT.msg("registration_request", {"uuid": ENGINE})
        self.hub.handle_request([ENGINE.encode()], registration, time.time())
        payload, _ = self.hub.tick(time.time())
        self.hub.handle_pong(ENGINE, payload, time.time())
        assert ENGINE in self.hub.by_uuid

    def close(self) -> None:
        self.store.close()
        self.loop.close()
        self.sockets["pong"].disable_monitor()
        for sock in self.sockets.values():
            sock.close(0)
        self.context.term()


@pytest.fixture(params=[True, False], ids=["trusted", "checked"])
def shell(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shell]:
    shell = Shell(tmp_path, request.param)
    yield shell
    shell.close()


def frames(message: list[Any]) -> list[Any]:
    """A message's frames as the loop hands them to a handler (bytes stand for zmq.Frame)."""
    return message


def request_copy(prefix: bytes, signer: Session = CLIENT) -> tuple[Message, list[bytes]]:
    """A request and its copy as a queue sends it: ``task_in`` (client, engine) from the
    scheduler, ``mux_in`` (engine, client) from the MUX device."""
    request = signer.msg("apply_request", {}, buffers=[b"function", b"arguments"])
    route = [CLIENT.session_id.encode(), ENGINE.encode()]
    if prefix == b"mux_in":
        route.reverse()
    frames = [bytes(frame_view(frame)) for frame in signer.serialize(request)]
    return request, [prefix, *route, *frames]


def reply_copy(prefix: bytes, request: Message, signer: Session = WORKER) -> list[bytes]:
    reply = signer.msg("apply_reply", {"status": "ok"}, parent=request, buffers=[b"result"])
    frames = [bytes(frame_view(frame)) for frame in signer.serialize(reply)]
    return [prefix, CLIENT.session_id.encode(), ENGINE.encode(), DELIMITER, *frames[1:]]


def test_the_devices_copies_are_always_checked(shell: Shell) -> None:
    forged, copy = request_copy(b"mux_in", STRANGER)
    shell.loop.deliver(shell.shell._on_monitor, frames(copy))
    assert shell.loop.rejected == 1
    signed, copy = request_copy(b"mux_in")
    shell.loop.deliver(shell.shell._on_monitor, frames(copy))
    assert shell.loop.rejected == 1
    assert shell.store.get_history() == [signed.msg_id]


def test_the_scheduler_copies_are_checked_unless_they_come_over_the_private_socket(
    shell: Shell,
) -> None:
    trusted = not shell.shell.verify_scheduler_copies
    request, copy = request_copy(b"task_in", STRANGER)
    shell.shell._on_scheduler_message(frames(bundle([], [copy])))
    assert shell.loop.rejected == (0 if trusted else 1)
    assert shell.store.get_history() == ([request.msg_id] if trusted else [])


def test_a_bundle_is_read_as_one_burst_that_later_reads_see_whole(shell: Shell) -> None:
    """Copies of several tasks in one bundle (requests, a task_dest, replies): every write
    is in the store for the read after it, and the replies are dated by the bundle."""
    requests: list[Message] = []
    copies: list[list[bytes]] = []
    for index in range(5):
        request, copy = request_copy(b"task_in")
        if index == 0:  # a task that waited: no engine in its copy, then where it went
            copy.pop(2)
            copies.append(copy)
            copies.append(destination_frames(SCHEDULER, request.msg_id, ENGINE, 0))
        else:
            copies.append(copy)
        requests.append(request)
    copies.extend(reply_copy(b"task_out", request) for request in requests)
    before = time.time()
    shell.shell._on_scheduler_message(frames(bundle([], copies)))
    assert shell.loop.rejected == 0
    records = shell.store.get_records([request.msg_id for request in requests])
    assert len(records) == 5
    assert {record["status"] for record in records.values()} == {"ok"}
    assert {record["engine_uuid"] for record in records.values()} == {ENGINE}
    assert all(record["buffers"] == [b"function", b"arguments"] for record in records.values())
    assert all(record["result_buffers"] == [b"result"] for record in records.values())
    (received,) = {record["received"] for record in records.values()}
    assert before <= datetime.fromisoformat(received).timestamp() <= time.time()
    assert not shell.hub.pending


def test_a_copys_json_frames_are_stored_as_they_came(shell: Shell) -> None:
    """The header, metadata and content of a request and of its reply reach the SQLite store
    as the frames that carried them (not decoded and encoded again), and read back as the
    messages said."""
    request, copy = request_copy(b"task_in")
    reply = reply_copy(b"task_out", request)
    shell.shell._on_scheduler_message(frames(bundle([], [copy, reply])))
    record = shell.store.get_record(request.msg_id)
    assert record["header"] == request.header and record["result_content"] == {"status": "ok"}
    shell.store.flush()
    columns = "header, metadata, content, result_header, result_metadata, result_content"
    with closing(sqlite3.connect(shell.store.path)) as db:
        stored = db.execute(f"SELECT {columns} FROM tasks").fetchone()
    # [prefix, two identities, delimiter, signature, header, parent, metadata, content, ...]
    wire = [copy[5], copy[7], copy[8], reply[5], reply[7], reply[8]]
    assert list(stored) == [frame.decode() for frame in wire]


def test_a_clients_bundle_and_a_bundle_of_replies_passed_on_are_recorded_as_copies(
    shell: Shell,
) -> None:
    """The scheduler passes on a client's bundle of waiting requests behind ``task_in`` and
    the bundle of replies it made for a client behind ``task_out`` (route frames as the
    loop receives them, zmq.Frame objects): every request and reply is recorded as its own
    copy would have been."""
    requests = [
        CLIENT.msg("apply_request", {}, buffers=[b"function", b"arguments"]) for _ in range(2)
    ]
    client = CLIENT.session_id.encode()
    sent = [[bytes(frame_view(f)) for f in CLIENT.serialize(msg)] for msg in requests]
    passed_on = [zmq.Frame(b"task_in"), *map(zmq.Frame, bundle([client], sent))]
    shell.shell._on_scheduler_message(passed_on)
    dispatched = [(m.msg_id, ENGINE, 0) for m in requests]
    signed = shell.shell.verify_scheduler_copies  # as the controller sets both sides
    turn = [destinations_frames(SCHEDULER, dispatched, signed=signed)]
    shell.shell._on_scheduler_message(frames(bundle([], turn)))
    replies = [reply_copy(b"task_out", request)[2:] for request in requests]  # engine, ...
    mirrored = [zmq.Frame(b"task_out"), *map(zmq.Frame, bundle([client], replies))]
    shell.shell._on_scheduler_message(mirrored)
    assert shell.loop.rejected == 0
    records = shell.store.get_records([request.msg_id for request in requests])
    assert [r["status"] for r in records.values()] == ["ok", "ok"]
    assert {r["engine_uuid"] for r in records.values()} == {ENGINE}
    assert all(r["buffers"] == [b"function", b"arguments"] for r in records.values())
    assert all(r["result_buffers"] == [b"result"] for r in records.values())
    assert not shell.hub.pending


def test_a_turns_task_dest_copy_sets_the_engine_of_every_waiting_task_it_names(
    shell: Shell,
) -> None:
    """One task_dest copy names a scheduler turn's dispatches (one write for them all): every
    task the Hub holds pending gets its engine, a name it does not know is skipped, and a
    reply in the same bundle still completes its record."""
    requests: list[Message] = []
    copies: list[list[bytes]] = []
    for _ in range(4):
        request, copy = request_copy(b"task_in")
        copy.pop(2)  # waited: no engine in its copy
        copies.append(copy)
        requests.append(request)
    shell.shell._on_scheduler_message(frames(bundle([], copies)))
    dispatched = [(request.msg_id, ENGINE, 0) for request in requests]
    dispatched.insert(1, ("never-seen", ENGINE, 0))
    signed = shell.shell.verify_scheduler_copies  # as the controller sets both sides
    turn = [destinations_frames(SCHEDULER, dispatched, signed=signed)]
    turn.append(reply_copy(b"task_out", requests[0]))
    shell.shell._on_scheduler_message(frames(bundle([], turn)))
    assert shell.loop.rejected == 0
    records = shell.store.get_records([request.msg_id for request in requests])
    assert [(r["engine_uuid"], r["engine_id"]) for r in records.values()] == [(ENGINE, 0)] * 4
    assert [r["status"] for r in records.values()] == ["ok", "pending", "pending", "pending"]
    assert shell.store.get_history() == [request.msg_id for request in requests]
    assert set(shell.hub.by_uuid[ENGINE].tasks) == {r.msg_id for r in requests[1:]}


def test_a_devices_bundle_is_read_as_one_burst_and_a_bad_copy_costs_itself(shell: Shell) -> None:
    """A MUX device's bundle (a client's requests or an engine's replies, as the device
    publishes them: its prefix and route as received frames, one bundle of the messages):
    every copy is checked and recorded, a forged one is dropped alone, and the replies are
    dated by their bundle."""
    requests = [CLIENT.msg("apply_request", {}, buffers=[b"function"]) for _ in range(4)]
    forged = STRANGER.msg("apply_request", {})
    client, engine = CLIENT.session_id.encode(), ENGINE.encode()

    def published(prefix: bytes, route: list[bytes], signed: list[Any]) -> list[zmq.Frame]:
        messages = [[DELIMITER, *signer.serialize(m)[1:]] for signer, m in signed]
        return [zmq.Frame(bytes(frame_view(f))) for f in bundle([prefix, *route], messages)]

    signed_requests = [(CLIENT, m) for m in requests]
    signed_requests.insert(2, (STRANGER, forged))
    replies = [
        WORKER.msg("apply_reply", {"status": "ok"}, parent=m, buffers=[b"result"]) for m in requests
    ]
    shell.shell._on_device_message(published(b"mux_in", [engine, client], signed_requests))
    assert shell.loop.rejected == 1
    assert shell.store.get_history() == [m.msg_id for m in requests]
    before = time.time()
    shell.shell._on_device_message(
        published(b"mux_out", [client, engine], [(WORKER, m) for m in replies])
    )
    assert shell.loop.rejected == 1
    records = shell.store.get_records([m.msg_id for m in requests])
    assert {r["status"] for r in records.values()} == {"ok"}
    assert {r["engine_uuid"] for r in records.values()} == {ENGINE}
    assert all(r["result_buffers"] == [b"result"] for r in records.values())
    (received,) = {r["received"] for r in records.values()}
    assert before <= datetime.fromisoformat(received).timestamp() <= time.time()
    assert not shell.hub.pending


@pytest.mark.parametrize(
    "copy",
    [
        [b"task_in", b"client", b"engine", DELIMITER, b"sig", b"{}", b"{}", b"{}", b"{}", b"b"],
        # a device's copy from a bundle: its prefix and route as received, its frames bytes
        [zmq.Frame(b"mux_in"), zmq.Frame(b"engine"), zmq.Frame(b"client"), DELIMITER, b"sig"],
        [b"mux_in", zmq.Frame(b"x" * len(DELIMITER)), DELIMITER, b"sig"],  # the delimiter's length
        [b"mux_in", zmq.Frame(b"engine"), memoryview(DELIMITER), b"sig"],
        [b"task_in", b"client", DELIMITER, b"sig", b"{}", b"{}", b"{}", b"{}"],
        [b"mux_in", zmq.Frame(b"engine"), zmq.Frame(b"client"), zmq.Frame(DELIMITER), b"sig"],
        [b"task_in", b"a", b"b", b"c", b"d", b"e", DELIMITER, b"sig"],  # a long route
    ],
)
def test_a_copy_splits_as_every_message_splits(copy: list[Any]) -> None:
    idents, msg_frames = _split_copy(copy)
    expected_idents, expected_frames = split_identities(copy[1:])
    assert idents == expected_idents and msg_frames == expected_frames
    assert all(type(ident) is bytes for ident in idents)


def test_a_copy_without_a_delimiter_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        _split_copy([b"task_in", b"client", b"sig", b"{}"])


def test_memory_goes_back_to_the_system_once_a_burst_is_recorded(tmp_path: Path) -> None:
    """After enough copies (here 10), the Hub gives the C allocator's freed memory back at
    its first moment with no task pending (a burst's copies and queued writes left the heap
    at its high-water mark), at the latest at the next beat; not while tasks are pending
    (until the longest interval), and not twice for nothing."""
    shell = Shell(tmp_path, trusted=True, burst_trim=(10, 0.0, 3600.0))
    try:
        schedule = shell.shell._burst_trim
        requests = [request_copy(b"task_in") for _ in range(6)]
        shell.shell._on_scheduler_message(frames(bundle([], [copy for _, copy in requests])))
        shell.shell._wake()
        assert schedule.trims == 0  # six copies, six tasks pending
        replies = [reply_copy(b"task_out", request) for request, _ in requests[:5]]
        shell.shell._on_scheduler_message(frames(bundle([], replies)))
        shell.shell._wake()
        assert schedule.trims == 0  # eleven copies, one task still pending
        shell.shell._on_scheduler_message(
            frames(bundle([], [reply_copy(b"task_out", requests[5][0])]))
        )
        assert not shell.hub.pending and schedule.trims == 0  # counted in lumps, or at a beat
        shell.shell._wake()
        assert schedule.trims == 1
        shell.shell._wake()
        assert schedule.trims == 1  # nothing read since: no second trim
    finally:
        shell.close()


def test_a_lost_direct_report_is_answered_once_the_store_has_written_it(tmp_path: Path) -> None:
    """The client forgets the tasks it reported once answered: a controller killed between
    the answer and the writer's commit (20 ms of linger for a small batch) would lose them."""
    shell = Shell(tmp_path, trusted=False)
    client = shell.context.socket(zmq.DEALER)
    try:
        unregister = WORKER.msg("unregistration_request", {"uuid": ENGINE})
        shell.hub.handle_request([ENGINE.encode()], unregister, time.time())
        assert shell.hub.gone.get(ENGINE) is not None
        address = "inproc://hub-registration"
        shell.sockets["registration"].bind(address)
        client.setsockopt(zmq.IDENTITY, CLIENT.session_id.encode())
        client.connect(address)
        report = CLIENT.msg(
            "direct_lost_request",
            {"engine_uuid": ENGINE, "tasks": [["never-copied", None]]},
        )
        shell.shell._on_request(frames(CLIENT.serialize(report, [CLIENT.session_id.encode()])))
        assert client.poll(10_000), "no answer"
        answer = CLIENT.deserialize(split_identities(client.recv_multipart())[1])
        # read at once, beside the store as the dashboard reads it: no flush of ours
        with closing(sqlite3.connect(shell.store.path)) as db:
            stored = db.execute("SELECT msg_id FROM tasks WHERE msg_id = 'never-copied'").fetchall()
        assert answer.content["recorded"] == ["never-copied"]
        assert stored == [("never-copied",)]
    finally:
        client.close(0)
        shell.close()


@pytest.mark.skipif(not LANES_AVAILABLE, reason="lanes are Linux's (abstract Unix sockets)")
def test_copies_on_a_lane_wake_the_hub_then_are_gathered_and_a_query_still_finds_them(
    tmp_path: Path,
) -> None:
    """An engine's first copy on the Hub's lane wakes the loop and is read at once; the lanes
    then go unwatched, and what comes meanwhile is read by a query's catching up (a reply's
    copy, then a result_request: it finds the task completed) or by the gathering's timer,
    until a timer finds nothing and the lane is watched again: the next copy wakes the loop.
    Every copy is recorded. (A long gathering, 1 s, so that no step races the timer.)"""
    listener = LaneListener(f"corral-test-hub-{uuid.uuid4().hex[:12]}")
    shell = Shell(tmp_path, trusted=False, copies_lanes=listener, lane_gather=1.0)
    hub = shell.shell
    client = shell.context.socket(zmq.DEALER)
    address = "inproc://hub-registration-lanes"
    shell.sockets["registration"].bind(address)
    client.setsockopt(zmq.IDENTITY, CLIENT.session_id.encode())
    client.connect(address)
    runner = threading.Thread(target=shell.loop.run, name="test hub loop")
    runner.start()
    lane = Lane.connect(listener.name, ENGINE.encode(), b"hub")
    try:
        served = hub._lanes
        assert served is not None
        until(lambda: ENGINE.encode() in served.by_peer, 10, "the lane's hello read")
        (fd,) = served.lanes.values()
        first, copy = request_copy(b"mux_in")
        assert lane.send(copy)
        # read, then the lane unwatched (in the same callback: awaited, not raced)
        until(lambda: hub.lane_copies == 1 and not shell.loop.watching(fd), 10, "gathering")
        assert lane.send(reply_copy(b"mux_out", first))
        query = CLIENT.msg("result_request", {"msg_ids": [first.msg_id], "statusonly": True})
        client.send_multipart(CLIENT.serialize(query))
        assert client.poll(10_000), "no answer"
        answer = CLIENT.deserialize(split_identities(client.recv_multipart())[1])
        assert answer.content["completed"] == [first.msg_id], answer.content
        assert (hub.lane_copies, hub.lane_gathered) == (2, 0)  # the query's catching up
        second, copy = request_copy(b"mux_in")
        third, another = request_copy(b"mux_in")
        assert lane.send(copy) and lane.send(another)
        until(lambda: hub.lane_gathered == 2, 10, "the timer's copies read")
        assert hub.lane_copies == 4
        until(lambda: shell.loop.watching(fd), 10, "the lane watched again")
        assert lane.send(reply_copy(b"mux_out", second))
        until(lambda: hub.lane_copies == 5, 10, "the copy that woke the loop read")
        assert hub.lane_gathered == 2
    finally:
        shell.loop.stop()
        runner.join(10)
        lane.close()
        client.close(0)
        hub.close_lanes()
        listener.close()
    records = shell.store.get_records([first.msg_id, second.msg_id, third.msg_id])
    shell.close()
    assert [records[m.msg_id]["status"] for m in (first, second)] == ["ok", "ok"]
    assert records[third.msg_id]["completed"] is None
