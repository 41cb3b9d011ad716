"""``Client.results`` and ``Client.metadata``: the client's caches as ipyparallel users see them.

ipyparallel's rule for an *owning* AsyncResult (every one a view returns, and
``Client.get_result``'s by default): once it is done it takes its results and metadata out of
the client's caches and keeps them itself, so ``msg_id in client.results`` is then false and
``client.metadata[msg_id]`` reads as empty. Its programs and tests rely on that.

corral's records (:class:`~corral.client.records.Records`) keep each request while any
AsyncResult holds it and forget it when the last one is garbage; the AsyncResults, the
client-side dependency checks and ``get_result`` read them there. So taking is a mark, not a
move: :meth:`Records.take` marks the requests an owner finished, and the two mappings here show
the records without them. Memory is the same either way (the owner holds the values); what a
user of ``client.results`` sees is ipyparallel's.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from corral.client.records import Metadata

if TYPE_CHECKING:
    from corral.client.records import Records

__all__ = ["MetadataCache", "ResultsCache"]


class ResultsCache(MutableMapping[str, Any]):
    """msg_id -> result value (or the RemoteError it raised), for the requests no owning
    AsyncResult has taken. Deleting an entry forgets it here only; its AsyncResults keep it."""

    def __init__(self, records: Records) -> None:
        self._records = records

    def _table(self) -> MutableMapping[str, Any]:
        return self._records.results

    def _visible(self, msg_id: object) -> bool:
        return not self._records.is_taken(msg_id)

    def __getitem__(self, msg_id: str) -> Any:
        if not self._visible(msg_id):
            raise KeyError(msg_id)
        return self._table()[msg_id]

    def __setitem__(self, msg_id: str, value: Any) -> None:
        self._table()[msg_id] = value
        self._records.untake(msg_id)  # written back: the client holds it again

    def __delitem__(self, msg_id: str) -> None:
        if not self._visible(msg_id):
            raise KeyError(msg_id)
        del self._table()[msg_id]

    def __contains__(self, msg_id: object) -> bool:
        return self._visible(msg_id) and msg_id in self._table()

    def __iter__(self) -> Iterator[str]:
        # a snapshot: the client's threads add entries while a user iterates
        return iter([msg_id for msg_id in list(self._table()) if self._visible(msg_id)])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def copy(self) -> dict[str, Any]:
        return dict(self.items())

    def __repr__(self) -> str:
        return repr(self.copy())


class MetadataCache(ResultsCache):
    """msg_id -> :class:`~corral.client.records.Metadata`; as ipyparallel's, a msg_id it does
    not hold (unknown, or taken by its owner) reads as empty metadata."""

    def _table(self) -> MutableMapping[str, Any]:
        return self._records.metadata

    def __getitem__(self, msg_id: str) -> Any:
        if not self._visible(msg_id):
            return Metadata()
        return self._table()[msg_id]  # unknown ids read as empty (MetadataTable)
