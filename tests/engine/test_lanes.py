"""Lanes at the engine (corral.engine.task_shell with corral.lane): a client's lane carries its
direct requests as the direct ROUTER would, its replies come back there when one packet holds
them (else on the ROUTER), the Hub gets the same copies, and a lane that says no hello, breaks
or belongs to another user costs nothing else. Real sockets, the task loop on a thread."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import zmq

from corral.bundles import split_bundle
from corral.lane import HELLO, LANE_PACKET, Lane
from corral.protocol.serialize import deserialize_object, pack_apply_message
from corral.protocol.session import DELIMITER, Message, Session
from tests.conftest import running_cluster
from tests.engine.test_direct import (
    KEY,
    WAIT,
    Direct,
    _call,
    add,
    blocking_task,
    check_copies,
    next_copy,
    reply_to,
    served,
)
from tests.polling import until


def connect(s: Direct, identity: bytes = b"client") -> Lane:
    assert s.lanes is not None
    return Lane.connect(s.lanes.name, identity, b"engine")


def send_on(lane: Lane, session: Session, f: Any, *args: Any) -> Message:
    msg = session.msg("apply_request", {}, buffers=pack_apply_message(f, args, {}))
    lane.send(session.serialize(msg))
    return msg


_UNREAD: dict[Lane, list[list[bytes]]] = {}  # replies read from a lane, not yet asked for


def lane_reply(lane: Lane, session: Session, request: Message) -> Message:
    """The next reply on ``lane`` (bounded wait; a turn's replies come in one bundle), checked
    as the reply to ``request``."""
    unread = _UNREAD.setdefault(lane, [])

    def received() -> bool:
        lane.flush()  # requests the engine had no room for yet, as a client's I/O thread does
        messages, still_open = lane.receive(1)
        assert still_open, "the engine closed the lane"
        unread.extend(copies_in(messages))
        return bool(unread)

    until(received, WAIT, f"the reply to {request.msg_id} on the lane", interval=0.001)
    reply = session.feed(unread.pop(0))
    assert reply.parent_id == request.msg_id
    return reply


def big(n: int) -> bytes:
    return b"r" * n


def test_a_request_on_a_lane_is_answered_there_and_copied_for_the_hub() -> None:
    hub = Session(KEY, session_id="hub")
    with served(lanes=True) as s:
        lane = connect(s)
        for n in range(3):
            request = send_on(lane, s.session, add, n, 1)
            reply = lane_reply(lane, s.session, request)
            assert deserialize_object(list(reply.buffers)) == n + 1
            check_copies(hub, request, next_copy(s), next_copy(s))
        lanes = s.shell.lanes
        assert lanes is not None
        # counted once sent: the reply can reach this thread before the engine's count
        until(lambda: (lanes.requests, lanes.replies) == (3, 3), WAIT, "the replies counted")
        lane.close()


def test_a_request_of_many_packets_and_a_reply_too_big_for_one() -> None:
    """A request larger than a packet arrives whole; a reply larger than a packet leaves on
    the direct ROUTER (to the same client identity), never half on the lane."""
    payload = os.urandom(3 * LANE_PACKET + 17)
    with served(lanes=True) as s:
        lane = connect(s)
        request = send_on(lane, s.session, len, payload)
        assert deserialize_object(list(lane_reply(lane, s.session, request).buffers)) == len(
            payload
        )
        request = send_on(lane, s.session, big, 2 * LANE_PACKET)
        reply = reply_to(s, request)  # on the client's zmq ROUTER
        assert deserialize_object(list(reply.buffers)) == big(2 * LANE_PACKET)
        lanes = s.shell.lanes
        assert lanes is not None
        until(lambda: (lanes.requests, lanes.replies) == (2, 1), WAIT, "the replies counted")
        lane.close()


def test_a_big_reply_to_a_client_whose_router_connection_is_not_up_yet_waits_for_it() -> None:
    """A client's lane is connected before its zmq connection to the engine's direct ROUTER
    has finished its handshake (a loaded machine): a reply too big for one packet, which goes
    on the ROUTER, is refused there (no route yet), kept and sent again until the connection
    is up, then arrives; a ROUTER without ROUTER_MANDATORY dropped it and the client waited
    for ever."""
    with served(lanes=True) as s:
        lane = connect(s, b"late")
        request = send_on(lane, s.session, big, 2 * LANE_PACKET)
        until(lambda: s.shell.unrouted.kept == 1, WAIT, "the reply refused and kept")
        ctx = zmq.Context.instance()
        late = ctx.socket(zmq.ROUTER)
        try:
            late.setsockopt(zmq.IDENTITY, b"late")
            late.setsockopt(zmq.CONNECT_ROUTING_ID, b"engine")
            late.connect(s.direct_address)
            assert late.poll(int(WAIT * 1000)), "the kept reply never came"
            frames = late.recv_multipart()
            assert frames[0] == b"engine"
            reply = s.session.feed(frames[1:])
            assert reply.parent_id == request.msg_id
            assert deserialize_object(list(reply.buffers)) == big(2 * LANE_PACKET)
            assert len(s.shell.unrouted) == 0 and s.shell.unrouted.dropped == 0
            # the next one finds the connection up: sent at once, nothing kept
            request = send_on(lane, s.session, big, 2 * LANE_PACKET)
            assert late.poll(int(WAIT * 1000)), "the second reply never came"
            assert s.session.feed(late.recv_multipart()[1:]).parent_id == request.msg_id
            assert s.shell.unrouted.kept == 1
        finally:
            late.close(linger=0)
            lane.close()


def test_requests_queued_on_a_lane_behind_a_long_task_are_copied_while_it_runs() -> None:
    started, release, ended = blocking_task()
    with served(lanes=True) as s:
        lane = connect(s)
        first = send_on(lane, s.session, add, 1, 2)
        lane_reply(lane, s.session, first)
        assert [next_copy(s)[0], next_copy(s)[0]] == [b"mux_in", b"mux_out"]
        blocking = send_on(lane, s.session, _call, "blocking")
        assert started.wait(WAIT)
        assert next_copy(s)[0] == b"mux_in"
        behind = send_on(lane, s.session, add, 40, 2)
        copy = next_copy(s)  # read by the I/O thread's watch while the task runs
        assert copy[:3] == [b"mux_in", b"engine", b"client"]
        assert not ended.is_set()
        release.set()
        assert deserialize_object(list(lane_reply(lane, s.session, blocking).buffers)) == "done"
        assert deserialize_object(list(lane_reply(lane, s.session, behind).buffers)) == 42
        lane.close()


def test_a_lane_without_hello_or_broken_is_dropped_and_the_engine_serves_on() -> None:
    with served(lanes=True) as s:
        assert s.lanes is not None
        rude = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        rude.connect("\0" + s.lanes.name)
        rude.send(b"\x03garbage")  # FIRST|LAST with a header too short: not a lane message
        assert rude.recv(16) == b"", "the engine kept a lane that broke the format"
        rude.close()
        impostor = Lane(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
        impostor.sock.connect("\0" + s.lanes.name)
        impostor.sock.setblocking(False)
        impostor.send([b"not a hello", b"x"])
        lanes = s.shell.lanes
        assert lanes is not None
        until(lambda: lanes.rejected >= 1, WAIT, "the engine to refuse a lane without hello")
        lane = connect(s)
        request = send_on(lane, s.session, add, 2, 2)
        assert deserialize_object(list(lane_reply(lane, s.session, request).buffers)) == 4
        lane.close()  # the client leaves: the engine drops the lane, and serves a new one
        until(lambda: lanes.clients == 0, WAIT, "the closed lane dropped")
        again = connect(s)
        request = send_on(again, s.session, add, 3, 3)
        assert deserialize_object(list(lane_reply(again, s.session, request).buffers)) == 6
        again.close()
        impostor.close()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_another_users_lane_is_refused() -> None:
    with served(lanes=True) as s:
        assert s.lanes is not None
        name = s.lanes.name
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.setuid(65534)
                other = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                other.connect("\0" + name)
                other.settimeout(WAIT)
                try:
                    other.send(b"\x03" + HELLO)
                    code = 0 if other.recv(16) == b"" else 2
                except (BrokenPipeError, ConnectionResetError):
                    code = 0  # closed by the engine before or while it spoke
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the other user's lane was not closed"
        assert s.lanes.refused == 1


def hub_copies(s: Direct, count: int) -> list[list[bytes]]:
    """``count`` copies from the copies lane (bounded wait), as bytes."""
    assert s.hub_lane is not None
    hub_lane = s.hub_lane
    got: list[list[bytes]] = []

    def received() -> bool:
        messages, still_open = hub_lane.receive(count - len(got))
        assert still_open
        got.extend(copies_in(messages))
        return len(got) >= count

    until(received, WAIT, f"{count} copies on the Hub's lane", interval=0.001)
    return got


def test_copies_go_on_the_hubs_lane_before_the_reply_and_to_its_pull_once_it_closes() -> None:
    hub = Session(KEY, session_id="hub")
    with served(lanes=True, copies_lane=True) as s:
        lane = connect(s)
        request = send_on(lane, s.session, add, 1, 1)
        lane_reply(lane, s.session, request)
        # written before the reply: by the time the client has it, the Hub's socket holds both
        assert s.hub_lane is not None
        messages, _ = s.hub_lane.receive(10)
        assert len(messages) == 1  # the two in one packet, a bundle
        copies = copies_in(messages)
        assert [copy[:4] for copy in copies] == [
            [b"mux_in", b"engine", b"client", DELIMITER],
            [b"mux_out", b"client", b"engine", DELIMITER],
        ]
        assert hub.feed(copies[0][3:]).msg_id == request.msg_id
        assert not readable_pull(s)
        s.hub_lane.close()  # the Hub stops: its PULL takes the copies from now on
        request = send_on(lane, s.session, add, 2, 2)
        lane_reply(lane, s.session, request)
        assert [next_copy(s)[0], next_copy(s)[0]] == [b"mux_in", b"mux_out"]
        lane.close()


def copies_in(messages: list[list[object]]) -> list[list[bytes]]:
    """The messages lane messages hold: alone, or in a bundle (as the Hub and clients split
    them)."""
    found: list[list[bytes]] = []
    for message in messages:
        frames = [bytes(frame) for frame in message]  # type: ignore[call-overload]
        parts = split_bundle(frames)
        found.extend([[bytes(f) for f in part] for part in parts] if parts else [frames])  # type: ignore[call-overload]
    return found


def readable_pull(s: Direct) -> bool:
    return bool(s.copies.poll(0))


def test_copies_the_hub_does_not_read_wait_in_the_backlog_and_all_arrive() -> None:
    """More copies than the Hub's socket holds: the rest waits in the lane's backlog, sent as
    room comes (the loop watches the lane for it), in order, none lost."""
    with served(lanes=True, copies_lane=True) as s:
        lane = connect(s)
        requests = [send_on(lane, s.session, len, os.urandom(4000)) for _ in range(150)]
        replies = [lane_reply(lane, s.session, request) for request in requests]
        assert [deserialize_object(list(reply.buffers)) for reply in replies] == [4000] * 150
        copies = hub_copies(s, 300)
        hub = Session(KEY, session_id="hub")
        ins = [hub.feed(copy[3:]).msg_id for copy in copies if copy[0] == b"mux_in"]
        assert ins == [request.msg_id for request in requests]
        lanes = s.shell.lanes
        assert lanes is not None
        until(lambda: not lanes.copies_waiting, WAIT, "the writer unwatched")
        assert not readable_pull(s)
        lane.close()


def test_in_a_cluster_direct_copies_reach_the_hub_on_lanes(tmp_path: Path) -> None:
    """A real cluster: the engine connects the Hub's copies lane, every copy of its direct
    round trips comes that way (the controller's stats count them), and the Hub's records
    are whole (status and a query right after each reply)."""
    with running_cluster(tmp_path, 1, cluster_id="lanes") as cluster:  # kept at stop
        client = cluster.client
        view = client[0]
        for n in range(5):
            result = view.apply_async(add, n, n)
            assert result.get(timeout=WAIT) == 2 * n
            (msg_id,) = result.msg_ids
            assert msg_id in client.result_status([msg_id])["completed"]
        folder = Path(cluster.path)
    stats = json.loads((folder / "controller-stats.json").read_text())
    # a round trip's two copies come in one packet (a bundle), one per round trip at least
    assert stats["controller"]["lane_copies"] >= 5
