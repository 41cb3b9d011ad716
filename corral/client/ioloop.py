"""The client's one I/O thread: it owns every socket and routes replies to their futures.

User threads never touch a zmq socket: every one is created, used and closed by the I/O
thread. A submitting thread builds and signs its message itself, then hands the frames
(zero-copy) to the I/O thread through one :class:`_Inbox`: a queue plus a wake-up socket pair
that the I/O thread polls beside its zmq sockets (the self-pipe asyncio uses for
``call_soon_threadsafe``). It costs no socket per calling thread, so a program that submits
from thousands of short-lived threads holds the same file descriptors as one that does not.
The I/O thread forwards the frames untouched and feeds everything it receives to a
:class:`Handler`.

    user thread  --(channel, frames)-->  inbox (queue + wake-up)   I/O thread
                                                 |-- mux/control/task DEALERs (identity =
                                                 |   session id), hub DEALER  --> controller
                                                 |<- replies, notifications (SUB), iopub (SUB)

Failure: if the I/O thread stops for any reason (:meth:`ClientIO.close`, or an error in its
loop), the inbox is closed first, then the handler hears ``on_closed`` and fails everything
pending. Every later hand-off raises :class:`~corral.errors.ConnectionError` at once, naming
the error that stopped the thread, so no call can wait for a thread that is gone.

Socket monitors on the hub DEALER and the notification SUB tell the handler when the link
to the controller drops and when it is back (``on_link``).

The loop is a plain ``zmq.Poller`` loop, which costs less per message than an asyncio loop
for a thread that only moves frames. ``call_soon`` runs a function on the I/O thread through
the same inbox (the Hub polling of ``get_result``), and ``call_later`` schedules one there
(timeouts, retries).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

import zmq
from zmq.utils.monitor import recv_monitor_message

from corral.errors import ConnectionError, ProtocolError, ReplayError
from corral.protocol.session import Frame, Message, Session
from corral.security import CurveKeys, make_client
from corral.sockets import send_frames

log = logging.getLogger("corral.client")

__all__ = ["ClientIO", "Handler"]

CHANNELS = ("mux", "control", "task", "hub")
_CLOSED = "this client is closed; create a new Client to reconnect"
_BATCH = 256  # messages read from one socket before looking at the others
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class Handler(Protocol):
    """What the I/O thread calls with each decoded message; runs on the I/O thread only."""

    def on_reply(self, msg: Message) -> None: ...

    def on_notification(self, msg: Message) -> None: ...

    def on_iopub(self, msg: Message) -> None: ...

    def on_closed(self) -> None: ...

    def on_link(self, up: bool) -> None: ...


_Send = tuple[bytes, Sequence[Frame]]  # (channel, frames of one signed message)
_Item = _Send | Callable[[], None] | None  # a message, a call for the I/O thread, or stop


class _Inbox:
    """The one way into the I/O thread: a FIFO of items and a wake-up socket pair.

    :meth:`put` works from any thread and never blocks; the I/O thread polls :meth:`fileno`
    and calls :meth:`take`. One byte on the socket pair stands for "items are waiting": it is
    written when the queue goes from empty to non-empty and read when it is emptied, under one
    lock, so a burst of sends costs one wake-up. Once :meth:`close` d, ``put`` raises
    ConnectionError with the reason given, so nothing is queued that nobody will take.
    """

    def __init__(self) -> None:
        self._items: deque[_Item] = deque()
        self._lock = threading.Lock()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._closed_because: str | None = None

    def fileno(self) -> int:
        return self._reader.fileno()

    @property
    def closed(self) -> bool:
        return self._closed_because is not None

    @property
    def closed_because(self) -> str | None:
        return self._closed_because

    def put(self, item: _Item, *, then_close: str | None = None) -> None:
        """Queue ``item`` for the I/O thread; with ``then_close``, close right after it (so
        ``item`` is the last one taken)."""
        with self._lock:
            if self._closed_because is not None:
                raise ConnectionError(self._closed_because)
            if not self._items:
                try:
                    self._writer.send(b"\0")
                except BlockingIOError:  # cannot happen with one byte pending; harmless anyway
                    pass
            self._items.append(item)
            if then_close is not None:
                self._closed_because = then_close

    def take(self, limit: int) -> list[_Item]:
        """(I/O thread) Up to ``limit`` items, oldest first; the wake-up byte is read once the
        queue is empty, so the poller wakes again while items remain."""
        with self._lock:
            items = [self._items.popleft() for _ in range(min(limit, len(self._items)))]
            if not self._items:
                try:
                    self._reader.recv(64)
                except BlockingIOError:
                    pass
            return items

    def close(self, reason: str) -> None:
        """Refuse every later ``put`` with ConnectionError(``reason``); drop what is queued
        (the handler fails the pending requests). The first reason given is kept."""
        with self._lock:
            if self._closed_because is None:
                self._closed_because = reason
            self._items.clear()

    def release(self) -> None:
        """(I/O thread, once it no longer polls) Close the socket pair."""
        with self._lock:
            self._reader.close()
            self._writer.close()


class ClientIO:
    """Sockets, hand-off and routing for one client (see the module doc).

    ``addresses`` maps ``hub``, ``notification``, ``mux``, ``control``, ``task`` and ``iopub``
    to URLs. ``curve`` (a ``--curve`` cluster's keys) makes every controller-facing socket a
    curve client. :meth:`start` raises :class:`~corral.errors.ConnectionError` if no controller
    completes a connection to the notification socket within ``timeout`` seconds.
    """

    def __init__(
        self,
        session: Session,
        addresses: Mapping[str, str],
        handler: Handler,
        curve: CurveKeys | None = None,
    ) -> None:
        self.session = session
        self.addresses = dict(addresses)
        self.handler = handler
        self.curve = curve
        self.context: zmq.Context[Any] = zmq.Context()
        self._inbox = _Inbox()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_order = itertools.count()
        self._sockets: dict[str, zmq.Socket[Any]] = {}
        self._targets: dict[bytes, zmq.Socket[Any]] = {}
        self._links: dict[zmq.Socket[Any], tuple[str, zmq.Socket[Any]]] = {}
        self._down: set[str] = set()
        self.rejected = 0  # messages dropped because they do not parse or verify
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        self._joined = False
        self._closing = threading.Lock()  # close() from two threads: one joins, one waits
        self._thread = threading.Thread(
            target=self._run, name=f"corral-client-io-{session.session_id[:8]}", daemon=True
        )

    # ------------------------------------------------------------------ any thread

    def start(self, timeout: float) -> None:
        """Start the I/O thread; return once its sockets reached the controller."""
        self._connect_timeout = timeout
        self._thread.start()
        self._started.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._joined = True
            self.context.term()
            raise self._startup_error

    @property
    def closed(self) -> bool:
        """Whether hand-offs are refused: after :meth:`close`, or once the I/O thread died."""
        return self._inbox.closed

    def closed_error(self) -> ConnectionError:
        """The error for a call made on a closed client: why it is closed."""
        return ConnectionError(self._inbox.closed_because or _CLOSED)

    @property
    def link_up(self) -> bool:
        """Whether the hub and notification sockets are connected to the controller."""
        return not self._down

    def send(
        self, channel: bytes, frames: Sequence[Frame], track_from: int | None = None
    ) -> zmq.MessageTracker | None:
        """Hand a signed message's frames to the I/O thread (``channel``: b"mux", b"control",
        b"task" or b"hub"). Frames are not copied; the buffers must not change until sent.

        ``track_from``: the frames from that index on (the data buffers) are tracked; the
        MessageTracker returned is done once zmq has released every one of them, i.e. once
        the message has left the process and the buffers may be changed again.
        ConnectionError at once if the client is closed or its I/O thread has failed."""
        if track_from is None:
            self._inbox.put((channel, frames))
            return None
        tracked = [zmq.Frame(frame, track=True) for frame in frames[track_from:]]
        self._inbox.put((channel, [*frames[:track_from], *tracked]))
        return zmq.MessageTracker(*tracked)

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the I/O thread, soon, after what was handed over before it."""
        self._inbox.put(callback)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the I/O thread (pending requests fail with ConnectionError), close sockets.
        Also releases a client whose I/O thread failed; calling it again does nothing."""
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "cannot close a client from its own I/O thread (a done callback); close it "
                "from another thread, or after the callback returns"
            )
        with self._closing:
            if self._joined:
                return
            try:
                self._inbox.put(None, then_close=_CLOSED)
            except ConnectionError:
                pass  # already closed: the I/O thread failed
            self._thread.join(timeout)
            self._joined = True
            if self._thread.is_alive():
                log.error("client: the I/O thread did not stop within %s s; abandoning it", timeout)
                self.context.destroy(linger=0)
            else:
                self.context.term()

    # ------------------------------------------------------------------ I/O thread only

    def send_now(self, channel: str, frames: Sequence[Frame]) -> None:
        """Send on a controller socket directly (I/O thread only)."""
        send_frames(self._sockets[channel], frames)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the I/O thread after ``delay`` seconds (I/O thread only)."""
        when = time.monotonic() + delay
        heapq.heappush(self._timers, (when, next(self._timer_order), callback))

    def _run(self) -> None:
        try:
            self._setup()
        except BaseException as exc:  # noqa: BLE001 - reported to start() in the caller
            self._startup_error = exc
            self._inbox.close(f"the client could not connect: {exc}")
            self._teardown()
            self._started.set()
            return
        self._started.set()
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - any failure must release the callers
            log.exception("client: the I/O thread failed")
            self._inbox.close(
                f"this client's I/O thread failed ({type(exc).__name__}: {exc}) and the client "
                "can no longer reach the controller; create a new Client"
            )
        finally:
            self._inbox.close(_CLOSED)
            try:
                self.handler.on_closed()
            finally:
                self._teardown()

    def _socket(self, name: str, kind: int) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.context.socket(kind)
        sock.linger = 0
        if self.curve is not None:
            make_client(sock, self.curve)
        self._sockets[name] = sock
        return sock

    def _setup(self) -> None:
        identity = self.session.session_id.encode()
        for name in ("mux", "control", "task"):
            sock = self._socket(name, zmq.DEALER)
            sock.identity = identity
            sock.sndhwm = sock.rcvhwm = 0
            sock.connect(self.addresses[name])
        hub = self._socket("hub", zmq.DEALER)
        hub.sndhwm = hub.rcvhwm = 0
        hub.connect(self.addresses["hub"])
        iopub = self._socket("iopub", zmq.SUB)
        iopub.rcvhwm = 0
        iopub.subscribe(b"")
        iopub.connect(self.addresses["iopub"])
        notification = self._socket("notification", zmq.SUB)
        notification.rcvhwm = 0
        notification.subscribe(b"")
        self._connect_and_handshake(notification, self.addresses["notification"])
        for name, sock in (("hub", hub), ("notification", notification)):
            events = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
            address = f"inproc://corral-link-{name}-{self.session.session_id}"
            self._links[sock.get_monitor_socket(events, address)] = (name, sock)

    def _connect_and_handshake(self, sock: zmq.Socket[Any], address: str) -> None:
        """Connect and wait until the controller completed the handshake, so that the
        subscription is in place before the client asks for the engine table (a registration
        published in between is then not missed). A refused handshake (curve keys missing or
        stale) fails at once: retrying cannot fix it."""
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | _HANDSHAKE_FAILED)
        try:
            sock.connect(address)
            if not monitor.poll(max(1, int(self._connect_timeout * 1000))):
                raise ConnectionError(
                    f"no controller answered at {address} within {self._connect_timeout} s: "
                    "is the cluster running? Start one with `corral start` (or "
                    "corral.Cluster in Python), or check the connection file"
                )
            if recv_monitor_message(monitor)["event"] != zmq.EVENT_HANDSHAKE_SUCCEEDED:
                raise ConnectionError(
                    f"the controller at {address} refused the handshake: a --curve cluster "
                    "admits only clients with the curve keys of its current connection file"
                )
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)

    def _on_link_event(self, monitor: zmq.Socket[Any]) -> None:
        """A connection to the controller dropped or came back. The handler hears when the
        link goes down (either socket lost it) and when it is up again (both are back): zmq
        reconnects by itself, re-sending the SUB's subscription, but notifications published
        meanwhile are lost, so the handler then asks for the engine table again."""
        name, _ = self._links[monitor]
        was_up = not self._down
        while _readable(monitor):
            if recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
                self._down.add(name)
            else:
                self._down.discard(name)
        if was_up != (not self._down):
            self.handler.on_link(not self._down)

    def _teardown(self) -> None:
        for monitor, (_, sock) in self._links.items():
            sock.disable_monitor()
            monitor.close(linger=0)
        self._links.clear()
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        self._inbox.release()

    def _loop(self) -> None:
        sockets = self._sockets
        self._targets = {name.encode(): sockets[name] for name in CHANNELS}
        inbox = self._inbox.fileno()
        poller = zmq.Poller()
        poller.register(inbox, zmq.POLLIN)
        for sock in [*sockets.values(), *self._links]:
            poller.register(sock, zmq.POLLIN)
        readers: dict[zmq.Socket[Any], Callable[[Message], None]] = {
            sockets["mux"]: self.handler.on_reply,
            sockets["control"]: self.handler.on_reply,
            sockets["task"]: self.handler.on_reply,
            sockets["hub"]: self.handler.on_reply,
            sockets["notification"]: self.handler.on_notification,
            sockets["iopub"]: self.handler.on_iopub,
        }
        while True:
            timeout = None
            if self._timers:
                timeout = max(0, int((self._timers[0][0] - time.monotonic()) * 1000) + 1)
            for sock, _ in poller.poll(timeout):
                if sock == inbox:
                    if not self._forward():
                        return
                elif sock in self._links:
                    self._on_link_event(sock)
                else:
                    self._read(sock, readers[sock])
            self._run_timers()

    def _forward(self) -> bool:
        """Send (or run) what other threads handed over; False when told to stop."""
        targets = self._targets
        for item in self._inbox.take(_BATCH):
            if isinstance(item, tuple):
                channel, frames = item
                send_frames(targets[channel], frames)
            elif item is None:
                return False
            else:
                self._call(item)
        return True

    def _read(self, sock: zmq.Socket[Any], handle: Callable[[Message], None]) -> None:
        feed = self.session.feed
        for _ in range(_BATCH):
            if not _readable(sock):
                return
            frames = sock.recv_multipart(copy=False)
            try:
                msg = feed(frames)
            except ReplayError as exc:
                # engines send recent replies again after a controller restart: expected
                self.rejected += 1
                log.info("client: dropped a message received before: %s", exc)
                continue
            except ProtocolError as exc:
                self.rejected += 1
                log.warning("client: dropped a message that does not parse: %s", exc)
                continue
            try:
                handle(msg)
            except Exception:
                log.exception("client: failed to handle %s", msg.msg_type)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, callback = heapq.heappop(self._timers)
            self._call(callback)

    @staticmethod
    def _call(callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            log.exception("client: a callback on the I/O thread failed")


def _readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message is waiting: cheaper than a NOBLOCK recv that raises zmq.Again."""
    return bool(cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN)
