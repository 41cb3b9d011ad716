"""AsyncResult: the future every submission returns (a map's is its subclass AsyncMapResult,
in :mod:`corral.client.asyncmapresult`, importable from here as well).

An AsyncResult is a ``concurrent.futures.Future`` over one or more requests (one per engine of
a direct call, one per chunk of a map). The client's I/O thread completes each request's own
future; when the last one is done this object completes too, with:

- a single-target call: the value, or the RemoteError it raised;
- a multi-target call: the list of values in target order; one failure raises that
  RemoteError, several raise a CompositeError holding each;
- a map (:class:`~corral.client.asyncmapresult.AsyncMapResult`): the parts joined back into one
  sequence, in order (:func:`corral.client.mapping.join`).

Because it is a real Future it works with ``concurrent.futures.wait``/``as_completed``, with
``await`` in asyncio, and with ``add_done_callback``. Done-callbacks added to an AsyncResult of
a client run on that client's callbacks thread (:mod:`corral.client.completion`), one after
another: a callback that blocks delays later callbacks, never another result or the routing
of replies. Blocking calls take a timeout and raise
:class:`corral.errors.TimeoutError`; the work itself goes on.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent import futures
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import zmq

from corral.client.metadata import METADATA_DEFAULTS
from corral.client.outcomes import (
    Failure,
    SentEvent,
    collect_outcomes,
    outcome_of,
)
from corral.client.records import Records, settle
from corral.client.requestfuture import LightFuture, RequestFuture, lighten
from corral.client.resultinfo import ResultInfo
from corral.errors import NotReady, TimeoutError

if TYPE_CHECKING:
    from corral.client.asyncmapresult import AsyncMapResult as AsyncMapResult
    from corral.client.outputs import OutputStreamer
    from corral.client.submitter import Submitter

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "AsyncHubResult",
    "AsyncMapResult",
    "AsyncResult",
]


def __getattr__(name: str) -> Any:
    """``AsyncMapResult``, defined in :mod:`corral.client.asyncmapresult` (a subclass of
    AsyncResult, so imported from there only when asked for) and importable from here, as
    from ipyparallel's ``asyncresult``."""
    if name == "AsyncMapResult":
        from corral.client.asyncmapresult import AsyncMapResult

        return AsyncMapResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_FINISHED = "FINISHED"  # concurrent.futures' state of a future with a result or an error
_DONE_TRACKER = zmq.MessageTracker()  # nothing to watch: sent as soon as handed over


def _call(fn: Callable[[futures.Future[Any]], object], done: futures.Future[Any]) -> None:
    fn(done)


def _forever(timeout: float | None) -> bool:
    return timeout is None or timeout < 0


class AsyncResult(ResultInfo, LightFuture):
    """The pending result of one submission (see the module doc for what it resolves to).

    ``msg_ids`` are the requests behind it; ``metadata`` is one :class:`Metadata` per request
    (just one for a single-target call) with the engine, times and captured output.
    """

    _joins_cheaply = True  # finishing it is cheap enough for the I/O thread (not a map's join)

    def __init__(
        self,
        records: Records,
        msg_ids: Sequence[str],
        *,
        fname: str = "unknown",
        single: bool = False,
        client: Submitter | None = None,
        owner: bool = True,
        return_exceptions: bool = False,
        trackers: Sequence[zmq.MessageTracker] = (),
    ) -> None:
        try:
            ids = tuple(msg_ids)
            count = len(ids)
            if single and count != 1:
                raise ValueError(f"a single result needs exactly one msg_id, got {count}")
            self._ids = ids
            self._msg_id_list: list[str] | None = None  # ``msg_ids``, made when first read
            futures_of = records.futures
            # one request's future is kept as it is, without a list (see ``_children``)
            only = futures_of[ids[0]] if count == 1 else None
            many = None if count == 1 else [futures_of[msg_id] for msg_id in ids]
        except BaseException:
            lighten(self)  # a future still, for whoever shows it in a traceback
            raise
        self._only: RequestFuture | None = only
        self._many: list[RequestFuture] | None = many
        # in place of Future.__init__ (ResultInfo has no __init__); over one request, with
        # that request's lock (see lighten)
        lighten(self, None if only is None else only._condition)
        self._records = records
        self._client = client
        self._fname = fname
        self._single = single
        self.owner = owner
        self._return_exceptions = return_exceptions
        self._tracker = zmq.MessageTracker(*trackers) if trackers else _DONE_TRACKER
        records.hold(ids)
        self._held: tuple[str, ...] | None = ids  # released by ``__del__``
        # parts may finish on several threads at once; one part needs no lock
        self._lock = threading.Lock() if count > 1 else None
        self._remaining = count
        self._link: _ChildLink | None = None
        if not count:
            self._finish()
            return
        # a part settled on the client's I/O thread may finish this result there: cheap, no
        # user code runs (its own callbacks are handed to the callbacks thread); a map's join
        # of its parts may take long: its parts are settled on the results thread, as before
        inline = client is not None and self._joins_cheaply
        if inline and only is not None and only.attach(self):
            return  # told by the request's future itself (forgotten once told): no link
        children = [only] if only is not None else many or []
        # The children reach this object only through ``link``, emptied once it is finished:
        # a finished AsyncResult nobody holds is then garbage, and its records are released.
        link = self._link = _ChildLink(self)
        for child in children:
            if not inline:
                child.allow_inline = False
            child.add_done_callback(link, inline=inline)

    @property
    def msg_ids(self) -> list[str]:
        """The msg_ids of its requests, in order: one list, made when first read (most
        results are never asked), so that a held result is one object fewer for the cyclic
        collector (see ``_children``)."""
        listed = self._msg_id_list
        if listed is None:
            listed = self._msg_id_list = list(self._ids)
        return listed

    @property
    def _children(self) -> Sequence[LightFuture]:
        """The futures of its requests, in order. One request's (nearly every ``apply``) is
        held alone and shown in a tuple made when asked: a list per result was one more
        object per held task for the cyclic collector to walk (it walks every held result
        at each full collection, and those come more often the more a task leaves alive)."""
        only = self._only
        if only is not None:
            return (only,)
        many = self._many
        if many is None:  # one request's, let go once finished: this result has its outcome
            return (self,)
        return many

    @property
    def reply_channel(self) -> str | None:
        """The socket its first unanswered request's reply comes on (see LightFuture)."""
        for child in self._children:
            if child is not self and not child.done():
                return child.reply_channel
        return None

    def __del__(self) -> None:
        """Garbage: the records of its requests may go (applied later, see Records.release).
        Cheaper than a ``weakref.finalize`` per result, and as safe: it only queues."""
        held = getattr(self, "_held", None)  # None if __init__ raised before holding
        if held is not None:
            self._held = None
            self._records.release(held)

    # ------------------------------------------------------------------ completion

    def add_done_callback(self, fn: Callable[[futures.Future[Any]], object]) -> None:
        """Call ``fn(self)`` once this is done: at once on this thread if it is done already,
        else on the client's callbacks thread (see the module doc)."""
        if self._client is None or self.done():
            super().add_done_callback(fn)
            return
        run = self._client.run_callback

        def hand_over(done: futures.Future[Any]) -> None:
            run(lambda: _call(fn, done))

        super().add_done_callback(hand_over)

    def _child_done(self) -> None:
        if self._lock is None:
            self._finish()
            return
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self._finish()

    def _finish(self) -> None:
        link = self._link
        if link is not None:  # None while __init__ finishes a result without parts
            link.result = None
            self._link = None
        child = self._only
        if self.owner:  # before it completes: whoever it wakes sees the client's caches without
            if child is not None:  # them, as ipyparallel's owner (client/cache.py); one
                child.taken = True  # request's mark set on its future, the records' entry
            else:
                self._records.take(self._ids)
        if self._single and child is not None and child._state == _FINISHED:
            # what _reduce makes of one part, without its steps; then the part is let go (its
            # outcome is this result's own): the records may keep it compact, and a held
            # result is one object for the cyclic collector, not two (corral.client.future_table)
            error = child._exception
            value = child._result
            child.let_go = True
            if error is not None:
                settle(self, error, failed=True)
            else:
                settle(self, value, failed=False)
            # only now: a thread waiting in get() may read ``reply_channel`` at any moment, and
            # without ``_only`` an unsettled result was its own child (endless recursion)
            self._only = None
            return
        try:
            value = self._reduce([outcome_of(child) for child in self._children])
        except BaseException as exc:  # noqa: BLE001 - the future carries whatever was raised
            settle(self, exc, failed=True)
        else:
            settle(self, value, failed=False)

    def _reduce(self, outcomes: list[Any]) -> Any:
        if self._single:
            if isinstance(outcomes[0], Failure):
                raise outcomes[0].error
            return outcomes[0]
        return collect_outcomes(outcomes, self._fname, self._return_exceptions)

    def _with_exceptions(self) -> Any:
        """The result with each failure in place of its value (``return_exceptions``)."""
        outcomes = [outcome_of(child) for child in self._children]
        values = [o.error if isinstance(o, Failure) else o for o in outcomes]
        return values[0] if self._single else values

    # ------------------------------------------------------------------ sending

    @property
    def _sent_event(self) -> SentEvent:
        """ipyparallel's name (its tests wait on it); made when asked for, as few are."""
        return SentEvent(self._tracker)

    @property
    def sent(self) -> bool:
        """Whether every request has left this process (with the ``track`` flag: whether zmq
        is done with the buffers sent without copying, so they may be changed again)."""
        return self._tracker.done

    def wait_for_send(self, timeout: float | None = -1) -> None:
        """Wait until :attr:`sent`; TimeoutError if not within ``timeout`` seconds."""
        if not self._sent_event.wait(None if _forever(timeout) else timeout):
            raise TimeoutError(f"{self._fname}: not sent after {timeout} s")

    # ------------------------------------------------------------------ waiting

    def wait(self, timeout: float | None = -1, return_when: str | None = None) -> Any:
        """Wait until every request is answered (or ``timeout`` seconds); True if done.

        With ``return_when`` (``ALL_COMPLETED``, ``FIRST_COMPLETED``, ``FIRST_EXCEPTION``) it
        waits as :func:`concurrent.futures.wait` does on :meth:`split` and returns its
        ``(done, pending)`` sets of one-request AsyncResults.
        """
        limit = None if _forever(timeout) else timeout
        if return_when is not None:
            done, pending = futures.wait(self.split(), limit, return_when=return_when)
            return done, pending
        if self.done():
            return True
        if self._client is not None:
            return self._client.wait_for_futures([self], timeout, f"{self._fname}: waiting")
        done, _ = futures.wait([self], limit)
        return bool(done)

    def wait_for_output(self, timeout: float | None = -1) -> bool:
        """Wait until the output of every request is in: its reply (which carries the printed
        text and displays) and every ``publish_data`` message it says the task sent; True if
        all that came within ``timeout`` seconds."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        if not self.wait(timeout):
            return False
        expected = {}
        for msg_id in self.msg_ids:
            count = self._records.metadata.value(msg_id, "data_messages", None)
            if isinstance(count, int) and count > 0:
                expected[msg_id] = count
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return not expected or self._records.published.wait(expected, left)

    def split(self) -> tuple[AsyncResult, ...]:
        """One AsyncResult per request (itself, if it has only one)."""
        if len(self.msg_ids) == 1 and type(self) is AsyncResult:
            return (self,)
        return tuple(
            AsyncResult(
                self._records,
                [msg_id],
                fname=self._fname,
                single=True,
                client=self._client,
                owner=False,
            )
            for msg_id in self.msg_ids
        )

    @classmethod
    def join(cls, *results: AsyncResult) -> AsyncResult:
        """One AsyncResult over the requests of several (their results as one list)."""
        if not results:
            raise ValueError("join needs at least one AsyncResult")
        first = results[0]
        return AsyncResult(
            first._records,
            [msg_id for result in results for msg_id in result.msg_ids],
            fname=first._fname,
            client=first._client,
            owner=False,
        )

    def ready(self) -> bool:
        """Whether every request has been answered."""
        return self.done()

    def get(
        self,
        timeout: float | None = None,
        return_exceptions: bool | None = None,
        return_when: str | None = None,
    ) -> Any:
        """The result, waiting up to ``timeout`` seconds (None or negative: forever).

        Raises :class:`corral.errors.TimeoutError` if it is not ready by then,
        :class:`corral.errors.ConnectionError` once the controller has been unreachable for the
        client's ``outage_grace``, or the remote error(s) the requests raised (a CompositeError
        for a call to several engines).
        ``return_exceptions``: give each failure in place of its value instead of raising.
        ``return_when=FIRST_EXCEPTION``: raise as soon as one request fails.
        """
        if self._state == _FINISHED and self._exception is None and return_when is None:
            # done with a value (set before the state, never changed after): what the steps
            # below come to, without them, for nearly every call
            return self._result
        if return_when == FIRST_COMPLETED:
            warnings.warn("get(return_when=FIRST_COMPLETED) waits for all results", UserWarning, 2)
            return_when = None
        elif return_when == ALL_COMPLETED:
            return_when = None
        if return_exceptions is None:
            return_exceptions = self._return_exceptions
        if not self.done():
            if return_when is not None:
                done, _ = self.wait(timeout, return_when=return_when)
                for part in done:
                    if part.exception() is not None:
                        return part.get(return_exceptions=return_exceptions)
            if not self.wait(timeout):
                raise TimeoutError(
                    f"{self._fname}: {self.progress} of {len(self)} results ready after "
                    f"{timeout} s; the work goes on, call get() again to keep waiting"
                )
        if return_exceptions and super().exception() is not None:
            return self._with_exceptions()
        return super().result()

    def get_dict(self, timeout: float | None = None) -> dict[int, Any]:
        """The results keyed by the engine each ran on (one request per engine)."""
        results = self.get(timeout)
        if self._single:
            results = [results]
        engine_ids = [self._records.metadata.value(m, "engine_id") for m in self.msg_ids]
        if len(set(engine_ids)) != len(engine_ids) or None in engine_ids:
            raise ValueError(f"{self._fname}: results do not map one to one onto engines")
        return dict(zip(engine_ids, results, strict=True))

    def result(self, timeout: float | None = None) -> Any:
        """Same as :meth:`get` (the ``concurrent.futures`` spelling)."""
        return self.get(timeout)

    def successful(self) -> bool:
        """Whether it finished without an error; NotReady (a RuntimeError, as ipyparallel
        raises, and a ValueError, as multiprocessing's) while it is still running."""
        if not self.done():
            raise NotReady(f"{self._fname}: not ready, so neither successful nor failed yet")
        return self.exception() is None

    def cancel(self) -> bool:
        """Cancel requests that have not started: True if none had (they are aborted and
        this result is cancelled), False if some already run or finished (use :meth:`abort`
        to interrupt running ones)."""
        if self.done():
            return self.cancelled()
        pending = [
            msg_id
            for msg_id, child in zip(self.msg_ids, self._children, strict=True)
            if not child.done()
        ]
        if self._client is None or not self._client.cancel_requests(pending):
            return False
        return super().cancel()

    @property
    def r(self) -> Any:
        """The result (``get()``)."""
        return self.get()

    @property
    def result_dict(self) -> dict[int, Any]:
        """The results keyed by engine id (``get_dict()``)."""
        return self.get_dict()

    def timedelta(
        self,
        start: datetime | None,
        end: datetime | None,
        start_key: Callable[..., Any] = min,
        end_key: Callable[..., Any] = max,
    ) -> float:
        """Seconds between two datetimes or lists of them (``start_key``/``end_key`` pick
        one from each list): e.g. ``ar.timedelta(ar.submitted, ar.received)``."""
        if isinstance(start, list | tuple):
            start = start_key(start)
        if isinstance(end, list | tuple):
            end = end_key(end)
        if start is None or end is None:
            raise TimeoutError(f"{self._fname}: not finished, so no time yet")
        difference: timedelta = end - start
        return difference.total_seconds()

    def __await__(self) -> Generator[Any, None, Any]:
        import asyncio

        return asyncio.wrap_future(self).__await__()

    def wait_interactive(
        self,
        interval: float = 0.1,
        timeout: float | None = None,
        widget: bool | None = None,
        return_when: str = futures.ALL_COMPLETED,
    ) -> None:
        """Wait with a progress bar of the requests answered (done/total, rate, time left):
        a text bar on a terminal, the widget in Jupyter (``widget``: force one or the other).
        Returns when all are done (or, with ``return_when``, the first is done or the first
        failed) or after ``timeout`` seconds (see :meth:`ready`). Ctrl-C closes the bar and
        raises KeyboardInterrupt; the work goes on."""
        from corral.client.progress import wait_for_futures

        wait_for_futures(
            self._children,
            interval=interval,
            timeout=timeout,
            desc=self._fname,
            widget=widget,
            return_when=return_when,
        )

    def stream_output(self) -> OutputStreamer:
        """``with ar.stream_output(): ar.wait()`` prints the requests' stdout/stderr as it
        arrives, each line prefixed ``[stdout:<engine id>]`` (see corral.client.outputs)."""
        from corral.client.outputs import OutputStreamer

        return OutputStreamer(self._records, self.msg_ids)

    def abort(self) -> None:
        """Abort the requests not answered yet: queued ones never start, a running one is
        interrupted; each fails with TaskAborted. The abort goes to every engine, since a
        load-balanced task's engine is known here only once it has answered."""
        if self._client is None:
            raise RuntimeError("this AsyncResult has no client to send the abort through")
        pending = [
            msg_id
            for msg_id, child in zip(self.msg_ids, self._children, strict=True)
            if not child.done()
        ]
        if pending:
            self._client.abort(pending)

    # ------------------------------------------------------------------ container protocol

    def __len__(self) -> int:
        """How many items: requests, or the elements of a map."""
        return len(self.msg_ids)

    def __iter__(self) -> Iterator[Any]:
        """Each request's value in order, as soon as it is ready (raising its error)."""
        if self._single:
            raise TypeError("an AsyncResult with a single result is not iterable")
        for child in self._children:
            self._wait_child(child)
            yield child.result()

    def __getitem__(self, key: int | slice | str) -> Any:
        """A request's value by position (waiting for it), or a metadata key for all."""
        if isinstance(key, str):
            return self._metadata_values(key)
        if self._single:
            raise TypeError("an AsyncResult with a single result cannot be indexed")
        if isinstance(key, slice):
            return [self._wait_child(child).result() for child in self._children[key]]
        return self._wait_child(self._children[key]).result()

    def _wait_child(self, child: futures.Future[Any]) -> futures.Future[Any]:
        """Wait for one request, failing like :meth:`get` if the controller stays away."""
        if self._client is not None:
            self._client.wait_for_futures([child], None, f"{self._fname}: waiting")
        return child

    def __getattr__(self, key: str) -> Any:
        if not key.startswith("_") and (key in METADATA_DEFAULTS or key == "outputs"):
            return self._metadata_values(key)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *METADATA_DEFAULTS, "outputs"})

    def __repr__(self) -> str:
        """``<AsyncResult(f): pending>``, then ``finished`` or, if it raised or was
        cancelled, ``failed`` (ipyparallel's three states)."""
        if not self.done():
            state = "pending"
        elif self.cancelled() or futures.Future.exception(self) is not None:
            state = "failed"
        else:
            state = "finished"
        return f"<{type(self).__name__}({self._fname}): {state}>"


class _ChildLink:
    """The done-callback of an AsyncResult's parts: counts one part done, until the result is
    finished (then it points nowhere, so the parts no longer keep the result alive). One
    small object instead of a closure, its cell and a list per result."""

    __slots__ = ("result",)

    def __init__(self, result: AsyncResult) -> None:
        self.result: AsyncResult | None = result

    def __call__(self, _: futures.Future[Any]) -> None:
        result = self.result
        if result is not None:
            result._child_done()


class AsyncHubResult(AsyncResult):
    """An AsyncResult of requests another client sent, fetched from the Hub (see
    :meth:`corral.client.client.Client.get_result`). Its times are the Hub's: ``wall_time``
    runs from submission to completion on the engine, not to arrival here. Until the Hub's
    answer brings the submission date, ``elapsed`` counts from when this was asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._asked_at = time.monotonic()
        super().__init__(*args, **kwargs)

    @property
    def elapsed(self) -> float:
        submitted = self._dates("submitted")
        completed = self._dates("completed")
        if submitted and completed and self.done():
            return (max(completed) - min(submitted)).total_seconds()
        if not submitted:
            return time.monotonic() - self._asked_at
        return super().elapsed
