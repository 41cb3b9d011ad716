"""The engine's lanes (:mod:`corral.lane`): clients' direct requests and their replies, and the
copies for the Hub, on Unix sockets that no zmq I/O thread relays.

The task shell (:mod:`.task_shell`) owns one :class:`EngineLanes` when the engine has its
direct ROUTER, and uses it with its lock held, on the main thread's loop or on the I/O thread
that borrowed it (a running task's watch reads the lanes too). What is decided here:

- **Requests.** A client connects, says hello (its identity), then sends requests: each is
  handed to the task shell as if the direct ROUTER had read it, ``[client, *msg]`` (a bundle
  is split first, as the ROUTER's are). A lane that breaks the format, or whose first message
  is no hello, is closed and counted; one its client closes is dropped.
- **Replies.** A reply to a client with a lane is held for the turn's flush, where a turn's
  replies to one client go on its lane as one packet (a bundle up to :data:`LANE_BUNDLE`
  bytes) when the socket takes it at once; what it does not take goes on the direct ROUTER,
  which the task shell flushes next. Replies need no order among themselves, and a lane is
  never left half-written while a task runs for hours.
- **Copies.** A turn's copies for the Hub go on its lane, when the Hub is on this host, as one
  packet, before the replies: by the time a client has a reply, the Hub's socket holds its
  copies (the Hub reads its lanes before answering any query). What the socket has no room
  for waits in the lane's backlog, sent as room comes (the loop watches the lane for it).
  When the Hub closes the lane (it stopped), the copies go to its PUSH from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final

from corral.bundles import Outbox, bundle
from corral.lane import LANE_PACKET, Lane, LaneClosed, LaneListener, LaneServer, frame_size
from corral.loop import Loop
from corral.protocol.session import Frame

__all__ = ["LANE_BUNDLE", "READ_BATCH", "EngineLanes"]

READ_BATCH: Final = 64  # messages per lane per turn, as per socket
LANE_BUNDLE: Final = LANE_PACKET // 2  # reply bytes per lane bundle at most (room for layout)
_ALL: Final = 1 << 30


class EngineLanes:
    """The lanes of one engine: see the module doc. ``on_request`` gets each request as the
    direct ROUTER's handler would (``[client, *msg]``), through ``loop.deliver``."""

    def __init__(
        self,
        loop: Loop,
        log: logging.Logger,
        listener: LaneListener | None,
        copies: Lane | None,
        on_request: Callable[[Sequence[Frame]], None],
    ) -> None:
        self.loop = loop
        self.log = log
        self.copies = copies  # to the Hub (same host), until it closes
        self._on_request = on_request
        self.server: LaneServer | None = None  # the clients' lanes, where the engine listens
        if listener is not None:
            self.server = LaneServer(
                listener, loop.add_reader, loop.remove, self._on_lane_message, READ_BATCH
            )
        self._replies: list[tuple[Lane, Sequence[Frame]]] = []  # sent at the flush
        self._copies_fd = -1  # watched for room while the copies' backlog waits (else -1)
        self.requests = 0  # requests read from lanes (tests, benches)
        self.replies = 0  # replies sent on lanes

    @property
    def clients(self) -> int:
        """How many clients have a lane open (hello read)."""
        return len(self.server.by_peer) if self.server is not None else 0

    @property
    def rejected(self) -> int:
        """Lanes closed for a first message that was no hello."""
        return self.server.rejected if self.server is not None else 0

    @property
    def copies_waiting(self) -> bool:
        """Whether copies wait in the Hub's lane's backlog (the loop watches it for room)."""
        return self._copies_fd >= 0

    def start(self) -> None:
        """(Main thread, the loop about to run) Accept lanes from now on."""
        if self.server is not None:
            self.server.start()

    # ------------------------------------------------------------------ requests

    def _on_lane_message(self, lane: Lane, frames: list[object]) -> None:
        """A request from a client's lane, handed on as the direct ROUTER's ``[client, *msg]``."""
        self.requests += 1
        self.loop.deliver(self._on_request, [lane.peer, *frames])  # type: ignore[list-item]

    def read_all(self) -> None:
        """Every lane's waiting requests, new lanes first (the task shell's take_available)."""
        if self.server is not None:
            self.server.read_all(_ALL)

    # ------------------------------------------------------------------ replies

    def hold_reply(self, frames: Sequence[Frame]) -> bool:
        """Hold a direct reply (``[client, *msg]``) for its client's lane, if it has one: sent
        at :meth:`send_replies`. False: it has none, the caller sends it on the ROUTER."""
        server = self.server
        if server is None or not server.by_peer:
            return False
        client = frames[0]
        lane = server.by_peer.get(client) if type(client) is bytes else None
        if lane is None:
            return False
        self._replies.append((lane, frames))
        return True

    @property
    def holding(self) -> bool:
        """Whether replies wait for :meth:`send_replies`."""
        return bool(self._replies)

    def send_replies(self, fallback: Outbox) -> None:
        """(The flush, before the direct ROUTER's outbox) Send the held replies, a turn's to
        one client as one packet each :data:`LANE_BUNDLE` bytes; those a lane does not take
        at once go into ``fallback``, the direct ROUTER's outbox."""
        replies, self._replies = self._replies, []
        groups: dict[Lane, list[Sequence[Frame]]] = {}
        for lane, frames in replies:
            group = groups.get(lane)
            if group is None:
                groups[lane] = [frames]
            else:
                group.append(frames)
        for lane, group in groups.items():
            start = 0
            while start < len(group):
                end, size = start + 1, _body_size(group[start])
                while end < len(group) and size + _body_size(group[end]) <= LANE_BUNDLE:
                    size += _body_size(group[end])
                    end += 1
                self._send_replies_on(lane, group[start:end], fallback)
                start = end

    def _send_replies_on(
        self, lane: Lane, replies: list[Sequence[Frame]], fallback: Outbox
    ) -> None:
        message = replies[0][1:] if len(replies) == 1 else bundle((), replies, 1)
        try:
            sent = not lane.closed and lane.send_whole(message)
        except LaneClosed:
            if self.server is not None:
                self.server.drop(lane)
            sent = False
        if sent:
            self.replies += len(replies)
            return
        for frames in replies:
            fallback.put(frames, (None, frames))  # tagged as the task shell's (its flush)

    # ------------------------------------------------------------------ copies

    def send_copies(self, copies: list[Sequence[Frame]]) -> list[Sequence[Frame]]:
        """Send a turn's copies on the Hub's lane (one packet: a bundle of several); those for
        its PUSH instead (all of them once the lane has closed)."""
        lane = self.copies
        if lane is None or not copies:
            return copies
        try:
            lane.send(copies[0] if len(copies) == 1 else bundle((), copies))
        except LaneClosed:
            self._drop_copies(len(copies))
            return copies
        if lane.backlog and self._copies_fd < 0:  # what the socket did not take waits there
            self._copies_fd = lane.fileno()
            self.loop.add_writer(self._copies_fd, self._flush_copies)
        return []

    def _flush_copies(self) -> None:
        """(Main loop, the Hub's lane writable) Send the copies its backlog holds."""
        lane = self.copies
        try:
            if lane is not None and not lane.flush():
                return  # more room comes later
        except LaneClosed:
            self._drop_copies(0)
            return
        self._unwatch_copies()

    def _unwatch_copies(self) -> None:
        if self._copies_fd >= 0:
            self.loop.remove(self._copies_fd)
            self._copies_fd = -1

    def _drop_copies(self, left: int) -> None:
        """The Hub closed its lane (it stopped): ``left`` copies, and those from now on, go to
        its copies PUSH (a restarted Hub reconnects there); its backlog is lost with it."""
        self.log.info("the Hub's copies lane closed: copies go to its PULL (%d now)", left)
        self._unwatch_copies()
        if self.copies is not None:
            self.copies.close()
        self.copies = None

    def close(self) -> None:
        """(Teardown, the loop stopped) Close every lane, the Hub's too."""
        if self.server is not None:
            self.server.close()
        if self.copies is not None:
            self.copies.close()


def _body_size(frames: Sequence[Frame]) -> int:
    """A reply's bytes but its route (its first frame): what a lane packet of it holds."""
    size = 0
    for index in range(1, len(frames)):
        size += frame_size(frames[index])
    return size
