"""What an engine holds for a controller that may die: its tasks, and its recent replies.

A controller killed while a reply is on its way loses it (zmq keeps what the engine sends
while the controller is down and delivers it on reconnection, but not what was already in the
dead controller's buffers). So the engine remembers the replies of the last
``keep_for`` seconds (a ping from the controller since then shows it was alive to read them) and,
when it registers with a restarted controller, names the tasks it still holds and the replies it
sends again; the Hub records each reply once, clients ignore a reply they already have. No
sockets here: the I/O thread calls these methods with the time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from corral.protocol.session import DELIMITER, Frame, frame_view

MAX_KEPT = 10_000  # recent replies kept at most, whatever their age


@dataclass
class ReplyLog:
    """Tasks received and not answered (``held``) and replies sent recently (``recent``)."""

    keep_for: float = 6.0
    held: dict[str, None] = field(default_factory=dict)
    recent: OrderedDict[str, tuple[float, bytes, list[Frame]]] = field(default_factory=OrderedDict)

    def received(self, msg_id: str) -> None:
        self.held[msg_id] = None

    def replied(self, channel: bytes, frames: Sequence[Frame], now: float) -> str | None:
        """A reply leaves on ``channel``; ``frames`` are its identities and message. The
        msg_id it answers (None if unreadable)."""
        msg_id = parent_msg_id(frames)
        if msg_id is None:
            return None
        self.held.pop(msg_id, None)
        self.recent[msg_id] = (now, channel, list(frames))
        while len(self.recent) > MAX_KEPT:
            self.recent.popitem(last=False)
        return msg_id

    def controller_alive(self, now: float) -> None:
        """A ping came: replies older than ``keep_for`` were read by this controller."""
        limit = now - self.keep_for
        while self.recent:
            msg_id, (sent, _, _) = next(iter(self.recent.items()))
            if sent >= limit:
                return
            del self.recent[msg_id]

    def to_report(self) -> list[str]:
        """The msg_ids a restarted controller must expect answers for from this engine."""
        return [*self.held, *self.recent]

    def to_resend(self) -> list[tuple[bytes, list[Frame]]]:
        """The recent replies, oldest first, to send again (then forgotten)."""
        replies = [(channel, frames) for _, channel, frames in self.recent.values()]
        self.recent.clear()
        return replies


def parent_msg_id(frames: Sequence[Frame]) -> str | None:
    """The msg_id a serialized reply answers (its parent header's), None if unreadable."""
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
