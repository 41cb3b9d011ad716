"""``concurrent.futures.Executor`` over a view, so code written for executors runs on a cluster.

``view.executor`` (and ``rc.executor()``, over a load-balanced view) gives a
:class:`ViewExecutor`. Its futures are the view's :class:`~corral.client.asyncresult.AsyncResult`
objects, already real ``concurrent.futures.Future`` instances, so ``wait``, ``as_completed``
and ``asyncio.wrap_future`` work on them unchanged. ``map`` sends one task per ``chunksize``
items (the executor protocol's meaning of ``chunksize``) instead of one per item.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import TYPE_CHECKING, Any

from corral.errors import TimeoutError

if TYPE_CHECKING:
    from corral.client.asyncresult import AsyncResult
    from corral.client.view import View

__all__ = ["ViewExecutor"]


class ViewExecutor(futures.Executor):
    """An Executor whose work runs on the engines of ``view``.

    ``shutdown(wait=True)`` waits for every task this executor submitted;
    ``cancel_futures=True`` aborts those not finished yet (queued ones never start, a running
    one is interrupted, each fails with TaskAborted). After shutdown, ``submit`` and ``map``
    raise RuntimeError, as for every Executor. The view and its client stay usable.
    """

    def __init__(self, view: View) -> None:
        self.view = view
        self._lock = threading.Lock()
        self._shutdown = False
        self._submitted: list[AsyncResult] = []

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "running"
        return f"<ViewExecutor over {self.view!r}: {state}>"

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _remember(self, result: AsyncResult) -> None:
        with self._lock:
            self._submitted = [r for r in self._submitted if not r.done()]
            self._submitted.append(result)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> AsyncResult:
        """Run ``fn(*args, **kwargs)`` on the view's engine(s); its AsyncResult at once."""
        with self._lock:
            self._check_open()
        result = self.view.apply_async(fn, *args, **kwargs)
        self._remember(result)
        return result

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """Results of ``fn`` over the zipped ``iterables``, in order, as they arrive.

        All tasks are submitted before this returns, ``chunksize`` items per task; iterating
        raises the first remote error met, and TimeoutError if a result is not ready within
        ``timeout`` seconds of this call (the work goes on). ``buffersize`` (Python 3.14's
        bounded submission) is not supported here: everything is submitted at once.
        """
        if buffersize is not None:
            raise ValueError("ViewExecutor.map submits everything at once: buffersize is not used")
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, not {chunksize!r}")
        with self._lock:
            self._check_open()
        sequences = [list(iterable) for iterable in iterables]
        length = min((len(seq) for seq in sequences), default=0)
        sequences = [seq[:length] for seq in sequences]
        if length == 0:
            return iter(())
        deadline = None if timeout is None else time.monotonic() + timeout
        result = self.view.map_async(fn, *sequences, chunksize=chunksize)
        self._remember(result)
        return _results(result, deadline, timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work; abort unfinished work if ``cancel_futures``; wait if ``wait``."""
        with self._lock:
            self._shutdown = True
            submitted = list(self._submitted)
        if cancel_futures:
            for result in submitted:
                if not result.done():
                    result.abort()
        if wait:
            futures.wait(submitted)


def _results(result: AsyncResult, deadline: float | None, timeout: float | None) -> Iterator[Any]:
    """Each item of a map's result in order; the wait bounded by the map's deadline."""
    for child in result._children:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            part = child.result(left)
        except futures.TimeoutError:
            raise TimeoutError(
                f"map: results not ready within {timeout} s; the work goes on"
            ) from None
        yield from part
