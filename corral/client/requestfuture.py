"""The future of one request, and which of its replies the I/O thread may settle itself.

Handing every reply to the results worker (:mod:`corral.client.completion`) costs a thread
wake-up per task, on the latency path of every round trip (I/O thread -> worker -> the user's
thread). For most replies that hand-off buys nothing: an ``ok`` with a pickle of a few bytes,
or an error, settles in microseconds. So :meth:`corral.client.records.Records.complete`
settles a reply on the thread that read it when :func:`settles_inline` says it is cheap, and
hands it to the worker as before otherwise (large buffers, a pickle that would import a
module: see :func:`corral.protocol.serialize.deserialize_object` with ``loaded_only``).

Every task has two futures (its request's and its AsyncResult), so their weight counts too:
each carries a :class:`LightCondition` instead of ``threading.Condition()`` (which copies five
bound methods of its lock onto each instance): ten objects fewer per task for the collector.

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
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any

import zmq

from corral.protocol.session import Frame

__all__ = [
    "FUTURE_FIELDS",
    "INLINE_LIMIT",
    "LightCondition",
    "LightFuture",
    "RequestFuture",
    "lighten",
    "settles_inline",
]

INLINE_LIMIT = 64 * 1024
"""Replies whose buffers hold at most this many bytes may be settled on the I/O thread."""

Offload = Callable[[Callable[[], None]], None]


_NO_WAITERS: Any = ()  # what notify() sees of a condition nothing ever waited on


class LightCondition(threading.Condition):
    """``threading.Condition()`` (over an RLock, as a Future's) with nothing copied onto the
    instance: the base class copies five bound methods of its lock onto every condition; here
    they are methods of the class, delegating to the lock. The lock stays reentrant:
    ``concurrent.futures.wait`` asks a future whether it was cancelled while holding its
    condition. The waiters' deque is made by the first :meth:`wait` (most futures are never
    waited on: two objects fewer per task for the collector); until then ``notify`` finds an
    empty tuple, which it only reads.
    """

    def __init__(self) -> None:  # the base's __init__ would copy the lock's methods: skipped
        self._lock: Any = _thread.RLock()  # threading.RLock's C type, without its wrapper
        self._waiters: collections.deque[Any] = _NO_WAITERS

    def wait(self, timeout: float | None = None) -> bool:
        if self._waiters is _NO_WAITERS:
            self._waiters = collections.deque()
        return super().wait(timeout)

    def _at_fork_reinit(self) -> None:
        self._lock._at_fork_reinit()
        self._waiters = _NO_WAITERS

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()

    def _release_save(self) -> Any:
        return self._lock._release_save()

    def _acquire_restore(self, state: Any) -> None:
        self._lock._acquire_restore(state)

    def _is_owned(self) -> bool:
        return bool(self._lock._is_owned())


_PENDING = "PENDING"  # concurrent.futures' state names
FUTURE_FIELDS = ("_condition", "_state", "_result", "_exception", "_waiters", "_done_callbacks")
"""What ``Future.__init__`` sets (tests/client/test_requestfuture.py checks it still is)."""


def lighten(future: Future[Any]) -> None:
    """Initialise ``future`` as ``Future.__init__`` does, with a :class:`LightCondition`: the
    base would build a ``threading.Condition`` (an RLock and five bound methods) only for it
    to be replaced, a tenth of the cost of submitting a task in both futures of it."""
    future._condition = LightCondition()
    future._state = _PENDING
    future._result = None
    future._exception = None
    if isinstance(future, LightFuture):
        future._waiting = None  # its waiters' list is made when first asked for
    else:
        future._waiters = []
    # not in typeshed's Future; vars(future)[...] would give the instance a dict of its own
    object.__setattr__(future, "_done_callbacks", [])


_FINISHED = "FINISHED"
_SETTLEABLE = frozenset({_PENDING, "RUNNING"})
_NO_CALLBACKS: Any = ()  # a settled future's callbacks: run, never added to again
_log = logging.getLogger("concurrent.futures")  # where Future logs a failing callback


class LightFuture(Future[Any]):
    """A ``Future`` that settles with less work, for the two futures of every task.

    ``set_result`` and ``set_exception`` do what the base does, in the same order (state,
    waiters, wake-ups, then the done-callbacks outside the lock), less what is idle for most
    tasks: ``notify_all`` only when a thread waits on the condition (the base calls it, and
    the three Python calls behind it, for every future), and the callbacks' list is dropped
    once they ran (a done future calls a new callback at once and never adds it), so a
    settled future held for long keeps neither the list nor what the callbacks held: fewer
    objects for the collector per finished task. The list of ``concurrent.futures.wait``'s
    waiters is made when that first asks for it: most futures are never waited on that way,
    so that is one object fewer per future for as long as it is held. Construction is
    :func:`lighten`'s.
    """

    __slots__ = ("_waiting",)

    if TYPE_CHECKING:  # set by lighten(); typeshed's Future does not list the callbacks
        _done_callbacks: list[Callable[[Future[Any]], object]]

    _waiting: list[Any] | None

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

    def set_result(self, result: Any) -> None:
        condition: Any = self._condition  # a LightCondition (lighten)
        with condition._lock:  # what ``with condition`` takes, without its Python frame
            if self._state not in _SETTLEABLE:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._state = _FINISHED
            for waiter in self._waiting or ():
                waiter.add_result(self)
            if condition._waiters:
                condition.notify_all()
        self._run_callbacks()

    def set_exception(self, exception: BaseException | None) -> None:
        condition: Any = self._condition
        with condition._lock:
            if self._state not in _SETTLEABLE:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._exception = exception
            self._state = _FINISHED
            for waiter in self._waiting or ():
                waiter.add_exception(self)
            if condition._waiters:
                condition.notify_all()
        self._run_callbacks()

    def _run_callbacks(self) -> None:
        callbacks = self._done_callbacks
        if not callbacks:
            return
        object.__setattr__(self, "_done_callbacks", _NO_CALLBACKS)
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                _log.exception("exception calling callback for %r", self)


class RequestFuture(LightFuture):
    """A request's future in :class:`~corral.client.records.Records` (see the module doc).

    ``offload`` runs a call on the results worker; callbacks not added with ``inline=True`` go
    through it whenever the future is settled inline.
    """

    def __init__(self, offload: Offload) -> None:
        lighten(self)  # in place of Future.__init__
        self._offload = offload
        self.settling_inline = False  # True while the I/O thread settles it
        self.allow_inline = True  # False: always settled on the results worker (a map's part)

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


def settles_inline(buffers: Sequence[Frame], limit: int = INLINE_LIMIT) -> bool:
    """Whether a reply with these buffers is small enough to settle on the I/O thread."""
    total = 0
    for frame in buffers:
        if isinstance(frame, memoryview):
            total += frame.nbytes
        elif isinstance(frame, zmq.Frame | bytes):
            total += len(frame)
        else:
            return False
        if total > limit:
            return False
    return True
