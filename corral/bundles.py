"""Many messages in one zmq message when they queue up: bundles, and the outbox that makes them.

Every hop of a task costs Python and libzmq work per zmq message and per frame, whatever its
size (a no-op task is about a dozen small frames), and at a high rate several messages for the
same peer are ready within one turn of a loop: the scheduler dispatching a burst to an engine,
an engine's replies, the client's submissions, the copies for the Hub. An :class:`Outbox`
holds what a turn sends on one socket and, at the end of the turn (:meth:`Loop.add_outbox
<corral.loop.Loop.add_outbox>`), sends the messages for one route as one *bundle*::

    [*route, MARK, layout, packed, *large]

- ``route``: the frames the sockets on the way consume (a ROUTER's peer identity; nothing
  for a DEALER talking to a ROUTER). Every message of a bundle shares them.
- ``layout``: signed 64-bit little-endian integers: the number of messages, then for each
  its number of frames and each frame's length, :data:`LARGE` for a frame sent on its own in
  ``large``.
- ``packed``: every small frame (below :data:`~corral.sockets.COPY_BELOW`) joined.
- ``large``: frames too large to copy, and tracked ``zmq.Frame`` objects, never copied.

The receiver (:meth:`Loop.add_socket <corral.loop.Loop.add_socket>` with ``bundles=True``)
finds ``MARK`` among the first frames and hands each message on as ``[*route, *frames]``, small
frames as ``bytes`` sliced from ``packed``: exactly the frames it would have received alone,
so handlers never see a bundle. A message alone in its turn is sent as it is (no bundle, no
cost), so the wire is unchanged at low rates and a peer that never bundles needs nothing new.

Each message keeps its own signature, checked by the handler as before; a bundle adds
none (it only saves per-message costs), and a malformed one is dropped whole with
MalformedMessage. The order of messages for one route is kept; messages for different routes
were never ordered with each other.
"""

from __future__ import annotations

import logging
import sys
from array import array
from collections.abc import Hashable, Sequence
from typing import Any, Final

import zmq

from corral.errors import MalformedMessage
from corral.protocol.session import Frame, frame_view
from corral.sockets import COPY_BELOW, send_frames

log = logging.getLogger("corral.bundles")

__all__ = ["MARK", "Outbox", "bundle", "split_bundle"]

MARK: Final = b"<IDS|BUNDLE>"
"""Where a bundle's route ends (a message's route ends at ``<IDS|MSG>``)."""
LARGE: Final = -1
"""In a layout: the frame is the next one of ``large``."""
MAX_ROUTE: Final = 4
"""A bundle's mark is looked for among this many first frames: a route is at most a peer's
identity, another's after a device swapped them, and a monitor copy's prefix."""
MAX_MESSAGES: Final = 4096
"""Messages per bundle at most: a longer burst goes out as several bundles (a receiver drains
a bundle in one go, so this bounds how long one bundle holds up the other sockets)."""
_MAX_LAYOUT: Final = 1 << 22
_SWAP: Final = sys.byteorder != "little"
_MARK_LENGTH: Final = len(MARK)


def bundle(
    route: Sequence[Frame], messages: Sequence[Sequence[Frame]], skip: int = 0
) -> list[Frame]:
    """``messages`` as one bundle to ``route`` (see the module doc): each without the route,
    or with it as its first ``skip`` frames, left out here (an outbox's messages begin with
    their route: not sliced off into a new list each)."""
    small: list[bytes | memoryview] = []
    large: list[Frame] = []
    lengths: list[int] = [len(messages)]
    # (appended to by name: compiled, a bound method kept in a variable is a generic call,
    # 7 ns more per frame than the list's own append)
    for frames in messages:
        lengths.append(len(frames) - skip)
        index = 0
        for frame in frames:
            if index < skip:
                index += 1
                continue
            kind = type(frame)
            if kind is bytes:
                size = len(frame)
                if size < COPY_BELOW:  # nearly every frame: the envelope's, small buffers
                    lengths.append(size)
                    small.append(frame)  # type: ignore[arg-type]
                    continue
                view: bytes | memoryview = frame  # type: ignore[assignment]
            elif kind is zmq.Frame:  # received (or tracked by its sender: never copied)
                size = len(frame)
                if size >= COPY_BELOW or frame.tracker is not None:  # type: ignore[union-attr]
                    lengths.append(LARGE)
                    large.append(frame)
                    continue
                view = frame.bytes  # type: ignore[union-attr]  # a small copy: joins fastest
            else:
                view = frame_view(frame)
                size = memoryview(view).nbytes
            if size < COPY_BELOW:
                lengths.append(size)
                small.append(view)
            else:
                lengths.append(LARGE)
                large.append(frame)
    layout = array("q", lengths)
    if _SWAP:
        layout.byteswap()
    packed: Frame = b"".join(small)
    if len(packed) >= COPY_BELOW:
        # Sent as bytes, so large a frame would go without a copy, and pyzmq learns that
        # libzmq is done with it from its garbage-collector thread: one more Python thread
        # woken per bundle, and the GIL taken from the loop. Our own join, copied once more
        # into a zmq.Frame, costs less.
        packed = zmq.Frame(packed, copy=True)
    return [*route, MARK, layout.tobytes(), packed, *large]


def split_bundle(frames: Sequence[Frame]) -> list[list[Frame]] | None:
    """The messages of a bundle, each as ``[*route, *its frames]``; None if ``frames`` is a
    message, not a bundle. MalformedMessage if the bundle does not hold what its layout says."""
    # compiled, a list is indexed and sliced as one (a Sequence's are generic calls)
    listed = frames if type(frames) is list else list(frames)
    at = -1
    for index in range(min(MAX_ROUTE + 1, len(listed))):
        frame = listed[index]
        if len(frame) == _MARK_LENGTH and bytes(frame_view(frame)) == MARK:
            at = index
            break
    if at < 0:
        return None
    if len(listed) < at + 3:
        raise MalformedMessage(f"a bundle of {len(listed)} frames has no layout or packed frame")
    route = listed[:at]
    layout_view = memoryview(frame_view(listed[at + 1])).cast("B")
    layout = array("q")
    if layout_view.nbytes % layout.itemsize or layout_view.nbytes > _MAX_LAYOUT:
        raise MalformedMessage("a bundle's layout is not a list of lengths")
    layout.frombytes(layout_view)
    if _SWAP:
        layout.byteswap()
    packed = bytes(frame_view(listed[at + 2]))  # one copy: its slices are cheap bytes then
    large = listed[at + 3 :]
    lengths = layout.tolist()
    end = len(lengths)
    if not end or not 0 < lengths[0] <= MAX_MESSAGES:
        raise MalformedMessage("a bundle's layout does not count its messages")
    messages: list[list[Frame]] = []
    offset = taken = 0
    position = 1
    size = len(packed)
    for _ in range(lengths[0]):
        if position >= end:
            raise MalformedMessage("a bundle's layout ends before its last message")
        count = lengths[position]
        position += 1
        stop = position + count
        if not 0 < count <= end - position:
            raise MalformedMessage("a bundle's layout names more frames than it lists")
        message: list[Frame] = list(route)
        while position < stop:
            length = lengths[position]
            position += 1
            if 0 <= length <= size - offset:
                message.append(packed[offset : offset + length])
                offset += length
            elif length == LARGE and taken < len(large):
                message.append(large[taken])
                taken += 1
            elif length == LARGE:
                raise MalformedMessage("a bundle names more large frames than it has")
            else:
                raise MalformedMessage("a bundle's layout runs past its packed frame")
        messages.append(message)
    if position != end or offset != size or taken != len(large):
        raise MalformedMessage("a bundle holds more than its layout names")
    return messages


_MADE: Final = object()
"""The tag of an outbox entry that is a bundle made elsewhere (:meth:`Outbox.put_bundle`)."""


def _chunks(
    entries: list[tuple[Sequence[Frame], Any]], made: bool
) -> list[list[tuple[Sequence[Frame], Any]]]:
    """One route's entries as they go out: runs of at most :data:`MAX_MESSAGES` messages,
    each made bundle alone (``made``: there may be some), in the order they were put."""
    if not made:
        return [
            entries[start : start + MAX_MESSAGES] for start in range(0, len(entries), MAX_MESSAGES)
        ]
    chunks: list[list[tuple[Sequence[Frame], Any]]] = []
    run: list[tuple[Sequence[Frame], Any]] = []
    for entry in entries:
        if entry[1] is _MADE:
            if run:
                chunks.append(run)
                run = []
            chunks.append([entry])
        else:
            run.append(entry)
            if len(run) == MAX_MESSAGES:
                chunks.append(run)
                run = []
    if run:
        chunks.append(run)
    return chunks


class Outbox:
    """What one loop turn sends on ``sock``, sent at the turn's end: one bundle per route.

    ``route_length``: how many leading frames of each message are its route (the frames the
    sockets on the way consume, see the module doc); messages with the same route share a
    bundle, in the order they were put. With ``always_bundle`` a message alone in its turn is
    a bundle of one (its small frames joined: fewer frames to send and receive than itself),
    for a receiver that only ever reads bundles. Owned by the loop thread of ``sock``, like
    the socket: every send on ``sock`` must go through the outbox, or order is lost.

    ``mirror=(socket, prefix)``: every message also goes to that socket, as
    ``[*prefix, *route, *its frames]`` once unbundled there, in bundles always: each bundle
    made for ``sock`` is sent there as it is behind ``prefix`` (a message alone is a bundle of
    one there). A message sent to two peers is so laid out once, not once per peer (the
    scheduler's replies and their ``task_out`` copies for the Hub). A turn's mirror copies
    all leave before its messages to ``sock``; sends of others on the mirror socket are
    ordered with them by the owner (flush that outbox first, or after).
    """

    __slots__ = (
        "sock",
        "route_length",
        "always",
        "_pending",
        "_count",
        "_made",
        "messages",
        "sent",
        "bundled",
        "mirror",
        "mirrored",
    )

    def __init__(
        self,
        sock: zmq.Socket[Any],
        route_length: int,
        *,
        always_bundle: bool = False,
        mirror: tuple[zmq.Socket[Any], Sequence[bytes]] | None = None,
    ) -> None:
        if not 0 <= route_length <= MAX_ROUTE - 1:
            raise ValueError(f"a route has 0 to {MAX_ROUTE - 1} frames, not {route_length}")
        if mirror is not None and len(mirror[1]) + route_length > MAX_ROUTE:
            raise ValueError(f"a mirror's prefix and route are at most {MAX_ROUTE} frames")
        self.sock = sock
        self.mirror = (mirror[0], list(mirror[1])) if mirror is not None else None
        self.mirrored = 0  # zmq messages sent to the mirror
        self.route_length = route_length
        self.always = always_bundle  # a message alone goes as a bundle of one too
        # route -> (its frames, [(message, tag)])
        self._pending: dict[Hashable, tuple[list[Frame], list[tuple[Sequence[Frame], Any]]]] = {}
        self._count = 0
        self._made = False  # a made bundle was put this turn (put_bundle)
        self.messages = 0  # messages put
        self.sent = 0  # zmq messages sent
        self.bundled = 0  # messages that went in a bundle

    def __len__(self) -> int:
        return self._count

    def put(self, frames: Sequence[Frame], tag: Any = None) -> None:
        """Queue ``frames`` (route first) for the end of the turn; ``tag`` comes back with a
        failure of :meth:`flush`."""
        length = self.route_length
        if length == 0:
            key: Hashable = ()
        elif length == 1:
            first = frames[0]
            key = first if type(first) is bytes else bytes(frame_view(first))
        else:
            key = tuple(bytes(frame_view(frame)) for frame in frames[:length])
        entry = self._pending.get(key)
        if entry is None:
            self._pending[key] = (list(frames[:length]), [(frames, tag)])
        else:
            entry[1].append((frames, tag))
        self._count += 1
        self.messages += 1

    def put_bundle(self, frames: Sequence[Frame], count: int) -> None:
        """Queue a bundle made elsewhere (one received: ``frames`` with its own route, the
        ``count`` messages it holds), sent at the end of the turn as it is, after what was put
        before it and before what is put after it. Only on an outbox whose messages have no
        route (the scheduler's copies for the Hub): a route here would be the made bundle's
        own, and another outbox's to the same peer would not be ordered with it."""
        if self.route_length:
            raise ValueError("a made bundle goes only on an outbox without routes")
        entry = self._pending.get(())
        if entry is None:
            self._pending[()] = ([], [(frames, _MADE)])
        else:
            entry[1].append((frames, _MADE))
        self._made = True
        self._count += 1
        self.messages += count

    def flush(self) -> list[tuple[zmq.ZMQError, list[Any]]]:
        """Send everything queued. A route whose send fails does not stop the others: the
        failures come back, each with the tags of the messages that were not sent."""
        if not self._count:
            return []
        pending = self._pending
        self._pending = {}
        self._count = 0
        any_made, self._made = self._made, False
        failures: list[tuple[zmq.ZMQError, list[Any]]] = []
        length = self.route_length
        mirror = self.mirror
        # (what goes to sock, whether it is a bundle, the chunk's entries)
        outgoing: list[tuple[Sequence[Frame], bool, list[tuple[Sequence[Frame], Any]]]] = []
        for route, entries in pending.values():
            for chunk in _chunks(entries, any_made):
                if chunk[0][1] is _MADE:  # a bundle made elsewhere (put_bundle): as it is
                    outgoing.append((chunk[0][0], False, []))
                elif len(chunk) == 1 and not self.always:
                    outgoing.append((chunk[0][0], False, chunk))
                    if mirror is not None:  # the copies read bundles only
                        self._mirror(mirror, bundle(route, [chunk[0][0]], length), failures)
                else:
                    made = bundle(route, [m for m, _ in chunk], length)
                    outgoing.append((made, True, chunk))
                    if mirror is not None:
                        self._mirror(mirror, made, failures)
        for frames, bundled, chunk in outgoing:
            try:
                send_frames(self.sock, frames)
            except zmq.ZMQError as err:
                failures.append((err, [tag for _, tag in chunk]))
                continue
            self.sent += 1
            if bundled:
                self.bundled += len(chunk)
        return failures

    def _mirror(
        self,
        mirror: tuple[zmq.Socket[Any], list[bytes]],
        frames: Sequence[Frame],
        failures: list[tuple[zmq.ZMQError, list[Any]]],
    ) -> None:
        """Send one bundle's copy to the mirror; a failure is reported without tags (the
        messages themselves may still reach their peer)."""
        sock, prefix = mirror
        try:
            send_frames(sock, [*prefix, *frames])
        except zmq.ZMQError as err:
            failures.append((err, []))
            return
        self.mirrored += 1

    def stats(self) -> dict[str, int]:
        """Messages put, and zmq messages sent for them (a bundle is one); with a mirror, the
        zmq messages sent to it too (``mirrored``)."""
        counts = {"messages": self.messages, "zmq_messages": self.sent}
        if self.mirror is not None:
            counts["mirrored"] = self.mirrored
        return counts
