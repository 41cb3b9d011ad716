"""Lanes: a Unix seqpacket connection between a client and an engine on one host.

A direct request to an engine on the client's host used to cross two zmq I/O threads each way
(the client's and the engine's): the sending thread hands the message to its I/O thread, which
writes it; the receiving I/O thread reads it and wakes the thread that handles it. On two cores
each of those wake-ups waits for a CPU: a corral-sized echo between two processes took 175-201
us over zmq, 80-93 over a lane, 68-75 over a bare Unix socket pair (``bench/bench_lanes.py``,
bench/README.md "Round twenty"). A lane is that Unix socket:
the thread that sends writes the packet itself, and the thread that waits reads it itself.

What a lane carries: the same frames as the direct ROUTER, one message after another, so that
everything above (signatures, bundles, the engine's copies for the Hub) is unchanged. A message
is one packet when it fits :data:`LANE_PACKET`; a larger one is cut into packets, sent in
order (``SOCK_SEQPACKET`` keeps each packet whole and the packets in order). A packet:

- byte 0: flags, :data:`FIRST` on a message's first packet, :data:`LAST` on its last;
- on a first packet: the frame count and each frame's length (little-endian u32);
- then the message's bytes, the frames one after another, continued in the next packets.

Who may connect: the listening socket is in the abstract namespace (no file to leave behind),
named by the engine with a random part, and an engine accepts only a peer of its own user
(``SO_PEERCRED``): the same rule as the files of a cluster folder. A connection starts with a
hello (:data:`HELLO` and the client's identity) that names the peer the engine's replies go to;
every request is signed as on any other socket, and checked as such. Lanes exist on Linux only
(:data:`AVAILABLE`); elsewhere the direct ROUTER serves as before.

This module is the codec (:func:`packets`, :class:`Reassembly`) and the sockets
(:class:`LaneListener`, :class:`Lane`); who sends what on them is decided in the engine's task
shell and the client's socket gate.
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import os
import secrets
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Final

from corral.errors import LaneClosed, ProtocolError

__all__ = [
    "AVAILABLE",
    "FIRST",
    "HELLO",
    "LANE_PACKET",
    "LAST",
    "Lane",
    "LaneClosed",
    "LaneListener",
    "LaneServer",
    "Reassembly",
    "frame_size",
    "lane_name",
    "packets",
]

log = logging.getLogger(__name__)

AVAILABLE: Final = sys.platform.startswith("linux") and hasattr(socket, "SO_PEERCRED")
LANE_PACKET: Final = 65536
"""Bytes per packet at most, header included: far below the kernel's limit for one packet
(the socket's send buffer, about 200 KiB by default)."""
FIRST: Final = 1
LAST: Final = 2
HELLO: Final = b"corral-lane/1"
_U32: Final = struct.Struct("<I")
_FLAGS_COUNT: Final = struct.Struct("<BI")
_MAX_FRAMES: Final = (LANE_PACKET - _FLAGS_COUNT.size) // _U32.size
_MAX_MESSAGE: Final = 1 << 40  # a first packet announcing more is malformed
_ONLY: Final = bytes([FIRST | LAST])
_MIDDLE: Final = bytes([0])
_NONBLOCK: Final = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC if AVAILABLE else 0
_PEERCRED: Final = struct.Struct("3i")  # pid, uid, gid


def lane_name(engine_uuid: str) -> str:
    """A new abstract socket name for an engine's lane: its uuid and a random part (another
    user cannot guess it before the engine registers, nor bind it first)."""
    return f"corral-lane-{engine_uuid}-{secrets.token_hex(8)}"


def frame_size(frame: object) -> int:
    """A frame's bytes: ``bytes``, a memoryview (its ``len`` counts items) or a zmq Frame."""
    return frame.nbytes if type(frame) is memoryview else len(frame)  # type: ignore[arg-type]


# frame count -> the struct of the count and the lengths, and of the lengths alone: kept for
# the usual counts (a message has a few dozen frames), made anew for a larger one
_COUNTS: dict[int, struct.Struct] = {}
_SIZES: dict[int, struct.Struct] = {}
_KEPT_LAYOUTS: Final = 256


def _layout(kept: dict[int, struct.Struct], head: str, count: int) -> struct.Struct:
    """The struct of ``head`` and ``count`` lengths (u32), from ``kept`` when it is there."""
    layout = kept.get(count)
    if layout is None:
        layout = struct.Struct(f"{head}{count}I")
        if count <= _KEPT_LAYOUTS:
            kept[count] = layout
    return layout


def packets(frames: Sequence[object]) -> list[list[object]]:
    """The packets of one message (each a list of buffers for one ``sendmsg``): one packet when
    the header and every frame fit :data:`LANE_PACKET`, else cut at packet size (views of the
    frames, never copies)."""
    sizes = [frame_size(frame) for frame in frames]
    if len(sizes) > _MAX_FRAMES:
        raise ProtocolError(f"a message of {len(sizes)} frames cannot go on a lane")
    counts = _layout(_COUNTS, "<I", len(sizes)).pack(len(sizes), *sizes)
    if 1 + len(counts) + sum(sizes) <= LANE_PACKET:
        return [[_ONLY + counts, *frames]]
    result: list[list[object]] = []
    current: list[object] = [bytes([FIRST]) + counts]
    room = LANE_PACKET - 1 - len(counts)
    for frame, size in zip(frames, sizes, strict=True):
        view = memoryview(frame).cast("B") if size else None  # type: ignore[arg-type]
        offset = 0
        while offset < size:
            if room == 0:
                result.append(current)
                current, room = [_MIDDLE], LANE_PACKET - 1
            assert view is not None
            take = min(room, size - offset)
            current.append(view[offset : offset + take])
            offset += take
            room -= take
    result.append(current)
    result[-1][0] = bytes([result[-1][0][0] | LAST])  # type: ignore[index]
    return result


class Reassembly:
    """A lane's receiving side, sans I/O: packets in, whole messages out (frames as ``bytes``
    for a message of one packet, as views of one buffer for a longer one)."""

    def __init__(self) -> None:
        self._sizes: list[int] = []
        self._buffer: bytearray | None = None
        self._filled = 0

    @property
    def partial(self) -> bool:
        """Whether a message has begun and not ended."""
        return self._buffer is not None

    def feed(self, packet: bytes) -> list[object] | None:
        """The message ``packet`` completes, or None (a message still coming). ProtocolError
        for a packet that cannot follow what came before."""
        if not packet:
            raise ProtocolError("an empty lane packet")
        flags = packet[0]
        if flags & FIRST:
            if self._buffer is not None:
                raise ProtocolError("a lane message began before the last one ended")
            return self._first(packet, flags)
        buffer = self._buffer
        if buffer is None:
            raise ProtocolError("a lane packet continues no message")
        body = len(packet) - 1
        end = self._filled + body
        if end > len(buffer) or (flags & LAST) != (LAST if end == len(buffer) else 0):
            raise ProtocolError("a lane message's packets do not add up to its frames")
        buffer[self._filled : end] = memoryview(packet)[1:]
        self._filled = end
        return self._finish() if flags & LAST else None

    def _first(self, packet: bytes, flags: int) -> list[object] | None:
        if len(packet) < _FLAGS_COUNT.size:
            raise ProtocolError("a lane packet too short for its header")
        _, count = _FLAGS_COUNT.unpack_from(packet)
        start = _FLAGS_COUNT.size + count * _U32.size
        if count == 0 or start > len(packet):
            raise ProtocolError(f"a lane header of {count} frames in {len(packet)} bytes")
        sizes: list[int] = list(_layout(_SIZES, "<", count).unpack_from(packet, _FLAGS_COUNT.size))
        total = sum(sizes)
        body = len(packet) - start
        if flags & LAST:
            if body != total:
                raise ProtocolError("a one-packet lane message's frames do not fill it")
            frames: list[object] = []
            offset = start
            for size in sizes:
                frames.append(packet[offset : offset + size])
                offset += size
            return frames
        if body > total or total > _MAX_MESSAGE:
            raise ProtocolError("a lane message longer than its frames")
        self._sizes = sizes
        self._buffer = bytearray(total)
        self._buffer[:body] = memoryview(packet)[start:]
        self._filled = body
        return None

    def _finish(self) -> list[object]:
        buffer, sizes = self._buffer, self._sizes
        assert buffer is not None
        self._buffer, self._sizes, self._filled = None, [], 0
        view = memoryview(buffer)
        frames: list[object] = []
        offset = 0
        for size in sizes:
            frames.append(view[offset : offset + size])
            offset += size
        return frames


class Lane:
    """One end of a lane: a non-blocking seqpacket socket, its backlog of packets not sent yet
    and its reassembly. Used by one thread at a time (the caller's lock)."""

    def __init__(self, sock: socket.socket, peer: bytes | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.peer = peer  # the client's identity (engine side, from the hello; client: engine's)
        self.closed = False
        self._backlog: collections.deque[list[object]] = collections.deque()
        self._reassembly = Reassembly()
        self._sendmsg = sock.sendmsg
        self._recv = sock.recv

    @classmethod
    def connect(cls, name: str, identity: bytes, peer: bytes) -> Lane:
        """(Client) Connect to the lane ``name`` and say hello as ``identity``; ``peer`` is the
        engine's identity, as the client's messages name it. OSError if nothing listens, or
        at once (never a wait) if the listener's queue is full: an engine that runs a long
        task accepts nothing until it ends, and the caller keeps the ROUTER instead."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | _NONBLOCK)
        try:
            sock.connect("\0" + name)
            lane = cls(sock, peer)
            if not lane.send([HELLO, identity]):
                raise OSError(errno.EAGAIN, "a new lane took no hello")
        except BaseException:
            sock.close()
            raise
        return lane

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def backlog(self) -> bool:
        """Whether packets wait to be sent (:meth:`flush` when the socket is writable)."""
        return bool(self._backlog)

    def send(self, frames: Sequence[object]) -> bool:
        """Send one message, in order after the backlog: what the socket does not take now is
        kept for :meth:`flush`. True if nothing is left in the backlog. LaneClosed if broken."""
        parts = packets(frames)
        if self._backlog:
            self._backlog.extend(parts)
            return self.flush()
        for index, packet in enumerate(parts):
            if not self._send_packet(packet):
                self._backlog.extend(parts[index:])
                return False
        return True

    def send_whole(self, frames: Sequence[object]) -> bool:
        """Send one message only if it is one packet and the socket takes it now, with no
        backlog before it: False (nothing sent) otherwise, for the caller to send it another
        way (an engine's reply: replies need no order among themselves)."""
        if self._backlog or self.closed:
            return False
        parts = packets(frames)
        return len(parts) == 1 and self._send_packet(parts[0])

    def flush(self) -> bool:
        """Send the backlog until the socket takes no more; True once it is empty."""
        backlog = self._backlog
        while backlog:
            if not self._send_packet(backlog[0]):
                return False
            backlog.popleft()
        return True

    def _send_packet(self, packet: list[object]) -> bool:
        if self.closed:
            raise LaneClosed("the lane is closed")
        try:
            self._sendmsg(packet)  # type: ignore[arg-type]
        except BlockingIOError:
            return False
        except InterruptedError:
            return self._send_packet(packet)
        except OSError as err:
            self.close()
            raise LaneClosed(f"the lane broke: {err}") from err
        return True

    def receive(self, limit: int) -> tuple[list[list[object]], bool]:
        """Up to ``limit`` whole messages waiting now, and whether the lane is still open. A
        packet that breaks the format closes it (logged): its peer is not a corral peer of this
        version, and nothing after it can be read in step."""
        messages: list[list[object]] = []
        if self.closed:
            return messages, False
        recv, feed = self._recv, self._reassembly.feed
        while len(messages) < limit:
            try:
                packet = recv(LANE_PACKET)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                log.info("a lane broke: %s", err)
                self.close()
                return messages, False
            if not packet:
                self.close()
                return messages, False
            try:
                frames = feed(packet)
            except ProtocolError as err:
                log.warning("closed a lane: %s", err)
                self.close()
                return messages, False
            if frames is not None:
                messages.append(frames)
        return messages, True

    def close(self) -> None:
        """Close the socket (idempotent); the backlog is dropped."""
        if not self.closed:
            self.closed = True
            self._backlog.clear()
            self.sock.close()


class LaneListener:
    """(Engine) The listening socket: accepts its own user's connections, each becoming a
    :class:`Lane` once its hello names the peer."""

    def __init__(self, name: str) -> None:
        self.name = name
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | _NONBLOCK)
        try:
            sock.bind("\0" + name)
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.refused = 0  # connections of another user, closed at once

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> list[Lane]:
        """Every connection waiting, as lanes without a peer yet (the hello comes first); a
        connection from another user is closed and counted in :attr:`refused`."""
        accepted: list[Lane] = []
        uid = os.getuid()
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return accepted
            except OSError as err:  # out of descriptors, say: try again at the next wake-up
                log.warning("a lane connection was not accepted: %s", err)
                return accepted
            try:
                _, peer_uid, _ = _PEERCRED.unpack(
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                )
            except OSError:
                peer_uid = -1
            if peer_uid != uid:
                self.refused += 1
                log.warning("refused a lane connection of uid %d", peer_uid)
                sock.close()
                continue
            accepted.append(Lane(sock))

    def close(self) -> None:
        self.sock.close()


class LaneServer:
    """(Engine, Hub) The lanes a listener accepts, served by an event loop: each watched from
    its connection on, its first message the hello that names its peer (a lane whose first
    message is no hello is closed and counted in :attr:`rejected`), every later message handed
    to ``on_message(lane, frames)``, a lane its peer closed (or that broke) dropped.

    ``watch(fd, callback)`` and ``unwatch(fd)`` are the loop's (``add_reader`` and ``remove``);
    used by one thread at a time (the owner's)."""

    def __init__(
        self,
        listener: LaneListener,
        watch: Callable[[int, Callable[[], object]], None],
        unwatch: Callable[[int], None],
        on_message: Callable[[Lane, list[object]], None],
        batch: int,
    ) -> None:
        self.listener = listener
        self._watch = watch
        self._unwatch = unwatch
        self._on_message = on_message
        self._batch = batch
        self.lanes: dict[Lane, int] = {}  # every open lane -> the descriptor watched
        self.by_peer: dict[bytes, Lane] = {}  # the lanes whose hello was read, by peer
        self.rejected = 0

    def start(self) -> None:
        """Accept lanes from now on (the loop calls :meth:`accept` when one connects)."""
        self._watch(self.listener.fileno(), self.accept)

    def accept(self) -> None:
        """Watch every lane that connected since."""
        for lane in self.listener.accept():
            fd = lane.fileno()
            self.lanes[lane] = fd
            self._watch(fd, functools.partial(self.read, lane, self._batch))

    def read(self, lane: Lane, limit: int) -> None:
        """Up to ``limit`` of ``lane``'s messages (the hello first, then ``on_message``)."""
        messages, still_open = lane.receive(limit)
        for frames in messages:
            if lane.peer is None:
                peer = read_hello(frames)
                if peer is None:
                    self.rejected += 1
                    log.warning("closed a lane whose first message was no hello")
                    lane.close()
                    break
                lane.peer = peer
                self.by_peer[peer] = lane  # a peer's new lane replaces its old one
                continue
            self._on_message(lane, frames)
        if not still_open or lane.closed:
            self.drop(lane)

    def read_all(self, limit: int, accept: bool = True) -> None:
        """New lanes (unless not ``accept``), then up to ``limit`` messages of each lane.

        A caller that reads again and again while the loop still watches the listener (the
        Hub's gathering timer) passes ``accept=False``: the listener's ``accept`` finds
        nobody almost always, and raising its BlockingIOError through ``socket.accept``
        cost the Hub 15-20 us per direct task (perf, bench_roundtrip_cpu.py)."""
        if accept:
            self.accept()
        for lane in list(self.lanes):
            self.read(lane, limit)

    def drop(self, lane: Lane) -> None:
        """Stop watching ``lane`` and close it."""
        fd = self.lanes.pop(lane, None)
        if fd is not None:
            self._unwatch(fd)
        lane.close()
        if lane.peer is not None and self.by_peer.get(lane.peer) is lane:
            del self.by_peer[lane.peer]

    def close(self) -> None:
        """(Teardown, the loop stopped) Close every lane (the listener is its owner's)."""
        for lane in self.lanes:
            lane.close()
        self.lanes.clear()
        self.by_peer.clear()


def read_hello(frames: Sequence[object]) -> bytes | None:
    """The client identity a hello message names, or None if ``frames`` is not a hello."""
    if len(frames) != 2 or bytes(frames[0]) != HELLO:  # type: ignore[call-overload]
        return None
    identity = bytes(frames[1])  # type: ignore[call-overload]
    return identity or None
