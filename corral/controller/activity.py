"""What the cluster did lately: task counts and a bounded log of recent completions.

The Hub feeds it on every request and reply it records (a counter and a deque append: nothing
that costs a task measurable time) and answers ``status_request`` from it, so a live view
(the dashboard) learns tasks/s, failures and the timeline of each engine from small
incremental replies instead of querying the store every second.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

RECENT = 20_000  # completions kept; a reader polling once a second never falls this far behind
MAX_ANSWER = 5_000  # completions in one answer (the newest, when more are waiting)


@dataclass
class Activity:
    """Counts since the Hub started, and the last ``capacity`` completions, numbered.

    Each completion gets the next sequence number; a reader passes the last number it has seen
    (``since``) and gets only what came after it. ``lost`` tells the reader how many it missed
    when it fell further behind than the log (or one answer) holds.
    """

    capacity: int = RECENT
    submitted: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    seq: int = 0
    recent: deque[list[Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.capacity)

    def submit(self) -> None:
        self.submitted += 1

    def complete(
        self,
        msg_id: str,
        engine_id: object,
        status: str,
        started: object,
        completed: object,
    ) -> None:
        """A task was answered (by its engine, or by the scheduler or Hub on its behalf).
        ``engine_id``, ``started`` and ``completed`` are logged as given: an int and two ISO
        dates, or None, from the Hub's records, but as a reply's metadata said when the Hub
        does not know its engine (compiled, an annotation is checked at the call)."""
        self.counts[status] = self.counts.get(status, 0) + 1
        self.seq += 1
        self.recent.append([self.seq, msg_id, engine_id, status, started, completed])

    def since(self, seq: int, limit: int = MAX_ANSWER) -> dict[str, Any]:
        """Counts, the current sequence number, and the completions numbered above ``seq``
        (at most ``limit``, the newest), as JSON-ready values."""
        seq = max(0, min(seq, self.seq))
        waiting = self.seq - seq
        available = min(waiting, len(self.recent), limit)
        tail = list(islice(reversed(self.recent), available))[::-1]
        return {
            "seq": self.seq,
            "submitted": self.submitted,
            "counts": dict(self.counts),
            "recent": tail,
            "lost": waiting - available,
        }
