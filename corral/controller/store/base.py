"""The result store interface, the record schema, and the batching writer thread.

The Hub records every task it sees and answers client queries from one of the stores behind
:class:`ResultStore`. Its event loop must never wait on a disk or a database server, so the
persistent stores (SQLite, MongoDB) hand their writes to a :class:`BatchWriter`: a background
thread that applies many queued writes per transaction. Reads flush that queue first, so a
caller always reads its own writes.
"""

from __future__ import annotations

import logging
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import Any, Self

import orjson

from corral.errors import QueryError, StoreError

from .retention import (
    OMITTED_FIELD,
    PURGES_REMEMBERED,
    REQUEST_OMITTED_FIELD,
    Purge,
    Retention,
    RetentionSettings,
    completion_time,
    format_size,
)

# the writer thread lives in .writer; imported from here by the stores written before it moved
from .writer import BatchWriter as BatchWriter
from .writer import WriteOp as WriteOp

logger = logging.getLogger("corral.controller.store")

TEXT_FIELDS = (
    "msg_id",
    "queue",
    "client_uuid",
    "engine_uuid",
    "submitted",
    "started",
    "completed",
    "received",
    "status",
    "stdout",
    "stderr",
)
INT_FIELDS = ("engine_id", "retries")
BOOL_FIELDS = ("resubmitted",)
DICT_FIELDS = (
    "header",
    "metadata",
    "content",
    "result_header",
    "result_metadata",
    "result_content",
)
BUFFERS_FIELD = "result_buffers"
#: The request's own buffers (function and arguments), kept so that the Hub can send the task
#: again (``Client.resubmit``); bounded by the same per-task limit as a result's buffers.
REQUEST_BUFFERS_FIELD = "buffers"
BUFFER_FIELDS = (BUFFERS_FIELD, REQUEST_BUFFERS_FIELD)
#: A message's four JSON frames as received: header, parent header, metadata, content.
MessageJSON = tuple[bytes, bytes, bytes, bytes]
#: The frame of a message's JSON (:data:`MessageJSON`) each of a record's dict fields is
#: decoded from.
JSON_FRAME_OF = {
    "header": 0,
    "metadata": 2,
    "content": 3,
    "result_header": 0,
    "result_metadata": 2,
    "result_content": 3,
}


class _InTexts:
    """The type of :data:`IN_TEXTS`."""

    def __repr__(self) -> str:
        return "IN_TEXTS"


#: A dict field of a record written with its message's JSON frames
#: (:meth:`ResultStore.add_decoded_record`) that was not decoded: its value is its frame
#: (:data:`JSON_FRAME_OF`), whose JSON another process checked already. The Hub writes a
#: reply's header so (the task scheduler read it, and the Hub reads nothing of it): SQLite
#: keeps the frame as it came, and any other store has it decoded (:func:`decoded_fields`).
IN_TEXTS = _InTexts()


def decoded_fields(fields: dict[str, Any], json_texts: MessageJSON) -> dict[str, Any]:
    """``fields`` with each value :data:`IN_TEXTS` decoded from its frame of ``json_texts``
    (``fields`` itself when there is none); StoreError when a frame is not a JSON object."""
    if IN_TEXTS not in fields.values():
        return fields
    decoded = dict(fields)
    for name, value in fields.items():
        if value is IN_TEXTS:
            try:
                decoded[name] = orjson.loads(json_texts[JSON_FRAME_OF[name]])
            except (KeyError, orjson.JSONDecodeError) as err:
                raise StoreError(f"field {name!r} has no JSON frame to decode: {err}") from None
            if not isinstance(decoded[name], dict):
                raise StoreError(f"field {name!r}: its JSON frame is not an object")
    return decoded


KNOWN_FIELDS = frozenset((*TEXT_FIELDS, *INT_FIELDS, *BOOL_FIELDS, *DICT_FIELDS, *BUFFER_FIELDS))

#: Query category (see :mod:`.query`) of every known field holding one scalar type; a store
#: can answer conditions on these fields natively (SQL, MongoDB filter) with the exact
#: semantics of :func:`.query.match`, because :func:`validate_record` admits no other type.
SCALAR_FIELD_CATEGORIES: dict[str, str] = {
    **dict.fromkeys(TEXT_FIELDS, "string"),
    **dict.fromkeys(INT_FIELDS, "number"),
    **dict.fromkeys(BOOL_FIELDS, "bool"),
}

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_PAGE = 10_000  # records in one find_page answer


#: Known fields whose value, when of exactly this type, needs no further check (the Hub's
#: records are made of these: checking them is on every task's path).
_EXACT_TYPES: dict[str, type] = {
    **dict.fromkeys(TEXT_FIELDS, str),
    **dict.fromkeys(BOOL_FIELDS, bool),
    **dict.fromkeys(DICT_FIELDS, dict),
}


def check_field_name(name: object, error: type[Exception] = StoreError) -> str:
    """Return ``name`` if it can be a record field in every backend, else raise ``error``.

    Names starting with ``_`` or ``$`` are reserved for the stores' bookkeeping (MongoDB's
    ``_id``) and query operators; a ``.`` would be read as a path by MongoDB.
    """
    if not isinstance(name, str) or not name:
        raise error(f"a record field name must be a non-empty string, not {name!r}")
    if name[0] in "_$" or "." in name or "\0" in name:
        raise error(f"invalid record field name {name!r}: no leading '_' or '$', no '.' or NUL")
    return name


def _check_value(name: str, value: Any) -> Any:
    """Check a known field's type; return the value as stored (buffers normalised)."""
    if value is None:
        return None
    if name in SCALAR_FIELD_CATEGORIES:
        category = SCALAR_FIELD_CATEGORIES[name]
        if category == "string":
            ok = isinstance(value, str)
        elif category == "bool":
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool)
            if ok and not INT64_MIN <= value <= INT64_MAX:
                raise StoreError(f"field {name!r}: {value} does not fit in 64 bits")
        if not ok:
            raise StoreError(f"field {name!r} must be {category} or None, not {value!r}")
        return value
    if name in DICT_FIELDS:
        if not isinstance(value, dict):
            raise StoreError(f"field {name!r} must be a dict or None, not {type(value).__name__}")
        return value
    return _normalize_buffers(name, value)


def _normalize_buffers(name: str, value: Any) -> list[bytes | memoryview]:
    """Buffers as a list of bytes or flat byte memoryviews, without copying them."""
    if not isinstance(value, list | tuple):
        raise StoreError(f"{name} must be a list of bytes-like objects, not {value!r}")
    buffers: list[bytes | memoryview] = []
    for buffer in value:
        if isinstance(buffer, bytes):
            buffers.append(buffer)
            continue
        try:
            view = memoryview(buffer)
        except TypeError:
            raise StoreError(f"{name} holds a non-buffer {type(buffer).__name__}") from None
        if not view.contiguous:
            raise StoreError(f"{name} holds a non-contiguous buffer")
        buffers.append(view.cast("B") if view.format != "B" or view.ndim != 1 else view)
    return buffers


def validate_record(msg_id: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Check a record or a set of changes, and return a shallow copy to store.

    Every backend applies the same rules, so that a record one store accepts, all accept:
    field names per :func:`check_field_name`, known fields of their documented type (or
    None), and a ``msg_id`` field, when given, equal to the ``msg_id`` argument.
    """
    if not isinstance(msg_id, str) or not msg_id:
        raise StoreError(f"msg_id must be a non-empty string, not {msg_id!r}")
    if not isinstance(record, Mapping):
        raise StoreError(f"a record must be a dict, not {type(record).__name__}")
    checked: dict[str, Any] = {"msg_id": msg_id}
    exact = _EXACT_TYPES
    for name, value in record.items():
        if name == "msg_id":
            if value != msg_id:
                raise StoreError(f"record msg_id {value!r} differs from msg_id {msg_id!r}")
        elif name in KNOWN_FIELDS:  # a known name is a valid one
            if value is None or value.__class__ is exact.get(name):
                checked[name] = value
            else:
                checked[name] = _check_value(name, value)
        else:
            check_field_name(name)
            checked[name] = value
    return checked


def check_keys(keys: Sequence[str] | None) -> tuple[str, ...] | None:
    """The fields to return, ``msg_id`` first, or None for all; QueryError if malformed."""
    if keys is None:
        return None
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise QueryError(f"keys must be a list of field names, not {keys!r}")
    names = dict.fromkeys(["msg_id", *(check_field_name(k, QueryError) for k in keys)])
    return tuple(names)


def check_msg_ids(msg_ids: Sequence[str]) -> list[str]:
    """The distinct string msg_ids of a list (others can name no record); QueryError for a
    bare string, which would otherwise be read as a list of one-character ids."""
    if isinstance(msg_ids, str | bytes) or not isinstance(msg_ids, Iterable):
        raise QueryError(f"msg_ids must be a list of msg_id strings, not {msg_ids!r}")
    return [msg_id for msg_id in dict.fromkeys(msg_ids) if isinstance(msg_id, str)]


def check_page(limit: object, skip: object) -> tuple[int, int]:
    """``limit`` (1 .. MAX_PAGE) and ``skip`` (>= 0) of a page query; QueryError otherwise."""
    for name, value, low in (("limit", limit, 1), ("skip", skip, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise QueryError(f"{name} must be an integer >= {low}, not {value!r}")
    assert isinstance(limit, int) and isinstance(skip, int)
    if limit > MAX_PAGE:
        raise QueryError(f"limit must be at most {MAX_PAGE}, not {limit}")
    return limit, skip


def project(record: dict[str, Any], keys: tuple[str, ...] | None) -> dict[str, Any]:
    """The record limited to ``keys`` (fields it lacks are left out)."""
    if keys is None:
        return record
    return {key: record[key] for key in keys if key in record}


class ResultStore(ABC):
    """Where the Hub keeps a record of every task: one interface, several backends.

    Writes (:meth:`add_record`, :meth:`update_record`, :meth:`drop_records`) may be applied
    later by a background thread, but every read reflects every write issued before it.
    A write that fails later is never lost silently: it is logged and raised as
    :class:`~corral.errors.StoreError` from the next call (reported once).

    ``add_record`` and ``update_record`` both merge top-level fields into the record with
    that msg_id, creating it (at the end of the submission order) when it is unknown. The
    Hub may learn of a task twice, or of a reply before its request; neither is an error
    that a batched writer could only report long after the call.

    What every backend guarantees (the shared test suite checks each): records come back
    as stored, a field set to None stays distinct from a field never set, result buffers
    come back as a list of ``bytes``, submission order is the order in which msg_ids were
    first recorded, and the same query selects the same records (:mod:`.query`). Records
    are checked at the call (:func:`validate_record`); a bad one raises StoreError there.
    """

    @abstractmethod
    def add_record(self, msg_id: str, record: dict[str, Any]) -> None:
        """Record a new task (fields as in the module docs)."""

    @abstractmethod
    def update_record(self, msg_id: str, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into the task's top-level fields."""

    def add_decoded_record(
        self, msg_id: str, record: dict[str, Any], json_texts: MessageJSON
    ) -> None:
        """:meth:`add_record`, for a record whose ``header``, ``metadata`` and ``content``
        (a request's) or ``result_header``, ``result_metadata`` and ``result_content`` (a
        reply's) fields were decoded from the JSON frames ``json_texts`` of one message as
        received (header, parent header, metadata, content; UTF-8): a backend that keeps JSON
        text may keep those frames as they came instead of encoding the dicts again (SQLite).
        Such a field may also be :data:`IN_TEXTS`, left undecoded. This default decodes those
        (:func:`decoded_fields`) and ignores the frames otherwise."""
        self.add_record(msg_id, decoded_fields(record, json_texts))

    def update_decoded_record(
        self, msg_id: str, changes: dict[str, Any], json_texts: MessageJSON
    ) -> None:
        """:meth:`update_record`, with the JSON frames of the message some dict fields of
        ``changes`` were decoded from (or are left in, :data:`IN_TEXTS`), as
        :meth:`add_decoded_record` takes them; this default decodes those and ignores the
        frames otherwise."""
        self.update_record(msg_id, decoded_fields(changes, json_texts))

    def set_engines(self, destinations: Iterable[tuple[str, str, int | None]]) -> None:
        """Set the engine fields (``engine_uuid``, ``engine_id``) of several tasks, each
        ``(msg_id, engine_uuid, engine_id)``: what :meth:`update_record` of each does, in
        order (the Hub learns where a scheduler turn's waiting tasks went in one copy). Every
        write is made even when one fails; then the first failure is raised. A backend may
        make them in one go."""
        failure: StoreError | None = None
        for msg_id, engine_uuid, engine_id in destinations:
            try:
                self.update_record(msg_id, {"engine_uuid": engine_uuid, "engine_id": engine_id})
            except StoreError as err:
                failure = failure or err
        if failure is not None:
            raise failure

    @abstractmethod
    def get_records(self, msg_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The records of the known ``msg_ids``, in submission order; unknown ones absent."""

    @abstractmethod
    def find_records(
        self, query: dict[str, Any], keys: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Records matching ``query`` (see :mod:`.query`) in submission order.

        ``keys`` limits the fields returned; ``msg_id`` is always included.
        """

    @abstractmethod
    def drop_records(self, msg_ids: Sequence[str]) -> None:
        """Forget these tasks; unknown msg_ids are ignored."""

    @abstractmethod
    def get_history(self) -> list[str]:
        """Every recorded msg_id, in submission order (:func:`in_submission_order`)."""

    @abstractmethod
    def flush(self) -> None:
        """Return once every write issued so far is applied (or raise StoreError)."""

    @abstractmethod
    def close(self) -> None:
        """Flush, release connections and threads; idempotent. Later calls raise."""

    def holding_writes(self) -> AbstractContextManager[None]:
        """A block whose writes this thread makes may be queued together at its end (a store
        with a writer thread: :meth:`BatchWriter.holding <.writer.BatchWriter.holding>`), for
        a caller that makes many in a burst. Reads and every other call still see every write
        made before them; a write's own error is still raised at its call. This default holds
        nothing."""
        return nullcontext()

    def background_threads(self) -> list[threading.Thread]:
        """The threads this store runs beside its caller's (a writer thread): the controller
        runs them at the Hub's lower CPU priority (:mod:`corral.priority`). None by default."""
        return []

    def write_mark(self) -> int:
        """A mark of the writes issued so far, for :meth:`written` (never waits)."""
        return 0

    def written(self, mark: int) -> bool:
        """Whether every write issued before ``mark`` was taken is applied (or failed and was
        logged). Stores that write at the call, like this default, always say yes."""
        return True

    # ------------------------------------------------------------ retention (retention.py)

    retention: Retention | None = None
    _retention_lock: threading.Lock

    #: How many purged records a persistent store keeps the reason of in its own file or
    #: database (the newest), so that a restarted controller still says why one is gone.
    purges_remembered: int = PURGES_REMEMBERED

    def _setup_retention(self, settings: RetentionSettings | None) -> None:
        """Bound this store by ``settings`` (None: keep everything, the default)."""
        self._retention_lock = threading.Lock()
        self.retention = Retention(settings) if settings is not None else None
        self._unwritten_purges: list[Purge] = []

    def _recall_purges(self, remembered: Iterable[tuple[str, str]]) -> None:
        """The ``(msg_id, why)`` a reopened persistent store kept of earlier purges, oldest
        first: its retention says them purged again (before it purges anything new)."""
        if self.retention is None:
            return
        with self._retention_lock:
            self.retention.why_purged.update(remembered)

    def _take_unwritten_purges(self) -> list[Purge]:
        """The purges not yet written to the store's own memory of them (the writer thread's
        call, before it applies a batch: so a purge's reasons are written no later than
        its records are deleted). Persistent stores call it; the memory store never."""
        if not self._unwritten_purges:  # nearly every batch: no lock
            return []
        with self._retention_lock:
            taken, self._unwritten_purges = self._unwritten_purges, []
        return taken

    def _reasons_to_write(self, purges: list[Purge]) -> list[tuple[str, str]]:
        """``(msg_id, why)`` of these purges' records, oldest first, the newest
        :attr:`purges_remembered` only (what a persistent store writes of them)."""
        kept = self.purges_remembered
        rows = [(msg_id, purge.reason) for purge in purges for msg_id in purge.msg_ids[-kept:]]
        return rows[-kept:]

    def _omit_large_buffers(self, checked: dict[str, Any]) -> dict[str, Any]:
        """The validated fields to store: result (or request) buffers over the per-task limit
        are replaced by the ``buffers_omitted`` (``request_buffers_omitted``) marker; the
        record itself is kept."""
        if self.retention is None:
            return checked
        for field, marker_field in (
            (BUFFERS_FIELD, OMITTED_FIELD),
            (REQUEST_BUFFERS_FIELD, REQUEST_OMITTED_FIELD),
        ):
            buffers = checked.get(field)
            marker = self.retention.omitted(buffers) if buffers else None
            if marker is not None:
                checked = {**checked, field: None, marker_field: marker}
        return checked

    def _account(self, msg_id: str, fields: dict[str, Any], size: int, repeated: int = 0) -> None:
        """A write of ``size`` bytes (as this backend measures it; ``repeated``: as
        :meth:`~.retention.Retention.recorded` takes it) was queued: purge the oldest
        completed results if the store is now over its size limit."""
        if self.retention is None:
            return
        with self._retention_lock:
            purge = self.retention.recorded(msg_id, size, fields.get("status"), repeated)
        if purge is not None:
            self._apply_purge(purge)

    def _forget(self, msg_ids: Sequence[str]) -> None:
        """Records were dropped: they no longer count towards the size limit."""
        if self.retention is not None:
            with self._retention_lock:
                self.retention.forget(msg_ids)

    def _restore_retention(self, found: Iterable[tuple[str, int, Any, Any]]) -> None:
        """Rebuild the bookkeeping from the records of a reopened store: ``(msg_id, size,
        status, completion date)``; then apply the limits, which may have changed."""
        if self.retention is None:
            return

        now = self.retention.clock()
        completed = []
        for msg_id, size, status, when in found:
            if status is None or status == "pending":
                self.retention.restored(msg_id, size, None)
            else:
                completed.append((completion_time(when, now), msg_id, size))
        for when, msg_id, size in sorted(completed):
            self.retention.restored(msg_id, size, when)
        purge = self.retention.over_limit()
        if purge is not None:
            self._apply_purge(purge)
        self.expire_results()

    def _apply_purge(self, purge: Purge) -> None:
        logger.warning(
            "result store: purged %d oldest completed result(s), %s, %s",
            len(purge.msg_ids),
            format_size(purge.freed),
            purge.reason,
        )
        self._after_purge(purge)
        if self.persists_purges:
            with self._retention_lock:
                self._unwritten_purges.append(purge)
        self.drop_records(purge.msg_ids)

    #: Whether this backend writes why records were purged (:meth:`_take_unwritten_purges`).
    persists_purges: bool = False

    def _after_purge(self, purge: Purge) -> None:
        """Hook for backends that give space back in their own way (MongoDB compacts);
        SQLite vacuums after every drop, the memory store frees at once."""
        return None

    def expire_results(self) -> list[str]:
        """Purge completed results older than the time to live; return every msg_id purged
        (for age or size) since the last call, so the Hub can forget them too."""
        if self.retention is None:
            return []
        with self._retention_lock:
            purge = self.retention.expired()
        if purge is not None:
            self._apply_purge(purge)
        with self._retention_lock:
            return self.retention.take_purged()

    def purged_reasons(self, msg_ids: Iterable[str]) -> dict[str, str]:
        """Why each of ``msg_ids`` that this store's retention purged (its size limit, its
        time to live) is gone, for those it still remembers: the newest :data:`~.retention.
        PURGES_REMEMBERED`, kept in the store's own file or database by the persistent
        backends, so a reopened store still knows them."""
        if self.retention is None:
            return {}
        with self._retention_lock:
            remembered = self.retention.why_purged
            return {msg_id: remembered[msg_id] for msg_id in msg_ids if msg_id in remembered}

    def recorded_or_purged(self, msg_ids: Sequence[str]) -> set[str]:
        """Which of ``msg_ids`` this store holds a record of, or purged by its retention rule
        (those it remembers, :meth:`purged_reasons`): a reply or a report of such a task,
        sent again to a restarted controller, must not bring a purged record back."""
        held = set(self.get_records(msg_ids))
        rest = [msg_id for msg_id in msg_ids if msg_id not in held]
        if rest:
            held.update(self.purged_reasons(rest))
        return held

    def stored_size(self) -> int:
        """The size of every record, as the retention bookkeeping counts it (0 if unbounded)."""
        return 0 if self.retention is None else self.retention.total

    def get_record(self, msg_id: str) -> dict[str, Any]:
        """The task's record; KeyError if it is unknown."""
        records = self.get_records([msg_id])
        if msg_id not in records:
            raise KeyError(msg_id)
        return records[msg_id]

    def find_page(
        self,
        query: dict[str, Any],
        keys: Sequence[str] | None = None,
        *,
        limit: int,
        skip: int = 0,
        newest_first: bool = True,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of the records matching ``query`` and how many match in all.

        For browsing a long history (the dashboard) without moving every record: the page is
        ``limit`` records after the first ``skip``, newest first by default. This fallback
        reads every match; a backend that can count and slice natively overrides it.
        """
        limit, skip = check_page(limit, skip)
        records = self.find_records(query, keys)
        if newest_first:
            records.reverse()
        return records[skip : skip + limit], len(records)

    def drop_matching_records(self, query: dict[str, Any]) -> None:
        """Forget every task matching ``query``, as one read then one ordered write."""
        matching = self.find_records(query, keys=["msg_id"])
        self.drop_records([record["msg_id"] for record in matching])

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def in_submission_order(rows: Iterable[tuple[str, Any]]) -> list[str]:
    """``hub_history``'s order, as ipyparallel's: by the time each task was submitted
    (``submitted``, its request's header date), given ``(msg_id, submitted)`` rows in the order
    the store first saw them. The Hub learns of tasks in another order than their clients sent
    them (a direct request's copy comes from its engine, a load-balanced one's from the
    scheduler), so that order is not the submission's. Ties keep the store's order, and a
    record without a readable date (a reply seen before its request, after a restart) sorts
    with the record before it, so every msg_id is listed once."""
    keyed: list[tuple[float, int, str]] = []
    when = -math.inf
    for index, (msg_id, submitted) in enumerate(rows):
        when = completion_time(submitted, when)
        keyed.append((when, index, msg_id))
    keyed.sort()
    return [msg_id for _, _, msg_id in keyed]
