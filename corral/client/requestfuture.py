"""The future of one request, and which of its replies the I/O thread may settle itself.

Handing every reply to the results worker (:mod:`corral.client.completion`) costs a thread
wake-up per task, on the latency path of every round trip (I/O thread -> worker -> the user's
thread). For most replies that hand-off buys nothing: an ``ok`` with a pickle of a few bytes,
or an error, settles in microseconds. So :meth:`corral.client.records.Records.complete`
settles a reply on the thread that read it when :func:`settles_inline` says it is cheap, and
hands it to the worker as before otherwise (large buffers, a pickle that would import a
module: see :func:`corral.protocol.serialize.deserialize_object` with ``loaded_only``).

Every task has two futures (its request's and its AsyncResult), so their weight counts too:
each is a :class:`LightFuture`, whose condition is a bare reentrant lock (``threading.Condition``
is three objects and five bound methods), whose waiting is its own, and which keeps nothing
it no longer needs once settled: a third of the objects per task for the collector.

What runs on the settling thread is then only what was registered as cheap: callbacks added
with ``inline=True`` (the client's own bookkeeping: releasing a request's shared-memory
segments and its resend copy, an AsyncResult counting its parts). Any other done-callback of a
:class:`RequestFuture` settled inline is handed to the results worker, where it ran before, so
a slow or blocking callback still never stops the routing of replies.
"""

from __future__ import annotations

import _thread
import collections
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import Any, Protocol

import zmq

from corral.protocol.session import Frame

__all__ = [
    "FUTURE_FIELDS",
    "INLINE_LIMIT",
    "LightFuture",
    "TASK",
    "RequestFuture",
    "lighten",
    "settled_future",
    "settles_inline",
]

TASK = "task"
"""``kind`` of a pending apply, execute or control request: settles with a value or an error
(:class:`corral.client.records.Pending` has the other kind, a Hub query)."""

INLINE_LIMIT = 64 * 1024
"""Replies whose buffers hold at most this many bytes may be settled on the I/O thread."""

Offload = Callable[[Callable[[], None]], None]


_PENDING = "PENDING"  # concurrent.futures' state names
_RUNNING = "RUNNING"
_FINISHED = "FINISHED"
_CANCELLED = frozenset({"CANCELLED", "CANCELLED_AND_NOTIFIED"})
_SETTLEABLE = frozenset({_PENDING, _RUNNING})
_NO_CALLBACKS: Any = ()  # a settled future's callbacks: run, never added to again
_log = logging.getLogger("concurrent.futures")  # where Future logs a failing callback

FUTURE_FIELDS = ("_condition", "_state", "_result", "_exception", "_waiters", "_done_callbacks")
"""What ``Future.__init__`` sets (tests/client/test_requestfuture.py checks it still is)."""


def lighten(future: LightFuture, lock: Any = None) -> None:
    """Initialise ``future`` as ``Future.__init__`` does, with a bare reentrant lock for its
    condition (see :class:`LightFuture`) and no waiters' list until one is needed.

    ``lock``: another LightFuture's lock, to share (an AsyncResult over one request takes its
    request's: one object fewer per task). Safe because a LightFuture's waiting is its own:
    settling one wakes only the threads in its own ``result()``/``exception()``, and the lock
    only orders the reads and writes of each future's fields; it is reentrant, so
    ``concurrent.futures.wait`` taking both futures' locks takes it twice."""
    # not a threading.Condition by type: LightFuture does its own waiting and waking
    future._condition = _thread.RLock() if lock is None else lock  # type: ignore[assignment]
    future._state = _PENDING
    future._result = None
    future._exception = None
    future._waiting = None  # concurrent.futures' waiters: made when first asked for
    future._sleepers = None  # threads in result()/exception(): made by the first
    future._callbacks = None  # the done-callbacks: made by the first added


class LightFuture(Future[Any]):
    """A ``concurrent.futures.Future`` with less per instance and less per settlement, for
    the two futures of every task.

    Its ``_condition`` is a bare ``_thread.RLock``: ``with``, ``acquire`` and ``release`` are
    all that ``concurrent.futures`` (``wait``, ``as_completed``) and the base's other methods
    use of it. The only waiting and waking on it are this class's: :meth:`result` and
    :meth:`exception` wait as ``Condition.wait`` does (a lock of their own, queued while the
    future's lock is let go), and settling or cancelling wakes them, so a condition object is
    never needed. ``set_result`` and ``set_exception`` do what the base does, in the same
    order (state, ``wait``'s waiters, the threads in ``result``, then the done-callbacks
    outside the lock), and drop the callbacks' list once they ran (a done future calls a new
    callback at once and never adds it). The list of ``concurrent.futures``' waiters is made
    when that first asks for it, and so is the callbacks' list, when a first callback is added
    (most AsyncResults never get one). So a future is two objects (itself, its lock), three
    while it has callbacks to run.
    """

    __slots__ = ("_callbacks", "_sleepers", "_waiting")

    _waiting: list[Any] | None
    _sleepers: collections.deque[Any] | None
    _callbacks: list[Callable[[Future[Any]], object]] | None

    @property
    def _done_callbacks(self) -> list[Callable[[Future[Any]], object]]:
        """``Future._done_callbacks``, made at the first use (``add_done_callback`` below
        adds to it without asking for it)."""
        callbacks = self._callbacks
        if callbacks is None:
            callbacks = self._callbacks = []
        return callbacks

    @property
    def _waiters(self) -> list[Any]:
        """``Future._waiters``, made at the first use (``wait`` and ``as_completed`` add to
        it)."""
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = []
        return waiting

    @_waiters.setter
    def _waiters(self, waiters: list[Any]) -> None:
        self._waiting = waiters

    # ------------------------------------------------------------------ waiting

    def done(self) -> bool:
        """As the base, without taking the lock: one read of the state, which is set once, in
        one assignment, under the lock (the records ask it of every request they release)."""
        return self._state not in _SETTLEABLE

    def result(self, timeout: float | None = None) -> Any:
        with self._condition:
            self._settled_within(timeout)
            error = self._exception
            if error is None:
                return self._result
        try:
            raise error
        finally:
            del error, self  # as the base: no cycle through this frame's traceback

    def exception(self, timeout: float | None = None) -> BaseException | None:
        with self._condition:
            self._settled_within(timeout)
            return self._exception

    def _settled_within(self, timeout: float | None) -> None:
        """(Holding the lock) Return once finished, waiting up to ``timeout`` seconds (None:
        forever) as ``Future.result`` does; CancelledError or TimeoutError otherwise."""
        if self._state != _FINISHED and self._state not in _CANCELLED:
            self._sleep(timeout)
        if self._state in _CANCELLED:
            raise CancelledError()
        if self._state != _FINISHED:
            raise FuturesTimeoutError()

    def _sleep(self, timeout: float | None) -> bool:
        """(Holding the lock) Wait until woken or ``timeout`` passes, letting the lock go
        meanwhile, as ``Condition.wait``; whether it was woken."""
        lock: Any = self._condition
        sleeper = _thread.allocate_lock()
        sleeper.acquire()
        sleepers = self._sleepers
        if sleepers is None:
            sleepers = self._sleepers = collections.deque()
        sleepers.append(sleeper)
        saved = lock._release_save()
        woken = False
        try:
            if timeout is None:
                woken = sleeper.acquire()
            elif timeout > 0:
                woken = sleeper.acquire(True, timeout)
            else:
                woken = sleeper.acquire(False)
            return woken
        finally:
            lock._acquire_restore(saved)
            if not woken:
                try:
                    sleepers.remove(sleeper)
                except ValueError:
                    pass

    def add_sleeper(self, sleeper: Any) -> bool:
        """Have ``sleeper.release()`` called (under this future's lock) when it is done, as
        a thread in :meth:`result` is woken; False, and nothing added, if it is done. A
        thread that reads replies while it waits (corral.client.socket_gate) waits so."""
        with self._condition:
            if self._state not in _SETTLEABLE:
                return False
            sleepers = self._sleepers
            if sleepers is None:
                sleepers = self._sleepers = collections.deque()
            sleepers.append(sleeper)
            return True

    def remove_sleeper(self, sleeper: Any) -> None:
        """Forget ``sleeper`` if it was not woken."""
        with self._condition:
            try:
                if self._sleepers:
                    self._sleepers.remove(sleeper)
            except ValueError:
                pass

    @property
    def reply_channel(self) -> str | None:
        """The socket its replies come on (``"mux"``, ``"task"``), if one: a thread waiting
        for it may read them (corral.client.socket_gate)."""
        return None

    def _wake(self) -> None:
        """(Holding the lock) Wake every thread in :meth:`_sleep`."""
        sleepers = self._sleepers
        while sleepers:
            sleepers.popleft().release()

    # ------------------------------------------------------------------ settling

    def cancel(self) -> bool:
        with self._condition:
            if self._state == _RUNNING or self._state == _FINISHED:
                return False
            if self._state in _CANCELLED:
                return True
            self._state = "CANCELLED"
            self._wake()
        self._run_callbacks()
        return True

    def set_result(self, result: Any) -> None:
        with self._condition:
            if self._state not in _SETTLEABLE:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._state = _FINISHED
            for waiter in self._waiting or ():
                waiter.add_result(self)
            if self._sleepers:
                self._wake()
        self._run_callbacks()

    def set_exception(self, exception: BaseException | None) -> None:
        with self._condition:
            if self._state not in _SETTLEABLE:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._exception = exception
            self._state = _FINISHED
            for waiter in self._waiting or ():
                waiter.add_exception(self)
            if self._sleepers:
                self._wake()
        self._run_callbacks()

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        """As the base: ``fn(self)`` once done, at once if it is; its list made when needed."""
        with self._condition:
            if self._state in _SETTLEABLE:
                callbacks = self._callbacks
                if callbacks is None:
                    callbacks = self._callbacks = []
                callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:
            _log.exception("exception calling callback for %r", self)

    def _invoke_callbacks(self) -> None:  # the base's cancel paths call it
        self._run_callbacks()

    def _run_callbacks(self) -> None:
        callbacks = self._callbacks
        if not callbacks:
            return
        self._callbacks = _NO_CALLBACKS
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                _log.exception("exception calling callback for %r", self)


class Owner(Protocol):
    """What a request's future tells when it is done, in place of a done-callback: the one
    AsyncResult over that request alone, finished at once (``AsyncResult._finish``: with
    one part, the part done is the whole done, without the count of parts)."""

    def _finish(self) -> None: ...


class RequestFuture(LightFuture):
    """A request's future in :class:`~corral.client.records.Records` (see the module doc).

    ``offload`` runs a call on the results worker; callbacks not added with ``inline=True`` go
    through it whenever the future is settled inline.

    While its request is unanswered it is also the request's entry in ``Records.pending``
    (where a Hub query has a ``Pending``): it has the same fields, ``kind`` (:data:`TASK`),
    ``channel``, ``engine_uuid``, ``on_reply`` (None) and ``future`` (itself), so a task costs
    no second object there.
    """

    kind = TASK
    on_reply: None = None
    # What most requests keep as they started are read from the class until one is set on the
    # future (one is made per task: six assignments fewer, and a smaller instance dict).
    settling_inline = False  # True while the I/O thread settles it
    allow_inline = True  # False: always settled on the results worker (a map's part)
    _owner: Owner | None = None  # see attach
    # marks of its request, here rather than in sets of msg_ids (an entry per held result):
    # an owning AsyncResult took it (corral.client.cache); its reply said what it printed, so
    # later iopub streams of it are ignored (corral.client.records)
    taken = False
    streams_final = False
    # its one owner, over it alone, finished and let it go: the records are then its only
    # holder and may keep it compact (corral.client.future_table)
    let_go = False

    def __init__(
        self,
        offload: Offload,
        channel: str = "",
        engine_uuid: str | None = None,
        lock: Any = None,
    ) -> None:
        lighten(self, lock)  # in place of Future.__init__
        self._offload = offload
        self.channel = channel  # where it was sent: "mux", "control" or "task"
        self.engine_uuid = engine_uuid  # the engine it was sent to, if named

    @property
    def reply_channel(self) -> str | None:
        return self.channel or None

    @property
    def future(self) -> RequestFuture:
        """Itself, as ``Pending.future`` (see the class doc)."""
        return self

    def attach(self, owner: Owner) -> bool:
        """Have ``owner._finish()`` called once this is done, after its callbacks, on the
        settling thread (as a callback added with ``inline=True``); False, and nothing done,
        if it is done already or has an owner. The AsyncResult of a single request (nearly
        every ``apply``) is told so instead of through a callback: no callbacks' list and no
        link object per task, which the collector would walk while the result is held."""
        with self._condition:
            if self._owner is not None or self._state not in _SETTLEABLE:
                return False
            self._owner = owner
        return True

    def _run_callbacks(self) -> None:
        if self._callbacks:  # most requests have none: their owner is told instead
            LightFuture._run_callbacks(self)
        owner = self._owner
        if owner is not None:
            self._owner = None  # the result no longer reachable from here: it may be garbage
            try:
                owner._finish()
            except Exception:
                _log.exception("exception telling %r that %r is done", owner, self)

    def add_done_callback(
        self, fn: Callable[[Future[Any]], object], *, inline: bool = False
    ) -> None:
        """``fn(self)`` once done. ``inline``: ``fn`` is cheap and never blocks, so it may run
        on whichever thread settles the future, the client's I/O thread included; otherwise
        it never runs there (it is handed to the results worker)."""
        if inline:
            super().add_done_callback(fn)
            return

        def guarded(future: Future[Any]) -> None:
            if self.settling_inline:
                self._offload(lambda: _call(fn, future))
            else:
                fn(future)

        super().add_done_callback(guarded)


def _call(fn: Callable[[Future[Any]], object], future: Future[Any]) -> None:
    fn(future)


def settled_future(offload: Offload, lock: Any, value: Any, failed: bool) -> RequestFuture:
    """A request's future already settled with ``value`` (its error if ``failed``): what a
    compact entry of :class:`corral.client.future_table.FutureTable` stands for."""
    future = RequestFuture(offload, lock=lock)
    if failed:
        future._exception = value
    else:
        future._result = value
    future._state = _FINISHED
    return future


def settles_inline(buffers: Sequence[Frame], limit: int = INLINE_LIMIT) -> bool:
    """Whether a reply with these buffers is small enough to settle on the I/O thread."""
    total = 0
    for frame in buffers:
        kind = type(frame)
        if kind is bytes or kind is zmq.Frame:  # as received: the usual case, checked first
            total += len(frame)
        elif isinstance(frame, memoryview):
            total += frame.nbytes
        elif isinstance(frame, zmq.Frame | bytes):
            total += len(frame)
        else:
            return False
        if total > limit:
            return False
    return True
