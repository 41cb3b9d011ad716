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

:func:`recv_small_as_bytes` is the same receive with every frame under :data:`COPY_BELOW`
copied to ``bytes`` (large ones stay ``zmq.Frame``, never copied): for the sockets whose
handlers parse every small frame (the envelope), as a bundle's messages already come
(:mod:`corral.bundles`). A ``zmq.Frame``'s ``.buffer`` is a new memoryview at each access
(about 0.2 us) and JSON, HMAC and comparisons read a memoryview more slowly than bytes, so
one copy per frame costs less than the views a parse makes: receiving and feeding an
engine's apply request took 14 us from zmq Frames and 10 from bytes. Frame-only features
(``Frame.get``, e.g. ``zmq.SRCFD``) are gone from the copied frames: a socket whose handler
needs them keeps :func:`recv_frames`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import zmq
import zmq.backend

COPY_BELOW: Final = 64 * 1024
"""``bytes`` frames shorter than this are copied on send; larger ones, memoryviews and
``zmq.Frame`` objects go zero-copy."""

_SNDMORE: Final = int(zmq.SNDMORE)
_backend_send: Final = zmq.backend.Socket.send
_backend_recv: Final = zmq.backend.Socket.recv


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


def recv_small_as_bytes(sock: zmq.Socket[Any], flags: int = 0) -> list[bytes | zmq.Frame]:
    """Receive one multipart message as :func:`recv_frames` does, each frame shorter than
    :data:`COPY_BELOW` copied to ``bytes`` (see the module doc); larger ones are the
    ``zmq.Frame`` received, not copied."""
    frame: zmq.Frame = _backend_recv(sock, flags, False)
    frames: list[bytes | zmq.Frame] = [frame.bytes if len(frame) < COPY_BELOW else frame]
    while frame.more:
        frame = _backend_recv(sock, 0, False)
        frames.append(frame.bytes if len(frame) < COPY_BELOW else frame)
    return frames
