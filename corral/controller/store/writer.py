"""The result stores' writer thread: writes queued by the caller, applied in batches.

:class:`BatchWriter` is shared by the SQLite and MongoDB stores (:mod:`.sqlite`,
:mod:`.mongodb`): the caller's thread encodes a write and queues it as a :class:`WriteOp`, the
writer thread applies many per transaction. A caller that makes many writes in a burst (the
Hub, for the copies of one bundle) can hold them (:meth:`BatchWriter.holding`) and queue them
in one go.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from corral.errors import StoreError

logger = logging.getLogger("corral.controller.store")
_get_ident = threading.get_ident

PayloadT = TypeVar("PayloadT")


class WriteOp(NamedTuple, Generic[PayloadT]):
    """One queued write: ``upsert`` one record or ``drop`` several; payload is the backend's.

    A named tuple: the Hub makes two or three per task, and one costs half what a frozen
    dataclass does (0.20 against 0.36 us to make)."""

    kind: Literal["upsert", "drop"]
    msg_ids: tuple[str, ...]
    payload: PayloadT


#: What stays in the queue in the place of a write applied early (``later`` below): counted
#: as applied when the writer reaches it, so :meth:`BatchWriter.applied` still means "every
#: write up to the mark", never applied itself.
_TAKEN: Any = WriteOp("drop", (), None)

#: ``later(batch, queued)``: the places among ``queued`` (writes queued after ``batch``) of
#: those that may be applied with it, as the backend knows (:func:`.sqlite_batches.later_updates`).
LaterWrites = Callable[[list[WriteOp[PayloadT]], Iterable[WriteOp[PayloadT]]], list[int]]


class BatchWriter(Generic[PayloadT]):
    """A thread applying queued writes in batches: the caller never waits on storage.

    ``apply`` runs in the writer thread and applies a batch in order, in one transaction
    where the backend has them; it raises if any write failed. When a batch fails, each of
    its writes is retried alone, so one bad write loses only itself (writes must therefore
    be idempotent: upserts and drops are). What still fails is logged and becomes the
    StoreError raised by the next :meth:`submit`, :meth:`flush` or :meth:`check` call.
    Batches form naturally: while one commits, the next accumulates; and the writer lingers up
    to ``linger`` seconds for more writes before a small batch (not when a flush is waiting),
    so a steady trickle of tasks costs one commit per few milliseconds, not one per write.
    A commit costs about as much as writing ten small rows (SQLite, measured with the store
    alone: ~60 us of writer CPU per task at 4 tasks per commit, ~40 at 16 and more), so the
    linger is 20 ms: at a thousand tasks a second that is some twenty tasks per commit. Reads
    never wait for it (a flush cuts it short); what a killed controller may lose grows from the
    last 5 to the last 20 ms of writes, which engines still hold until the writes are applied.

    Writes still queued when the interpreter exits are applied by an ``atexit`` hook, so a
    controller that exits without closing its store loses nothing it had queued.

    ``later`` (a backend's rule, optional): which of the next ``look_ahead`` queued writes
    may join a batch that the ``max_batch`` limit cut, applied with it (so sooner, never
    later, than in order): the SQLite store joins a record's writes that the cut parted.
    """

    def __init__(
        self,
        apply: Callable[[list[WriteOp[PayloadT]]], None],
        *,
        name: str,
        max_batch: int = 1000,
        linger: float = 0.02,
        later: LaterWrites[PayloadT] | None = None,
        look_ahead: int = 0,
    ) -> None:
        self._apply = apply
        self._later = later
        self._look_ahead = look_ahead
        self._taken = 0  # _TAKEN places in the queue
        self._name = name
        self._max_batch = max_batch
        self._linger = linger
        self._flushing = 0  # callers waiting in flush(): write at once
        self._condition = threading.Condition(threading.Lock())  # never taken twice
        self._pending: deque[WriteOp[PayloadT]] = deque()
        self._submitted = 0
        self._done = 0
        self._closing = False
        self._stopped = False
        self._error: StoreError | None = None
        # writes held by one thread (holding()), queued together at the end of its block
        self._held: list[WriteOp[PayloadT]] | None = None
        self._holder = 0
        self._writer_thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._writer_thread.start()
        atexit.register(self._close_at_exit)

    @property
    def thread(self) -> threading.Thread:
        """The thread that applies the writes."""
        return self._writer_thread

    def submit(self, op: WriteOp[PayloadT]) -> None:
        """Queue a write, then raise the pending error of an earlier write, if any.

        The new write stays queued either way: upserts are idempotent, so a caller that
        retries after the error duplicates nothing. Inside :meth:`holding` on this thread, the
        write is held (a closed store still raises at once): appended here, without
        :meth:`submit_many`'s list (the Hub submits two or three writes a task so).
        """
        held = self._held
        if held is not None and self._holder == _get_ident() and not self._closing:
            held.append(op)
            return
        self.submit_many([op])

    def submit_many(self, ops: list[WriteOp[PayloadT]]) -> None:
        """:meth:`submit` of each of ``ops`` in order, under one lock (held, inside
        :meth:`holding` on this thread); the pending error of an earlier write is raised once
        they are all queued."""
        held = self._held
        if held is not None and self._holder == threading.get_ident():
            if self._closing:
                raise StoreError(f"{self._name}: the result store is closed")
            held.extend(ops)
            return
        if ops:
            self._queue(ops)
        else:
            self.check()

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Writes this thread submits in the block are queued together when it ends: one lock
        and at most one wake-up of the writer for a burst, instead of one lock per write (the
        Hub holds the writes of the copies of one bundle). Anything else this thread asks of
        the writer first queues what it holds (:meth:`flush`, :meth:`mark`, :meth:`check`,
        :meth:`close`), so order and reads-see-writes are as if each write were queued at its
        :meth:`submit`. The pending error of an earlier write is raised when the block ends.
        Other threads' writes are never held; a block inside a block (or while another thread
        holds) holds nothing more."""
        if self._held is not None:
            yield
            return
        self._held = []
        self._holder = threading.get_ident()
        try:
            yield
        finally:
            held, self._held = self._held, None
            if held:
                self._queue(held)

    def _release(self, raise_error: bool = True) -> None:
        """Queue what this thread holds (nothing if it holds nothing)."""
        held = self._held
        if held and self._holder == threading.get_ident():
            self._held = []
            self._queue(held, raise_error)

    def _queue(self, ops: list[WriteOp[PayloadT]], raise_error: bool = True) -> None:
        with self._condition:
            if self._closing:
                raise StoreError(f"{self._name}: the result store is closed")
            was_empty = not self._pending
            self._pending.extend(ops)
            self._submitted += len(ops)
            if was_empty:  # the writer sleeps only on an empty queue
                self._condition.notify_all()
            if raise_error:
                self._raise_error()

    def flush(self) -> None:
        """Wait until every write submitted so far is applied or has failed (then raise)."""
        self._release()
        with self._condition:
            target = self._submitted
            self._flushing += 1
            self._condition.notify_all()  # cut the writer's linger short
            try:
                while self._done < target and not self._stopped:
                    self._condition.wait()
            finally:
                self._flushing -= 1
            self._raise_error()
            if self._done < target:
                raise StoreError(f"{self._name}: the writer thread stopped with writes queued")

    def mark(self) -> int:
        """How many writes were submitted so far: a mark for :meth:`applied`. Never raises."""
        self._release(raise_error=False)
        with self._condition:
            return self._submitted

    def applied(self, mark: int) -> bool:
        """Whether the first ``mark`` writes are applied or have failed (never waits)."""
        with self._condition:
            return self._done >= mark

    def check(self) -> None:
        """Raise the pending error of a failed write, if any, without waiting."""
        self._release()
        with self._condition:
            self._raise_error()

    def close(self) -> None:
        """Apply everything queued, stop the thread, then report any pending error."""
        atexit.unregister(self._close_at_exit)
        self._release(raise_error=False)  # an earlier write's error: check() raises it below
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        self._writer_thread.join()
        self.check()

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except StoreError:
            pass  # already logged by the writer thread; nobody is left to raise it to

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        try:
            while True:
                with self._condition:
                    while not self._pending and not self._closing:
                        self._condition.wait()
                    if not self._pending:
                        return
                    if len(self._pending) < self._max_batch and not (
                        self._closing or self._flushing
                    ):
                        # linger a moment: one commit for a burst of writes, not one per write
                        self._condition.wait(self._linger)
                    if self._taken:
                        batch, count = self._take_passing_taken()
                    else:
                        count = min(len(self._pending), self._max_batch)
                        batch = [self._pending.popleft() for _ in range(count)]
                    if self._later is not None and self._pending and batch:
                        batch += self._take_later(batch)
                failed = self._apply_batch(batch) if batch else []
                with self._condition:
                    if failed:
                        self._record_failure(failed)
                    self._done += count  # the queue's first writes: those taken early later
                    self._condition.notify_all()
                # written: drop the rows now, not at the next write (their buffers may be a
                # large result, or a shared-memory mapping another process waits to reuse)
                del batch, failed
        finally:
            with self._condition:
                self._stopped = True
                self._condition.notify_all()

    def _take_passing_taken(self) -> tuple[list[WriteOp[PayloadT]], int]:
        """(Under the lock.) The next batch, up to ``max_batch`` writes, passing the places of
        writes taken early (:meth:`_take_later`), and how many places it took from the queue."""
        pending = self._pending
        batch: list[WriteOp[PayloadT]] = []
        count = 0
        while pending and len(batch) < self._max_batch:
            op = pending.popleft()
            count += 1
            if op is _TAKEN:
                self._taken -= 1
            else:
                batch.append(op)
        return batch, count

    def _take_later(self, batch: list[WriteOp[PayloadT]]) -> list[WriteOp[PayloadT]]:
        """(Under the lock.) The queued writes the backend lets join ``batch``, taken from the
        queue, each leaving :data:`_TAKEN` in its place."""
        assert self._later is not None
        pending = self._pending
        window = list(islice(pending, self._look_ahead))
        # the places of writes taken before are no writes: the backend never sees them
        live = [at for at, op in enumerate(window) if op is not _TAKEN] if self._taken else None
        queued = window if live is None else [window[at] for at in live]
        places = self._later(batch, queued)
        if not places:
            return []
        taken = [queued[place] for place in places]
        for place in places:
            window[place if live is None else live[place]] = _TAKEN
        self._taken += len(places)
        for _ in range(len(window)):
            pending.popleft()
        pending.extendleft(reversed(window))
        return taken

    def _apply_batch(
        self, batch: list[WriteOp[PayloadT]]
    ) -> list[tuple[WriteOp[PayloadT], Exception]]:
        try:
            self._apply(batch)
            return []
        except Exception as exc:
            if len(batch) == 1:
                return [(batch[0], exc)]
            logger.warning(
                "%s: batch of %d writes failed (%s); retrying one by one",
                self._name,
                len(batch),
                exc,
            )
        failed = []
        for op in batch:
            try:
                self._apply([op])
            except Exception as exc:
                failed.append((op, exc))
        return failed

    def _record_failure(self, failed: list[tuple[WriteOp[PayloadT], Exception]]) -> None:
        msg_ids = [msg_id for op, _ in failed for msg_id in op.msg_ids]
        first = failed[0][1]
        shown = ", ".join(msg_ids[:5]) + (" ..." if len(msg_ids) > 5 else "")
        message = (
            f"{self._name}: {len(failed)} write(s) to the result store failed and were lost "
            f"({type(first).__name__}: {first}); msg_ids: {shown}"
        )
        logger.error(message, exc_info=first)
        if self._error is not None:
            message = f"{self._error}; and then {message}"
        error = StoreError(message)
        error.__cause__ = first
        self._error = error
