"""Requests in flight across a controller outage: what to ask the Hub, what to give up on.

When the controller dies, a reply on its way can miss this client: the engine keeps it and
sends it again to the restarted controller, which records it, but forwards it to the client
only if the client's own connection is back by then. So after reconnecting, the client asks the
Hub about every request still unanswered here, and keeps asking (every ``RECOVERY_PERIOD``
seconds) until each is settled: completed at the Hub (the result is fetched from there),
answered directly meanwhile, or unknown to the Hub ``UNKNOWN_CHECKS`` times in a row (the
controller died before it recorded the request, which then never reached an engine: it fails
with ConnectionError, to be submitted again). The decisions are here, without sockets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

RECOVERY_PERIOD = 1.0  # seconds between questions to the Hub after an outage
UNKNOWN_CHECKS = 3  # answers without a record before a request counts as lost


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
