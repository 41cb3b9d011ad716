"""The mapping both of the client's msg_id tables are (sans-I/O): their entries kept as the
records wrote them (a compact tuple or the full object), read through the table.

:class:`~corral.client.metadata_table.MetadataTable` and
:class:`~corral.client.future_table.FutureTable` keep a request's metadata and its future
compact until read (one object fewer, or none, for the collector per held result); what each
entry becomes when read is theirs, the plain mapping around ``entries`` is this class's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, TypeVar

__all__ = ["EntryTable"]

V = TypeVar("V")


class EntryTable(MutableMapping[str, V]):
    """msg_id -> an entry kept in ``entries`` as written (subclasses say how one is read:
    ``__getitem__``). ``lock`` (reentrant, the records') orders the changes of an entry's
    form."""

    def __init__(self, lock: Any) -> None:
        self.entries: dict[str, Any] = {}
        self.lock = lock

    def __setitem__(self, msg_id: str, value: V) -> None:
        self.entries[msg_id] = value

    def __delitem__(self, msg_id: str) -> None:
        del self.entries[msg_id]

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.entries))  # a snapshot: the client's threads add entries

    def __len__(self) -> int:
        return len(self.entries)

    def __eq__(self, other: object) -> bool:
        """Equal to a mapping with the same items, each read through the table."""
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
