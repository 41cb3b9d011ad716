"""send_frames: the same message as send_multipart, and large buffers still not copied."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from corral.sockets import send_frames


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
