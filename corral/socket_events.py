"""A zmq socket monitor's events, read without ``zmq.utils.monitor``.

pyzmq's ``zmq.utils.monitor`` imports ``zmq.asyncio``, and with it asyncio and ssl, in every
process that reads a monitor (each engine watches its links to the controller, each client its
own), where reading an event is one ``struct`` unpack. Without them (and without
``zmq.auth.thread``, see :func:`corral.security.start_authenticator`) an idle engine's private
memory went from 24.2 to 21.7 MB: 160 MB less with 64 engines on a host (bench/README.md,
round thirty-six).

libzmq's monitor message (version 1, the one ``Socket.get_monitor_socket`` asks for) is two
frames: the event's number (16 bits) and its value (32 bits, e.g. the descriptor of the
connection), in the machine's byte order, then the endpoint's address.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import zmq

from corral.errors import ProtocolError

_HEAD: Final = struct.Struct("=HI")


class MonitorEvent(NamedTuple):
    """One event of a monitored socket (``zmq.EVENT_*``), its value and its endpoint."""

    event: int
    value: int
    endpoint: bytes


def parse_monitor_event(frames: Sequence[bytes]) -> MonitorEvent:
    """The event of a monitor message's two frames; a message of another shape is a
    :class:`~corral.errors.ProtocolError` (never from libzmq itself)."""
    if len(frames) != 2 or len(frames[0]) != _HEAD.size:
        raise ProtocolError(
            f"not a zmq monitor event: {len(frames)} frames, first of "
            f"{len(frames[0]) if frames else 0} bytes (expected 2 frames, {_HEAD.size} bytes)"
        )
    event, value = _HEAD.unpack(frames[0])
    return MonitorEvent(event, value, bytes(frames[1]))


def read_monitor_event(monitor: zmq.Socket[Any]) -> MonitorEvent:
    """The next event of ``monitor`` (blocks until one comes: poll first)."""
    return parse_monitor_event(monitor.recv_multipart())
