"""Every request's future, a settled one kept compact once nothing else holds it (sans-I/O).

A client holding its results keeps, per held task, its AsyncResult and its request's future
(:class:`~corral.client.requestfuture.RequestFuture`): two objects the cyclic collector tracks,
and walks at every full collection, which come the more often the more a program holds (a
client submitting and holding 100,000 no-ops spent about 12 us of CPU per task in its
collections, ``bench/README.md``, round seventeen). Once a request is settled and the one
AsyncResult over it alone has finished (it keeps its own outcome and lets its request's
future go), the records are the future's only holder, and all they still need of it is its
outcome and two marks. So :meth:`FutureTable.compact` puts a plain tuple in its place (the
outcome, whether it failed, the two marks): the collector stops tracking such a tuple at its
first look when the value is a number, a string, bytes, None or an array, which is what
most tasks return.

Reading an entry (``records.futures[msg_id]``, ``get``, iteration) gives a future as before: a
compact entry becomes a settled :class:`RequestFuture` again, stored in its place, so every
later read gets that one. The records read the two marks and whether a request is done
without building it (:meth:`FutureTable.is_done`, :meth:`FutureTable.mark`).
"""

from __future__ import annotations

from typing import Any

from corral.client.entry_table import EntryTable
from corral.client.requestfuture import Offload, RequestFuture, settled_future

__all__ = ["FutureTable", "OUTCOME", "FAILED", "TAKEN", "STREAMS_FINAL"]

# a compact entry's fields, by position
OUTCOME, FAILED, TAKEN, STREAMS_FINAL = range(4)


class FutureTable(EntryTable[RequestFuture]):
    """msg_id -> :class:`RequestFuture`, a settled one possibly compact (see the module doc).

    ``entries`` is the table itself: a RequestFuture or a compact tuple per msg_id. ``lock``
    (the records' futures' lock, reentrant) orders the changes of an entry's form and marks.
    """

    def __init__(self, offload: Offload, lock: Any) -> None:
        super().__init__(lock)
        self._offload = offload

    # ------------------------------------------------------------------ the records' side

    def compact(self, msg_id: str, future: RequestFuture, value: Any, failed: bool) -> None:
        """``future`` (the entry of ``msg_id``, settled with ``value``) is held by nothing
        else now: keep its outcome and marks in its place, unless the entry changed."""
        entries = self.entries
        with self.lock:
            if entries.get(msg_id) is future:
                entries[msg_id] = (value, failed, future.taken, future.streams_final)

    def is_done(self, msg_id: str) -> bool | None:
        """Whether the request ``msg_id`` is settled; None if the table has no entry."""
        entry = self.entries.get(msg_id)
        if entry is None:
            return None
        if type(entry) is tuple:
            return True
        done: bool = entry.done()
        return done

    def marks(self, msg_id: str) -> tuple[bool, bool] | None:
        """``(taken, streams_final)`` of ``msg_id``'s entry, or None if it has none."""
        entry = self.entries.get(msg_id)
        if entry is None:
            return None
        if type(entry) is tuple:
            return entry[TAKEN], entry[STREAMS_FINAL]
        return entry.taken, entry.streams_final

    def mark(self, msg_id: str, *, taken: bool | None = None, final: bool | None = None) -> None:
        """Set the ``taken`` and/or ``streams_final`` mark of ``msg_id``'s entry, if any."""
        entries = self.entries
        with self.lock:
            entry = entries.get(msg_id)
            if entry is None:
                return
            if type(entry) is tuple:
                value, failed, was_taken, was_final = entry
                entries[msg_id] = (
                    value,
                    failed,
                    was_taken if taken is None else taken,
                    was_final if final is None else final,
                )
                return
            if taken is not None:
                entry.taken = taken
            if final is not None:
                entry.streams_final = final

    def _future(self, msg_id: str, entry: Any) -> RequestFuture:
        """The future of a compact ``entry``, stored in its place (under the lock, so two
        threads reading it at once get one future)."""
        with self.lock:
            current = self.entries.get(msg_id)
            if type(current) is not tuple:
                if current is None:  # forgotten meanwhile: a future all the same
                    return self._settled(entry)
                return current  # type: ignore[no-any-return]
            future = self._settled(current)
            self.entries[msg_id] = future
            return future

    def _settled(self, entry: tuple[Any, ...]) -> RequestFuture:
        future = settled_future(self._offload, self.lock, entry[OUTCOME], entry[FAILED])
        future.taken = entry[TAKEN]
        future.streams_final = entry[STREAMS_FINAL]
        return future

    # ------------------------------------------------------------------ a mapping of futures

    def get(self, msg_id: str, default: Any = None) -> Any:
        entry = self.entries.get(msg_id)
        if entry is None:
            return default
        if type(entry) is tuple:
            return self._future(msg_id, entry)
        return entry

    def __getitem__(self, msg_id: str) -> RequestFuture:
        future = self.get(msg_id)
        if future is None:
            raise KeyError(msg_id)
        return future  # type: ignore[no-any-return]

    def setdefault(self, msg_id: str, default: RequestFuture | None = None) -> RequestFuture:
        """As a dict's (never None: the records always give a future)."""
        assert default is not None
        with self.lock:
            entry = self.entries.setdefault(msg_id, default)
        if type(entry) is tuple:
            return self._future(msg_id, entry)
        return entry  # type: ignore[no-any-return]

    def pop(self, msg_id: str, *default: Any) -> Any:
        entry = self.entries.pop(msg_id, None)
        if entry is None:
            if default:
                return default[0]
            raise KeyError(msg_id)
        if type(entry) is tuple:
            return self._settled(entry)
        return entry

    def __repr__(self) -> str:
        return f"FutureTable({len(self.entries)} requests)"
