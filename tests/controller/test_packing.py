"""Packed copies: every frame comes back as it was; a bad layout is a clear error."""

from __future__ import annotations

from array import array

import pytest
import zmq

from corral.controller.packing import LARGE, pack, unpack
from corral.errors import MalformedMessage
from corral.protocol.session import frame_view
from corral.sockets import COPY_BELOW


def test_small_frames_are_joined_and_come_back_as_they_were() -> None:
    frames = [b"client", b"engine", b"<IDS|MSG>", b"signature", b"{}", b"", b"x" * 300]
    packed = pack(b"task_in", frames)
    assert len(packed) == 3
    assert [bytes(frame_view(frame)) for frame in unpack(packed)] == [b"task_in", *frames]


def test_large_frames_travel_alone_and_are_not_copied() -> None:
    large = zmq.Frame(b"L" * COPY_BELOW)
    view = memoryview(b"M" * (2 * COPY_BELOW))
    packed = pack(b"task_out", [b"client", large, b"small", view])
    assert len(packed) == 5 and packed[3] is large and packed[4] is view
    unpacked = unpack(packed)
    assert unpacked[2] is large and unpacked[4] is view
    assert (
        bytes(frame_view(unpacked[1])) == b"client" and bytes(frame_view(unpacked[3])) == b"small"
    )


def test_packed_copies_survive_a_socket() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        push, pull = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
        push.bind("inproc://packing")
        pull.connect("inproc://packing")
        frames = [b"a", b"b" * 100, b"c" * (COPY_BELOW + 1), b""]
        push.send_multipart(pack(b"task_in", frames))
        assert pull.poll(10_000)
        received = pull.recv_multipart(copy=False)
        assert [bytes(frame_view(frame)) for frame in unpack(received)] == [b"task_in", *frames]
        push.close(0)
        pull.close(0)
    finally:
        context.term()


def _layout(*lengths: int) -> bytes:
    return array("q", lengths).tobytes()


@pytest.mark.parametrize(
    "frames",
    [
        [b"task_in", _layout(3)],  # too few frames
        [b"task_in", b"12345", b"abc"],  # not a list of int64
        [b"task_in", _layout(4), b"abc"],  # runs past the packed frame
        [b"task_in", _layout(-5), b"abc"],  # a negative length
        [b"task_in", _layout(2), b"abc"],  # bytes left over
        [b"task_in", _layout(3, LARGE), b"abc"],  # a large frame missing
        [b"task_in", _layout(3), b"abc", b"extra"],  # a large frame not named
    ],
)
def test_a_layout_that_does_not_match_is_refused(frames: list[bytes]) -> None:
    with pytest.raises(MalformedMessage):
        unpack(frames)
