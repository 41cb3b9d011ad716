"""The in-memory result store: for tests and for clusters whose history need not survive.

Bounded like the others (:mod:`.retention`); sizes are estimated from the fields (buffers and
strings exactly, dicts roughly), since nothing here is encoded.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from corral.errors import StoreError

from .base import (
    BUFFER_FIELDS,
    ResultStore,
    check_keys,
    check_msg_ids,
    in_submission_order,
    project,
    validate_record,
)
from .query import matches, msg_ids_wanted, parse_query
from .retention import RetentionSettings, estimate_size


class MemoryStore(ResultStore):
    """Records in an insertion-ordered dict; writes apply at once, so flush has no work.

    Stored records are shallow copies and returned records are fresh shallow copies, but
    nested values (header dicts ...) are shared: callers must not mutate them after
    handing them over. Result and request buffers are kept as immutable ``bytes`` (a memoryview is
    copied once, since the memory behind it may change).
    """

    def __init__(self, retention: RetentionSettings | None = None) -> None:
        self._setup_retention(retention)
        self._records: dict[str, dict[str, Any]] = {}
        self._order: dict[str, int] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the in-memory result store is closed")

    def add_record(self, msg_id: str, record: dict[str, Any]) -> None:
        self._merge(msg_id, record)

    def update_record(self, msg_id: str, changes: dict[str, Any]) -> None:
        self._merge(msg_id, changes)

    def _merge(self, msg_id: str, fields: dict[str, Any]) -> None:
        checked = self._omit_large_buffers(validate_record(msg_id, fields))
        for field in BUFFER_FIELDS:
            buffers = checked.get(field)
            if buffers is not None:
                checked[field] = [b if isinstance(b, bytes) else bytes(b) for b in buffers]
        with self._lock:
            self._check_open()
            existing = self._records.get(msg_id)
            if existing is None:
                self._records[msg_id] = checked
                self._order[msg_id] = self._next
                self._next += 1
            else:
                existing.update(checked)
        if self.retention is not None:
            self._account(msg_id, checked, estimate_size(checked))

    def get_records(self, msg_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            self._check_open()
            found = [m for m in check_msg_ids(msg_ids) if m in self._records]
            found.sort(key=self._order.__getitem__)
            return {m: dict(self._records[m]) for m in found}

    def find_records(
        self, query: dict[str, Any], keys: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        conditions = parse_query(query)
        fields = check_keys(keys)
        with self._lock:
            self._check_open()
            wanted = msg_ids_wanted(conditions)
            if wanted is not None and len(wanted) < len(self._records) // 4:
                candidates = sorted(
                    (m for m in wanted if m in self._records), key=self._order.__getitem__
                )
                records = [self._records[m] for m in candidates]
            else:
                records = list(self._records.values())
            return [
                dict(record) if fields is None else project(record, fields)
                for record in records
                if matches(record, conditions)
            ]

    def drop_records(self, msg_ids: Sequence[str]) -> None:
        ids = check_msg_ids(msg_ids)
        with self._lock:
            self._check_open()
            for msg_id in ids:
                if self._records.pop(msg_id, None) is not None:
                    del self._order[msg_id]
        self._forget(ids)

    def get_history(self) -> list[str]:
        with self._lock:
            self._check_open()
            rows = [(msg_id, record.get("submitted")) for msg_id, record in self._records.items()]
        return in_submission_order(rows)

    def flush(self) -> None:
        with self._lock:
            self._check_open()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._records.clear()
            self._order.clear()
