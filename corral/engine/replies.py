"""What an engine holds for a controller that may die: its tasks, and its recent replies.

A controller killed while a reply is on its way loses it (zmq keeps what the engine sends
while the controller is down and delivers it on reconnection, but not what was already in the
dead controller's buffers, nor what its Hub had read but not yet written to its store). So the
engine keeps each reply until the Hub says it is recorded: every heartbeat period the Hub sends
``replies_recorded``, naming per channel the newest reply of this engine whose record is
written to its store. Replies travel in order on each channel (engine, queue, Hub monitor), so
that reply and every earlier one on its channel are safe and forgotten. A direct reply (from the
engine's own ROUTER) reaches the Hub as a copy on the engine's copies PUSH, a path no order ties
to the MUX device's: it is kept on a channel of its own, ``direct``, so that a confirmation of a
MUX reply never makes the engine forget a direct reply the Hub has not written, nor the other
way round. When the engine
registers with a restarted controller, it names the tasks it still holds and the replies it
sends again, each marked as such (:func:`marked_resent`: a new signature, never a replay); the
Hub records each reply once, clients ignore a reply they already have. At most
``MAX_KEPT`` replies and ``MAX_KEPT_BYTES`` are kept (a Hub that far behind loses the oldest,
with a warning). No sockets here: the I/O thread calls these methods.

A reply is kept *compact* (:mod:`corral.kept_frames`): its small frames joined into one
``bytes`` with their lengths. orjson's ``dumps`` returns a ``bytes`` that keeps the 4 KiB
buffer it wrote into: a reply's four JSON frames held 16 KiB of heap, and an engine keeps
thousands of replies for a heartbeat period or two (at 10,000 kept, up to 160 MiB). Joined, a
no-op's reply is about 1 KiB.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import orjson

from corral.kept_frames import KeptFrames, compact, expand, is_compact, kept_size
from corral.protocol.messages import RESENT
from corral.protocol.session import DELIMITER, Frame, frame_view

# Replies kept at most while the Hub has not confirmed them, and their bytes at most: the Hub
# confirms a reply once it has read its copy and written it, which in a burst of tiny tasks
# comes seconds later (at 10,000: 40,000 of 60,000 replies of a burst on 2 engines were
# dropped unconfirmed, and a controller dying then could not have been told them again)
MAX_KEPT: Final = 100_000
MAX_KEPT_BYTES = 64 << 20
# the socket a kept reply is sent again on, when not the one it first left on
RESEND_ON: Final = {b"direct": b"mux"}


@dataclass
class ReplyLog:
    """Tasks received and not answered (``held``: msg_id -> its ``retries`` if it came
    load-balanced, else None) and replies the Hub has not confirmed as recorded (``recent``,
    oldest first)."""

    held: dict[str, int | None] = field(default_factory=dict)
    # each reply kept compact (corral.kept_frames): a flat tuple of bytes and ints the collector
    # stops tracking at its first pass, so thousands of kept replies are not walked again by
    # every later one
    recent: OrderedDict[str, tuple[float, bytes, KeptFrames]] = field(default_factory=OrderedDict)
    dropped: int = 0  # unconfirmed replies pushed out by MAX_KEPT or MAX_KEPT_BYTES
    kept_bytes: int = 0  # of the replies in recent
    # the retries of the load-balanced tasks whose replies are in recent
    replied_retries: dict[str, int] = field(default_factory=dict)

    def received(self, msg_id: str, retries: int | None = None) -> None:
        """A task arrived; ``retries``: its request's, if it came load-balanced."""
        self.held[msg_id] = retries

    def replied(
        self, channel: bytes, frames: Sequence[Frame], now: float, answers: str | None = None
    ) -> str | None:
        """A reply leaves on ``channel``; ``frames`` are its identities and message (or
        those already made compact: :func:`~corral.kept_frames.compact`). The msg_id it answers
        (``answers`` when its sender knew it, else read from the frames' parent header; None
        if unreadable)."""
        msg_id = answers if answers is not None else parent_msg_id(frames)
        if msg_id is None:
            return None
        retries = self.held.pop(msg_id, None)
        kept = compact(frames)
        self._forget(msg_id)  # a reply again: the newest is kept
        self.recent[msg_id] = (now, channel, kept)
        self.kept_bytes += kept_size(kept)
        if retries is not None:
            self.replied_retries[msg_id] = retries
        recent = self.recent
        while len(recent) > MAX_KEPT or (self.kept_bytes > MAX_KEPT_BYTES and len(recent) > 1):
            self._forget(next(iter(recent)))
            self.dropped += 1
        return msg_id

    def _forget(self, msg_id: str) -> None:
        entry = self.recent.pop(msg_id, None)
        if entry is not None:
            self.kept_bytes -= kept_size(entry[2])
            self.replied_retries.pop(msg_id, None)

    def recorded(self, channel: bytes, msg_id: str) -> int:
        """The Hub wrote the record of the reply to ``msg_id`` sent on ``channel``: forget it
        and every earlier reply on that channel (they reached the Hub before it). Replies on
        other channels stay. How many were forgotten (0 if ``msg_id`` is not kept)."""
        if self.recent.get(msg_id, (0.0, None))[1] != channel:
            return 0
        done = []
        for kept_id, (_, kept_channel, _) in self.recent.items():
            if kept_channel == channel:
                done.append(kept_id)
            if kept_id == msg_id:
                break
        for kept_id in done:
            self._forget(kept_id)
        return len(done)

    def to_report(self) -> list[str]:
        """The msg_ids a restarted controller must expect answers for from this engine."""
        return [*self.held, *self.recent]

    def balanced_tasks(self) -> dict[str, int]:
        """The load-balanced tasks of :meth:`to_report`, held or answered (the reply not yet
        confirmed), with their ``retries``: a restarted controller that never recorded their
        requests (their copies died with the one before) learns that their client may send
        them again if this engine dies before they are answered to it (a reply not confirmed
        may have died with the controller before its scheduler passed it on to the client;
        a client that did get it does not send the task again)."""
        tasks = {msg_id: retries for msg_id, retries in self.held.items() if retries is not None}
        tasks.update(self.replied_retries)
        return tasks

    def to_resend(self) -> list[tuple[bytes, list[Frame]]]:
        """The recent replies, oldest first, to send again (then forgotten), each with the
        socket it goes on: a direct reply through the MUX, whose device gives the new Hub
        its copy (the direct socket's peer is the client, which has it or asks the Hub)."""
        replies = [
            (RESEND_ON.get(channel, channel), expand(kept))
            for _, channel, kept in self.recent.values()
        ]
        self.recent.clear()
        self.replied_retries.clear()
        self.kept_bytes = 0
        return replies


def marked_resent(
    frames: Sequence[Frame], sign: Callable[[Sequence[bytes | memoryview]], bytes]
) -> list[Frame]:
    """A kept reply to send again: ``resent`` in its metadata counts its sendings again
    (1, then 2 ... for one kept since and sent again to the next controller), so a new
    signature each time (``sign``: the engine session's). The first copy may have reached
    the restarted scheduler before anything could use it: its copy to the Hub sent before
    the Hub's subscription arrived is dropped, and the client, not yet reconnected, missed
    it too. Unchanged, the second copy is a replay the scheduler drops, and the task the
    Hub waits on is never answered. Frames without a readable metadata frame are returned
    unchanged."""
    for index, frame in enumerate(frames):
        view = frame_view(frame)
        if len(view) == len(DELIMITER) and bytes(view) == DELIMITER:
            json_frames = [frame_view(f) for f in frames[index + 2 : index + 6]]
            try:
                metadata = orjson.loads(json_frames[2])
            except (IndexError, orjson.JSONDecodeError):
                return list(frames)
            if len(json_frames) != 4 or not isinstance(metadata, dict):
                return list(frames)
            before = metadata.get(RESENT)
            times = before + 1 if type(before) is int else 1  # (True, before: one sending)
            json_frames[2] = orjson.dumps({**metadata, RESENT: times})
            return [*frames[: index + 1], sign(json_frames), *json_frames, *frames[index + 6 :]]
    return list(frames)


def parent_msg_id(frames: Sequence[Frame]) -> str | None:
    """The msg_id a serialized reply answers (its parent header's), None if unreadable;
    ``frames`` may be a kept reply (:func:`~corral.kept_frames.compact`)."""
    if is_compact(frames):
        frames = expand(frames)
    for index, frame in enumerate(frames):
        view = frame_view(frame)
        if len(view) == len(DELIMITER) and bytes(view) == DELIMITER:
            try:
                parent = orjson.loads(frame_view(frames[index + 3]))
            except (IndexError, orjson.JSONDecodeError):
                return None
            msg_id = parent.get("msg_id") if isinstance(parent, dict) else None
            return msg_id if isinstance(msg_id, str) else None
    return None
