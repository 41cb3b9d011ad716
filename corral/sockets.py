"""Sending and receiving multipart messages without pyzmq's per-frame Python overhead.

``Socket.send_multipart`` costs about 1 microsecond per frame in Python (an Enum ``|`` and the
sugar layer's checks, for every frame); a task crosses the scheduler as some forty frames.
:func:`send_frames` calls the backend ``send`` directly with integer flags: four times cheaper,
with the same semantics (large buffers are still sent without copying them). Small ``bytes``
frames (the envelope: identities, signature, JSON) are copied into the message instead of
wrapped in a ``zmq.Frame``: a copy of a few hundred bytes costs less than the Frame object and
the deferred free of a zero-copy send (``bench/bench_protocol.py``).

:func:`recv_frames` is ``recv_multipart(copy=False)`` the same way (no sugar layer): every frame
is a ``zmq.Frame``, so a large buffer is never copied. Whether more parts follow is read from
the frame (``Frame.more``, which the backend sets from the message it received) rather than
with ``getsockopt(RCVMORE)``: the backend's ``get`` converts its option to an Enum on every
call, which cost more than the receive itself for a small frame (``bench/bench_protocol.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq
import zmq.backend

COPY_BELOW = 64 * 1024
"""``bytes`` frames shorter than this are copied on send; larger ones, memoryviews and
``zmq.Frame`` objects go zero-copy."""

_SNDMORE = int(zmq.SNDMORE)
_backend_send = zmq.backend.Socket.send
_backend_recv = zmq.backend.Socket.recv


def send_frames(sock: zmq.Socket[Any], frames: Sequence[Any], flags: int = 0) -> None:
    """Send ``frames`` as one multipart message, without copying large buffers.

    ``flags`` (e.g. ``zmq.NOBLOCK``) apply to every part, as with ``send_multipart``.
    """
    more = _SNDMORE | int(flags)
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        copy = type(frame) is bytes and len(frame) < COPY_BELOW
        _backend_send(sock, frame, more if index < last else int(flags), copy)


def recv_frames(sock: zmq.Socket[Any], flags: int = 0) -> list[zmq.Frame]:
    """Receive one multipart message as ``zmq.Frame`` objects (no copy of any frame).

    ``flags`` apply to the first part (``zmq.NOBLOCK`` raises ``zmq.Again`` if nothing waits);
    the other parts of a message are always there once its first part is.
    """
    frame: zmq.Frame = _backend_recv(sock, flags, False)
    frames = [frame]
    while frame.more:
        frame = _backend_recv(sock, 0, False)
        frames.append(frame)
    return frames
