"""The client's I/O shell: one thread owns the client's sockets and routes replies to a Handler.

Every socket is created and closed on the I/O thread, a :class:`~corral.loop.LoopThread`
(the event loop every corral process runs, see :mod:`corral.loop`), and every one but the two
request sockets is used by it alone. A submitting thread builds and signs its message itself;
on mux and task, when nothing else is in flight, it sends the frames itself under the
socket's lock (:mod:`corral.client.socket_gate`: one thread at a time, order kept), sparing the
I/O thread a wake-up per round trip; otherwise it hands them over (zero-copy) with the loop's
``call_soon_threadsafe``, whose one wake-up serves a whole burst. Either way no socket per
calling thread, so a program that submits from thousands of short-lived threads holds the same
file descriptors as one that does not. The I/O thread sends what it is handed untouched and
feeds every message it receives, decoded and verified, to a :class:`Handler`; a thread waiting
for a reply on mux or task may read that socket and feed its replies to the handler itself
(:meth:`ClientIO.wait_reading`, :meth:`corral.client.socket_gate.SocketGate.lead`), so
``on_reply`` runs on the I/O thread or on such a thread, one reader at a time per socket.

    user thread  --(channel, frames)-->  loop hand-off   I/O thread (Loop)
          |  (mux/task, nothing in flight)        |-- mux/control/task DEALERs (identity =
          +------ under the socket's lock ------->|   session id), hub DEALER  --> controller
                                                  |<- replies, notifications (SUB), iopub (SUB)

Failure: if the loop stops for any reason (:meth:`ClientIO.close`, or an error that leaves
it), hand-offs are refused first, then the handler hears ``on_closed`` and fails everything
pending. Every later hand-off raises :class:`~corral.errors.ConnectionError` at once, naming
the error that stopped the thread, so no call can wait for a thread that is gone.

Socket monitors on the hub DEALER and the notification SUB (loop readers) tell the handler
when the link to the controller drops and when it is back (``on_link``). ``call_soon`` runs a
function on the I/O thread (the Hub polling of ``get_result``); ``call_later`` schedules one
there (timeouts, retries).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol, cast

import zmq

from corral.client import reply_wire
from corral.client.socket_gate import Sleepy, SocketGate
from corral.errors import ConnectionError, ReplayError
from corral.lane import AVAILABLE as LANES_AVAILABLE
from corral.lane import Lane
from corral.loop import Loop, LoopThread
from corral.protocol.session import Frame, Message, Session
from corral.security import CurveKeys, make_client
from corral.socket_events import read_monitor_event
from corral.sockets import send_frames

log = logging.getLogger("corral.client")

__all__ = ["ClientIO", "Handler"]

CHANNELS: Final = ("mux", "control", "task", "hub")
_CLOSED: Final = "this client is closed; create a new Client to reconnect"
_BATCH: Final = 256  # messages read from one socket before looking at the others
_HANDSHAKE_FAILED: Final = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class Handler(Protocol):
    """What the I/O thread calls with each decoded message; runs on the I/O thread only."""

    def on_reply(self, msg: Message) -> None: ...

    def on_reply_again(self, msg: Message) -> None:
        """A reply whose handling a KeyboardInterrupt cut on a thread reading it while it
        waited (corral.client.socket_gate): settle its request if it was taken from the
        pending ones and not settled; on the I/O thread."""
        ...

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
        direct: bool = True,
    ) -> None:
        self.session = session
        self.addresses = dict(addresses)
        self.handler = handler
        self.curve = curve
        self.context: zmq.Context[Any] = zmq.Context()
        self._sockets: dict[str, zmq.Socket[Any]] = {}
        self._targets: dict[bytes, zmq.Socket[Any]] = {}
        self._gates: dict[bytes, SocketGate] = {}  # mux and task: shared, see socket_gate
        # direct requests: a ROUTER connected to engines on this host, shared as mux is
        # (never under curve: an engine binds its direct socket without keys)
        self._direct_wanted = direct and curve is None
        self._direct: SocketGate | None = None
        self._direct_peers: dict[bytes, str] = {}  # engine uuid -> the address connected
        self._links: dict[zmq.Socket[Any], tuple[str, zmq.Socket[Any]]] = {}
        self._down: set[str] = set()
        self._refused = 0  # messages the handler refused after they parsed (see ``rejected``)
        self._connect_timeout = 0.0
        self._io_thread: threading.Thread | None = None  # the loop's thread, once it runs
        self._closing = threading.Lock()  # close() from two threads: one joins, one waits
        self._close_asked = False
        self._joined = False
        self._owner = LoopThread(
            f"corral-client-io-{session.session_id[:8]}", self._setup, self._teardown
        )
        self._loop = self._owner.loop

    # ------------------------------------------------------------------ any thread

    def start(self, timeout: float) -> None:
        """Start the I/O thread; return once its sockets reached the controller."""
        self._connect_timeout = timeout
        try:
            self._owner.start(timeout + 30.0)  # setup waits up to ``timeout`` for the handshake
        except BaseException:
            self._joined = True
            self.context.term()
            raise

    @property
    def rejected(self) -> int:
        """Messages dropped: they did not parse or verify, or their buffers were refused."""
        off_loop = sum(gate.rejected for gate in self._gates.values())
        return self._loop.rejected + self._refused + off_loop

    def count_rejected(self) -> None:
        """(I/O thread) The handler dropped (part of) a message that parsed."""
        self._refused += 1

    @property
    def closed(self) -> bool:
        """Whether hand-offs are refused: after :meth:`close`, or once the I/O thread died."""
        return self._loop.closed_because is not None

    def closed_error(self) -> ConnectionError:
        """The error for a call made on a closed client: why it is closed."""
        failure = self._owner.failure
        if failure is not None and not self._close_asked:
            return ConnectionError(
                f"this client's I/O thread failed ({type(failure).__name__}: {failure}) and the "
                "client can no longer reach the controller; create a new Client"
            )
        return ConnectionError(_CLOSED)

    @property
    def on_io_thread(self) -> bool:
        """Whether the caller is the I/O thread itself."""
        return threading.current_thread() is self._io_thread  # idents are reused, objects not

    @property
    def link_up(self) -> bool:
        """Whether the hub and notification sockets are connected to the controller."""
        return not self._down

    def send(
        self,
        channel: bytes,
        frames: Sequence[Frame],
        track_from: int | None = None,
        *,
        at_once: bool = False,
    ) -> zmq.MessageTracker | None:
        """Send a signed message's frames (``channel``: b"mux", b"control", b"task" or
        b"hub"), from any thread. Frames are not copied; the buffers must not change until sent.

        ``at_once``: on mux and task, send on this thread when nothing is queued ahead for that
        socket (:mod:`corral.client.socket_gate`), sparing the I/O thread's wake-up; otherwise,
        and on the other channels, the frames are handed to the I/O thread.
        ``track_from``: the frames from that index on (the data buffers) are tracked; the
        MessageTracker returned is done once zmq has released every one of them, i.e. once
        the message has left the process and the buffers may be changed again.
        ConnectionError at once if the client is closed or its I/O thread has failed."""
        tracker = None
        if track_from is not None:
            tracked = [zmq.Frame(frame, track=True) for frame in frames[track_from:]]
            frames = [*frames[:track_from], *tracked]
            tracker = zmq.MessageTracker(*tracked)
        gate = self._gate_for(channel, frames)
        try:
            if gate is not None:
                gate.submit(frames, at_once)
            else:
                self._loop.call_soon_threadsafe(self._forward, channel, frames)
        except ConnectionError:
            raise self.closed_error() from None
        return tracker

    def wait_reading(self, channel: str, future: Sleepy, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``future``, a reply expected on ``channel`` (mux
        or task), reading that socket's replies on this thread meanwhile if no other thread
        does (:meth:`SocketGate.lead`); False at once if this thread may not (then wait on
        the future as usual)."""
        gate = self.gate_of(channel, getattr(future, "engine_uuid", None))
        if gate is None or self.on_io_thread:
            return False
        return gate.lead(future, timeout)

    def catch_up(self) -> None:
        """(I/O thread) Handle every reply already received on mux and task, whichever thread
        leads them (:meth:`SocketGate.catch_up`)."""
        for gate in self._gates.values():
            gate.catch_up()

    @property
    def direct_enabled(self) -> bool:
        """Whether this client sends direct requests straight to engines on its host."""
        return self._direct is not None

    def connect_direct(self, engine_uuid: str, address: str, lane: str | None = None) -> None:
        """(Any thread, before any request to that engine is sent.) Send the direct requests
        for ``engine_uuid`` to ``address``, the engine's own ROUTER, from now on: connected
        with the engine's uuid as the peer's routing identity, so they are routed (and queued
        until the connection is made) at once. Once connected, an engine stays on this path:
        its requests keep their order. Nothing if the direct path is off or already set.

        ``lane``: the name of the engine's lane (:mod:`corral.lane`), connected too where
        lanes exist: its requests then go there, and its replies come on either (see
        :mod:`corral.client.lanes`); a lane that cannot connect leaves them on the ROUTER."""
        gate, ident = self._direct, engine_uuid.encode()
        if gate is None or ident in self._direct_peers:
            return
        with gate.lock:
            if gate.order.closed:
                return
            gate.sock.setsockopt(zmq.CONNECT_ROUTING_ID, ident)
            gate.sock.connect(address)
            self._direct_peers[ident] = address
        if lane is not None and gate.lanes is not None:
            try:
                connected = Lane.connect(lane, self.session.session_id.encode(), ident)
            except OSError as err:
                log.debug("client: no lane to engine %s (%s): %s", engine_uuid, lane, err)
                return
            gate.add_lane(ident, connected)

    def sends_direct(self, engine_uuid: str) -> bool:
        """Whether this client sends ``engine_uuid``'s direct requests to its own ROUTER."""
        return engine_uuid.encode() in self._direct_peers

    def disconnect_direct(self, engine_uuid: str) -> None:
        """(Any thread.) The engine is gone: stop reconnecting to its address. Its requests
        still unanswered are failed by the caller (the engine's unregistration)."""
        gate, ident = self._direct, engine_uuid.encode()
        if gate is None or ident not in self._direct_peers:
            return
        gate.drop_lane(ident)
        with gate.lock:
            address = self._direct_peers.pop(ident, None)
            if address is None or gate.order.closed:
                return
            try:
                gate.sock.disconnect(address)
            except zmq.ZMQError as err:
                log.debug("client: disconnecting from %s: %s", address, err)

    def gate_of(self, channel: str, engine_uuid: object = None) -> SocketGate | None:
        """The shared socket whose replies a request on ``channel`` (to ``engine_uuid``, if
        named) comes back on: the direct ROUTER for an engine connected there."""
        if channel == "mux" and isinstance(engine_uuid, str) and self._direct_peers:
            if engine_uuid.encode() in self._direct_peers:
                return self._direct
        return self._gates.get(channel.encode())

    def _gate_for(self, channel: bytes, frames: Sequence[Frame]) -> SocketGate | None:
        """The shared socket a request goes on: the direct ROUTER for a direct request to an
        engine connected there, else the channel's own (None: hub and control)."""
        if channel == b"mux" and self._direct_peers and frames[0] in self._direct_peers:
            return self._direct
        return self._gates.get(channel)

    def _news(self, handler: Handler) -> Callable[[Message], None]:
        """``handler.on_notification``, after the replies already received are handled: an
        engine's unregistration fails what that engine has not answered, and a reply it sent
        before it left must settle its request first (a thread leading the request socket may
        not have had a core yet to read it)."""
        on_notification = handler.on_notification

        def news(msg: Message) -> None:
            self.catch_up()
            on_notification(msg)

        return news

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the I/O thread, soon, after what was handed over before it."""
        try:
            self._loop.call_soon_threadsafe(callback)
        except ConnectionError:
            raise self.closed_error() from None

    def close(self, timeout: float = 10.0) -> None:
        """Stop the I/O thread (pending requests fail with ConnectionError), close sockets.
        What was handed over before is sent first. Also releases a client whose I/O thread
        failed; calling it again does nothing."""
        if self.on_io_thread:
            raise RuntimeError(
                "cannot close a client from its own I/O thread; close it from another thread"
            )
        with self._closing:
            if self._joined:
                return
            self._close_asked = self._owner.failure is None
            self._loop.stop(_CLOSED)
            self._owner.stop(timeout)
            self._joined = True
            if self._owner.alive:
                log.error("client: the I/O thread did not stop within %s s; abandoning it", timeout)
                self.context.destroy(linger=0)
            else:
                self.context.term()

    # ------------------------------------------------------------------ I/O thread only

    def send_now(self, channel: str, frames: Sequence[Frame]) -> None:
        """Send on a controller socket (I/O thread only): mux and task at the end of this
        turn, after what was queued for them before; hub and control at once."""
        gate = self._gate_for(channel.encode(), frames)
        if gate is not None:
            gate.put(frames)
        else:
            self._forward(channel.encode(), frames)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the I/O thread after ``delay`` seconds (I/O thread only)."""
        self._loop.call_later(delay, callback)

    def _forward(self, channel: bytes, frames: Sequence[Frame]) -> None:
        """(I/O thread) Send on hub or control, which only this thread uses."""
        send_frames(self._targets[channel], frames)

    def _socket(self, name: str, kind: int) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.context.socket(kind)
        sock.linger = 0
        if self.curve is not None:
            make_client(sock, self.curve)
        self._sockets[name] = sock
        return sock

    def _setup(self, loop: Loop) -> None:
        self._io_thread = threading.current_thread()
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
        iopub.subscribe(b"engine.")  # output of tasks; not the stats.<id> reports (dashboard)
        iopub.connect(self.addresses["iopub"])
        notification = self._socket("notification", zmq.SUB)
        notification.rcvhwm = 0
        notification.subscribe(b"")
        self._connect_and_handshake(notification, self.addresses["notification"])
        for name, sock in (("hub", hub), ("notification", notification)):
            events = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
            address = f"inproc://corral-link-{name}-{self.session.session_id}"
            monitor = sock.get_monitor_socket(events, address)
            self._links[monitor] = (name, sock)
        self._targets = {name.encode(): self._sockets[name] for name in CHANNELS}
        handler = self.handler
        # mux and task are shared with submitting threads (corral.client.socket_gate);
        # what the I/O thread sends on them leaves at the end of a turn, a bundle per peer
        # when several are ready (corral.bundles): through the MUX one per engine, to the
        # scheduler all in one. Sockets are served in this order: replies first.
        replies = _Replies(self.session, handler)
        for name in CHANNELS:
            sock = self._sockets[name]
            if name in ("mux", "task"):
                gate = SocketGate(loop, sock, 1 if name == "mux" else 0, replies, _BATCH)
                gate.install()
                self._gates[name.encode()] = gate
            else:
                loop.add_socket(sock, self._decoded(handler.on_reply), batch=_BATCH)
        if self._direct_wanted:
            direct = self._socket("direct", zmq.ROUTER)
            direct.identity = identity
            direct.sndhwm = direct.rcvhwm = 0
            self._direct = SocketGate(loop, direct, 1, replies, _BATCH)
            self._direct.install(lanes=LANES_AVAILABLE)
            self._gates[b"direct"] = self._direct  # caught up, counted and closed with mux
        loop.add_socket(iopub, self._decoded(handler.on_iopub), batch=_BATCH)
        loop.add_socket(notification, self._decoded(self._news(handler)), batch=_BATCH)
        for monitor in self._links:
            loop.add_reader(monitor, functools.partial(self._on_link_event, monitor))

    def _decoded(self, handle: Callable[[Message], None]) -> Callable[[list[zmq.Frame]], None]:
        """A loop handler: verify and decode the frames, then ``handle`` the message. A message
        that does not parse or verify raises ProtocolError (ReplayError for one received
        before: engines resend replies after a controller restart), which the loop counts in
        ``rejected`` and logs."""
        feed = functools.partial(reply_wire.feed, self.session)

        def handle_frames(frames: list[zmq.Frame]) -> None:
            handle(feed(frames))

        return handle_frames

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
            if read_monitor_event(monitor).event != zmq.EVENT_HANDSHAKE_SUCCEEDED:
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
        while _readable(monitor):
            # one event at a time: a drop and the reconnection read in one go (a controller
            # restarted within a turn) must still be heard as down, then up, so that the
            # handler resynchronises after the outage
            was_up = not self._down
            if read_monitor_event(monitor).event == zmq.EVENT_DISCONNECTED:
                self._down.add(name)
            else:
                self._down.discard(name)
            if was_up != (not self._down):
                self.handler.on_link(not self._down)

    def _teardown(self) -> None:
        """(I/O thread, last) Fail everything pending, then close every socket."""
        try:
            self.handler.on_closed()
        finally:
            self._close_sockets()

    def _close_sockets(self) -> None:
        for gate in self._gates.values():
            gate.close()  # under its lock: a submitting thread may be sending on it
        for monitor, (_, sock) in self._links.items():
            sock.disable_monitor()
            monitor.close(linger=0)
        self._links.clear()
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()


class _Replies:
    """How the request sockets' replies are read (:class:`corral.client.socket_gate.Reader`),
    on the I/O thread or on a thread waiting for one."""

    __slots__ = ("decode", "handle", "_session", "_handler")

    def __init__(self, session: Session, handler: Handler) -> None:
        self._session = session
        self._handler = handler
        self.decode = functools.partial(reply_wire.feed, session)
        self.handle = handler.on_reply

    def decode_again(self, frames: list[Frame]) -> Message:
        """Decoded again after a cut: refused as seen before only if the cut decoding
        recorded its signature, which it does once it has verified it."""
        try:
            return self._session.feed(frames)
        except ReplayError:
            return self._session.feed_verified(frames)

    def handle_again(self, msg: Message) -> None:
        self._handler.on_reply_again(msg)


def _readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message is waiting: cheaper than a NOBLOCK recv that raises zmq.Again."""
    return bool(cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN)
