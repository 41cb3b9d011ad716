"""The Client's questions to the Hub: queue status, results held there, purging, the task
database.

These are the calls that go to the Hub rather than to engines. They are a mixin of
:class:`corral.client.client.Client` (which owns the connection, ``_query`` and the records),
kept here so that the Client module holds the connection and the engine table only.

Results of requests this client did not send are fetched from the Hub by the I/O thread,
which asks again, backing off, while they are pending: a second client's ``get_result`` of a
running task returns an :class:`AsyncHubResult` at once, and it completes (with the value or
the remote error) when the task does.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from corral import heap
from corral.bounded_tables import drop_oldest
from corral.client.asyncresult import AsyncHubResult, AsyncResult
from corral.client.metadata import parse_date
from corral.client.recovery import RESENDABLE
from corral.errors import (
    ConnectionError,
    QueryError,
    RemoteError,
    ResultNotStored,
    ResultPurged,
    purged_message,
)
from corral.protocol.session import Frame, Message

FETCH_CHUNK = 1000  # results per result_request when many are fetched at once (recovery)

if TYPE_CHECKING:
    from corral.client.client import Client
    from corral.client.io_shell import ClientIO
    from corral.client.records import Records
    from corral.client.submitter import Target, Targets
    from corral.client.view import View
    from corral.protocol.session import Session
    from corral.sharedmem import SharedMemory

log = logging.getLogger("corral.client")

__all__ = ["HubQueries"]

_DB_DATE_KEYS = ("submitted", "started", "completed", "received")
#: Fields a full record has even when the task has none (ipyparallel's records always do;
#: the Hub writes them only for tasks that have them: execute requests, errors)
_ALWAYS_PRESENT = ("label", "execute_input", "execute_result", "error")
#: Resubmitted tasks are followed through the Hub alone (their replies go to it, not to the
#: client): asked about at most this many seconds apart, so a short task is seen done soon.
RESUBMIT_POLL_CEILING = 0.1
#: A local purge gives the freed memory back to the system (:mod:`corral.heap`) once 10,000
#: records or more were forgotten since the last time, at most once a second.
PURGE_TRIM_SCHEDULE = (10_000, 1.0, 1.0)
#: A purge of "all" names this many of the latest results as settled (``_settled``): far
#: more than can finish within the delay of the Hub's copies.
SETTLED_LATEST = 10_000
#: The msg_ids of the latest purges of the Hub's records remembered (``_purged_from_hub``).
PURGED_REMEMBERED = 20_000


class HubQueries:
    """Hub queries of a Client (see the module doc)."""

    if TYPE_CHECKING:  # provided by Client
        _records: Records
        _purged_from_hub: dict[str, None]
        _io: ClientIO
        session: Session
        timeout: float
        block: bool
        _shm: SharedMemory
        _views: weakref.WeakSet[View]
        _controller: str | None
        _trim: heap.TrimSchedule

        @property
        def ids(self) -> list[int]: ...
        def _query(
            self, msg_type: str, content: dict[str, Any], refused: bool = False
        ) -> Message: ...
        def _resend(self, msg_id: str, why: str) -> bool: ...
        def msg_ids_of(self, jobs: Any) -> list[str]: ...
        def resolve_targets(self, targets: Targets) -> list[Target]: ...

    # ------------------------------------------------------------------ queue and results

    def queue_status(self, targets: Targets = None, verbose: bool = False) -> dict[Any, Any]:
        """Per engine id: counts (or lists of msg_ids, ``verbose``) of ``queue`` (sent
        directly, not answered), ``tasks`` (load-balanced, running) and ``completed``; plus
        ``unassigned``: tasks the scheduler holds (a count, or their msg_ids with ``verbose``).
        One engine's dict alone if ``targets`` is an int."""
        ids = (
            None
            if targets is None or targets == "all"
            else [engine_id for engine_id, _ in self.resolve_targets(targets)]
        )
        content = self._query("queue_request", {"targets": ids, "verbose": verbose}).content or {}
        status: dict[Any, Any] = {}
        for key, value in content.items():
            if key != "status":
                status[int(key) if key.isdigit() else key] = value
        if isinstance(targets, int) and not isinstance(targets, bool):
            return dict(status[targets])
        return status

    def result_status(self, msg_ids: Any, status_only: bool = True) -> dict[str, Any]:
        """Which of ``msg_ids`` the Hub has seen answered (``completed``) or not (``pending``).
        With ``status_only=False`` the completed results are fetched into ``results`` too."""
        ids = self.msg_ids_of(msg_ids)
        reply = self._query("result_request", {"msg_ids": ids, "statusonly": status_only})
        content = reply.content or {}
        if not status_only:
            self._store_hub_results(content, reply.buffers)
        return {
            "pending": list(content.get("pending", [])),
            "completed": list(content.get("completed", [])),
        }

    def get_result(
        self, indices_or_msg_ids: Any = -1, block: bool | None = None, owner: bool = True
    ) -> Any:
        """An AsyncResult for earlier requests: an index into ``history``, a msg_id, an
        AsyncResult, or a list of those.

        Requests this client knows resolve as they would anyway (an AsyncResult); others
        (sent by another client) give an :class:`AsyncHubResult`, fetched from the Hub and
        asked for again until they are done. ``owner``: once done, the AsyncResult takes
        them out of ``results`` and ``metadata`` (as ipyparallel's; see corral.client.cache);
        ``view.get_result`` defaults to False. ``block``: wait for it first (None:
        ``client.block``).
        """
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        single = isinstance(indices_or_msg_ids, str | int) or (
            isinstance(indices_or_msg_ids, AsyncResult) and len(indices_or_msg_ids.msg_ids) == 1
        )
        msg_ids = self.msg_ids_of(indices_or_msg_ids)
        unknown = [m for m in msg_ids if self._records.future_for(m)[1]]
        cls = AsyncResult
        if unknown:
            cls = AsyncHubResult
            self._io.call_soon(lambda: self._fetch_in_chunks(unknown))
        result = cls(
            self._records,
            msg_ids,
            fname="get_result",
            single=single,
            client=cast("Client", self),
            owner=owner,
        )
        if self.block if block is None else block:
            result.wait()
        return result

    def resubmit(
        self,
        indices_or_msg_ids: Any = None,
        metadata: dict[str, Any] | None = None,
        block: bool | None = None,
    ) -> AsyncHubResult:
        """Run finished (or failed, or aborted) tasks again, from the Hub's record of them.

        ``indices_or_msg_ids``: as for :meth:`get_result` (default: the last request). The Hub
        sends each again under a new msg_id (load-balanced ones through the scheduler, with
        their dependencies, retries and timeout; direct ones to the same engine, which must
        still be registered) and the result is an :class:`AsyncHubResult` for the new msg_ids,
        fetched from the Hub as they finish. ``metadata`` (corral only; ignored by
        ipyparallel) replaces fields of the recorded metadata, e.g. ``{"retries": 2}``.
        ``block``: wait for the results first (None: ``client.block``).

        A refusal raises :class:`RemoteError` as ipyparallel's does, and nothing is sent:
        ``ename`` ``KeyError`` for a msg_id the Hub has no record of, ``RequestNotStored``
        when the store did not keep the request's buffers (``--store-buffer-limit``),
        ``EngineError`` for a direct task whose engine is gone. A task still running may be
        resubmitted (as in ipyparallel): the copy runs beside it.
        """
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        msg_ids = self.msg_ids_of(indices_or_msg_ids)
        content: dict[str, Any] = {"msg_ids": msg_ids, **self._meant_for()}
        if metadata:
            content["metadata"] = dict(metadata)
        reply = self._query("resubmit_request", content, refused=True)
        answer = reply.content or {}
        if answer.get("status") != "ok":
            raise RemoteError(
                str(answer.get("ename", "error")),
                str(answer.get("evalue", "")),
                answer.get("traceback") or [],
            )
        mapping = answer.get("resubmitted")
        if not isinstance(mapping, dict) or not all(m in mapping for m in msg_ids):
            raise QueryError(f"resubmit_reply without the new msg_ids of {msg_ids}: {answer}")
        new_ids = [str(mapping[msg_id]) for msg_id in msg_ids]
        for new_id in new_ids:
            self._records.future_for(new_id)
        deadline = time.monotonic() + self.timeout
        self._io.call_soon(
            lambda: self._fetch_results(new_ids, 0.0, deadline, RESUBMIT_POLL_CEILING)
        )
        result = AsyncHubResult(
            self._records, new_ids, fname="resubmit", client=cast("Client", self)
        )
        if self.block if block is None else block:
            result.wait()
        return result

    def _fetch_in_chunks(self, msg_ids: list[str]) -> None:
        """(I/O thread) Fetch many results from the Hub, ``FETCH_CHUNK`` per request, each
        sent once the one before is answered (or timed out). The Hub serves one request at a
        time between its heartbeats: after a controller restart a client fetched tens of
        thousands of results in one request, which kept the Hub from its pings, engine
        registrations and every other query for seconds."""
        chunk, rest = msg_ids[:FETCH_CHUNK], msg_ids[FETCH_CHUNK:]
        then = (lambda: self._fetch_in_chunks(rest)) if rest else None
        self._fetch_results(chunk, 0.0, time.monotonic() + self.timeout, then=then)

    def _fetch_results(
        self,
        msg_ids: list[str],
        delay: float,
        unknown_until: float,
        ceiling: float = 1.0,
        then: Callable[[], None] | None = None,
    ) -> None:
        """(I/O thread) Ask the Hub for results; ask again, backing off up to ``ceiling``
        seconds, while some are pending.
        A msg_id the Hub has not seen yet counts as pending until ``unknown_until`` (its copy
        may still be on its way from a client that just submitted it), then fails with
        QueryError. No answer within ``timeout`` fails them with ConnectionError. ``then`` is
        called once this first answer (or its timeout) is handled."""
        msg = self.session.msg(
            "result_request",
            {"msg_ids": msg_ids, "statusonly": False, "unknown_pending": True},
            metadata=self._shm.reader_metadata(),
        )
        records = self._records

        def on_reply(reply: Message) -> None:
            content = reply.content or {}
            if content.get("status") != "ok":
                error = QueryError(
                    f"result_request refused: {content.get('ename')}: {content.get('evalue')}"
                )
                for msg_id in msg_ids:
                    records.complete_error(msg_id, error)
                if then is not None:
                    then()
                return
            self._store_hub_results(content, reply.buffers)
            purged = content.get("purged")
            if isinstance(purged, dict):
                for msg_id, why in purged.items():
                    records.complete_error(msg_id, ResultPurged(purged_message(msg_id, str(why))))
            unknown = set(content.get("unknown", []))
            if unknown and time.monotonic() > unknown_until:
                for msg_id in unknown:
                    records.fail_unknown(
                        msg_id, QueryError(f"no such msg_id: {msg_id} (the Hub never saw it)")
                    )
                unknown = set()
            still_pending = set(content.get("pending", [])) | unknown
            pending = [m for m in msg_ids if m in still_pending]
            if pending:
                later = min(max(delay * 2, 0.02), ceiling)
                self._io.call_later(
                    later, lambda: self._fetch_results(pending, later, unknown_until, ceiling)
                )
            if then is not None:
                then()

        def on_timeout() -> None:
            if records.pending.pop(msg.msg_id, None) is not None:
                error = ConnectionError(
                    f"the Hub did not answer result_request within {self.timeout} s"
                )
                for msg_id in msg_ids:
                    records.complete_error(msg_id, error)
                if then is not None:
                    then()

        records.track_service(msg.msg_id, "hub", on_reply=on_reply, request=msg)
        self._io.send_now("hub", self.session.serialize(msg))
        self._io.call_later(self.timeout, on_timeout)

    def _store_hub_results(self, content: dict[str, Any], buffers: Sequence[Frame]) -> None:
        offset = 0
        resent: list[str] = []
        for msg_id in content.get("completed", []):
            record = content.get(msg_id)
            if not isinstance(record, dict):
                continue
            count = int(record.get("buffer_count", 0))
            future = self._records.futures.get(msg_id)
            if future is not None and future.done():
                offset += count
                continue  # answered directly meanwhile
            if (record.get("metadata") or {}).get(RESENDABLE) and self._resend(
                msg_id, "the controller restarted while it waited in the task scheduler"
            ):
                resent.append(msg_id)
                offset += count
                continue
            self._records.pending.pop(msg_id, None)  # settled from the store: a reply is late
            if isinstance(record.get("not_stored"), str):
                self._records.complete_error(msg_id, ResultNotStored(record["not_stored"]))
                continue
            self._records.complete(
                msg_id,
                header=record.get("header") or {},
                content=record.get("content") or {},
                metadata=record.get("metadata") or {},
                buffers=buffers[offset : offset + count],
                submitted=(record.get("parent_header") or {}).get("date"),
            )
            offset += count
        if resent:
            log.warning(
                "client: %d task(s) sent again: the controller restarted while they waited in "
                "the task scheduler (the first: %s)",
                len(resent),
                resent[0],
            )

    # ------------------------------------------------------------------ purging

    def purge_hub_results(self, jobs: Any = (), targets: Iterable[int] | int | str = ()) -> None:
        """Make the Hub forget results: of ``jobs`` (msg_ids, AsyncResults, or ``"all"``) and
        of everything that ran on ``targets`` (engine ids, or ``"all"``). Pending tasks cannot
        be purged (QueryError).

        A task whose result this client already holds is done, whatever the Hub knows yet:
        the copies that tell the Hub a task finished travel apart from the reply, so the Hub
        may still have it pending or unknown when the purge comes. Such a task is dropped as
        soon as the Hub records its end (its result, or its engine's death), never refused
        nor left behind: after ``purge_results("all")`` right after every ``get()``, the
        Hub ends up holding none of them (ipyparallel's Hub refused a pending msg_id, and
        left pending ones behind on "all")."""
        msg_ids: list[str] | str = "all" if jobs == "all" else self.msg_ids_of(jobs)
        if not msg_ids and not targets:
            raise ValueError("say what to purge: jobs (msg_ids, AsyncResults or 'all') or targets")
        content = {"msg_ids": msg_ids, "engine_ids": self._engine_ids(targets)}
        settled = self._settled(msg_ids)
        if settled:
            content["settled"] = settled
        self._query("purge_request", {**content, **self._meant_for()})
        # a report of a dead engine's answered tasks must not make their records again
        # (corral.client.link.answered_by): the latest ones, which it could name
        purged = self._purged_from_hub
        purged.update(dict.fromkeys(settled if msg_ids == "all" else msg_ids))
        drop_oldest(purged, PURGED_REMEMBERED)

    def _settled(self, msg_ids: list[str] | str) -> list[str]:
        """Of the results a purge names, those this client holds: the Hub may not have the
        copies that finish them yet (they travel apart from the replies) and purges them once
        they come (docs/wire-flows.md, "Purging"). For ``"all"``, the latest results, which
        are the only ones whose copies can still be on their way."""
        results = self._records.results
        if msg_ids == "all":
            return list(results)[-SETTLED_LATEST:]  # one copy in C: safe beside the I/O thread
        return [msg_id for msg_id in msg_ids if msg_id in results]

    def _meant_for(self) -> dict[str, str]:
        """The controller run a request that changes state is meant for: the Hub refuses it
        if it reaches a later run (zmq queues a request sent while the controller is gone)."""
        return {"controller": self._controller} if self._controller else {}

    def purge_local_results(self, jobs: Any = (), targets: Iterable[int] | int | str = ()) -> None:
        """Forget results this client holds: of ``jobs`` (msg_ids, AsyncResults or ``"all"``)
        and of what ran on ``targets``. RuntimeError if one of them is still outstanding."""
        records = self._records
        if jobs == "all":
            if records.outstanding:
                raise RuntimeError(
                    f"cannot purge all local results: {len(records.outstanding)} are outstanding"
                )
            forgotten = records.forget(list(records.results) + list(records.metadata))
            self._trim_view_histories()
            self._give_back(forgotten)
            return
        msg_ids = self.msg_ids_of(jobs)
        engine_ids = set(self._engine_ids(targets))
        if engine_ids:
            value = records.metadata.value
            msg_ids += [
                msg_id
                for msg_id in records.metadata
                if value(msg_id, "engine_id", None) in engine_ids
                and msg_id not in records.outstanding
            ]
        busy = [m for m in msg_ids if m in records.outstanding]
        if busy:
            raise RuntimeError(f"cannot purge outstanding results: {busy[:3]}")
        forgotten = records.forget(msg_ids)
        self._trim_view_histories()
        self._give_back(forgotten)

    def _give_back(self, forgotten: int) -> None:
        """After a purge: what the forgotten records held is free, but the C allocator keeps
        it (corral.heap); give it back to the system when the schedule says so, so that a
        client purging as it goes stays flat over millions of tasks."""
        if self._trim.due(time.monotonic(), forgotten, idle=True):
            heap.trim()

    def _trim_view_histories(self) -> None:
        """Views' histories keep only what the records still hold: purging keeps the
        client's memory flat over any number of tasks."""
        kept = self._records.futures
        for view in list(self._views):
            view.history = [msg_id for msg_id in view.history if msg_id in kept]

    def purge_results(self, jobs: Any = (), targets: Iterable[int] | int | str = ()) -> None:
        """Forget results both here and in the Hub (``purge_local_results`` and
        ``purge_hub_results``)."""
        self.purge_hub_results(jobs, targets)
        self.purge_local_results(jobs, targets)

    def purge_everything(self) -> None:
        """Forget every result, here and in the Hub, and this client's history. (The session's
        record of message signatures seen is kept: it is what refuses replayed messages.)"""
        self.purge_results("all", "all" if self.ids else ())
        self._records.history.clear()

    def _engine_ids(self, targets: Iterable[int] | int | str) -> list[int]:
        if targets == "all":
            return self.ids
        if isinstance(targets, int):
            return [targets]
        return [int(t) for t in targets]

    # ------------------------------------------------------------------ database

    def hub_history(self) -> list[str]:
        """Every msg_id the Hub has recorded, oldest first."""
        content = self._query("history_request", {}).content or {}
        return list(content.get("history", []))

    def db_query(
        self, query: dict[str, Any], keys: list[str] | str | None = None
    ) -> list[dict[str, Any]]:
        """Task records matching a MongoDB-style ``query`` (``{"completed": {"$ne": None}}``),
        with only ``keys`` if given (``msg_id`` is always included; without ``keys`` the
        buffers are left out). Dates come back as datetimes, buffers as frames. As in
        ipyparallel, whose records hold every field, a record has each key asked for (None
        when the task has no such field) and, without ``keys``, ``label``, ``execute_input``,
        ``execute_result`` and ``error`` (None when the task has none).
        Query operators: see corral.controller.store.query (ipyparallel's, with ``$glob``)."""
        if isinstance(keys, str):
            keys = [keys]
        if keys is not None and "msg_id" not in keys:
            keys = ["msg_id", *keys]
        content = {"query": query} if keys is None else {"query": query, "keys": keys}
        reply = self._query("db_request", content)
        records: list[dict[str, Any]] = list((reply.content or {}).get("records", []))
        offset = 0
        for record in records:
            for name in ("result_buffers", "buffers"):
                count_key = name.replace("buffers", "buffer_count")
                if count_key in record:
                    count = int(record.pop(count_key))
                    record[name] = list(reply.buffers[offset : offset + count])
                    offset += count
            for key in _DB_DATE_KEYS:
                if isinstance(record.get(key), str):
                    record[key] = parse_date(record[key])
            for key in _ALWAYS_PRESENT if keys is None else keys:
                record.setdefault(key, None)
        return records
