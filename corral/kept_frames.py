"""A message's frames kept for later, compact: its small frames joined into one ``bytes``.

orjson's ``dumps`` (3.13) returns a ``bytes`` that keeps the 4 KiB buffer it wrote into,
whatever the length of the JSON: a message's four JSON frames hold 16 KiB of heap for as long
as they live. Sent at once and dropped, that costs nothing (the buffers are reused); kept for
seconds by the thousand, it grows a process's heap by tens to hundreds of MiB, every new page
of it a fault, cold in the caches. Two places keep messages that long: an engine its replies
until the Hub confirms them (:mod:`corral.engine.replies`), a client its load-balanced
requests until they are answered (:mod:`corral.client.recovery`), both for resending after a
controller restart. :func:`compact` joins the small frames into one exact-size ``bytes`` with
their lengths (about 0.5 us a message), in one flat tuple of bytes and ints that the cyclic
collector stops tracking at its first look; :func:`expand` gives the frames back. A message
with a large or zero-copy frame is kept as it is: a large result is never copied for this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from corral.protocol.session import Frame, frame_view
from corral.sockets import COPY_BELOW

__all__ = ["KeptFrames", "compact", "expand", "is_compact", "kept_size"]

KeptFrames = tuple[Any, ...]
"""Frames as :func:`compact` keeps them: ``(joined, *lengths)`` (``bytes``, then each frame's
length), or the frames themselves as a tuple (a frame is never an int, so the two cannot be
mistaken for each other)."""


def compact(frames: Sequence[Frame]) -> KeptFrames:
    """``frames`` as kept (see the module doc): joined, with their lengths, when every frame is
    ``bytes`` and together they are under ``COPY_BELOW``; else as a tuple, not copied. Already
    compact, or fewer than two frames: as it is."""
    if len(frames) < 2 or is_compact(frames):
        return tuple(frames)
    total = 0
    lengths: list[int] = []  # taken in the same pass (compiled, map(len, ...) is generic)
    for frame in frames:
        if type(frame) is not bytes:
            return tuple(frames)
        size = len(frame)
        total += size
        lengths.append(size)
    if total >= COPY_BELOW:
        return tuple(frames)
    return (b"".join(frames), *lengths)  # type: ignore[arg-type]


def expand(kept: Sequence[Any]) -> list[Frame]:
    """The frames of a message kept by :func:`compact` (or of a plain frame sequence)."""
    if not is_compact(kept):
        return list(kept)
    joined = kept[0]
    frames: list[Frame] = []
    offset = 0
    for length in kept[1:]:
        frames.append(joined[offset : offset + length])
        offset += length
    return frames


def is_compact(kept: Sequence[Any]) -> bool:
    """Whether ``kept`` is :func:`compact`'s joined form."""
    return len(kept) > 1 and type(kept[1]) is int


def kept_size(kept: Sequence[Any]) -> int:
    """The bytes of the frames ``kept`` holds (compact or not): what keeping them costs."""
    if is_compact(kept):
        return len(kept[0])
    return sum(memoryview(frame_view(frame)).nbytes for frame in kept)
