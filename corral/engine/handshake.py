"""Whether an engine's queue sockets are connected to the controller, and waiting until they are.

The Hub announces an engine once it registered and beats, and from then on clients and the task
scheduler send it requests through the controller's engine-facing ROUTERs. A ROUTER silently
drops a message for an identity that has not connected yet, so a request sent in that window
was lost and its caller waited for ever. Two moments open that window:

- at start: ``connect`` only starts a connection in zmq's I/O thread, so connecting the queues
  before the heart does not order the handshakes (seen on a loaded machine: the first direct
  request after ``wait_for_engines`` never answered). The heart starts once the queues are up.
- after a controller restart: every socket reconnects on its own schedule, and the registration
  socket could be back (the engine registers again, the Hub announces it) before the MUX's
  DEALER (seen in CI: the first direct request after the restart never answered). The engine
  registers again only once its queues are up again.

:class:`QueueLinks` listens to each queue socket's monitor for ``HANDSHAKE_SUCCEEDED`` (the
ZMTP greeting and, with Curve, the key exchange done, so the peer ROUTER knows the identity)
and ``DISCONNECTED``, for the engine's whole life. :meth:`QueueLinks.when_connected` runs a
callback once every queue is connected, at once if they are; or after ``patience`` seconds with
a warning (a controller that does not answer would not answer the heart or the registration
either; the engine's link core then handles the loss as before). The warning is logged once
while the queues stay down: during a long controller outage the engine asks again at each
registration attempt, and those later give-ups are logged at debug level only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from corral.loop import Loop, Timer
from corral.socket_events import read_monitor_event

log = logging.getLogger(__name__)

WATCHED_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
DEFAULT_PATIENCE = 10.0  # seconds: longer than any handshake on a working network


class QueueLinks:
    """The connection state of some sockets (one peer each), from their monitors.

    Create it *before* connecting the sockets: a monitor only reports the events that happen
    after it is attached, and a handshake on loopback can finish at once. Owned by ``loop``'s
    thread (the sockets' owner); :meth:`close` releases the monitors and drops the waiters.
    """

    def __init__(
        self,
        loop: Loop,
        sockets: Iterable[zmq.Socket[Any]],
        patience: float = DEFAULT_PATIENCE,
    ) -> None:
        self.loop = loop
        self.patience = patience
        self._monitors: dict[zmq.Socket[Any], zmq.Socket[Any]] = {}
        self._down: set[zmq.Socket[Any]] = set()
        self._waiting: list[tuple[Callable[[], None], Timer]] = []
        self._warned = False  # the give-up warning of this outage is logged
        for sock in sockets:
            monitor = sock.get_monitor_socket(WATCHED_EVENTS)
            self._monitors[sock] = monitor
            self._down.add(sock)
            loop.add_reader(monitor, functools.partial(self._on_events, sock))

    @property
    def connected(self) -> bool:
        """Every socket is connected, as far as the events read so far say."""
        return not self._down

    def when_connected(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once every socket is connected: now if they are (after reading the
        events not read yet), else when the last one connects, or after ``patience`` seconds
        with a warning. Callbacks run in the order given."""
        for sock in list(self._monitors):
            self._read(sock)
        if not self._down and not self._waiting:
            callback()
            return
        timer = self.loop.call_later(self.patience, self._give_up, callback)
        self._waiting.append((callback, timer))
        self._release()

    def _on_events(self, sock: zmq.Socket[Any]) -> None:
        self._read(sock)
        self._release()

    def _read(self, sock: zmq.Socket[Any]) -> None:
        monitor = self._monitors.get(sock)
        if monitor is None:
            return
        while monitor.poll(0):
            event = read_monitor_event(monitor).event
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._down.discard(sock)
                if not self._down:
                    self._warned = False  # the next outage is warned about again
            elif event == zmq.EVENT_DISCONNECTED:
                self._down.add(sock)

    def _release(self) -> None:
        """Every socket is up: run what waited for that."""
        if self._down:
            return
        waiting, self._waiting = self._waiting, []
        for callback, timer in waiting:
            timer.cancel()
            callback()

    def _give_up(self, callback: Callable[[], None]) -> None:
        entry = next((e for e in self._waiting if e[0] is callback), None)
        if entry is None:
            return
        self._waiting.remove(entry)
        log.log(
            logging.DEBUG if self._warned else logging.WARNING,
            "%d queue connection(s) to the controller not established after %g s; "
            "going on without them%s",
            len(self._down),
            self.patience,
            " (still)" if self._warned else "",
        )
        self._warned = True
        callback()

    def close(self) -> None:
        """Stop watching: the monitors are detached and closed, waiting callbacks dropped."""
        for _, timer in self._waiting:
            timer.cancel()
        self._waiting = []
        for sock, monitor in self._monitors.items():
            self.loop.remove(monitor)
            try:
                sock.disable_monitor()
            except zmq.ZMQError:  # the socket is already closed
                pass
            monitor.close(linger=0)
        self._monitors.clear()
