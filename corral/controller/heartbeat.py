"""Engine liveness as a state machine: beats out, pongs in, failures when pongs stop.

The Hub calls :meth:`HeartMonitor.tick` once per period (it sends the returned payload on the
ping PUB) and :meth:`HeartMonitor.pong` for every frame arriving on the pong ROUTER. No sockets
and no clock here: a beat is a counter, so tests drive thousands of beats in microseconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class HeartMonitor:
    """Tracks the last beat each heart answered.

    A heart that has not answered for more than ``max_misses`` beats is reported failed by the
    tick that notices it, exactly once, and forgotten; if it answers later it is new again and
    the Hub decides what a returning heart means.
    """

    max_misses: int = 3
    beat: int = 0
    last_answered: dict[str, int] = field(default_factory=dict)
    instance: bytes = field(default_factory=lambda: os.urandom(4).hex().encode("ascii"))

    def tick(self) -> tuple[bytes, list[str]]:
        """Advance one beat: the ping payload to publish, and the hearts that just failed."""
        self.beat += 1
        limit = self.beat - self.max_misses
        failed = [heart for heart, last in self.last_answered.items() if last < limit]
        for heart in failed:
            del self.last_answered[heart]
        return self.payload(), failed

    def payload(self) -> bytes:
        """The current beat's ping, ``<beat>.<instance>``, also to send again: answering it
        counts, repeating it judges no one. The instance tells a restarted monitor's pings
        (and the pongs answering them) from this one's."""
        return b"%d.%s" % (self.beat, self.instance)

    def pong(self, heart: str, payload: bytes) -> bool:
        """Record an answer; True when this heart was not known (first beat, or back again).

        Payloads that are not a beat this monitor sent (garbage, another instance's, or from
        the future) are ignored.
        """
        beat, _, instance = payload.partition(b".")
        if instance != self.instance:
            return False  # an answer to another monitor's ping (before a restart), or garbage
        try:
            answered = int(beat)
        except ValueError:
            return False
        if answered > self.beat or answered < 0:
            return False
        new = heart not in self.last_answered
        if new or answered > self.last_answered[heart]:
            self.last_answered[heart] = answered
        return new

    def forget(self, heart: str) -> None:
        """Stop watching a heart (its engine unregistered on purpose)."""
        self.last_answered.pop(heart, None)

    def is_alive(self, heart: str) -> bool:
        return heart in self.last_answered
