"""The scheduler's ``task_in`` and ``task_out`` copies for the Hub, packed into few frames.

A copy is the task's whole message behind a prefix and its route: some ten frames, nearly all
of them small (identities, the delimiter, the signature, four JSON frames, a no-op's pickled
function and arguments). Sending and receiving a zmq frame costs microseconds of Python and
libzmq each, whatever its size, and every task made two such copies, so the frames cost more
than their bytes. A packed copy is ``[prefix, layout, packed, large...]``: ``packed`` is every
frame below :data:`~corral.sockets.COPY_BELOW` bytes joined (a copy of a few hundred bytes),
``layout`` the length of each original frame in order (signed 64-bit, native order: both ends
run on the same host), -1 for a frame too large to join, sent as it is in ``large`` (never
copied). :func:`unpack` gives back the original frames, small ones as views of ``packed``, so
the Hub reads a packed copy exactly as an unpacked one (docs/wire-flows.md).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from corral.errors import MalformedMessage
from corral.protocol.session import Frame, frame_view
from corral.sockets import COPY_BELOW

LARGE = -1  # in a layout: the next frame of ``large``
MAX_FRAMES = 1 << 16  # frames in one copy: far above any message's


def pack(prefix: bytes, frames: Sequence[Frame]) -> list[Frame]:
    """``[prefix, *frames]`` as a packed copy (see the module docs)."""
    lengths = array("q")
    small: list[bytes | memoryview] = []
    large: list[Frame] = []
    for frame in frames:
        view = frame_view(frame)
        size = memoryview(view).nbytes
        if size < COPY_BELOW:
            lengths.append(size)
            small.append(view)
        else:
            lengths.append(LARGE)
            large.append(frame)
    return [prefix, lengths.tobytes(), b"".join(small), *large]


def unpack(frames: Sequence[Frame]) -> list[Frame]:
    """The frames of a packed copy as they were before packing, its prefix first.

    MalformedMessage if the layout does not match what came with it."""
    if len(frames) < 3:
        raise MalformedMessage(f"a packed copy has at least 3 frames, not {len(frames)}")
    layout = frame_view(frames[1])
    lengths = array("q")
    if memoryview(layout).nbytes % lengths.itemsize:
        raise MalformedMessage("a packed copy's layout is not a list of lengths")
    lengths.frombytes(layout)
    if len(lengths) > MAX_FRAMES:
        raise MalformedMessage(f"a packed copy of {len(lengths)} frames")
    packed = memoryview(frame_view(frames[2])).cast("B")
    large = frames[3:]
    result: list[Frame] = [frames[0]]
    offset = 0
    taken = 0
    for length in lengths:
        if length == LARGE:
            if taken >= len(large):
                raise MalformedMessage("a packed copy names more large frames than it has")
            result.append(large[taken])
            taken += 1
        elif 0 <= length <= len(packed) - offset:
            result.append(packed[offset : offset + length])
            offset += length
        else:
            raise MalformedMessage("a packed copy's layout runs past its packed frame")
    if offset != len(packed) or taken != len(large):
        raise MalformedMessage("a packed copy holds more than its layout names")
    return result
