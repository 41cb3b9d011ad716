"""What an AsyncResult's parts ended with, and how they are gathered (corral.client.asyncresult).

A part's outcome is its value or a :class:`Failure` standing for the exception it raised (a
value may itself be an exception object, so failures are wrapped); :func:`collect_outcomes`
turns the outcomes of a call to several engines into its values, or raises as ipyparallel
does. :class:`SentEvent` is the Event-like view of a tracked send behind ``ar.sent``.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any, Final

import zmq

from corral.client.mapping import part_items
from corral.errors import RemoteError, collect_exceptions

_FINISHED: Final = "FINISHED"  # concurrent.futures' state of a future with a result or an error


class SentEvent:
    """An Event-like view of a MessageTracker (``wait``, ``is_set``): waiting for a tracked
    send blocks the waiter only, with no thread watching the tracker meanwhile."""

    __slots__ = ("_tracker",)

    def __init__(self, tracker: zmq.MessageTracker) -> None:
        self._tracker = tracker

    def is_set(self) -> bool:
        return bool(self._tracker.done)

    def wait(self, timeout: float | None = None) -> bool:
        try:
            self._tracker.wait(-1 if timeout is None else timeout)
        except zmq.NotDone:
            return False
        return True


class Failure:
    """An exception standing in a list of outcomes (a result value may itself be one)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def outcome_of(child: futures.Future[Any]) -> Any:
    """A done part's value, or its error as a :class:`Failure`. A finished future's fields
    never change again, so they are read without taking its lock twice (``exception()`` then
    ``result()``); a cancelled one raises CancelledError, as ``exception()`` does."""
    if child._state == _FINISHED:
        error = child._exception
        return Failure(error) if error is not None else child._result
    error = child.exception()
    return Failure(error) if error is not None else child.result()


def collect_outcomes(outcomes: list[Any], fname: str, return_exceptions: bool = False) -> list[Any]:
    """Values in order; remote errors raised as one CompositeError (even a single one, as
    ipyparallel does for calls to several engines), a client-side failure (the client
    closed, bytes that do not deserialize) raised first. ``return_exceptions``: errors stand
    in place of their values instead."""
    failures = [o.error for o in outcomes if isinstance(o, Failure)]
    if not failures:
        return outcomes
    if return_exceptions:
        return [o.error if isinstance(o, Failure) else o for o in outcomes]
    for error in failures:
        if not isinstance(error, RemoteError):
            raise error
    return collect_exceptions(failures, fname)  # raises: failures is not empty


def items_of(part: Any) -> Iterator[Any]:
    """The items of one part of a map or gather, as its joined result holds them
    (:func:`corral.client.mapping.part_items`)."""
    yield from part_items(part)
