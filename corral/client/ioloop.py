"""The client's one I/O thread: it owns every socket and routes replies to their futures.

User threads never touch the controller-facing sockets. A submitting thread builds and signs
its message itself, then hands the frames (zero-copy) to the I/O thread over its own inproc
PUSH socket; the first frame names the channel (``mux``, ``control``, ``task``, ``hub``). The
I/O thread forwards them untouched and feeds everything it receives to a :class:`Handler`.

    user thread  --PUSH [channel, *frames]-->  PULL (inproc)   I/O thread
                                                 |-- mux/control/task DEALERs (identity =
                                                 |   session id), hub DEALER  --> controller
                                                 |<- replies, notifications (SUB), iopub (SUB)

Socket monitors on the hub DEALER and the notification SUB tell the handler when the link
to the controller drops and when it is back (``on_link``).

The loop is a plain ``zmq.Poller`` loop, which costs less per message than an asyncio loop
for a thread that only moves frames. ``call_soon`` runs a function on the I/O thread (the Hub
polling of ``get_result``), and ``call_later`` schedules one there (timeouts, retries).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

import zmq
from zmq.utils.monitor import recv_monitor_message

from corral.errors import ConnectionError, ProtocolError
from corral.protocol.session import Frame, Message, Session
from corral.security import CurveKeys, make_client
from corral.sockets import send_frames

log = logging.getLogger("corral.client")

__all__ = ["ClientIO", "Handler"]

CHANNELS = ("mux", "control", "task", "hub")
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
        self._pull_address = f"inproc://corral-client-{session.session_id}"
        self._local = threading.local()
        self._pushes: list[zmq.Socket[Any]] = []
        self._pushes_lock = threading.Lock()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_order = itertools.count()
        self._sockets: dict[str, zmq.Socket[Any]] = {}
        self._targets: dict[bytes, zmq.Socket[Any]] = {}
        self._links: dict[zmq.Socket[Any], tuple[str, zmq.Socket[Any]]] = {}
        self._down: set[str] = set()
        self.rejected = 0  # messages dropped because they do not parse or verify
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False
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
            self._close_pushes()
            self.context.term()
            self._closed = True
            raise self._startup_error

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def link_up(self) -> bool:
        """Whether the hub and notification sockets are connected to the controller."""
        return not self._down

    def send(self, channel: bytes, frames: Sequence[Frame]) -> None:
        """Hand a signed message's frames to the I/O thread (``channel``: b"mux", b"control",
        b"task" or b"hub"). Frames are not copied; the buffers must not change until sent."""
        if self._closed:
            raise ConnectionError("this client is closed; create a new Client to reconnect")
        push: zmq.Socket[Any] | None = getattr(self._local, "push", None)
        if push is None:
            push = self._new_push()
        send_frames(push, [channel, *frames])

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the I/O thread, soon."""
        self._calls.put(callback)
        self.send(b"call", ())

    def close(self, timeout: float = 10.0) -> None:
        """Stop the I/O thread (pending requests fail with ConnectionError), close sockets."""
        if self._closed:
            return
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "cannot close a client from its own I/O thread (a done callback); close it "
                "from another thread, or after the callback returns"
            )
        try:
            self.send(b"stop", ())
        finally:
            self._closed = True
        self._thread.join(timeout)
        self._close_pushes()
        if self._thread.is_alive():
            log.error("client: the I/O thread did not stop within %s s; abandoning it", timeout)
            self.context.destroy(linger=0)
        else:
            self.context.term()

    def _new_push(self) -> zmq.Socket[Any]:
        push: zmq.Socket[Any] = self.context.socket(zmq.PUSH)
        push.linger = 0
        push.sndhwm = 0
        push.connect(self._pull_address)
        with self._pushes_lock:
            self._pushes.append(push)
        self._local.push = push
        return push

    def _close_pushes(self) -> None:
        with self._pushes_lock:
            for push in self._pushes:
                push.close(linger=0)
            self._pushes.clear()

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
            pull = self._setup()
        except BaseException as exc:  # noqa: BLE001 - reported to start() in the caller
            self._startup_error = exc
            self._teardown()
            self._started.set()
            return
        self._started.set()
        try:
            self._loop(pull)
        except Exception:
            log.exception("client: the I/O thread failed")
        finally:
            try:
                self.handler.on_closed()
            finally:
                self._teardown()

    def _socket(self, name: str, kind: int, *, inproc: bool = False) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.context.socket(kind)
        sock.linger = 0
        if self.curve is not None and not inproc:
            make_client(sock, self.curve)
        self._sockets[name] = sock
        return sock

    def _setup(self) -> zmq.Socket[Any]:
        pull = self._socket("pull", zmq.PULL, inproc=True)
        pull.rcvhwm = 0
        pull.bind(self._pull_address)
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
        return pull

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

    def _loop(self, pull: zmq.Socket[Any]) -> None:
        sockets = self._sockets
        self._targets = {name.encode(): sockets[name] for name in CHANNELS}
        poller = zmq.Poller()
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
                if sock is pull:
                    if not self._forward(pull):
                        return
                elif sock in self._links:
                    self._on_link_event(sock)
                else:
                    self._read(sock, readers[sock])
            self._run_timers()

    def _forward(self, pull: zmq.Socket[Any]) -> bool:
        """Send what user threads handed over; False when told to stop."""
        targets = self._targets
        for _ in range(_BATCH):
            if not _readable(pull):
                return True
            frames = pull.recv_multipart(copy=False)
            channel = frames[0].bytes
            target = targets.get(channel)
            if target is not None:
                send_frames(target, frames[1:])
            elif channel == b"call":
                self._run_calls()
            elif channel == b"stop":
                return False
        return True

    def _read(self, sock: zmq.Socket[Any], handle: Callable[[Message], None]) -> None:
        feed = self.session.feed
        for _ in range(_BATCH):
            if not _readable(sock):
                return
            frames = sock.recv_multipart(copy=False)
            try:
                msg = feed(frames)
            except ProtocolError as exc:
                self.rejected += 1
                log.warning("client: dropped a message that does not parse: %s", exc)
                continue
            try:
                handle(msg)
            except Exception:
                log.exception("client: failed to handle %s", msg.msg_type)

    def _run_calls(self) -> None:
        while True:
            try:
                callback = self._calls.get_nowait()
            except queue.Empty:
                return
            self._call(callback)

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
