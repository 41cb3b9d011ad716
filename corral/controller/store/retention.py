"""What the result store keeps, and for how long: the retention rule, without any I/O.

One rule for every backend (memory, SQLite, MongoDB), so that a cluster's store is bounded
whatever it is kept in, and nothing a user expects to find disappears without a trace:

- **Large results.** The buffers of one result (a pulled array ...) are stored when they
  total at most ``buffer_limit`` bytes. A larger result is still recorded (status, metadata,
  content, timings), with a ``buffers_omitted`` marker instead of the buffers: the submitting
  client got the full result straight from the engine; another client asking the Hub for it
  gets :class:`~corral.errors.ResultNotStored` naming the setting to raise.
  A request's own buffers (``buffers``: the function and its arguments, which
  ``Client.resubmit`` sends again) are kept under the same limit; a larger request is recorded
  with a ``request_buffers_omitted`` marker and cannot be resubmitted.
- **Total size.** When the records' size passes ``size_limit``, the oldest *completed* results
  (in completion order) are purged until the size is back under 90% of the limit, and a log
  line says how many and why. A pending task's record is never purged.
- **Time to live.** A completed result older than ``ttl`` seconds is purged when the Hub next
  asks (every heartbeat), from the store and from the Hub's own tables.

:class:`Retention` is the bookkeeping: the stores tell it what they wrote (and its size, as
the backend measures it), and it answers which records must go. The stores apply the answer.
"""

from __future__ import annotations

import math
import re
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any, Final

from corral.errors import StoreError

KIB, MIB, GIB = 1024, 1024**2, 1024**3
DEFAULT_BUFFER_LIMIT = 64 * MIB
DEFAULT_SIZE_LIMIT = 2 * GIB
DEFAULT_TTL = 7 * 24 * 3600.0
#: After a purge for size, the store is down to this fraction of its limit: purges come in
#: batches (one delete and one vacuum for many records), not one per new result.
LOW_WATER = 0.9
OMITTED_FIELD = "buffers_omitted"
#: The marker of a request whose buffers were not kept (over the limit, or unreadable when the
#: Hub saw its copy): such a task cannot be resubmitted.
REQUEST_OMITTED_FIELD = "request_buffers_omitted"

#: The command-line flag (and Cluster argument) of each setting, for messages that say what
#: to change.
FLAGS = {
    "buffer_limit": "--store-buffer-limit",
    "size_limit": "--store-size-limit",
    "ttl": "--result-ttl",
}

_SIZE_UNITS = {"": 1, "b": 1, "k": KIB, "m": MIB, "g": GIB, "t": 1024**4}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_UNLIMITED = ("none", "unlimited", "inf", "off")


def parse_size(text: str | int | None) -> int | None:
    """Bytes from ``"64M"``, ``"2GB"``, ``"512k"``, ``"1000"`` (powers of 1024); ``None`` for
    ``"none"``/``"unlimited"``. ValueError with the accepted forms otherwise."""
    if text is None or isinstance(text, int):
        if isinstance(text, int) and text < 0:
            raise ValueError(f"a size cannot be negative: {text}")
        return text
    value = text.strip().lower()
    if value in _UNLIMITED:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", value)
    if match is None:
        raise ValueError(
            f"bad size {text!r}: use bytes or a number with K, M, G or T (64M, 2G), or 'none'"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def parse_duration(text: str | float | None) -> float | None:
    """Seconds from ``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"`` or a plain number;
    ``None`` for ``"none"``/``"unlimited"``. ValueError with the accepted forms otherwise."""
    if text is None or isinstance(text, int | float):
        if text is not None and (text < 0 or math.isnan(text)):
            raise ValueError(f"a duration cannot be negative: {text}")
        return None if text is None else float(text)
    value = text.strip().lower()
    if value in _UNLIMITED:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", value)
    if match is None:
        raise ValueError(
            f"bad duration {text!r}: use seconds or a number with s, m, h, d or w (12h, 7d), "
            "or 'none'"
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def format_size(size: int | None) -> str:
    """``"64 MiB"``-style, for logs and ``corral list``; ``"unlimited"`` for None."""
    if size is None:
        return "unlimited"
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"


def format_duration(seconds: float | None) -> str:
    """``"7d"``-style; ``"unlimited"`` for None."""
    if seconds is None:
        return "unlimited"
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= scale and seconds % scale == 0:
            return f"{int(seconds // scale)}{unit}"
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds}s"


@dataclass(frozen=True)
class RetentionSettings:
    """The three limits; None means unlimited. Defaults: 64 MiB of buffers per result,
    2 GiB per store, results kept 7 days."""

    buffer_limit: int | None = DEFAULT_BUFFER_LIMIT
    size_limit: int | None = DEFAULT_SIZE_LIMIT
    ttl: float | None = DEFAULT_TTL

    def __post_init__(self) -> None:
        for name in ("buffer_limit", "size_limit", "ttl"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise StoreError(f"{FLAGS[name]} must be a non-negative number, not {value!r}")
        if (
            self.buffer_limit is not None
            and self.size_limit is not None
            and self.buffer_limit > self.size_limit
        ):
            raise StoreError(
                f"{FLAGS['buffer_limit']} ({format_size(self.buffer_limit)}) cannot exceed "
                f"{FLAGS['size_limit']} ({format_size(self.size_limit)})"
            )

    @classmethod
    def parse(
        cls,
        buffer_limit: str | int | None = "default",
        size_limit: str | int | None = "default",
        ttl: str | float | None = "default",
    ) -> RetentionSettings:
        """Settings from flag values (``"64M"``, ``"7d"``, ``"none"``); ``"default"`` keeps the
        default. StoreError naming the flag for a value that is not a size or a duration."""
        values: dict[str, Any] = {}
        try:
            if buffer_limit != "default":
                name = "buffer_limit"
                values[name] = parse_size(buffer_limit)
            if size_limit != "default":
                name = "size_limit"
                values[name] = parse_size(size_limit)
            if ttl != "default":
                name = "ttl"
                values[name] = parse_duration(ttl)
        except ValueError as exc:
            raise StoreError(f"{FLAGS[name]}: {exc}") from None
        return cls(**values)

    def describe(self) -> dict[str, str]:
        """The settings as people read them (``corral list``, the connection file)."""
        return {
            "buffer_limit": format_size(self.buffer_limit),
            "size_limit": format_size(self.size_limit),
            "ttl": format_duration(self.ttl),
        }


@dataclass(frozen=True)
class Purge:
    """Records to drop, and why (for the log line the store writes)."""

    msg_ids: list[str]
    reason: str
    freed: int


#: How many purged records :class:`Retention` remembers the reason of (the newest kept): a
#: ``get_result`` of one says it was purged and why, not that the Hub never saw it. Some 100
#: bytes each in memory, once purges happen; the persistent stores keep them in their own file
#: or database too (:meth:`~.base.ResultStore.purged_reasons`), so a restarted controller
#: still knows them.
PURGES_REMEMBERED: Final = 65_536

#: A record's entry in :class:`Retention`'s table is one int: its completion number (0 while
#: it is pending) above these many bits, its size below them (a record under 256 TiB).
SIZE_BITS: Final = 48
_SIZE_MASK: Final = (1 << SIZE_BITS) - 1
#: :class:`Retention` rebuilds its completion log when it holds more entries that no longer
#: count (records dropped, or completed again) than live ones, and at least this many.
COMPACT_AT: Final = 4096


@dataclass
class Retention:
    """The bookkeeping behind the rule: every record's size, and completed ones in
    completion order with the time they completed (``clock()`` seconds).

    Kept small, because a store holds up to millions of records and this lives in the Hub's
    memory: one table entry per record (``msg_id`` -> one int, its completion number and its
    size, :data:`SIZE_BITS`), and a completion log (a list of the msg_ids, the objects the
    table holds, and an array of their times). A log entry counts while its record's
    completion number is its own; a record dropped, completed again or pending again leaves
    a stale entry behind, skipped when met and swept once they outnumber the live ones
    (``bench_hub_memory.py``, 100,000 records: 214 -> 89 bytes a record, the msg_id strings
    the Hub's tables hold too not counted: the two dicts also kept a second copy of each)."""

    settings: RetentionSettings
    clock: Callable[[], float] = time.time
    total: int = 0
    purged: list[str] = field(default_factory=list)
    #: msg_id -> why it was purged, at most :data:`PURGES_REMEMBERED`, oldest first (one
    #: reason string shared by a purge's records)
    why_purged: dict[str, str] = field(default_factory=dict, repr=False)
    _table: dict[str, int] = field(default_factory=dict, repr=False)
    _log: list[str | None] = field(default_factory=list, repr=False)
    _times: array[float] = field(default_factory=lambda: array("d"), repr=False)
    _head: int = 0  # the log's entries before this one are gone (None)
    _first: int = 1  # the completion number of the log's entry 0
    _live: int = 0  # completed records, each with one live log entry

    @property
    def sizes(self) -> dict[str, int]:
        """Every record's size, in no particular order (a copy, for tests and tools)."""
        return {msg_id: value & _SIZE_MASK for msg_id, value in self._table.items()}

    @property
    def completed(self) -> list[str]:
        """The completed records' msg_ids, oldest completion first (a copy)."""
        return [msg_id for _, msg_id, _, _ in self._oldest()]

    def __len__(self) -> int:
        """The records counted (pending and completed)."""
        return len(self._table)

    def log_entries(self) -> list[str]:
        """The completion log's msg_ids as kept, stale ones included (for tests)."""
        return [msg_id for msg_id in self._log[self._head :] if msg_id is not None]

    def footprint(self) -> int:
        """The bytes this bookkeeping holds, the msg_id strings aside (they are the objects
        the Hub's tables hold too): the table, its ints, and the log's two arrays."""
        table = self._table
        values = sum(map(sys.getsizeof, table.values()))
        return sys.getsizeof(table) + values + sys.getsizeof(self._log) + sys.getsizeof(self._times)

    def omitted(self, buffers: Iterable[Any]) -> dict[str, Any] | None:
        """The ``buffers_omitted`` marker if these buffers are too large to store, else None.
        ``buffers`` as :func:`~.base.validate_record` leaves them: bytes or flat byte views,
        whose ``len`` is their size."""
        limit = self.settings.buffer_limit
        if limit is None:
            return None
        buffers = list(buffers)
        total = sum(map(len, buffers))
        if total <= limit:
            return None
        return {"bytes": total, "count": len(buffers), "limit": limit}

    def recorded(self, msg_id: str, size: int, status: Any, repeated: int = 0) -> Purge | None:
        """A write of ``size`` bytes to ``msg_id``; ``status`` is the field written (or None
        if the write did not set it); ``repeated``: the bytes of ``size`` every write of a
        record counts again that the stored record holds once (a SQLite row's overhead and its
        msg_id), counted for its first write only, so that the size counted while running is
        the one a reopened store measures. Returns what the size limit now requires purging."""
        table = self._table
        if repeated and msg_id in table:
            size = max(0, size - repeated)
        self.total += size
        if status.__class__ is not str:  # not a status write: the size only
            table[msg_id] = table.get(msg_id, 0) + size
        elif status == "pending":
            value = table.get(msg_id, 0)
            table[msg_id] = (value & _SIZE_MASK) + size
            if value > _SIZE_MASK:  # completed before (sent again): its log entry goes stale
                self._live -= 1
                self._sweep()
        else:
            self._complete(msg_id, size, self.clock())
        limit = self.settings.size_limit
        return None if limit is None or self.total <= limit else self._over_limit()

    def _complete(self, msg_id: str, size: int, when: float) -> None:
        """``msg_id`` completed at ``when`` (again, if it had: it is now the newest). The
        entry is made anew with this ``msg_id`` object, the one the log holds: a reply's copy
        of the request's msg_id is the one kept, not both."""
        table = self._table
        value = table.pop(msg_id, 0)
        log = self._log
        table[msg_id] = ((self._first + len(log)) << SIZE_BITS) | ((value & _SIZE_MASK) + size)
        log.append(msg_id)
        self._times.append(when)
        if value > _SIZE_MASK:  # completed again: its older log entry goes stale
            self._sweep()
        else:
            self._live += 1

    def restored(self, msg_id: str, size: int, completed_at: float | None) -> None:
        """A record found in a store being reopened (``completed_at`` None: pending), in
        completion order."""
        self.total += size
        if completed_at is None:
            self._table[msg_id] = self._table.get(msg_id, 0) + size
        else:
            self._complete(msg_id, size, completed_at)

    def forget(self, msg_ids: Iterable[str]) -> None:
        """These records were dropped (by a purge or a user)."""
        table = self._table
        for msg_id in msg_ids:
            value = table.pop(msg_id, None)
            if value is not None:
                self.total -= value & _SIZE_MASK
                if value > _SIZE_MASK:
                    self._live -= 1
        self._sweep()

    def _oldest(self) -> Iterator[tuple[int, str, float, int]]:
        """``(log place, msg_id, completion time, size)`` of the completed records, oldest
        completion first."""
        table, log, times, first = self._table, self._log, self._times, self._first
        for place in range(self._head, len(log)):
            msg_id = log[place]
            if msg_id is None:
                continue
            value = table.get(msg_id, 0)
            if value >> SIZE_BITS == first + place:
                yield place, msg_id, times[place], value & _SIZE_MASK

    def _sweep(self) -> None:
        """Let go of the log's stale entries: those before its first live one at once, all of
        them once they outnumber the live ones (the completion numbers made anew)."""
        table, log, first = self._table, self._log, self._first
        head = self._head
        while head < len(log):
            msg_id = log[head]
            if msg_id is not None and table.get(msg_id, 0) >> SIZE_BITS == first + head:
                break
            log[head] = None
            head += 1
        self._head = head
        stale = len(log) - head - self._live
        if stale >= COMPACT_AT and stale > self._live:
            kept = list(self._oldest())
            self._log = [msg_id for _, msg_id, _, _ in kept]
            self._times = array("d", [when for _, _, when, _ in kept])
            self._head = 0
            for place, (_, msg_id, _, size) in enumerate(kept):
                table[msg_id] = ((first + place) << SIZE_BITS) | size
        elif head >= COMPACT_AT and head > len(log) // 2:
            del log[:head]
            del self._times[:head]
            self._first = first + head
            self._head = 0

    def over_limit(self) -> Purge | None:
        """What the size limit requires purging now (after a restore, say)."""
        return self._over_limit()

    def _over_limit(self) -> Purge | None:
        limit = self.settings.size_limit
        if limit is None or self.total <= limit:
            return None
        target = int(limit * LOW_WATER)
        chosen: list[str] = []
        freed = 0
        for _, msg_id, _, size in self._oldest():
            if self.total - freed <= target:
                break
            chosen.append(msg_id)
            freed += size
        if not chosen:
            return None  # only pending records: they are never dropped
        reason = (
            f"over its size limit ({format_size(self.total)} > {format_size(limit)}, "
            f"{FLAGS['size_limit']})"
        )
        return self._purge(chosen, reason, freed)

    def expired(self, now: float | None = None) -> Purge | None:
        """Completed results older than the time to live."""
        ttl = self.settings.ttl
        if ttl is None or not self._live:
            return None
        deadline = (self.clock() if now is None else now) - ttl
        chosen = []
        freed = 0
        for _, msg_id, when, size in self._oldest():
            if when > deadline:
                break  # completion order: every later one is younger
            chosen.append(msg_id)
            freed += size
        if not chosen:
            return None
        reason = f"older than their time to live ({format_duration(ttl)}, {FLAGS['ttl']})"
        return self._purge(chosen, reason, freed)

    def _purge(self, msg_ids: list[str], reason: str, freed: int) -> Purge:
        self.forget(msg_ids)
        self.purged.extend(msg_ids)
        remembered = self.why_purged
        remembered.update(dict.fromkeys(msg_ids[-PURGES_REMEMBERED:], reason))
        excess = len(remembered) - PURGES_REMEMBERED
        if excess > 0:
            for msg_id in list(islice(remembered, excess)):
                del remembered[msg_id]
        return Purge(msg_ids, reason, freed)

    def take_purged(self) -> list[str]:
        """The msg_ids purged since the last call (the Hub forgets them too)."""
        purged, self.purged = self.purged, []
        return purged


def estimate_size(fields: dict[str, Any]) -> int:
    """A cheap estimate of a record's size where nothing is encoded (the memory store):
    buffers and strings exactly, each dict 64 bytes a key plus its string values."""
    size = 64
    for value in fields.values():
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, dict):
            size += 64 * len(value)
            size += sum(len(item) for item in value.values() if isinstance(item, str))
        elif isinstance(value, list):
            size += sum(memoryview(item).nbytes for item in value if _is_buffer(item))
        else:
            size += 8
    return size


def _is_buffer(value: Any) -> bool:
    return isinstance(value, bytes | bytearray | memoryview)


def completion_time(value: Any, default: float) -> float:
    """Epoch seconds of a stored ISO date (``received``/``completed``), else ``default``."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return default
    return default


def not_stored_message(msg_id: str, marker: Any) -> str:
    """What a client is told when it asks the Hub for a result whose buffers were omitted
    (a marker's ``why``: a result the Hub never had, see ``controller/hub_gone.py``)."""
    why = marker.get("why") if isinstance(marker, dict) else None
    if isinstance(why, str):
        return f"the result of {msg_id} is not in the controller's result store: {why}"
    size = marker.get("bytes") if isinstance(marker, dict) else None
    limit = marker.get("limit") if isinstance(marker, dict) else None
    return (
        f"the result of {msg_id} was not kept by the controller's result store: its "
        f"{format_size(size if isinstance(size, int) else None)} of buffers exceed the "
        f"per-result limit ({format_size(limit if isinstance(limit, int) else None)}). Only "
        f"the client that submitted it received it. To keep such results, start the "
        f"controller with a larger {FLAGS['buffer_limit']} (Cluster(store_buffer_limit=...))"
    )
