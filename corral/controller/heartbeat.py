"""Engine liveness as a state machine: beats out, pongs in, failures when pongs stop.

The Hub calls :meth:`HeartMonitor.tick` once per period (it sends the returned payload on the
ping PUB) and :meth:`HeartMonitor.pong` for every frame arriving on the pong ROUTER. No sockets
and no clock here: a beat is a counter, so tests drive thousands of beats in microseconds.

Missed beats catch a hung or partitioned engine, but only after ``max_misses`` periods. A process
that dies closes its connections at once, and the app tells the monitor so with
:meth:`HeartMonitor.suspect`. A closed connection is not proof of death (the socket's file
descriptor, the only key the app has, may already serve another engine), so a suspect is probed:
the app sends :meth:`HeartMonitor.probe` every few milliseconds, and a heart that answers no probe
sent after the suspicion within ``probe_limit`` probes is failed. A live engine answers in
milliseconds (its heart is a C device thread), a dead one never does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# An engine the Hub hears of but never registered (after a restart) has this long at least to
# register before it is declared gone (corral.controller.hub_gone): one back after a controller
# restart registers once its three queue connections are up again, which it awaits up to 10 s
# (corral.engine.handshake). The default of the controller's --reregistration-grace; kept here,
# beside the beats it is counted in, so that the CLI reads it without importing the Hub.
AWAIT_AT_LEAST = 15.0  # seconds


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
    probe_limit: int = 8
    probe_count: int = 0
    suspects: dict[str, int] = field(default_factory=dict)  # heart -> first probe it must answer

    def tick(self) -> tuple[bytes, list[str]]:
        """Advance one beat: the ping payload to publish, and the hearts that just failed."""
        self.beat += 1
        limit = self.beat - self.max_misses
        failed = [heart for heart, last in self.last_answered.items() if last < limit]
        for heart in failed:
            del self.last_answered[heart]
            self.suspects.pop(heart, None)
        return self.payload(), failed

    def suspect(self, heart: str) -> None:
        """A connection of ``heart`` closed: it must answer one of the next probes."""
        if heart in self.last_answered and heart not in self.suspects:
            self.suspects[heart] = self.probe_count + 1

    def probe(self) -> tuple[bytes, list[str]]:
        """The next probe to publish, and the suspects that left ``probe_limit`` probes
        unanswered (failed once, and forgotten, like hearts that miss their beats)."""
        self.probe_count += 1
        failed = [
            h for h, first in self.suspects.items() if self.probe_count - first >= self.probe_limit
        ]
        for heart in failed:
            del self.suspects[heart]
            self.last_answered.pop(heart, None)
        return b"%d.%s.%d" % (self.beat, self.instance, self.probe_count), failed

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
        beat, _, rest = payload.partition(b".")
        instance, _, probe = rest.partition(b".")
        if instance != self.instance:
            return False  # an answer to another monitor's ping (before a restart), or garbage
        try:
            answered = int(beat)
            probed = int(probe) if probe else 0
        except ValueError:
            return False
        if answered > self.beat or answered < 0 or probed > self.probe_count:
            return False
        if probed and probed >= self.suspects.get(heart, self.probe_count + 1):
            del self.suspects[heart]
        new = heart not in self.last_answered
        if new or answered > self.last_answered[heart]:
            self.last_answered[heart] = answered
        return new

    def forget(self, heart: str) -> None:
        """Stop watching a heart (its engine unregistered on purpose)."""
        self.last_answered.pop(heart, None)
        self.suspects.pop(heart, None)

    def is_alive(self, heart: str) -> bool:
        return heart in self.last_answered
