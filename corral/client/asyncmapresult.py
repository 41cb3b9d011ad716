"""AsyncMapResult: the future of a map, scatter-gather or parallel call.

An :class:`~corral.client.asyncresult.AsyncResult` over one request per part, completed as
that module says, whose value is the parts joined back into one sequence, in order
(:func:`corral.client.mapping.join`), and whose items can be had one by one as their part
arrives, in submission or in completion order. Kept apart from :mod:`.asyncresult`, which
holds what every submission's future does (and still exports this class, as ipyparallel's
``asyncresult`` module does), because joining parts and counting items is a map's alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import TYPE_CHECKING, Any

import zmq

from corral.client.asyncresult import AsyncResult
from corral.client.mapping import join
from corral.client.outcomes import Failure, collect_outcomes, items_of, outcome_of
from corral.client.records import Records
from corral.errors import RemoteError, collect_exceptions

if TYPE_CHECKING:
    from corral.client.submitter import Submitter

__all__ = ["AsyncMapResult"]


class AsyncMapResult(AsyncResult):
    """The result of a map, scatter-gather or parallel call: one request per part.

    The result is the parts joined in order. Iterating yields single items as their part
    arrives: in submission order (``ordered=True``) or in completion order.
    """

    _joins_cheaply = False

    def __init__(
        self,
        records: Records,
        msg_ids: Sequence[str],
        *,
        fname: str = "map",
        ordered: bool = True,
        client: Submitter | None = None,
        joiner: Callable[[Sequence[Any]], Any] = join,
        item_counts: Sequence[int] | None = None,
        return_exceptions: bool = False,
        trackers: Sequence[zmq.MessageTracker] = (),
    ) -> None:
        self.ordered = ordered
        self._joiner = joiner
        self._item_counts = list(item_counts) if item_counts is not None else None
        super().__init__(
            records,
            msg_ids,
            fname=fname,
            client=client,
            return_exceptions=return_exceptions,
            trackers=trackers,
        )

    def _reduce(self, outcomes: list[Any]) -> Any:
        parts = collect_outcomes(outcomes, self._fname, self._return_exceptions)
        return self._joiner([self._part(index, part) for index, part in enumerate(parts)])

    def _part(self, index: int, part: Any) -> Any:
        """A failed part, with ``return_exceptions``, as its error once per item."""
        if isinstance(part, BaseException):
            count = self._item_counts[index] if self._item_counts is not None else 1
            return [part] * count
        return part

    def _with_exceptions(self) -> Any:
        outcomes = [outcome_of(child) for child in self._children]
        parts = [o.error if isinstance(o, Failure) else o for o in outcomes]
        return self._joiner([self._part(index, part) for index, part in enumerate(parts)])

    def __len__(self) -> int:
        if self._item_counts is None:
            return len(self.msg_ids)
        return sum(self._item_counts)

    @property
    def progress(self) -> int:
        if self._item_counts is None:
            return super().progress
        return sum(
            count
            for count, child in zip(self._item_counts, self._children, strict=True)
            if child.done()
        )

    def split(self) -> tuple[AsyncResult, ...]:
        """One (plain) AsyncResult per request: its part of the map, as a list."""
        return tuple(
            AsyncResult(
                self._records, [msg_id], fname=self._fname, client=self._client, owner=False
            )
            for msg_id in self.msg_ids
        )

    def __iter__(self) -> Iterator[Any]:
        children = self._children if self.ordered else self._in_completion_order()
        for index, child in enumerate(children):
            error = self._wait_child(child).exception()
            if error is not None and self._return_exceptions:
                count = self._item_counts[index] if self._item_counts and self.ordered else 1
                yield from [error] * count
                continue
            if isinstance(error, RemoteError):
                collect_exceptions([error], self._fname)  # raises a CompositeError
            yield from items_of(child.result())

    def _in_completion_order(self) -> Iterator[futures.Future[Any]]:
        """The requests as they finish; ConnectionError if the controller stays away."""
        if self._client is None:
            yield from futures.as_completed(self._children)
            return
        remaining = list(self._children)
        while remaining:
            self._client.wait_for_futures(remaining, None, f"{self._fname}: waiting", any_done=True)
            finished = [child for child in remaining if child.done()]
            remaining = [child for child in remaining if child not in finished]
            yield from finished

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            return self._metadata_values(key)
        return self.get()[key]
