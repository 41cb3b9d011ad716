"""Direct replies the engine's ROUTER could not route yet, kept and tried again.

A client on the engine's host connects two ways at once: its zmq socket to the engine's direct
ROUTER (a TCP connection and a handshake that the zmq I/O threads make, later) and its lane (a
Unix socket, connected before its first request leaves). A reply that the lane cannot take in
one packet (a result of more than 64 KiB) goes on the ROUTER; if the client's zmq connection
has not finished its handshake by then, which a loaded machine can delay by tens of
milliseconds after a client starts, a ROUTER silently drops it and the client waits for ever
(a CI run's 900 KB apply_sync did, for 90 s). So the engine's direct ROUTER refuses such a
send (``ROUTER_MANDATORY``: EHOSTUNREACH), and the task shell keeps the reply here and sends
it again (after :data:`RETRY_EVERY`, then less often) until the connection is there, for
:data:`KEEP_FOR` at most: a client that never connects (it died) costs a logged drop, not a
leak. Replies need no order among themselves, so a kept reply may leave after later ones.

This is the rule alone (no sockets): :class:`UnroutedReplies` holds what waits and says when
to try again and what to give up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from corral.protocol.session import Frame

__all__ = ["KEEP_FOR", "RETRY_AT_MOST", "RETRY_EVERY", "Refused", "UnroutedReplies"]

RETRY_EVERY: Final = 0.005
"""Seconds before the first try again: a handshake on loopback takes a millisecond when the
machine is idle, tens under load. Later tries wait half the oldest reply's age, up to
:data:`RETRY_AT_MOST`, so that a client that is gone wakes the engine a few times a second,
not two hundred."""
RETRY_AT_MOST: Final = 0.5
KEEP_FOR: Final = 60.0
"""Seconds a reply is tried at most: far longer than any handshake (a client that connected
its lane has connected its zmq socket too), short enough that a dead client's replies go."""


Refused = tuple[float | None, Sequence[Frame]]
"""A reply the ROUTER refused, as its outbox tag: when it was first kept (None: not before)
and its frames."""


class UnroutedReplies:
    """The direct replies waiting for their client's zmq connection, each with the time it was
    first refused."""

    __slots__ = ("_waiting", "dropped", "kept")

    def __init__(self) -> None:
        self._waiting: list[tuple[float, Sequence[Frame]]] = []
        self.kept = 0  # replies refused a first time (tests, stats)
        self.dropped = 0  # replies given up after KEEP_FOR

    def __len__(self) -> int:
        return len(self._waiting)

    def keep(self, refused: Sequence[Refused], now: float) -> None:
        """The ROUTER refused these (no route to their client yet): keep each, dated when it
        was first refused."""
        for first, frames in refused:
            if first is None:
                self.kept += 1
                first = now
            self._waiting.append((first, frames))

    def next_try(self, now: float) -> float:
        """Seconds until the next try (see :data:`RETRY_EVERY`)."""
        oldest = min((first for first, _ in self._waiting), default=now)
        return min(RETRY_AT_MOST, max(RETRY_EVERY, (now - oldest) / 2))

    def take(self, now: float) -> tuple[list[tuple[float, Sequence[Frame]]], int]:
        """Everything to try again now (each with its first refusal's time, the tag to send it
        with), and how many were given up: kept longer than :data:`KEEP_FOR`."""
        waiting, self._waiting = self._waiting, []
        fresh = [entry for entry in waiting if now - entry[0] <= KEEP_FOR]
        given_up = len(waiting) - len(fresh)
        self.dropped += given_up
        return fresh, given_up
