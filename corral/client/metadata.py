"""The metadata of one request, as a user reads it (``ar.metadata``, ``rc.metadata[msg_id]``).

A dict with every key ipyparallel users read present from the start (None, or empty), also
readable as attributes; dates parsed to aware datetimes. :class:`~corral.client.records.Records`
fills it from the request as sent and from what the reply and iopub say.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from corral.client.dates import parse_date, wire_date

__all__ = [
    "DATE_KEYS",
    "DATE_ORDER",
    "METADATA_DEFAULTS",
    "Metadata",
    "parse_date",
    "update_from_reply",
    "wire_date",
]

METADATA_DEFAULTS: dict[str, Any] = {
    "msg_id": None,
    "submitted": None,
    "started": None,
    "completed": None,
    "received": None,
    "engine_id": None,
    "engine_uuid": None,
    "status": None,
    "stdout": "",
    "stderr": "",
    "execute_input": None,
    "execute_result": None,
    "error": None,
    "after": None,
    "follow": None,
    "data": {},
    "label": None,
}
DATE_ORDER = ("submitted", "started", "completed", "received")
DATE_KEYS = frozenset(DATE_ORDER)
RESULT_KEYS = frozenset({"execute_result", "execute_result_metadata"})
SPECIAL_KEYS = DATE_KEYS | RESULT_KEYS  # not copied as they are


class Metadata(dict[str, Any]):
    """Per-request metadata: a dict with every key present, also readable as attributes
    (``md.engine_id``). Dates are datetimes; ``outputs`` holds display_data contents."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(METADATA_DEFAULTS)
        self["outputs"] = []
        self["data"] = {}
        self.update(*args, **kwargs)

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    @classmethod
    def of_request(
        cls,
        msg_id: str,
        submitted: datetime | None,
        engine_uuid: str | None,
        engine_id: int | None,
        after: Any,
        follow: Any,
        label: Any,
    ) -> Metadata:
        """``Metadata(msg_id=..., submitted=..., ...)`` for a request being sent, the same
        dict built without ``__init__``'s keyword handling: one per task, three times
        cheaper."""
        md: Metadata = dict.__new__(cls)
        dict.update(md, METADATA_DEFAULTS)
        md["outputs"] = []
        md["data"] = {}
        md["msg_id"] = msg_id
        md["submitted"] = submitted
        md["engine_uuid"] = engine_uuid
        md["engine_id"] = engine_id
        md["after"] = after
        md["follow"] = follow
        md["label"] = label
        return md


def update_from_reply(
    md: Metadata,
    metadata: Mapping[str, Any],
    content: Mapping[str, Any],
    received: datetime,
    silent: bool,
) -> None:
    """Record what a reply says in its request's ``md``: its metadata (dates parsed, the
    execute result in ipyparallel's shape, None for a ``silent`` execute), the content's
    status and when it came. (The usual apply reply is kept compact instead:
    :mod:`corral.client.metadata_table`, whose tests compare the two.)"""
    if (
        type(metadata) is dict
        and RESULT_KEYS.isdisjoint(metadata)
        and None not in metadata.values()
    ):
        md.update(metadata)  # an engine's reply: copied in one call, then its dates parsed
        for key in DATE_ORDER:
            value = metadata.get(key)
            if value is not None:
                md[key] = wire_date(value)
    else:
        for key, value in metadata.items():
            if key not in SPECIAL_KEYS:
                if value is not None or key not in md:
                    md[key] = value
            elif key in DATE_KEYS:
                md[key] = parse_date(value)
            elif key == "execute_result":
                extra = metadata.get("execute_result_metadata")
                md[key] = None if silent else _execute_result(value, content, extra)
            # execute_result_metadata: part of execute_result
    md["status"] = content.get("status", md.get("status"))
    md["received"] = received


def _execute_result(data: Any, content: Mapping[str, Any], extra: Any) -> dict[str, Any] | None:
    """The reply's result bundle in ipyparallel's shape (``{"data": {mime: ...},
    "metadata": {mime: ...}, "execution_count": n}``, the metadata from the reply's
    ``execute_result_metadata``); None when there is no result."""
    if not isinstance(data, dict):
        return None
    if "data" in data and isinstance(data["data"], dict):
        return data
    metadata = dict(extra) if isinstance(extra, dict) else {}
    count = content.get("execution_count")
    return {"data": data, "metadata": metadata, "execution_count": count}
