"""Every request's metadata, kept compact until read (``Records.metadata``; sans-I/O).

A client keeps each task's metadata until it is purged, as ipyparallel does, and a user may
hold a million results. As a :class:`~corral.client.metadata.Metadata` (a dict of about 20
keys, its ``outputs`` list and ``data`` dict, four datetimes, the reply's strings) one held
no-op's metadata took about 1 KB, half of what the client kept per held result
(``bench/README.md``, round fourteen), and most of it is never read. So a request's metadata
starts compact (a tuple of what the request said, then of what its usual reply said, its
dates parsed and its repeated strings shared, which the collector soon stops tracking) and
becomes the ``Metadata`` a user reads the first time the whole dict is asked for: that
``Metadata`` is stored in its place and is the one every later read gets (so changes to it
stay), equal key for key to the one built when the reply came
(``tests/client/test_metadata_table.py``). Reading one key (``ar.engine_id``,
``ar.wall_time``, the client's own checks) goes through :meth:`MetadataTable.value`, which
builds nothing. Reading every entry whole (``rc.metadata.items()``) builds every one.

Only the usual case is kept compact: an ``apply_reply`` whose metadata is a dict without
``None`` values and without execute results, the first for its request. Anything else (an
iopub message, an error, a reply from the Hub's store, a second reply) first turns the entry
into its ``Metadata`` and is recorded there as before, under the records' output lock, which
orders every change of an entry (the reply's reader, the I/O thread's iopub, a user's read).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from corral.client.dates import wire_date
from corral.client.entry_table import EntryTable
from corral.client.metadata import DATE_KEYS, METADATA_DEFAULTS, Metadata

__all__ = [
    "MSG_ID",
    "UNANSWERED",
    "MetadataTable",
    "compact_request",
    "compact_value",
    "materialize",
]

_RAISE: Final[Any] = object()  # ``value``'s default: raise KeyError as a dict does
_MUTABLE_DEFAULTS: Final = frozenset(
    {"outputs", "data"}
)  # read from the stored Metadata, never a copy
_SHARED_KEYS: Final = frozenset({"engine_uuid", "engine_host", "status", "call"})
_SHARED_LIMIT: Final = 4096  # distinct strings shared before the table of them starts again
_LAYOUT_LIMIT: Final = 256  # distinct key orders of replies remembered, likewise


class ReplyLayout:
    """Where the dates and the shareable strings are in a reply's metadata of one key order:
    the same for nearly every reply, so worked out once per key order."""

    __slots__ = ("dates", "keys", "shared")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.dates = tuple(i for i, key in enumerate(keys) if key in DATE_KEYS)
        self.shared = tuple(i for i, key in enumerate(keys) if key in _SHARED_KEYS)


# A compact entry is a plain tuple: the cyclic collector stops tracking a tuple of strings,
# numbers, datetimes and such tuples at its first look, so a held result's metadata costs no
# full collection anything (an object per task was walked by every one of them). Its fields,
# by position: what the request said (``request``: its after, follow and label, or None when
# the three are), then, once its usual reply came, the content's status, when the reply came
# (``time.time()``), the reply metadata's keys and, from ``FIRST_VALUE`` on, their values
# (dates parsed; in the entry itself, not a tuple of their own: 56 bytes fewer).
MSG_ID: Final = 0
SUBMITTED: Final = 1
ENGINE_UUID: Final = 2
ENGINE_ID: Final = 3
REQUEST: Final = 4
STATUS: Final = 5
RECEIVED: Final = 6
KEYS: Final = 7
FIRST_VALUE: Final = 8
UNANSWERED: Final = 5  # the length of an entry whose reply has not come


def compact_request(
    msg_id: str,
    submitted: datetime | None,
    engine_uuid: str | None,
    engine_id: int | None,
    request: tuple[Any, Any, Any] | None,
) -> tuple[Any, ...]:
    """The compact entry of a request being sent (what ``Metadata.of_request`` holds)."""
    return (msg_id, submitted, engine_uuid, engine_id, request)


def materialize(entry: tuple[Any, ...]) -> Metadata:
    """The ``Metadata`` the eager records built from the same request and reply."""
    after, follow, label = entry[REQUEST] or (None, None, None)
    md = Metadata.of_request(
        entry[MSG_ID], entry[SUBMITTED], entry[ENGINE_UUID], entry[ENGINE_ID], after, follow, label
    )
    if len(entry) > UNANSWERED:
        dict.update(md, zip(entry[KEYS], entry[FIRST_VALUE:], strict=True))
        md["status"] = entry[STATUS]
        md["received"] = datetime.fromtimestamp(entry[RECEIVED], UTC)
    return md


_REQUEST_KEYS: Final = {
    "msg_id": MSG_ID,
    "submitted": SUBMITTED,
    "engine_uuid": ENGINE_UUID,
    "engine_id": ENGINE_ID,
}
_DEPENDENCY_KEYS: Final = ("after", "follow", "label")


def compact_value(entry: tuple[Any, ...], key: str, default: Any = _RAISE) -> Any:
    """``materialize(entry)[key]`` (``default`` if given and the key is absent), without
    building the dict; never asked for ``outputs`` or ``data`` (see ``MetadataTable``)."""
    if len(entry) > UNANSWERED:
        if key == "status":
            return entry[STATUS]
        if key == "received":
            return datetime.fromtimestamp(entry[RECEIVED], UTC)
        keys = entry[KEYS]
        if key in keys:
            return entry[FIRST_VALUE + keys.index(key)]
    position = _REQUEST_KEYS.get(key)
    if position is not None:
        return entry[position]
    if key in _DEPENDENCY_KEYS:
        request = entry[REQUEST]
        return None if request is None else request[_DEPENDENCY_KEYS.index(key)]
    if key == "data":
        return {}
    if key == "outputs":
        return []
    if key in METADATA_DEFAULTS:
        return METADATA_DEFAULTS[key]
    if default is _RAISE:
        raise KeyError(key)
    return default


class MetadataTable(EntryTable[Metadata]):
    """msg_id -> :class:`Metadata`, each entry compact until read whole (see the module doc).

    As the ``defaultdict(Metadata)`` it replaces (and ipyparallel's ``client.metadata``), a
    msg_id it does not hold reads as empty metadata, which is then kept. ``entries`` is the
    table itself, for :class:`~corral.client.records.Records`, which writes compact entries
    there and turns one into its ``Metadata`` (:meth:`full`) before it records anything
    else in it, holding ``lock``.
    """

    def __init__(self, lock: Any) -> None:
        # entries: a compact tuple, or a Metadata (or a user's dict); the lock is reentrant:
        # the records hold it while they call ``full``
        super().__init__(lock)
        self._layouts: dict[tuple[str, ...], ReplyLayout] = {}
        self._shared: dict[str, str] = {}

    # ------------------------------------------------------------------ the records' side

    def is_compact(self, msg_id: str) -> bool:
        """Whether the entry of ``msg_id`` is still compact (nobody read it whole)."""
        return type(self.entries.get(msg_id)) is tuple

    def full(self, msg_id: str) -> Metadata | None:
        """(Holding ``lock``) The entry of ``msg_id`` as its ``Metadata``, stored in place of
        its compact form; None if there is none."""
        entry = self.entries.get(msg_id)
        if type(entry) is tuple:
            entry = self.entries[msg_id] = materialize(entry)
        return entry

    def record_reply(
        self,
        entry: tuple[Any, ...],
        metadata: dict[str, Any],
        status: Any,
        received: float,
    ) -> None:
        """(Holding ``lock``) Keep an apply reply's ``metadata`` (a dict with no ``None``
        value and no execute result) in the compact ``entry`` of its request, which has no
        reply yet: its dates parsed (as :func:`wire_date`), the engine's uuid and host, the
        status and the call as strings shared with other entries."""
        keys = tuple(metadata)
        layout = self._layouts.get(keys)
        if layout is None:
            if len(self._layouts) >= _LAYOUT_LIMIT:
                self._layouts.clear()
            layout = self._layouts[keys] = ReplyLayout(keys)
        values = list(metadata.values())
        for position in layout.dates:
            values[position] = wire_date(values[position])
        # looked up inline (a call per string cost a tenth of the reply's), by name: a typed
        # dict's get compiled is the dict's own, a bound method kept in a variable a generic call
        shared = self._shared
        for position in layout.shared:
            value = values[position]
            if type(value) is str:
                values[position] = shared.get(value) or self._share(shared, value)
        if type(status) is str:
            status = shared.get(status) or self._share(shared, status)
        self.entries[entry[MSG_ID]] = (*entry, status, received, layout.keys, *values)

    def _share(self, shared: dict[str, str], value: str) -> str:
        """``value``, now the shared copy of its text (the table starts again when full)."""
        if len(shared) >= _SHARED_LIMIT:
            shared.clear()
        shared[value] = value
        return value

    # ------------------------------------------------------------------ readers

    def value(self, msg_id: str, key: str, default: Any = _RAISE) -> Any:
        """``(self.get(msg_id) or Metadata(msg_id=msg_id))[key]`` (``default`` if given and
        the key is absent), without turning a compact entry into its ``Metadata``: what the
        client and an AsyncResult's one-key reads use."""
        entry = self.entries.get(msg_id)
        if type(entry) is tuple and key not in _MUTABLE_DEFAULTS:
            return compact_value(entry, key, default)
        md = self.get(msg_id) or Metadata(msg_id=msg_id)
        if default is _RAISE:
            return md[key]
        return md.get(key, default)

    def get(self, msg_id: str, default: Any = None) -> Any:
        entry = self.entries.get(msg_id)
        if entry is None:
            return default
        if type(entry) is tuple:
            with self.lock:
                return self.full(msg_id) or materialize(entry)  # forgotten meanwhile
        return entry

    def __getitem__(self, msg_id: str) -> Metadata:
        md = self.get(msg_id)
        if md is None:  # unknown: empty metadata, kept (unless a request came meanwhile)
            with self.lock:
                self.entries.setdefault(msg_id, Metadata())
                md = self.full(msg_id)
        return md  # type: ignore[no-any-return]

    def pop(self, msg_id: str, *default: Any) -> Any:
        md = self.get(msg_id)
        if md is None:
            if default:
                return default[0]
            raise KeyError(msg_id)
        self.entries.pop(msg_id, None)
        return md

    def __repr__(self) -> str:
        return f"MetadataTable({dict(self.items())!r})"
