"""The client's lanes: a direct gate's Unix connections to the engines on its host.

A lane (:mod:`corral.lane`) carries what the direct ROUTER would, minus the route, without a
zmq I/O thread on the way: the thread that sends writes the packet itself, the thread that
waits reads its reply itself. The direct gate (:class:`corral.client.socket_gate.SocketGate`)
owns a :class:`LaneSet` and uses it under its own lock, by its own rules (one thread at a
time; the submitting thread sends when nothing is queued ahead, else the I/O thread does, in
order; a waiting thread may lead the reading). What this module adds to those rules:

- **Which path.** A request whose route (``frames[0]``) names an engine with an open lane goes
  on the lane, as ``frames[1:]``; any other on the zmq ROUTER. An engine's lane is connected
  when its direct path is (before any request to it leaves), so its requests all take the
  lane while it is open: they leave in submission order, on one connection.
- **A burst waits for the I/O thread.** A request to an engine whose previous one, submitted
  before it, has no reply yet (none read from that engine since, on the lane or the ROUTER)
  is handed to the I/O thread rather than sent at once (:meth:`LaneSet.fresh`,
  :meth:`LaneSet.answered`): the engine is busy with the earlier ones, and the I/O thread
  sends the burst's requests that gathered meanwhile as one bundle. In a loop of 5,000
  applies round-robin over two engines that ran about a quarter more tasks per second than
  a packet per request (bench/README.md, round twenty-one). An apply waited for, or a
  broadcast (one request per engine), still goes at once.
- **A full socket.** A lane whose socket takes no more (the engine runs a long task and reads
  nothing) keeps the rest in its backlog, and the requests after it queue behind it
  (:meth:`corral.lane.Lane.send` appends to the backlog). Such a lane is in an epoll set of
  its own, for ``EPOLLOUT``, whose descriptor the I/O thread's loop watches (an epoll
  descriptor is readable when a member is ready; the loop has no writer API): the I/O thread
  flushes it when it is writable, and takes it out of the set once its backlog is empty.
- **Replies.** The engine answers a request that came on a lane on that lane when it can (one
  packet, taken at once), else on its ROUTER: replies come on both, in any order, and need
  none. Each lane's descriptor (level-triggered) is in the gate's two epoll sets, the I/O
  thread's and the leader's; whoever reads the gate reads every lane too, each message queued
  as ``[engine_uuid, *frames]``, as the ROUTER gives it. A leader takes the lanes out of the
  I/O thread's set while it leads, as it does the zmq descriptor, and gives them back.
- **A lane that closes** (the engine is gone: end of file, or a broken socket on a send) is
  dropped and closed; its engine's later requests go on zmq, which queues them for the engine
  it may never reach again, and the engine's unregistration fails what it did not answer, as
  for any request to it (the requests a closed lane held were lost with the engine).
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Sequence
from typing import Any, Final

from corral.bundles import bundle
from corral.lane import Lane, LaneClosed

log = logging.getLogger("corral.client")

__all__ = ["LaneSet"]

_EPOLLIN: Final = select.EPOLLIN if hasattr(select, "EPOLLIN") else 1
_EPOLLOUT: Final = select.EPOLLOUT if hasattr(select, "EPOLLOUT") else 4
_monotonic: Final = time.monotonic
_NEVER: Final = float("-inf")


class LaneSet:
    """The lanes of one direct gate, by engine uuid (bytes), used under the gate's lock.

    ``io_set`` and ``lead_set`` (:meth:`attach`) are the gate's epoll sets: every lane's
    descriptor is in ``lead_set``, and in ``io_set`` while no thread leads. :attr:`writable`
    is the set of lanes with a backlog, for ``EPOLLOUT``; the gate's loop watches its
    descriptor and calls :meth:`flush`."""

    __slots__ = (
        "lanes",
        "writable",
        "sent",
        "received",
        "dropped",
        "_io_set",
        "_lead_set",
        "_leading",
        "_backlogged",
        "_submitted",
        "_replied",
    )

    def __init__(self) -> None:
        self.lanes: dict[bytes, Lane] = {}
        self.writable: Any = select.epoll()  # select.epoll: lanes with a backlog
        self.sent = 0  # requests sent on a lane (tests, benches)
        self.received = 0  # messages read from a lane
        self.dropped = 0  # lanes closed by their engine (or broken)
        self._io_set: Any = None
        self._lead_set: Any = None
        self._leading = False
        self._backlogged: dict[bytes, Lane] = {}  # the lanes registered in ``writable``
        # when a thread last submitted a request to a lane, and when a reply last came on it
        self._submitted: dict[bytes, float] = {}
        self._replied: dict[bytes, float] = {}

    def attach(self, io_set: Any, lead_set: Any) -> None:
        """(Gate install) The gate's epoll sets, which lanes' descriptors join."""
        self._io_set = io_set
        self._lead_set = lead_set

    def add(self, peer: bytes, lane: Lane) -> None:
        """Send ``peer``'s requests on ``lane`` from now on and read its replies there."""
        old = self.lanes.get(peer)
        if old is not None:
            self._forget(peer, old)
        fd = lane.fileno()
        self._lead_set.register(fd, _EPOLLIN)
        if not self._leading:
            self._io_set.register(fd, _EPOLLIN)
        self.lanes[peer] = lane

    def drop(self, peer: bytes) -> None:
        """Close ``peer``'s lane, if it has one (its engine is gone)."""
        lane = self.lanes.get(peer)
        if lane is not None:
            self._forget(peer, lane)

    def _forget(self, peer: bytes, lane: Lane) -> None:
        """Out of every set, then closed: a descriptor closed first could be reused by a new
        lane before it was taken out, and the new one would be taken out instead."""
        del self.lanes[peer]
        self._submitted.pop(peer, None)
        self._replied.pop(peer, None)
        if not lane.closed:
            fd = lane.fileno()
            for epoll in (self._io_set, self._lead_set):
                try:
                    epoll.unregister(fd)
                except (FileNotFoundError, ValueError, OSError):
                    pass  # not in it (the I/O thread's set while a thread leads), or closed
            if self._backlogged.pop(peer, None) is not None:
                try:
                    self.writable.unregister(fd)
                except (FileNotFoundError, ValueError, OSError):
                    pass
            lane.close()
        else:
            self._backlogged.pop(peer, None)  # a closed socket left every epoll set

    def fresh(self, peer: object) -> bool:
        """(A submitting thread) Whether a request to ``peer`` goes on its lane at once: not
        while the one submitted before it there is unanswered (no reply read from that engine
        since, on the lane or the ROUTER: :meth:`answered`). Such a request is part of a
        burst (a loop of applies): the engine is busy with the earlier ones and reads it only
        after them. Handed to the I/O thread, it goes with the burst's next ones as one
        bundle (:meth:`send_all`): one packet to write and to read, not one each. An apply
        waited for, or a broadcast (one request per engine), goes at once."""
        if type(peer) is not bytes or peer not in self.lanes:
            return True
        now = _monotonic()
        last = self._submitted.get(peer)
        self._submitted[peer] = now
        return last is None or self._replied.get(peer, _NEVER) >= last

    def answered(self, route: Any) -> None:
        """(The gate's reader, a message on the ROUTER from ``route``'s engine) A reply that
        did not come on the lane (too big for one packet, or the lane was full) answers it
        as well, for :meth:`fresh`."""
        peer = route if type(route) is bytes else route.bytes
        if peer in self.lanes:
            self._replied[peer] = _monotonic()

    def send(self, frames: Sequence[Any]) -> bool:
        """Send a direct request (``[engine_uuid, *msg]``) on its engine's lane, the route
        left out: True once the lane has it (sent, or in its backlog); False if the engine
        has no open lane, for the caller to send it on zmq."""
        lanes = self.lanes
        if not lanes:
            return False
        peer = frames[0]
        if type(peer) is not bytes:
            return False
        lane = lanes.get(peer)
        if lane is None:
            return False
        try:
            done = lane.send(frames[1:])
        except LaneClosed as err:
            log.debug("client: the lane to %r closed: %s", peer, err)
            self.dropped += 1
            self._forget(peer, lane)
            return False  # never wholly sent: the engine did not get it
        if not done and peer not in self._backlogged:
            self.writable.register(lane.fileno(), _EPOLLOUT)
            self._backlogged[peer] = lane
        self.sent += 1
        return True

    def send_all(self, requests: list[Sequence[Any]]) -> tuple[int, list[Sequence[Any]]]:
        """(I/O thread, handed-over requests in order) Each engine's requests on its lane, a
        burst to one engine as one message (a bundle, :mod:`corral.bundles`, which the engine
        splits as its ROUTER's): how many went on lanes, and the others, in order, for zmq."""
        lanes = self.lanes
        groups: dict[bytes, list[Sequence[Any]]] = {}
        rest: list[Sequence[Any]] = []
        for frames in requests:
            peer = frames[0]
            if type(peer) is bytes and peer in lanes:
                group = groups.get(peer)
                if group is None:
                    groups[peer] = [frames]
                else:
                    group.append(frames)
            else:
                rest.append(frames)
        sent = 0
        for peer, group in groups.items():
            message = group[0] if len(group) == 1 else [peer, *bundle((), group, 1)]
            if self.send(message):
                sent += len(group)
                self.sent += len(group) - 1  # requests, not messages
            else:  # the lane closed: never wholly sent, the engine got none of them
                rest.extend(group)
        return sent, rest

    def flush(self) -> None:
        """(I/O thread, a lane writable) Send the backlogs; a lane whose backlog is empty
        leaves the writable set, a broken one is dropped."""
        for peer, lane in list(self._backlogged.items()):
            try:
                done = lane.flush()
            except LaneClosed as err:
                log.debug("client: the lane to %r closed: %s", peer, err)
                self.dropped += 1
                self._forget(peer, lane)
                continue
            if done:
                del self._backlogged[peer]
                self.writable.unregister(lane.fileno())

    @property
    def backlog(self) -> int:
        """How many lanes hold requests not sent yet."""
        return len(self._backlogged)

    def receive(self, queue: Any, limit: int) -> int:
        """Up to ``limit`` messages waiting on the lanes, appended to ``queue`` (a deque) as
        ``[engine_uuid, *frames]``; how many. A lane found closed is dropped."""
        count = 0
        if not self.lanes or limit <= 0:
            return 0
        for peer, lane in list(self.lanes.items()):
            messages, open_ = lane.receive(limit - count)
            if messages:
                self._replied[peer] = _monotonic()
            for frames in messages:
                queue.append([peer, *frames])
            count += len(messages)
            if not open_:
                log.debug("client: the lane to %r closed", peer)
                self.dropped += 1
                self._forget(peer, lane)
            if count >= limit:
                break
        self.received += count
        return count

    def lead(self) -> None:
        """(A thread starts leading) The lanes out of the I/O thread's set."""
        self._leading = True
        for lane in self.lanes.values():
            try:
                self._io_set.unregister(lane.fileno())
            except FileNotFoundError:
                pass  # a lead a Ctrl-C cut did not give it back

    def resign(self) -> None:
        """(The leader stops) The lanes back in the I/O thread's set."""
        self._leading = False
        for lane in self.lanes.values():
            try:
                self._io_set.register(lane.fileno(), _EPOLLIN)
            except FileExistsError:
                pass  # cut before it was taken out

    def close(self) -> None:
        """Close every lane and the writable set (the gate closes)."""
        for peer, lane in list(self.lanes.items()):
            self._forget(peer, lane)
        self.writable.close()
