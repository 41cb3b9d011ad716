"""Tables that remember only their latest entries: trimming the oldest in one pass.

A ``dict`` whose values are ``None`` serves as an ordered set (insertion order, O(1) lookups);
the Hub remembers the msg_ids of its latest purges and the results to drop once recorded
(``corral.controller.hub_queries``), a client the msg_ids it purged from the Hub
(``corral.client.queries``). Both trim the same way, here.
"""

from __future__ import annotations

from itertools import islice

__all__ = ["drop_oldest"]


def drop_oldest(table: dict[str, None], limit: int) -> None:
    """Trim ``table`` (oldest first) to ``limit`` entries, in one pass: deleting its first key
    again and again walks the deleted slots before it each time (quadratic for many)."""
    excess = len(table) - limit
    if excess > 0:
        for key in list(islice(table, excess)):
            del table[key]
