"""Sending multipart messages without pyzmq's per-frame Python overhead.

``Socket.send_multipart`` costs about 1 microsecond per frame in Python (an Enum ``|`` and the
sugar layer's checks, for every frame); a task crosses the scheduler as some forty frames.
:func:`send_frames` calls the backend ``send`` directly with integer flags: four times cheaper,
with the same semantics (``copy=False`` still sends large buffers without copying them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq
import zmq.backend

_SNDMORE = int(zmq.SNDMORE)
_backend_send = zmq.backend.Socket.send


def send_frames(sock: zmq.Socket[Any], frames: Sequence[Any], flags: int = 0) -> None:
    """Send ``frames`` as one multipart message, without copying large buffers.

    ``flags`` (e.g. ``zmq.NOBLOCK``) apply to every part, as with ``send_multipart``.
    """
    more = _SNDMORE | int(flags)
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        _backend_send(sock, frame, more if index < last else int(flags), False)
