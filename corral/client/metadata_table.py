"""Every request's metadata, kept compact until read (``Records.metadata``; sans-I/O).

A client keeps each task's metadata until it is purged, as ipyparallel does, and a user may
hold a million results. As a :class:`~corral.client.metadata.Metadata` (a dict of about 20
keys, its ``outputs`` list and ``data`` dict, four datetimes, the reply's strings) one held
no-op's metadata took about 1 KB, half of what the client kept per held result
(``bench/README.md``, round fourteen), and most of it is never read. So a request's metadata
starts as a :class:`CompactMetadata` (what the request said, then what its usual reply said,
its dates parsed, as one tuple whose repeated strings are shared) and becomes the
``Metadata`` a user reads the first time the whole dict is asked for: that ``Metadata`` is
stored in its place and is the one every later read gets (so changes to it stay), equal key
for key to the one built when the reply came (``tests/client/test_metadata_table.py``).
Reading one key (``ar.engine_id``, ``ar.wall_time``, the client's own checks) goes through
:meth:`MetadataTable.value`, which builds nothing.

Only the usual case is kept compact: an ``apply_reply`` whose metadata is a dict without
``None`` values and without execute results, the first for its request. Anything else (an
iopub message, an error, a reply from the Hub's store, a second reply) first turns the entry
into its ``Metadata`` and is recorded there as before, under the records' output lock, which
orders every change of an entry (the reply's reader, the I/O thread's iopub, a user's read).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

from corral.client.metadata import DATE_KEYS, METADATA_DEFAULTS, Metadata, wire_date

__all__ = ["CompactMetadata", "MetadataTable", "ReplyLayout"]

_RAISE: Any = object()  # ``value``'s default: raise KeyError as a dict does
_MUTABLE_DEFAULTS = frozenset({"outputs", "data"})  # read from the stored Metadata, never a copy
_SHARED_KEYS = frozenset({"engine_uuid", "engine_host", "status", "call"})
_SHARED_LIMIT = 4096  # distinct strings shared before the table of them starts again
_LAYOUT_LIMIT = 256  # distinct key orders of replies remembered, likewise


class ReplyLayout:
    """The keys of a reply's metadata in their order, and where its dates and its shareable
    strings are: the same for nearly every reply, so made once per key order."""

    __slots__ = ("dates", "index", "keys", "shared")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.index = {key: position for position, key in enumerate(keys)}
        self.dates = tuple(i for i, key in enumerate(keys) if key in DATE_KEYS)
        self.shared = tuple(i for i, key in enumerate(keys) if key in _SHARED_KEYS)


class CompactMetadata:
    """A request's metadata before anyone read it whole (see the module doc): what
    ``Metadata.of_request`` would hold, then the reply's values in its layout's order (dates
    parsed), the content's status and when the reply came (``time.time()``)."""

    __slots__ = (
        "engine_id",
        "engine_uuid",
        "layout",
        "msg_id",
        "received",
        "request",
        "status",
        "submitted",
        "values",
    )

    def __init__(
        self,
        msg_id: str,
        submitted: datetime | None,
        engine_uuid: str | None,
        engine_id: int | None,
        request: tuple[Any, Any, Any] | None,
    ) -> None:
        self.msg_id = msg_id
        self.submitted = submitted
        self.engine_uuid = engine_uuid
        self.engine_id = engine_id
        self.request = request  # (after, follow, label), None when all three are
        self.layout: ReplyLayout | None = None  # set with ``values`` by the reply
        self.values: tuple[Any, ...] = ()
        self.status: Any = None
        self.received = 0.0

    def materialize(self) -> Metadata:
        """The ``Metadata`` the eager records built from the same request and reply."""
        after, follow, label = self.request or (None, None, None)
        md = Metadata.of_request(
            self.msg_id, self.submitted, self.engine_uuid, self.engine_id, after, follow, label
        )
        layout = self.layout
        if layout is not None:
            dict.update(md, zip(layout.keys, self.values, strict=True))
            md["status"] = self.status
            md["received"] = datetime.fromtimestamp(self.received, UTC)
        return md

    def value(self, key: str, default: Any = _RAISE) -> Any:
        """``self.materialize()[key]`` (``default`` if given and the key is absent), without
        building the dict; never asked for ``outputs`` or ``data`` (see ``MetadataTable``)."""
        layout = self.layout
        if layout is not None:
            if key == "status":
                return self.status
            if key == "received":
                return datetime.fromtimestamp(self.received, UTC)
            position = layout.index.get(key)
            if position is not None:
                return self.values[position]
        if key == "msg_id":
            return self.msg_id
        if key == "submitted":
            return self.submitted
        if key == "engine_uuid":
            return self.engine_uuid
        if key == "engine_id":
            return self.engine_id
        if key in ("after", "follow", "label"):
            request = self.request
            return None if request is None else request[("after", "follow", "label").index(key)]
        if key == "data":
            return {}
        if key == "outputs":
            return []
        if key in METADATA_DEFAULTS:
            return METADATA_DEFAULTS[key]
        if default is _RAISE:
            raise KeyError(key)
        return default

    def get(self, key: str, default: Any = None) -> Any:
        """As ``dict.get`` on its ``Metadata``."""
        return self.value(key, default)


class MetadataTable(MutableMapping[str, Metadata]):
    """msg_id -> :class:`Metadata`, each entry compact until read whole (see the module doc).

    As the ``defaultdict(Metadata)`` it replaces (and ipyparallel's ``client.metadata``), a
    msg_id it does not hold reads as empty metadata, which is then kept. ``entries`` is the
    table itself, for :class:`~corral.client.records.Records`, which writes compact entries
    there and turns one into its ``Metadata`` (:meth:`full`) before it records anything
    else in it, holding ``lock``.
    """

    def __init__(self, lock: Any) -> None:
        self.entries: dict[str, Any] = {}  # Metadata (or a user's dict) or CompactMetadata
        self.lock = lock  # reentrant: the records hold it while they call ``full``
        self._layouts: dict[tuple[str, ...], ReplyLayout] = {}
        self._shared: dict[str, str] = {}

    # ------------------------------------------------------------------ the records' side

    def full(self, msg_id: str) -> Metadata | None:
        """(Holding ``lock``) The entry of ``msg_id`` as its ``Metadata``, stored in place of
        its compact form; None if there is none."""
        entry = self.entries.get(msg_id)
        if type(entry) is CompactMetadata:
            entry = self.entries[msg_id] = entry.materialize()
        return entry

    def record_reply(
        self,
        entry: CompactMetadata,
        metadata: dict[str, Any],
        status: Any,
        received: float,
    ) -> None:
        """(Holding ``lock``) Keep an apply reply's ``metadata`` (a dict with no ``None``
        value and no execute result) in ``entry``, not yet replied: its dates parsed (as
        :func:`wire_date`), the engine's uuid and host, the status and the call as strings
        shared with other entries."""
        keys = tuple(metadata)
        layout = self._layouts.get(keys)
        if layout is None:
            if len(self._layouts) >= _LAYOUT_LIMIT:
                self._layouts.clear()
            layout = self._layouts[keys] = ReplyLayout(keys)
        values = list(metadata.values())
        for position in layout.dates:
            values[position] = wire_date(values[position])
        shared = self._shared
        for position in layout.shared:
            value = values[position]
            if type(value) is str:
                values[position] = self._share(shared, value)
        if type(status) is str:
            status = self._share(shared, status)
        entry.values = tuple(values)
        entry.status = status
        entry.received = received
        entry.layout = layout

    def _share(self, shared: dict[str, str], value: str) -> str:
        found = shared.get(value)
        if found is not None:
            return found
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
        if type(entry) is CompactMetadata and key not in _MUTABLE_DEFAULTS:
            return entry.value(key, default)
        md = self.get(msg_id) or Metadata(msg_id=msg_id)
        if default is _RAISE:
            return md[key]
        return md.get(key, default)

    def get(self, msg_id: str, default: Any = None) -> Any:
        entry = self.entries.get(msg_id)
        if entry is None:
            return default
        if type(entry) is CompactMetadata:
            with self.lock:
                return self.full(msg_id) or entry.materialize()  # forgotten meanwhile
        return entry

    def __getitem__(self, msg_id: str) -> Metadata:
        md = self.get(msg_id)
        if md is None:
            with self.lock:
                md = self.entries.setdefault(msg_id, Metadata())
                if type(md) is not Metadata:
                    md = self.full(msg_id) or Metadata()
        return md  # type: ignore[no-any-return]

    def __setitem__(self, msg_id: str, md: Metadata) -> None:
        self.entries[msg_id] = md

    def __delitem__(self, msg_id: str) -> None:
        del self.entries[msg_id]

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.entries))  # a snapshot: the client's threads add entries

    def __len__(self) -> int:
        return len(self.entries)

    def pop(self, msg_id: str, *default: Any) -> Any:
        md = self.get(msg_id)
        if md is None:
            if default:
                return default[0]
            raise KeyError(msg_id)
        self.entries.pop(msg_id, None)
        return md

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MetadataTable({dict(self.items())!r})"
