"""What a client knows of every request it sent: futures, results, metadata (sans-I/O).

:class:`Records` is the client's state machine. The submitting thread calls ``track`` before
the request leaves; the I/O thread feeds it each decoded reply, iopub message and engine loss
(a reply on mux or task may be fed by a thread waiting for a result instead, one reader at a
time per socket: :mod:`corral.client.socket_gate`); nothing here touches a socket, so the
rules are tested by feeding messages by hand.

Rules the rest of the client relies on:

- Every tracked request is settled exactly once: by its reply, by the loss of the engine it
  was sent to (EngineError), by a timeout, or by the client closing (ConnectionError). Whoever
  pops the request from ``pending`` settles it; a reply that finds nothing to pop is late and
  ignored.
- ``results`` and ``metadata`` are written before the request's future completes, so code
  woken by the future sees them.
- What a reply says about its request (metadata, captured output) is recorded on the thread
  that feeds the reply; what may take long (deserializing the value, settling the future and
  the callbacks that triggers) is handed to ``defer`` (the client's results worker, see
  :mod:`corral.client.completion`), so a large result never stops the routing thread. Deferred
  settlements run in the order handed over. A small reply that deserializes without an import
  is settled at once on the feeding thread, sparing a thread wake-up per round trip; only
  callbacks registered as cheap run there (:mod:`corral.client.requestfuture`).
- The tables stay bounded: each AsyncResult :meth:`~Records.hold` s its requests and releases
  them when it is garbage (its ``__del__``). A request no AsyncResult holds any more is
  forgotten once it has finished (:meth:`~Records.forget`, as purging does), so a program that
  drops its AsyncResults keeps the client's memory flat over any number of tasks. Releases are
  only queued where they happen (a finalizer may run on any thread, in the middle of anything)
  and applied by the next ``track`` or settlement, on its thread.
- A reply's ``stdout``/``stderr`` metadata is authoritative: what arrived on iopub before it is
  replaced, and iopub for an answered request is ignored, so captured output never depends on
  which socket was read first.
"""

from __future__ import annotations

import _thread
import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final

from corral.client.dates import parse_date, wire_date
from corral.client.executereply import ExecuteReply
from corral.client.forgotten_answers import ForgottenAnswers, answering_engine
from corral.client.future_table import FutureTable
from corral.client.metadata import RESULT_KEYS, Metadata, update_from_reply
from corral.client.metadata_table import (
    MSG_ID,
    UNANSWERED,
    MetadataTable,
    compact_request,
)
from corral.client.published import PublishedData
from corral.client.requestfuture import TASK as TASK_KIND
from corral.client.requestfuture import RequestFuture, settles_inline
from corral.errors import CorralError, ImportNeeded, error_from_content
from corral.protocol.serialize import deserialize_object
from corral.protocol.session import Frame, Message

log = logging.getLogger("corral.client")

__all__ = ["ExecuteReply", "Metadata", "Pending", "Records", "parse_date"]

TASK: Final = TASK_KIND  # apply/execute/control: settles with a value or a RemoteError
SERVICE: Final = "service"  # hub query: settles with the reply Message, or calls on_reply


@dataclass(slots=True)
class Pending:
    """An unanswered request: what settles it and where it went. A task's own
    :class:`RequestFuture` stands in ``Records.pending`` in place of one (same fields)."""

    future: Future[Any]
    kind: str
    channel: str
    engine_uuid: str | None = None
    on_reply: Callable[[Message], None] | None = None
    # a Hub query's own message, sent again if the controller link drops before its answer
    request: Message | None = None


def settle(future: Future[Any], value: Any, failed: bool) -> bool:
    """Complete ``future`` unless something already did; True if this call did."""
    try:
        if failed:
            future.set_exception(value)
        else:
            future.set_result(value)
    except InvalidStateError:
        return False
    return True


class Records:
    """Futures, results and metadata of every request, keyed by msg_id (see the module doc).

    ``history`` lists apply/execute msg_ids in submission order; ``outstanding`` holds those not
    yet answered. ``results[msg_id]`` is the value, or the RemoteError the request raised.
    """

    def __init__(
        self,
        defer: Callable[[Callable[[], None]], None] | None = None,
        on_settled: Callable[[str], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._defer: Callable[[Callable[[], None]], None] = defer or _run_now
        self._clock = clock  # when a reply came (``received``), seconds since the epoch
        # told each settled msg_id after its future (the client's Resender drops its copy):
        # one call, where a done-callback per request cost an object and a lock
        self._on_settled = on_settled
        self.pending: dict[str, Pending | RequestFuture] = {}
        self.results: dict[str, Any] = {}
        # a request's metadata: iopub (the I/O thread), its reply (whichever thread reads it,
        # corral.client.socket_gate) and a user's first read of it whole must not interleave
        # on one entry. Reentrant: the table takes it too, and the records call it holding it
        self._output_lock = _thread.RLock()
        # compact until read whole; a missing key reads as empty metadata, as ipyparallel's
        # ``client.metadata`` does (corral.client.metadata_table)
        self.metadata = MetadataTable(self._output_lock)
        self._metadata_entries = self.metadata.entries
        self.history: list[str] = []
        self.trackers: dict[str, Any] = {}  # msg_id -> zmq.MessageTracker, until claimed
        self.outstanding: set[str] = set()
        # msg_id -> called (through ``defer``) after each iopub message of it is recorded
        self.iopub_listeners: dict[str, Callable[[Message], None]] = {}
        self._silent: set[str] = set()  # silent execute requests: no execute_result
        self.late_replies = 0  # replies that found their request settled already, ignored
        self._lock = threading.Lock()  # history and holders: written by several threads
        # the lock of every request's future (and of each one-request AsyncResult, which
        # shares its request's): one object, where one per task was one more for the cyclic
        # collector to walk while results are held. Safe as each future's own: it only
        # orders the reads and writes of a future's fields, held for microseconds, never
        # while a thread sleeps (a LightFuture's waiters sleep on locks of their own), and
        # reentrant for concurrent.futures.wait, which takes each future's lock in turn
        self._future_lock = _thread.RLock()
        # a settled request's future kept compact once only the records hold it
        # (corral.client.future_table): one object fewer per held result for the collector
        self.futures = FutureTable(self._defer, self._future_lock)
        self._future_entries = self.futures.entries
        self._holders: dict[str, int] = {}  # msg_id -> AsyncResults holding it
        self._released: collections.deque[Sequence[str]] = collections.deque()
        self._orphans: set[str] = set()  # released while unfinished: forgotten once settled
        self._stale: set[str] = set()  # forgotten, still in ``history`` until it is compacted
        self.published = PublishedData(self._defer, lambda msg_id: msg_id in self.metadata)
        self.compactions = 0  # how often ``history`` was compacted (views trim theirs then)
        # the answered requests (direct and load-balanced) forgotten since (no AsyncResult
        # held them), per engine: see :meth:`forgotten_answers`
        self.forgotten = ForgottenAnswers()
        self._unknown_to_hub: set[str] = set()  # see :meth:`fail_unknown`
        # monotonic time the controller link last dropped (set by the client's link): the
        # answers got just before it may be all that is left of their tasks
        self.last_outage: float | None = None

    # ------------------------------------------------------------------ submitting thread

    def track(
        self,
        msg: Message,
        channel: str,
        engine_uuid: str | None = None,
        engine_id: int | None = None,
        *,
        in_history: bool = True,
        sweep: bool = True,
    ) -> RequestFuture:
        """Register an apply, execute or control request before it is sent. ``sweep=False``:
        the caller calls :meth:`sweep` itself (the client: before it builds the request, so
        that once the request is sent its thread has nothing left to do)."""
        header = msg.header
        msg_id: str = header["msg_id"]
        future = RequestFuture(self._defer, channel, engine_uuid, self._future_lock)
        request_metadata = msg.metadata
        after = request_metadata.get("after")
        follow = request_metadata.get("follow")
        label = request_metadata.get("label")
        self._metadata_entries[msg_id] = compact_request(
            msg_id,
            wire_date(header.get("date")),
            engine_uuid,
            engine_id,
            None if after is None and follow is None and label is None else (after, follow, label),
        )
        if header["msg_type"] == "execute_request" and (msg.content or {}).get("silent"):
            self._silent.add(msg_id)
        self._future_entries[msg_id] = future
        if in_history:
            with self._lock:
                self.history.append(msg_id)
            self.outstanding.add(msg_id)
        self.pending[msg_id] = future  # its own entry (see RequestFuture)
        if sweep:
            self.sweep()
        return future

    def track_service(
        self,
        msg_id: str,
        channel: str,
        on_reply: Callable[[Message], None] | None = None,
        request: Message | None = None,
    ) -> Future[Any]:
        """Register a Hub query; its future gets the reply Message (unless ``on_reply``).
        ``request``: the query, which may be sent again after an outage (it must be safe to
        answer twice: the second answer finds nothing pending and is dropped)."""
        future: Future[Any] = Future()
        self.pending[msg_id] = Pending(future, SERVICE, channel, on_reply=on_reply, request=request)
        return future

    def future_for(self, msg_id: str) -> tuple[RequestFuture, bool]:
        """The future of ``msg_id``, and whether it was created now (a result this client did
        not submit, to be fetched from the Hub)."""
        future = self.futures.get(msg_id)
        if future is not None:
            if not self._unknown_to_hub or msg_id not in self._unknown_to_hub:
                return future, False
            with self._lock:  # the Hub never saw it when asked: start over, ask again
                self._unknown_to_hub.discard(msg_id)
                self._forget_locked([msg_id], compact=False)
        future = self.futures.setdefault(msg_id, RequestFuture(self._defer))
        return future, True

    def outage_within(self, seconds: float) -> bool:
        """Whether the controller link dropped within the last ``seconds``."""
        last = self.last_outage
        return last is not None and time.monotonic() - last <= seconds

    def fail_unknown(self, msg_id: str, error: BaseException) -> None:
        """(I/O thread) The Hub had no record of ``msg_id``, another client's task a
        get_result asked for, however long it was asked: settled with ``error``, and a later
        :meth:`future_for` starts over (a later get_result asks the Hub again, which may know
        the task by then: after a controller restart, the client that has the answer reports
        it once the engine's end is announced). Without this a get_result served the first
        one's error for as long as an AsyncResult held it."""
        self._unknown_to_hub.add(msg_id)
        self.complete_error(msg_id, error)

    # ------------------------------------------------------------------ I/O thread

    def handle_reply(self, msg: Message, *, again: bool = False) -> bool:
        """Settle the request ``msg`` answers; False if none is pending (late or foreign).
        ``again``: its handling was cut (Ctrl-C on a thread reading its reply, see
        corral.client.socket_gate), maybe after it was taken from ``pending``: a request
        not pending but not settled either is then settled by this reply."""
        parent = msg.parent_id
        pending = self.pending.pop(parent, None) if parent is not None else None
        if pending is None and again and parent is not None:
            future = self.futures.get(parent)
            if future is not None and not future.done() and parent not in self.pending:
                pending = future
        if pending is None:
            self.late_replies += 1
            return False
        if pending.kind == SERVICE:
            if pending.on_reply is not None:
                pending.on_reply(msg)
            else:
                settle(pending.future, msg, failed=False)
            return True
        assert parent is not None
        self.complete(
            parent,
            header=msg.header,
            content=msg.content or {},
            metadata=msg.metadata,
            buffers=msg.buffers,
            future=pending.future,
        )
        return True

    def complete(
        self,
        msg_id: str,
        *,
        header: dict[str, Any],
        content: dict[str, Any],
        metadata: dict[str, Any],
        buffers: Iterable[Frame] = (),
        future: Future[Any] | None = None,
        submitted: object = None,
    ) -> None:
        """Record a reply (from the engine, the scheduler, or the Hub's store); its value is
        deserialized and the future settled through ``defer``. The usual apply reply is kept
        in the request's compact metadata (corral.client.metadata_table), anything else in
        its ``Metadata``."""
        if future is None:
            future = self.futures.setdefault(msg_id, RequestFuture(self._defer))
        with self._output_lock:
            entry: Any = self._metadata_entries.get(msg_id)
            compact = type(entry) is tuple
            if compact:
                # the request's own string, not the reply's equal copy, which ``results``
                # would keep as a second key for as long as the result is held
                msg_id = entry[MSG_ID]
            if (
                compact
                and len(entry) == UNANSWERED
                and submitted is None
                and type(metadata) is dict
                and header.get("msg_type") == "apply_reply"
                and RESULT_KEYS.isdisjoint(metadata)
                and None not in metadata.values()
            ):
                status = content.get("status", metadata.get("status"))
                self.metadata.record_reply(entry, metadata, status, self._clock())
            else:
                md = self.metadata.full(msg_id)
                if md is None:
                    md = self._metadata_entries[msg_id] = Metadata(msg_id=msg_id)
                if submitted is not None and md["submitted"] is None:
                    md["submitted"] = parse_date(submitted)
                received = datetime.fromtimestamp(self._clock(), UTC)
                update_from_reply(md, metadata, content, received, msg_id in self._silent)
                if "execute_result" in metadata:
                    self._silent.discard(msg_id)
            if "stdout" in metadata or "stderr" in metadata:  # every engine's reply says
                if type(future) is RequestFuture:  # the table's entry: marked without a lookup
                    future.streams_final = True
                else:
                    self.futures.mark(msg_id, final=True)
        frames = buffers if type(buffers) is tuple else tuple(buffers)  # a reply's: a tuple
        if isinstance(future, RequestFuture) and future.allow_inline and settles_inline(frames):
            try:
                outcome = self._outcome(msg_id, header, content, frames, loaded_only=True)
            except ImportNeeded:
                pass  # deserialized on the results worker, which may import
            else:
                future.settling_inline = True
                try:
                    self._finish_reply(msg_id, outcome, future)
                finally:
                    future.settling_inline = False
                return
        # a partial, not a closure: compiled, a closure's environment here lost a variable now
        # and then before the results worker ran it (AttributeError there; the get() hung)
        self._defer(partial(self._settle_reply, msg_id, header, content, frames, future))

    def _settle_reply(
        self,
        msg_id: str,
        header: dict[str, Any],
        content: dict[str, Any],
        buffers: Sequence[Frame],
        future: Future[Any],
    ) -> None:
        self._finish_reply(msg_id, self._outcome(msg_id, header, content, buffers), future)

    def _finish_reply(self, msg_id: str, outcome: tuple[Any, bool], future: Future[Any]) -> None:
        value, failed = outcome
        if failed:
            with self._output_lock:
                full = self.metadata.full(msg_id)  # None: purged meanwhile
                if full is not None:
                    full["error"] = value
        self.results[msg_id] = value
        self.outstanding.discard(msg_id)
        settle(future, value, failed)
        if type(future) is RequestFuture and future.let_go:  # told its owner, which let it go
            self.futures.compact(msg_id, future, value, failed)
        self._settled(msg_id)

    def fail(self, msg_id: str, error: BaseException, *, at_once: bool = False) -> bool:
        """Settle a pending request with ``error``; False if it was already settled.
        ``at_once``: settle on this thread rather than through ``defer`` (a submitting thread
        failing its own request before it was sent, so the caller sees it done)."""
        pending = self.pending.pop(msg_id, None)
        if pending is None:
            return False
        self._fail(msg_id, pending, error, at_once)
        return True

    def fail_engine(self, engine_uuid: str, error: Callable[[], BaseException]) -> list[str]:
        """Fail every request sent straight to ``engine_uuid`` (MUX or control): it is gone
        and they can never be answered. Load-balanced tasks are left to the scheduler."""
        failed = []
        for msg_id, pending in list(self.pending.items()):
            if pending.engine_uuid == engine_uuid and pending.channel in ("mux", "control"):
                if self.fail(msg_id, error()):
                    failed.append(msg_id)
        return failed

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """Fail everything pending (the client is closing)."""
        for msg_id in list(self.pending):
            self.fail(msg_id, error())

    def handle_iopub(self, msg: Message) -> None:
        """Output of a request while it runs: streams, displays, execute results."""
        with self._output_lock:
            self._record_output(msg)

    def _record_output(self, msg: Message) -> None:
        parent = msg.parent_id
        if parent is None:
            return
        if msg.msg_type != "data_message":
            marks = self.futures.marks(parent)
            if marks is not None and marks[1]:
                return  # its reply said what it printed
        md = self.metadata.full(parent)
        if md is not None and msg.msg_type == "data_message":
            self.published.receive(parent, md, msg)  # counts after the reply too
            return
        content = msg.content
        if md is None or content is None:
            return
        if md["engine_id"] is None:  # a load-balanced task: its engine is in the topic
            md["engine_id"] = _topic_engine_id(msg.idents)
        kind = msg.msg_type
        if kind == "stream":
            name = content.get("name")
            if name in ("stdout", "stderr"):
                md[name] += str(content.get("text", ""))
        elif kind == "execute_input":
            md["execute_input"] = content.get("code")
        elif kind == "execute_result":
            md["execute_result"] = dict(content)
        elif kind == "display_data":
            md["outputs"].append(content)
        listener = self.iopub_listeners.get(parent)
        if listener is not None:  # it prints: through ``defer``, never on the routing thread
            self._defer(partial(listener, msg))

    # ------------------------------------------------------------------ helpers

    def complete_error(
        self,
        msg_id: str,
        error: BaseException,
        future: Future[Any] | None = None,
        *,
        at_once: bool = False,
    ) -> None:
        """Record that ``msg_id`` failed without a reply (engine lost, Hub unreachable, the
        client closed) and settle its future."""
        with self._output_lock:
            md = self.metadata.full(msg_id)
            if md is None:
                md = self._metadata_entries[msg_id] = Metadata(msg_id=msg_id)
            md["status"] = "error"
            md["error"] = error
            md["received"] = datetime.fromtimestamp(self._clock(), UTC)
        if future is None:
            future = self.futures.setdefault(msg_id, RequestFuture(self._defer))
        defer = _run_now if at_once else self._defer
        defer(partial(self._settle_error, msg_id, error, future))

    def _settle_error(self, msg_id: str, error: BaseException, future: Future[Any]) -> None:
        self.results[msg_id] = error
        self.outstanding.discard(msg_id)
        settle(future, error, failed=True)
        self._settled(msg_id)

    def forget(self, msg_ids: Iterable[str], *, compact: bool = True) -> int:
        """Drop what is kept of finished requests (results, metadata, history); requests still
        pending are kept. How many were forgotten. ``compact=False`` (releases) leaves them in
        ``history`` until as many are stale there as there are live records: one compaction
        per that many releases, so releasing one at a time costs no quadratic time."""
        with self._lock:
            return self._forget_locked(msg_ids, compact)

    def _forget_locked(self, msg_ids: Iterable[str], compact: bool) -> int:
        """:meth:`forget`, holding the lock (a sweep forgets what it found under it). The sets
        that are usually empty (silent executes, trackers, orphans) are only looked at when
        they are not: a request is added to each before it is settled, so never during this."""
        futures, pending, results, metadata = (
            self._future_entries,
            self.pending,
            self.results,
            self._metadata_entries,
        )
        silent, trackers, orphans = self._silent, self.trackers, self._orphans
        future_lock = self._future_lock
        forgotten = self.forgotten
        dropped = set()
        for msg_id in msg_ids:
            future = futures.get(msg_id)
            if msg_id in pending or (
                future is not None and type(future) is not tuple and not future.done()
            ):
                continue
            with future_lock:  # ordered with a compaction of its entry (FutureTable.compact)
                futures.pop(msg_id, None)
            results.pop(msg_id, None)
            entry = metadata.pop(msg_id, None)
            if entry is not None:
                engine = answering_engine(entry)
                if engine is not None:
                    forgotten.add(msg_id, engine, entry)
            if silent:
                silent.discard(msg_id)
            if trackers:
                trackers.pop(msg_id, None)
            if orphans:
                orphans.discard(msg_id)
            if self._unknown_to_hub:
                self._unknown_to_hub.discard(msg_id)
            dropped.add(msg_id)
        if dropped:
            self.published.forget(dropped)
            self._stale |= dropped
            forgotten.bound()
        if self._stale and (compact or len(self._stale) >= max(_STALE_MIN, len(futures))):
            self.history = [m for m in self.history if m not in self._stale]
            self._stale.clear()
            self.compactions += 1
        return len(dropped)

    def forgotten_answers(self, engine_uuid: str) -> list[tuple[str, Any]]:
        """``(msg_id, metadata entry)`` of the requests the engine ``engine_uuid`` answered
        (direct and load-balanced) that were forgotten lately (no AsyncResult held them:
        ``rc[0].apply_async(f).get()``), oldest first, at most 10,000. The
        engine that answered sends the Hub its own copy of each reply; if it dies before the
        Hub read them, only this client knows those tasks were answered, and its report of
        the engine's end names them (:func:`corral.client.link.answered_by`): without this,
        the records forgotten here were left out and such a task was never recorded
        (bench/chaos_mixed.py seed 34). Kept per engine: an engine that hung (its copies
        unsent) until it was found dead keeps its latest answers however many the others
        gave meanwhile (:mod:`corral.client.forgotten_answers`). An entry is a compact tuple
        (:func:`~corral.client.metadata_table.compact_value` reads it) or a
        :class:`Metadata`."""
        with self._lock:
            return self.forgotten.of(engine_uuid)

    def forgotten_engines(self) -> list[str]:
        """The engines :meth:`forgotten_answers` keeps answers of."""
        with self._lock:
            return self.forgotten.engines()

    def drop_forgotten_answers(self, engine_uuid: str) -> None:
        """The engine ``engine_uuid``'s end was reported: its answers need not be kept."""
        with self._lock:
            self.forgotten.drop(engine_uuid)

    # ------------------------------------------------------------------ holding

    def hold(self, msg_ids: Iterable[str]) -> None:
        """An AsyncResult now holds ``msg_ids``: keep their records while it lives."""
        with self._lock:
            for msg_id in msg_ids:
                self._holders[msg_id] = self._holders.get(msg_id, 0) + 1
                self._orphans.discard(msg_id)

    def release(self, msg_ids: Sequence[str]) -> None:
        """An AsyncResult holding ``msg_ids`` is gone (its finalizer: any thread, any time).
        Only queued here; applied at the next settlement or ``track``."""
        self._released.append(msg_ids)

    def take(self, msg_ids: Iterable[str]) -> None:
        """An owning AsyncResult has finished: ``Client.results``/``metadata`` stop showing
        ``msg_ids`` (ipyparallel's rule, see corral.client.cache); kept here while held.
        The mark is on the request's future (or its compact entry): a set of them was one
        more table entry per held result."""
        futures = self.futures
        for msg_id in msg_ids:
            futures.mark(msg_id, taken=True)

    def is_taken(self, msg_id: object) -> bool:
        """Whether an owning AsyncResult took ``msg_id`` (see :meth:`take`)."""
        marks = self.futures.marks(msg_id) if type(msg_id) is str else None
        return marks is not None and marks[0]

    def untake(self, msg_id: str) -> None:
        """The client's caches show ``msg_id`` again (a user wrote its result back)."""
        self.futures.mark(msg_id, taken=False)

    @property
    def taken(self) -> set[str]:
        """The msg_ids taken by their owners (a scan, for checks and tests)."""
        futures = self.futures
        return {msg_id for msg_id in futures if (futures.marks(msg_id) or (False,))[0]}

    @property
    def held(self) -> int:
        """How many requests some AsyncResult holds now."""
        return len(self._holders)

    def _settled(self, msg_id: str) -> None:
        """(Settling thread) Tell ``on_settled``; forget ``msg_id`` if it was released while
        unfinished; apply the releases queued meanwhile. The look at the orphans holds the
        lock: a reply settled on the I/O thread may race a sweep on the results worker, which
        marks the orphan under it only while the future is not done."""
        if self._on_settled is not None:
            self._on_settled(msg_id)
        with self._lock:
            orphan = msg_id in self._orphans
        if orphan:
            self.forget([msg_id], compact=False)
        self.sweep()

    def sweep(self) -> None:
        """Apply queued releases: a request no AsyncResult holds is forgotten if finished,
        else when it settles. Called where no lock is held (``track``, after a settlement,
        and by the client before it builds a request): any thread; the lock orders it with
        settlements on other threads (``_settled``)."""
        if not self._released:
            return
        finished = []
        with self._lock:
            while self._released:
                for msg_id in self._released.popleft():
                    left = self._holders.get(msg_id, 0) - 1
                    if left > 0:
                        self._holders[msg_id] = left
                        continue
                    self._holders.pop(msg_id, None)
                    if msg_id in self.pending or self.futures.is_done(msg_id) is False:
                        self._orphans.add(msg_id)
                    else:
                        finished.append(msg_id)
            if finished:
                self._forget_locked(finished, compact=False)

    def _fail(
        self, msg_id: str, pending: Pending | RequestFuture, error: BaseException, at_once: bool
    ) -> None:
        if pending.kind == TASK:
            self.complete_error(msg_id, error, pending.future, at_once=at_once)
        else:
            settle(pending.future, error, failed=True)

    def _outcome(
        self,
        msg_id: str,
        header: dict[str, Any],
        content: dict[str, Any],
        buffers: Sequence[Frame],
        *,
        loaded_only: bool = False,
    ) -> tuple[Any, bool]:
        if content.get("status", "error") != "ok":
            error = error_from_content(dict(content))
            if error.engine_id is None:
                error.engine_id = self.metadata.value(msg_id, "engine_id", None)
            if error.engine_uuid is None:
                error.engine_uuid = self.metadata.value(msg_id, "engine_uuid", None)
            if error.method is None:
                reply_type = header.get("msg_type")
                error.method = "execute" if reply_type == "execute_reply" else "apply"
            return error, True
        msg_type = header.get("msg_type")
        if msg_type == "execute_reply":
            # its Metadata (only apply replies are kept compact), which a user reads through it
            md = self.metadata.get(msg_id) or Metadata(msg_id=msg_id)
            return ExecuteReply(msg_id, content, md), False
        if msg_type == "abort_reply":
            return list(content.get("running", [])), False  # tasks left running, if asked
        if msg_type != "apply_reply":
            return None, False  # other control replies carry no value
        try:
            return deserialize_object(buffers, loaded_only=loaded_only), False
        except ImportNeeded:
            raise
        except CorralError as exc:
            log.warning("client: cannot deserialize the result of %s: %s", msg_id, exc)
            return exc, True


_STALE_MIN: Final = 256  # forgotten msg_ids that may wait in ``history`` before it is compacted


def _run_now(call: Callable[[], None]) -> None:
    call()


def _topic_engine_id(idents: tuple[bytes, ...]) -> int | None:
    """The engine id in an iopub topic ``engine.<id>.<msg_type>``, or None."""
    if not idents or not idents[0].startswith(b"engine."):
        return None
    try:
        return int(idents[0].split(b".")[1])
    except ValueError:
        return None
