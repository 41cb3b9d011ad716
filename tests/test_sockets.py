"""send_frames, recv_frames and recv_small_as_bytes: the same messages as send_multipart and
recv_multipart, and large buffers still not copied."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from corral.sockets import COPY_BELOW, recv_frames, recv_small_as_bytes, send_frames


@pytest.fixture
def pair():  # type: ignore[no-untyped-def]
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    port = b.bind_to_random_port("tcp://127.0.0.1")
    a.connect(f"tcp://127.0.0.1:{port}")
    yield a, b
    a.close(0)
    b.close(0)
    ctx.term()


def test_frames_arrive_as_one_message(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    array = np.arange(1_000_000, dtype=np.int64)
    send_frames(a, [b"id", b"<IDS|MSG>", memoryview(b"abc"), memoryview(array)])
    send_frames(a, [b"single"])
    first = b.recv_multipart(copy=False)
    assert [f.bytes for f in first[:3]] == [b"id", b"<IDS|MSG>", b"abc"]
    assert np.array_equal(np.frombuffer(first[3].buffer, dtype=np.int64), array)
    assert b.recv_multipart() == [b"single"]


def test_large_buffers_are_not_copied() -> None:
    """A zero-copy send keeps the buffer exported while zmq holds the message: queue one for
    a peer that is not listening, and the buffer cannot be resized."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect("tcp://127.0.0.1:9")  # nobody listens: the message waits in the pipe
    buffer = bytearray(10_000_000)
    try:
        send_frames(push, [b"x", memoryview(buffer)])
        with pytest.raises(BufferError):
            buffer.append(1)
    finally:
        push.close(linger=0)
        ctx.term()


def test_noblock_flag(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    send_frames(a, [b"a", b"b"], zmq.NOBLOCK)
    assert b.recv_multipart() == [b"a", b"b"]


def test_recv_frames_returns_every_part_as_frames(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    array = np.arange(1_000_000, dtype=np.int64)
    a.send_multipart([b"id", b"", b"<IDS|MSG>", memoryview(array)], copy=False)
    assert b.poll(10_000)
    frames = recv_frames(b)
    assert all(isinstance(frame, zmq.Frame) for frame in frames)
    assert [f.bytes for f in frames[:3]] == [b"id", b"", b"<IDS|MSG>"]
    assert np.array_equal(np.frombuffer(frames[3].buffer, dtype=np.int64), array)


def test_recv_frames_noblock_on_an_empty_socket_raises_again(pair) -> None:  # type: ignore[no-untyped-def]
    _, b = pair
    with pytest.raises(zmq.Again):
        recv_frames(b, zmq.NOBLOCK)


def test_small_and_large_bytes_frames_arrive_intact(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    small, large = b"s" * 100, bytes(range(256)) * 1024  # below and above COPY_BELOW
    send_frames(a, [small, large, b""])
    assert b.poll(10_000)
    assert [f.bytes for f in recv_frames(b)] == [small, large, b""]


def test_recv_small_as_bytes_copies_small_frames_only(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    array = np.arange(1_000_000, dtype=np.int64)
    edge = b"e" * (COPY_BELOW - 1)
    at_limit = b"l" * COPY_BELOW
    a.send_multipart([b"id", b"", edge, at_limit, memoryview(array), b"last"], copy=False)
    assert b.poll(10_000)
    frames = recv_small_as_bytes(b)
    assert [type(frame) for frame in frames] == [bytes, bytes, bytes, zmq.Frame, zmq.Frame, bytes]
    assert frames[:3] == [b"id", b"", edge]
    assert frames[3].bytes == at_limit  # type: ignore[union-attr]
    assert np.array_equal(np.frombuffer(frames[4].buffer, dtype=np.int64), array)  # type: ignore[union-attr]
    assert frames[5] == b"last"


def test_recv_small_as_bytes_keeps_messages_apart(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    send_frames(a, [b"one"])
    send_frames(a, [b"two", b"parts"])
    assert b.poll(10_000)
    assert recv_small_as_bytes(b) == [b"one"]
    assert b.poll(10_000)
    assert recv_small_as_bytes(b) == [b"two", b"parts"]
    with pytest.raises(zmq.Again):
        recv_small_as_bytes(b, zmq.NOBLOCK)
