"""Wait until an engine's queue sockets are connected before its heart starts beating.

The Hub announces an engine on its first pong, and from then on clients and the task scheduler
send it requests through the controller's engine-facing ROUTERs. A ROUTER silently drops a
message for an identity that has not connected yet, so a request sent in that window was lost
(seen on a loaded machine: the first direct request after ``wait_for_engines`` never answered).
``connect`` only starts a connection in zmq's I/O thread, so connecting the queues before the
heart does not order the handshakes. This watch does: it listens to each queue socket's monitor
for ``HANDSHAKE_SUCCEEDED`` (the ZMTP greeting and, with Curve, the key exchange done, so the
peer ROUTER knows the identity) and calls ``ready`` once every one has reported, or after
``patience`` seconds with a warning (a controller that does not answer would not answer the
heart either; the engine's link core then handles the loss as before).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from corral.loop import Loop, Timer

log = logging.getLogger(__name__)

WATCHED_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED
DEFAULT_PATIENCE = 10.0  # seconds: longer than any handshake on a working network


class HandshakeWatch:
    """Call ``ready()`` once, when every socket given has completed a handshake.

    Create it *before* connecting the sockets: a monitor only reports the events that happen
    after it is attached, and a handshake on loopback can finish at once. Owned by ``loop``'s
    thread (the sockets' owner); :meth:`close` releases the monitors (also done on ready).
    """

    def __init__(
        self,
        loop: Loop,
        sockets: Iterable[zmq.Socket[Any]],
        ready: Callable[[], None],
        patience: float = DEFAULT_PATIENCE,
    ) -> None:
        self.loop = loop
        self._ready = ready
        self._monitors: dict[zmq.Socket[Any], zmq.Socket[Any]] = {}
        self._waiting: set[zmq.Socket[Any]] = set()
        for sock in sockets:
            monitor = sock.get_monitor_socket(WATCHED_EVENTS)
            self._monitors[sock] = monitor
            self._waiting.add(sock)
            loop.add_reader(monitor, functools.partial(self._on_events, sock))
        self._timer: Timer | None = loop.call_later(patience, self._give_up, patience)
        self.done = False

    def _on_events(self, sock: zmq.Socket[Any]) -> None:
        monitor = self._monitors.get(sock)
        if monitor is None:
            return
        while monitor.poll(0):
            event = parse_monitor_message(monitor.recv_multipart())
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._waiting.discard(sock)
        if not self._waiting:
            self._finish()

    def _give_up(self, patience: float) -> None:
        self._timer = None
        if not self.done:
            log.warning(
                "%d queue connection(s) to the controller not established after %g s; "
                "starting the heartbeat anyway",
                len(self._waiting),
                patience,
            )
            self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.close()
        self._ready()

    def close(self) -> None:
        """Stop watching: the monitors are detached and closed, the timer cancelled."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sock, monitor in self._monitors.items():
            self.loop.remove(monitor)
            try:
                sock.disable_monitor()
            except zmq.ZMQError:  # the socket is already closed
                pass
            monitor.close(linger=0)
        self._monitors.clear()
