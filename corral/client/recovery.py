"""Requests in flight across a controller outage: what to ask the Hub, what to give up on.

When the controller dies, a reply on its way can miss this client: the engine keeps it and
sends it again to the restarted controller, which records it, but forwards it to the client
only if the client's own connection is back by then. So after reconnecting, the client asks the
Hub about every request still unanswered here, and keeps asking (every ``RECOVERY_PERIOD``
seconds) until each is settled: completed at the Hub (the result is fetched from there),
answered directly meanwhile, or unknown to the Hub ``UNKNOWN_CHECKS`` times in a row (the
controller died before it recorded the request, which then never reached an engine). A
load-balanced request lost that way, or one the restarted Hub marks lost because it waited in
the old task scheduler, is sent again (see :class:`Resender`); a direct one fails with
ConnectionError, to be submitted again, or with EngineError when it went straight to an engine
the restarted controller does not list either (the engine, not a record, is what is gone:
``corral.client.link``). The decisions are here, without sockets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from corral.kept_frames import KeptFrames, compact, expand
from corral.protocol.messages import RESENDABLE, RESENT
from corral.protocol.session import Frame, Message, Session

__all__ = ["RECOVERY_PERIOD", "RESENDABLE", "Plan", "Recovery", "Resender"]

RECOVERY_PERIOD: Final = 1.0  # seconds between questions to the Hub after an outage
UNKNOWN_CHECKS: Final = 3  # answers without a record before a request counts as lost


@dataclass(frozen=True)
class Plan:
    """What one Hub answer means: results to fetch, requests lost, and whether to ask again."""

    fetch: list[str]
    lost: list[str]
    ask_again: bool


@dataclass
class Recovery:
    """The requests still unanswered when the link to the controller came back."""

    unknown_checks: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, msg_ids: Iterable[str]) -> Recovery:
        return cls({msg_id: 0 for msg_id in msg_ids})

    def to_ask(self, unanswered: Iterable[str]) -> list[str]:
        """Those to ask about; forget the ones answered here meanwhile."""
        still = set(unanswered)
        for msg_id in [m for m in self.unknown_checks if m not in still]:
            del self.unknown_checks[msg_id]
        return list(self.unknown_checks)

    def answered(self, statuses: Mapping[str, str]) -> Plan:
        """The Hub's status of each record it has (``msg_id -> status``)."""
        fetch: list[str] = []
        lost: list[str] = []
        for msg_id in list(self.unknown_checks):
            status = statuses.get(msg_id)
            if status is None:
                self.unknown_checks[msg_id] += 1
                if self.unknown_checks[msg_id] >= UNKNOWN_CHECKS:
                    lost.append(msg_id)
                    del self.unknown_checks[msg_id]
            elif status == "pending":
                self.unknown_checks[msg_id] = 0
            else:
                fetch.append(msg_id)
                del self.unknown_checks[msg_id]
        return Plan(fetch, lost, bool(self.unknown_checks))


RESEND_LIMIT: Final = 3  # times one load-balanced request is sent again after restarts lost it


@dataclass
class Resender:
    """The load-balanced requests this client may send again, held until each is answered.

    A task waiting in the task scheduler when the controller dies is gone with it; so is one
    the dead controller never recorded. Only the client still has the request (the Hub records
    requests without their buffers), so it keeps each unanswered load-balanced request and
    sends it once more, up to ``RESEND_LIMIT`` times, when the restarted Hub marks it lost
    (``RESENDABLE``) or has no record of it. Its msg_id stays the same, so the caller's
    AsyncResult simply completes. Direct requests are not held: their engine may have run them.

    A request is held as the frames it was sent as (from its signature on), compact
    (:mod:`corral.kept_frames`: its small frames joined in one exact-size ``bytes``, where
    orjson's frames each held a 4 KiB buffer): of ``bytes`` and ints only, the cyclic
    collector stops tracking it at its first look, where the decoded request (a ``Message``
    and its buffers' tuple) stayed on its lists, one more object per task in flight to walk
    at every collection and to count towards the next full one. The few requests sent again
    are decoded again.
    """

    held: dict[str, KeptFrames] = field(default_factory=dict)
    # msg_id -> times sent again, for the few held requests sent again: kept apart so that
    # holding one (every load-balanced task) costs a dict entry, no tuple for the collector
    resent: dict[str, int] = field(default_factory=dict)

    def hold(self, msg_id: str, frames: Sequence[Frame]) -> None:
        """Keep ``frames``, a request's signed frames from its signature on (no routing
        identities, no delimiter: what :meth:`Session.deserialize` reads)."""
        self.held[msg_id] = compact(frames)

    def release(self, msg_id: str) -> None:
        self.held.pop(msg_id, None)
        if self.resent:
            self.resent.pop(msg_id, None)

    def take(self, msg_id: str, session: Session) -> Message | None:
        """The request to send again, decoded by ``session`` (which signed it), or None (not
        held, or sent too often already). Its metadata counts the times it was sent again
        (``RESENT``), which gives it a new signature: an engine that received the first copy
        (from a scheduler a restart killed) and no longer holds it would otherwise drop it
        as a replay, and the task would wait for ever for a reply no engine will send."""
        frames = self.held.get(msg_id)
        sent = self.resent.get(msg_id, 0) + 1
        if frames is None or sent > RESEND_LIMIT:
            return None
        # not verified (this client signed it) and not recorded: it is signed anew
        request = session.deserialize(expand(frames), verify=False)
        self.resent[msg_id] = sent
        return replace(request, metadata={**request.metadata, RESENT: sent})
