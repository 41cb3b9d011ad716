"""The Hub core driven as its shell drives it, without sockets: the Hub's tests use this.

:class:`HubHarness` passes a clock the test moves (``now``) into every call and applies the
store writes the Hub returns with the shell's own :func:`apply_writes`, so a test reads the
store as a client's query would. It returns only the messages the shell would send. Everything
else (``engines``, ``hearts``, ``store``, ``restored`` ...) is the Hub's own, read through.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from corral.controller.hub import Hub
from corral.controller.hub_actions import Action, Resubmit, Send, Stop, apply_writes
from corral.controller.store.base import ResultStore
from corral.protocol.session import Message

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a clock far from the test machine's


class HubHarness:
    """One Hub and the time it is told; see the module docstring."""

    def __init__(self, hub: Hub, now: float = START) -> None:
        self.hub = hub
        self.now = now

    @classmethod
    def create(cls, store: ResultStore, *args: Any, **kwargs: Any) -> HubHarness:
        return cls(Hub(store, *args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hub, name)

    def perform(self, actions: list[Action]) -> list[Send | Resubmit | Stop]:
        return apply_writes(self.hub.store, actions, self.hub.forget_purged)

    def handle_request(self, idents: Sequence[bytes], msg: Message) -> list[Send | Resubmit | Stop]:
        return self.perform(self.hub.handle_request(idents, msg, self.now))

    def handle_pong(self, uuid: str, payload: bytes) -> list[Send | Resubmit | Stop]:
        return self.perform(self.hub.handle_pong(uuid, payload, self.now))

    def handle_monitor(
        self, prefix: bytes, idents: Sequence[bytes], msg: Message, *, direct: bool = False
    ) -> list[Send | Resubmit | Stop]:
        """``direct``: the copy came from the engine's copies PUSH, not from the device."""
        return self.perform(self.hub.handle_monitor(prefix, idents, msg, self.now, direct=direct))

    def handle_destination(self, msg_id: str, engine_uuid: str) -> list[Send | Resubmit | Stop]:
        return self.perform(self.hub.handle_destination(msg_id, engine_uuid))

    def handle_destinations(
        self, destinations: Sequence[tuple[str, str]]
    ) -> list[Send | Resubmit | Stop]:
        return self.perform(self.hub.handle_destinations(destinations))

    def tick(self) -> tuple[bytes, list[Send | Resubmit | Stop]]:
        """One beat now, whatever the clock says (as a period passing would)."""
        payload, actions = self.hub.tick(self.now)
        return payload, self.perform(actions)

    def probe(self) -> tuple[bytes, list[Send | Resubmit | Stop]]:
        payload, actions = self.hub.probe(self.now)
        return payload, self.perform(actions)

    def wake(self) -> tuple[list[bytes], list[Send | Resubmit | Stop]]:
        """What the shell's timer does when :meth:`Hub.next_deadline` comes."""
        pings, actions = self.hub.wake(self.now)
        return pings, self.perform(actions)

    def advance_to_deadline(self) -> tuple[list[bytes], list[Send | Resubmit | Stop]]:
        """Move the clock to the Hub's next deadline and wake it there."""
        self.now = max(self.now, self.hub.next_deadline(self.now))
        return self.wake()
