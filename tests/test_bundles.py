"""Bundles: many messages in one zmq message, handed on as if each had come alone.

The encoding on its own, bad bundles, and real sockets: an outbox on a loop sending to a loop
that unbundles, a ROUTER's refusal of an unknown peer coming back with the tags, and a bundle
crossing a C monitored queue (the controller's MUX) with its copy for the Hub."""

from __future__ import annotations

import threading
from array import array
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq
from zmq import devices

from corral.bundles import LARGE, MARK, MAX_MESSAGES, Outbox, bundle, split_bundle
from corral.errors import MalformedMessage
from corral.loop import Loop
from corral.protocol.session import DELIMITER, Session, frame_view, split_identities
from corral.sockets import recv_frames

SESSION = Session(b"bundle-test-key")


def _bytes(frames: list[Any]) -> list[bytes]:
    return [bytes(frame_view(frame)) for frame in frames]


def _message(index: int, *, idents: tuple[bytes, ...] = ()) -> list[Any]:
    content = {"status": "ok", "index": index}
    msg = SESSION.msg("apply_reply", content, buffers=[b"buffer %d" % index])
    return SESSION.serialize(msg, idents)


# ------------------------------------------------------------------ the encoding


@pytest.mark.parametrize("route", [[], [b"peer"], [b"in", b"engine", b"client"]])
def test_a_bundle_gives_back_each_message_behind_its_route(route: list[bytes]) -> None:
    messages = [_message(index, idents=(b"client-%d" % index,)) for index in range(3)]
    frames = bundle(route, messages)
    assert frames[len(route)] == MARK and len(frames) == len(route) + 3  # all small: packed
    unbundled = split_bundle(frames)
    assert unbundled is not None
    assert [_bytes(m) for m in unbundled] == [_bytes([*route, *m]) for m in messages]
    for message in unbundled:  # and each verifies and parses as it would have alone
        idents, msg_frames = split_identities(message)
        assert SESSION.deserialize(msg_frames).content is not None


@pytest.mark.parametrize("skip", [1, 2])
def test_a_bundle_leaves_out_the_route_its_messages_begin_with(skip: int) -> None:
    route = [b"peer", b"prefix"][:skip]
    messages = [_message(index, idents=(b"client-%d" % index,)) for index in range(3)]
    large = zmq.Frame(b"x" * 100, track=True)  # sent on its own, after the skipped frames
    messages[1] = [*messages[1], large]
    frames = bundle(route, [[*route, *m] for m in messages], skip)
    assert frames == bundle(route, messages) and frames[-1] is large
    unbundled = split_bundle(frames)
    assert unbundled is not None
    assert [_bytes(m) for m in unbundled] == [_bytes([*route, *m]) for m in messages]


def test_large_and_tracked_frames_travel_on_their_own_uncopied() -> None:
    array_ = np.arange(100_000, dtype=np.int64)  # 800 kB
    tracked = zmq.Frame(b"small but tracked", track=True)
    messages = [[b"a", memoryview(array_)], [b"b", tracked, b"c"]]
    frames = bundle([b"peer"], messages)
    assert frames[-2] is messages[0][1] and frames[-1] is tracked
    layout = array("q")
    layout.frombytes(frames[2])
    assert list(layout) == [2, 2, 1, LARGE, 3, 1, LARGE, 1]
    unbundled = split_bundle(frames)
    assert unbundled is not None
    assert unbundled[0][2] is messages[0][1] and unbundled[1][2] is tracked
    assert _bytes(unbundled[1]) == [b"peer", b"b", b"small but tracked", b"c"]


def test_a_message_is_not_a_bundle() -> None:
    assert split_bundle(_message(1, idents=(b"x", b"y"))) is None
    # the mark is only looked for among the first frames: a buffer that holds it is data
    assert split_bundle([b"1", b"2", b"3", b"4", b"5", DELIMITER, MARK]) is None


def _layout(*values: int) -> bytes:
    return array("q", values).tobytes()


@pytest.mark.parametrize(
    "frames",
    [
        [MARK],  # no layout
        [MARK, b"\x01\x02\x03", b""],  # not a list of lengths
        [MARK, _layout(0), b""],  # no messages
        [MARK, _layout(MAX_MESSAGES + 1), b""],  # too many
        [MARK, _layout(2, 1, 3), b"abc"],  # ends before its last message
        [MARK, _layout(1, 5, 1), b"a"],  # more frames than it lists
        [MARK, _layout(1, 1, 4), b"abc"],  # runs past the packed frame
        [MARK, _layout(1, 1, LARGE), b""],  # a large frame that is not there
        [MARK, _layout(1, 1, 2), b"abc"],  # more packed bytes than named
        [MARK, _layout(1, 1, 3), b"abc", b"extra"],  # a large frame nobody names
        [MARK, _layout(1, 1, 3, 7), b"abc"],  # layout entries left over
        [MARK, _layout(1, 1, -5), b"abc"],  # a negative length
    ],
)
def test_a_bad_bundle_is_refused_whole(frames: list[bytes]) -> None:
    with pytest.raises(MalformedMessage):
        split_bundle(frames)


# ------------------------------------------------------------------ on sockets


class _Sockets:
    """Makes sockets on one context and closes every one of them when the test ends."""

    def __init__(self) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.made: list[zmq.Socket[Any]] = []

    def socket(self, socket_type: int) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.context.socket(socket_type)
        self.made.append(sock)
        return sock


@pytest.fixture
def context() -> Iterator[_Sockets]:
    made = _Sockets()
    yield made
    for sock in made.made:
        sock.close(linger=0)
    made.context.term()


def _serve(loop: Loop) -> threading.Thread:
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    return thread


def test_an_outbox_sends_a_turn_as_one_bundle_and_the_receiver_sees_each(
    context: _Sockets,
) -> None:
    """DEALER -> ROUTER on loopback: what one turn puts leaves as one zmq message; a loop with
    ``bundles=True`` hands on each message, with the peer's identity as a ROUTER adds it,
    in order; a message alone is sent as it is."""
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = context.socket(zmq.DEALER)
    dealer.identity = b"sender"
    dealer.connect(f"tcp://127.0.0.1:{port}")
    outbox = Outbox(dealer, 0)
    sent = [_message(index) for index in range(6)]
    for message in sent[:5]:
        outbox.put(message)
    assert len(outbox) == 5 and outbox.flush() == [] and (outbox.sent, outbox.bundled) == (1, 5)
    outbox.put(sent[5])
    outbox.flush()
    assert (outbox.sent, outbox.bundled) == (2, 5)

    assert router.poll(10_000)
    raw = recv_frames(router)
    assert _bytes(raw[:2]) == [b"sender", MARK]
    received: list[list[bytes]] = []
    done = threading.Event()
    loop = Loop("receiver")

    def handle(frames: list[zmq.Frame]) -> None:
        received.append(_bytes(frames))
        if len(received) == 6:
            done.set()

    # the bundle already read goes through the same handler the loop uses
    loop.add_socket(router, handle, bundles=True)
    unbundled = split_bundle(raw)
    assert unbundled is not None
    for message in unbundled:
        handle(message)  # type: ignore[arg-type]
    thread = _serve(loop)
    try:
        assert done.wait(10)
    finally:
        loop.stop()
        thread.join(10)
        loop.close()
    assert received == [_bytes([b"sender", *message]) for message in sent]
    assert [SESSION.feed(m).content for m in received] == [
        {"status": "ok", "index": i} for i in range(6)
    ]


def test_a_loop_flushes_its_outboxes_at_the_end_of_each_turn(context: _Sockets) -> None:
    """Messages handed to a loop thread in one burst leave as bundles per route (a ROUTER
    sending to two peers), and a malformed bundle costs itself only."""
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    peers = {}
    for name in (b"one", b"two"):
        peer = context.socket(zmq.DEALER)
        peer.identity = name
        peer.connect(f"tcp://127.0.0.1:{port}")
        peer.send(b"hello")  # the ROUTER learns the peer
        peers[name] = peer
    for _ in peers:
        assert router.poll(10_000)
        router.recv_multipart()
    loop = Loop("sender")
    outbox = Outbox(router, 1)
    loop.add_outbox(outbox)

    def burst() -> None:
        for index in range(4):
            outbox.put([b"one", *_message(index)])
            outbox.put([b"two", *_message(10 + index)])

    loop.call_soon_threadsafe(burst)
    thread = _serve(loop)
    try:
        for name, first in ((b"one", 0), (b"two", 10)):
            peer = peers[name]
            assert peer.poll(10_000)
            frames = recv_frames(peer)
            assert bytes(frame_view(frames[0])) == MARK
            messages = split_bundle(frames)
            assert messages is not None
            assert [SESSION.feed(m).content for m in messages] == [
                {"status": "ok", "index": first + i} for i in range(4)
            ]
    finally:
        loop.stop()
        thread.join(10)
        loop.close()

    # a receiver that unbundles: a bad bundle is counted and dropped, the next one arrives
    got: list[bytes] = []
    receiver = Loop("receiver")
    receiver.add_socket(peers[b"one"], lambda f: got.append(bytes(frame_view(f[-1]))), bundles=True)
    router.send_multipart([b"one", MARK, _layout(1, 1, 9), b"abc"])
    router.send_multipart([b"one", MARK, _layout(2, 1, 1, 1, 1), b"xy"])
    thread = _serve(receiver)
    try:
        deadline = threading.Event()
        for _ in range(200):
            if got == [b"x", b"y"]:
                break
            deadline.wait(0.05)
    finally:
        receiver.stop()
        thread.join(10)
        receiver.close()
    assert got == [b"x", b"y"]
    assert receiver.rejected == 1


def _connected(
    context: _Sockets, identity: bytes, *, mandatory: bool = False
) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    """A ROUTER and a DEALER of ``identity`` connected to it, the ROUTER knowing the peer."""
    router = context.socket(zmq.ROUTER)
    router.router_mandatory = mandatory
    port = router.bind_to_random_port("tcp://127.0.0.1")
    peer = context.socket(zmq.DEALER)
    peer.identity = identity
    peer.connect(f"tcp://127.0.0.1:{port}")
    peer.send(b"hello")
    assert router.poll(10_000)
    router.recv_multipart()
    return router, peer


def test_a_refused_route_comes_back_with_its_tags(context: _Sockets) -> None:
    """A ROUTER_MANDATORY socket refuses a peer it does not know: that route's messages come
    back as a failure with their tags, and the other routes are sent."""
    router, peer = _connected(context, b"known", mandatory=True)
    outbox = Outbox(router, 1)
    outbox.put([b"nobody", *_message(1)], "t1")
    outbox.put([b"known", *_message(2)], "t2")
    outbox.put([b"nobody", *_message(3)], "t3")
    failures = outbox.flush()
    assert len(failures) == 1
    error, tags = failures[0]
    assert error.errno == zmq.EHOSTUNREACH and tags == ["t1", "t3"]
    assert peer.poll(10_000)
    assert SESSION.feed(recv_frames(peer)).content == {"status": "ok", "index": 2}


def test_a_mirror_gets_every_message_behind_its_prefix_in_bundles_first(
    context: _Sockets,
) -> None:
    """With a mirror, each bundle made for the peer goes to the mirror socket too, behind the
    prefix; a message alone goes to the peer as it is and to the mirror
    as a bundle of one. Unbundled there, every copy is ``[*prefix, *route, *its frames]``,
    a large frame included (sent to both, copied to neither)."""
    router, peer = _connected(context, b"peer")
    pull = context.socket(zmq.PULL)
    mirror_port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = context.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{mirror_port}")
    with pytest.raises(ValueError, match="at most"):
        Outbox(router, 1, mirror=(push, [b"1", b"2", b"3", b"4"]))
    outbox = Outbox(router, 1, mirror=(push, [b"copy"]))
    large = np.arange(20_000, dtype=np.int64)  # 160 kB: never joined
    joined = [b"j" * 40_000, b"k" * 40_000]  # small frames, joined past 64 KiB: a zmq.Frame
    burst = [[b"peer", *_message(0), *joined], [b"peer", *_message(1), memoryview(large)]]
    for message in burst:
        outbox.put(message)
    assert outbox.flush() == []
    lone = [b"peer", *_message(2)]
    outbox.put(lone)
    assert outbox.flush() == []
    assert outbox.stats() == {"messages": 3, "zmq_messages": 2, "mirrored": 2}

    copies: list[list[Any]] = []
    for _ in range(2):
        assert pull.poll(10_000)
        raw = recv_frames(pull)
        assert _bytes(raw[:3]) == [b"copy", b"peer", MARK]
        unbundled = split_bundle(raw)
        assert unbundled is not None
        copies.extend(unbundled)
    sent = [*burst, lone]
    assert [_bytes(m) for m in copies] == [_bytes([b"copy", *m]) for m in sent]
    assert np.array_equal(np.frombuffer(copies[1][-1], dtype=np.int64), large)
    assert peer.poll(10_000)
    bundled = split_bundle(recv_frames(peer))
    assert bundled is not None and [_bytes(m) for m in bundled] == [_bytes(m[1:]) for m in burst]
    assert peer.poll(10_000)
    assert _bytes(recv_frames(peer)) == _bytes(lone[1:])  # alone: as it is


def test_a_made_bundle_goes_as_it_is_between_what_was_put_before_and_after(
    context: _Sockets,
) -> None:
    """``put_bundle`` (a bundle received, passed on): sent as it is, in order, the messages
    put before and after it bundled on either side; only on an outbox without routes."""
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = context.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    with pytest.raises(ValueError, match="without routes"):
        Outbox(push, 1).put_bundle([b"x"], 1)
    outbox = Outbox(push, 0, always_bundle=True)
    sent = [_message(index) for index in range(5)]
    made = [b"prefix", *bundle([b"peer"], sent[1:3])]
    outbox.put(sent[0])
    outbox.put_bundle(made, 2)
    outbox.put(sent[3])
    outbox.put(sent[4])
    assert outbox.flush() == []
    assert outbox.stats() == {"messages": 5, "zmq_messages": 3}
    received = []
    for _ in range(3):
        assert pull.poll(10_000)
        received.append(recv_frames(pull))
    assert _bytes(received[1]) == _bytes(made)
    unbundled = [split_bundle(frames) or [] for frames in received]
    assert [_bytes(m) for m in unbundled[0]] == [_bytes(sent[0])]
    assert [_bytes(m) for m in unbundled[2]] == [_bytes(m) for m in sent[3:]]


def test_a_bundle_crosses_the_mux_and_its_copy_unbundles_like_the_messages(
    context: _Sockets,
) -> None:
    """The controller's MUX is a C monitored queue (ROUTER to ROUTER, swapping the first two
    identities). A client's bundle to one engine arrives there as that engine's requests, each
    from the client; the Hub's copy unbundles to the copies of each request; the engine's
    bundle of replies reaches the client as replies from the engine."""
    device = devices.ThreadMonitoredQueue(zmq.ROUTER, zmq.ROUTER, zmq.PUB, b"in", b"out")
    front = device.bind_in_to_random_port("tcp://127.0.0.1")
    back = device.bind_out_to_random_port("tcp://127.0.0.1")
    mon = device.bind_mon_to_random_port("tcp://127.0.0.1")
    device.daemon = True
    device.start()
    hub = context.socket(zmq.SUB)
    hub.subscribe(b"")
    hub.connect(f"tcp://127.0.0.1:{mon}")
    client = context.socket(zmq.DEALER)
    client.identity = b"client"
    client.connect(f"tcp://127.0.0.1:{front}")
    engine = context.socket(zmq.DEALER)
    engine.identity = b"engine"
    engine.connect(f"tcp://127.0.0.1:{back}")
    try:
        # the client must know the engine's route: wait until a probe gets through
        for _ in range(200):
            client.send_multipart([b"engine", b"probe"])
            if engine.poll(50):
                engine.recv_multipart()
                break
        while hub.poll(200):
            hub.recv_multipart()

        requests = Outbox(client, 1)
        sent = [_message(index) for index in range(3)]
        for message in sent:
            requests.put([b"engine", *message])
        requests.flush()
        assert engine.poll(10_000)
        arrived = split_bundle(recv_frames(engine))
        assert arrived is not None
        assert [_bytes(m) for m in arrived] == [_bytes([b"client", *m]) for m in sent]

        assert hub.poll(10_000)
        copies = split_bundle(recv_frames(hub))
        assert copies is not None
        assert [_bytes(m)[:3] for m in copies] == [[b"in", b"engine", b"client"]] * 3
        assert [SESSION.feed(m[3:]).content for m in copies] == [
            {"status": "ok", "index": i} for i in range(3)
        ]

        replies = Outbox(engine, 1)
        for index in range(2):
            replies.put([b"client", *_message(100 + index)])
        replies.flush()
        assert client.poll(10_000)
        answered = split_bundle(recv_frames(client))
        assert answered is not None
        assert [m[0] for m in _bytes_all(answered)] == [b"engine", b"engine"]
        assert [SESSION.feed(m).content for m in answered] == [
            {"status": "ok", "index": 100 + i} for i in range(2)
        ]
    finally:
        for sock in (hub, client, engine):
            sock.close(0)


def _bytes_all(messages: list[list[Any]]) -> list[list[bytes]]:
    return [_bytes(m) for m in messages]


def test_a_tuple_of_frames_splits_as_the_same_list_does() -> None:
    """Compiled, a bundle's frames are indexed as a list (anything else copied into one first):
    a tuple gives the same messages, route first."""
    messages = [[b"peer", b"one", b"x" * 10], [b"peer", b"two"]]
    frames = bundle([b"peer"], messages, 1)
    assert split_bundle(tuple(frames)) == split_bundle(frames) == messages
