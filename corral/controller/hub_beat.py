"""The Hub's heartbeat: when it beats, probes and repeats, and what a silent heart means.

A mixin of :class:`corral.controller.hub.Hub`, sans-I/O like it: the shell asks
:meth:`HubHeartbeat.next_deadline` when to call :meth:`HubHeartbeat.wake`, which returns the
pings to publish and the actions they decided (an engine unregistered, replies confirmed as
recorded, results expired). The beat goes once per period (never closer than half a period,
however late the call); while an engine waits to be registered, the current beat again every
``REGISTRATION_PING``; while an engine is suspected (a connection closed), a probe every
``PROBE_PERIOD``. :class:`~corral.controller.heartbeat.HeartMonitor` keeps the hearts' counts.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, cast

from corral.controller.hub_actions import Action, ExpireResults, Send
from corral.controller.hub_gone import settle_awaited
from corral.controller.hub_restart import settle_restored

if TYPE_CHECKING:
    from corral.controller.heartbeat import HeartMonitor
    from corral.controller.hub import EngineEntry, Hub, PendingRegistration
    from corral.controller.hub_gone import AwaitedEngine
    from corral.controller.store.base import ResultStore

__all__ = ["PROBE_PERIOD", "REGISTRATION_PING", "HubHeartbeat"]

log = logging.getLogger("corral.hub")

REGISTRATION_PING = 0.05  # seconds between repeated beats while an engine waits to register
PROBE_PERIOD = 0.04  # seconds between probes of an engine whose connection closed
MAX_LAPSED_REGISTRATIONS = 1024  # lapsed registrations remembered (the oldest forgotten)


CONFIRM_PERIOD = 0.25
"""Seconds between confirmations of recorded replies (``replies_recorded``) while replies
come, besides the one each beat makes: an engine keeps every unconfirmed reply for a restarted
controller, at most ``MAX_KEPT`` (:mod:`corral.engine.replies`), and at a burst's rate (5,000
replies a second an engine) a beat's period of them was more than that: the oldest were
dropped, and a controller that died then could not have been told them again."""


def _due(deadline: float | None, now: float, span: float) -> bool:
    """Whether a deadline set at most ``span`` ahead has come. One further ahead than that
    means the wall clock was set back: it is due now rather than after the step."""
    return deadline is None or now >= deadline or deadline > now + span


class HubHeartbeat:
    """The heartbeat part of a Hub (see the module doc)."""

    if TYPE_CHECKING:  # provided by Hub
        store: ResultStore
        hearts: HeartMonitor
        heartbeat_period: float
        next_beat: float | None
        next_repeat: float | None
        next_probe: float | None
        next_confirm: float | None
        restored: dict[str, str | None]
        restored_until_beat: int
        engines: dict[int, EngineEntry]
        by_uuid: dict[str, EngineEntry]
        pending_registrations: dict[str, PendingRegistration]
        lapsed_registrations: dict[str, PendingRegistration]
        expected_from: dict[str, list[str]]
        dropped: set[str]
        told_stale: set[str]
        replies_seen: dict[str, dict[str, str]]
        replies_writing: deque[tuple[int, dict[str, dict[str, str]]]]
        awaited: dict[str, AwaitedEngine]

        def _register(self, pending: PendingRegistration, now: float) -> list[Action]: ...
        def _unregister(self, entry: EngineEntry, why: str, now: float) -> list[Action]: ...

    def next_deadline(self, now: float) -> float:
        """When :meth:`wake` next has work: the next beat, or sooner the next registration
        repeat, probe or confirmation of recorded replies. Never more than a period after
        ``now`` (a clock set back)."""
        when = now if self.next_beat is None else min(self.next_beat, now + self.heartbeat_period)
        if self.pending_registrations:
            when = min(when, now if self.next_repeat is None else self.next_repeat)
        if self.hearts.suspects:
            when = min(when, now if self.next_probe is None else self.next_probe)
        if self.replies_seen or self.replies_writing:
            when = min(when, now if self.next_confirm is None else self.next_confirm)
        return when

    def wake(self, now: float) -> tuple[list[bytes], list[Action]]:
        """Whatever is due at ``now``: the pings to publish and what they decided.

        A beat once per period (never closer than half a period, however late the call); while
        an engine waits to be registered, the current beat again every ``REGISTRATION_PING``
        (its count does not advance, so no other heart is judged) instead of making it wait up
        to a whole period; while an engine is suspected, a probe every ``PROBE_PERIOD``; while
        replies come, their confirmations every ``CONFIRM_PERIOD``."""
        pings: list[bytes] = []
        actions: list[Action] = []
        period = self.heartbeat_period
        if _due(self.next_beat, now, period):
            payload, actions = self.tick(now)  # confirms too
            pings.append(payload)
            last = (
                now if self.next_beat is None or self.next_beat > now + period else self.next_beat
            )
            self.next_beat = max(last + period, now + period / 2)
            self.next_confirm = now + CONFIRM_PERIOD
        else:
            if self.pending_registrations and _due(self.next_repeat, now, REGISTRATION_PING):
                pings.append(self.hearts.payload())
                self.next_repeat = now + REGISTRATION_PING
            if (self.replies_seen or self.replies_writing) and _due(
                self.next_confirm, now, CONFIRM_PERIOD
            ):
                actions.extend(self._confirm_recorded())
                self.next_confirm = now + CONFIRM_PERIOD
        if self.hearts.suspects and _due(self.next_probe, now, PROBE_PERIOD):
            payload, lost = self.probe(now)
            pings.append(payload)
            actions.extend(lost)
            self.next_probe = now + PROBE_PERIOD
        return pings, actions

    def tick(self, now: float) -> tuple[bytes, list[Action]]:
        """One beat, now (:meth:`wake` calls it once per period): the ping payload, and what
        failures and expiries mean."""
        payload, failed = self.hearts.tick()
        actions: list[Action] = [ExpireResults(), *self._confirm_recorded()]
        if self.restored and self.hearts.beat >= self.restored_until_beat:
            actions.extend(settle_restored(cast("Hub", self), now))  # a mixin of Hub only
        if self.awaited:  # engines named but never registered here (hub_gone)
            actions.extend(settle_awaited(cast("Hub", self), now))
        for uuid in failed:
            entry = self.by_uuid.get(uuid)
            if entry is not None:
                self.dropped.add(uuid)
                actions.extend(self._unregister(entry, "heartbeat stopped", now))
        for uuid, pending in list(self.pending_registrations.items()):
            if pending.expires_at_beat <= self.hearts.beat:
                del self.pending_registrations[uuid]
                log.warning("hub: engine %s registered but its heart never beat", uuid)
                if self.expected_from.get(uuid) and pending.id not in self.engines:
                    # it said it held tasks (back after a restart) and died before its first
                    # beat: settle them as for any engine that dies, or they wait for ever
                    actions.extend(self._register(pending, now))
                    self.dropped.add(uuid)
                    entry = self.by_uuid[uuid]
                    actions.extend(self._unregister(entry, "its heart never beat", now))
                else:
                    self._lapse(pending)
                self.expected_from.pop(uuid, None)
        return payload, actions

    def _lapse(self, pending: PendingRegistration) -> None:
        """Keep a registration whose heart did not beat in time. The engine had its reply and
        counts itself registered: it does not ask again while this controller pings it (a
        restarted controller is told apart by its pings, and it is the same one). Forgotten,
        its heart beating late (its sockets slow to reconnect after a restart, its process
        starved or paused) left an engine nobody could use or see, for ever."""
        lapsed = self.lapsed_registrations
        lapsed.pop(pending.uuid, None)
        lapsed[pending.uuid] = pending
        while len(lapsed) > MAX_LAPSED_REGISTRATIONS:
            del lapsed[next(iter(lapsed))]

    def _register_late(
        self, pending: PendingRegistration, payload: bytes, now: float
    ) -> list[Action]:
        """The first beat of a lapsed registration's heart: registered now, under the id it
        was given, unless another engine took that id meanwhile (then it is told to stop,
        rather than left beating unregistered)."""
        uuid = pending.uuid
        taken = pending.id in self.engines or any(
            other.id == pending.id for other in self.pending_registrations.values()
        )
        if taken:
            log.warning(
                "hub: engine %s's heart beat after its registration lapsed, and its id %d is "
                "taken now; telling it to stop",
                uuid,
                pending.id,
            )
            return self._tell_to_stop(uuid)
        log.warning("hub: engine %s's heart beat after its registration lapsed; registered", uuid)
        self.hearts.pong(uuid, payload)
        return self._register(pending, now)

    def _tell_to_stop(self, uuid: str) -> list[Action]:
        """An unsolicited ``unregistration_notification`` on the engine's registration socket
        (it exits), once per heart."""
        self.told_stale.add(uuid)
        notice = {"id": -1, "uuid": uuid}
        return [
            Send("registration", "unregistration_notification", notice, idents=(uuid.encode(),))
        ]

    def _confirm_recorded(self) -> list[Action]:
        """Tell each engine which of its replies are now written to the store, so that it stops
        keeping them for a restarted controller (see :mod:`corral.engine.replies`). Never
        waits for the store: replies seen since the last tick wait for a later one."""
        if self.replies_seen:
            self.replies_writing.append((self.store.write_mark(), self.replies_seen))
            self.replies_seen = {}
        done: dict[str, dict[str, str]] = {}
        while self.replies_writing and self.store.written(self.replies_writing[0][0]):
            for uuid, newest in self.replies_writing.popleft()[1].items():
                done.setdefault(uuid, {}).update(newest)
        return [
            Send("registration", "replies_recorded", newest, idents=(uuid.encode(),))
            for uuid, newest in done.items()
            if uuid in self.by_uuid
        ]

    def connection_closed(self, uuid: str) -> None:
        """A connection of this engine closed (the shell saw it on the pong socket): probe it
        (:meth:`next_deadline` then asks for a wake at once)."""
        if uuid in self.by_uuid:
            self.hearts.suspect(uuid)

    def probe(self, now: float) -> tuple[bytes, list[Action]]:
        """A probe to publish while engines are suspected; those that stopped answering are
        unregistered as dead, as after missed beats (their late replies are ignored)."""
        payload, failed = self.hearts.probe()
        actions: list[Action] = []
        for uuid in failed:
            entry = self.by_uuid.get(uuid)
            if entry is not None:
                self.dropped.add(uuid)
                actions.extend(self._unregister(entry, "its connections closed: it died", now))
        return payload, actions

    def handle_pong(self, uuid: str, payload: bytes, now: float) -> list[Action]:
        """A heart's answer: the first one of an engine waiting to register registers it."""
        if uuid in self.by_uuid:
            self.hearts.pong(uuid, payload)
            return []
        pending = self.pending_registrations.pop(uuid, None)
        if pending is not None:
            self.hearts.pong(uuid, payload)
            return self._register(pending, now)
        lapsed = self.lapsed_registrations.pop(uuid, None)
        if lapsed is not None and uuid not in self.dropped:
            return self._register_late(lapsed, payload, now)
        if uuid in self.dropped and uuid not in self.told_stale:
            # a heart we dropped (paused process, partition) came back: its tasks were failed
            # or resubmitted, so tell it to stop rather than let it answer for them twice.
            # Hearts this Hub never knew (it was restarted) re-register by themselves.
            log.warning("hub: heart %s beats but is not registered; telling it to stop", uuid)
            return self._tell_to_stop(uuid)
        return []
