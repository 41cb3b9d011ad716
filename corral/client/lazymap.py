"""``imap``: a lazy map over possibly endless iterables, with a bounded window in flight."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any

from corral.client.asyncresult import AsyncResult

__all__ = ["LazyMap"]


class LazyMap:
    """Results of ``submit(args)`` for each tuple of ``zip(*iterables)``, as they are asked
    for: at most ``limit`` submissions are in flight, in submission order (``ordered``) or in
    completion order. ``cancel()`` stops submitting (what is in flight still runs).
    ``return_exceptions``: a failed element yields its error instead of raising it."""

    def __init__(
        self,
        submit: Callable[[tuple[Any, ...]], AsyncResult],
        iterables: Iterable[Iterable[Any]],
        limit: int,
        ordered: bool,
        return_exceptions: bool,
    ) -> None:
        self._submit = submit
        self._source: Iterator[tuple[Any, ...]] = zip(*iterables)  # noqa: B905 - like map
        self._limit = limit
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._window: collections.deque[AsyncResult] = collections.deque()
        self._cancelled = False

    def cancel(self) -> None:
        """Submit nothing more; results already in flight can still be read."""
        self._cancelled = True

    def __iter__(self) -> LazyMap:
        return self

    def _fill(self) -> None:
        while not self._cancelled and len(self._window) < self._limit:
            try:
                args = next(self._source)
            except StopIteration:
                self._cancelled = True
                return
            self._window.append(self._submit(args))

    def __next__(self) -> Any:
        self._fill()
        if not self._window:
            raise StopIteration
        if self._ordered:
            result = self._window.popleft()
        else:
            done, _ = futures.wait(self._window, return_when=futures.FIRST_COMPLETED)
            result = next(r for r in self._window if r in done)
            self._window.remove(result)
        value = result.get(return_exceptions=self._return_exceptions)
        self._fill()
        return value
