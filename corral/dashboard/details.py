"""Task records as the dashboard shows them: history rows and one task's page.

The store keeps whole messages (headers, metadata, reply content and result buffers); the
page needs short, safe text. Results are deserialized here, in the dashboard process, and
shown as a bounded ``repr``: a result whose class cannot be rebuilt here is described by its
size instead. Everything returned is JSON-ready.
"""

from __future__ import annotations

import reprlib
from datetime import datetime
from typing import Any

from corral.errors import CorralError
from corral.protocol.serialize import deserialize_object

#: The fields a history row needs (the page asks the Hub for these only).
ROW_KEYS = [
    "msg_id",
    "status",
    "queue",
    "engine_id",
    "client_uuid",
    "submitted",
    "started",
    "completed",
    "header",
    "result_metadata",
]
MAX_TEXT = 20_000  # characters of stdout/stderr/traceback shown on a task's page

_repr = reprlib.Repr()
_repr.maxstring = 400
_repr.maxother = 400
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 20
_repr.maxlevel = 4


def duration(started: Any, completed: Any) -> float | None:
    """Seconds between two ISO timestamps, or None when either is missing or unreadable."""
    if not (isinstance(started, str) and isinstance(completed, str)):
        return None
    try:
        delta = datetime.fromisoformat(completed) - datetime.fromisoformat(started)
    except ValueError:
        return None
    return round(delta.total_seconds(), 6)


def row(record: dict[str, Any]) -> dict[str, Any]:
    """One line of the history table."""
    header = record.get("header") or {}
    result_metadata = record.get("result_metadata") or {}
    return {
        "msg_id": record.get("msg_id"),
        "status": record.get("status"),
        "queue": record.get("queue"),
        "engine_id": record.get("engine_id"),
        "client": record.get("client_uuid"),
        "submitted": record.get("submitted"),
        "started": record.get("started"),
        "completed": record.get("completed"),
        "duration": duration(record.get("started"), record.get("completed")),
        "msg_type": header.get("msg_type"),
        "call": result_metadata.get("call"),
    }


def _clip(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    if len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + f"\n... ({len(text) - MAX_TEXT} more characters)"


def result_summary(status: Any, buffers: list[bytes]) -> str | None:
    """A bounded repr of an apply result, or why it cannot be shown."""
    if status != "ok" or not buffers:
        return None
    size = sum(len(b) for b in buffers)
    try:
        value = deserialize_object(buffers)
    except CorralError as err:
        return f"<{size} bytes in {len(buffers)} buffer(s); not readable here: {err}>"
    except Exception as err:  # unpickling runs foreign code: any error, described
        return f"<{size} bytes; not readable here: {type(err).__name__}: {err}>"
    return _repr.repr(value)


def task_page(record: dict[str, Any], buffers: list[bytes]) -> dict[str, Any]:
    """Everything the task page shows; ``buffers`` are the record's result buffers."""
    header = record.get("header") or {}
    metadata = record.get("metadata") or {}
    content = record.get("content") or {}
    result_content = record.get("result_content") or {}
    result_metadata = record.get("result_metadata") or {}
    status = record.get("status")
    page = row(record)
    page.update(
        {
            "engine_uuid": record.get("engine_uuid"),
            "received": record.get("received"),
            "resubmitted": record.get("resubmitted"),
            "flags": {
                key: metadata[key]
                for key in ("after", "follow", "targets", "timeout", "retries", "attempt")
                if metadata.get(key) not in (None, [], "")
            },
            "code": content.get("code") if header.get("msg_type") == "execute_request" else None,
            "call": result_metadata.get("call"),
            "result": result_summary(status, buffers),
            "execute_result": (result_metadata.get("execute_result") or {}).get("text/plain"),
            "stdout": _clip(record.get("stdout") or result_metadata.get("stdout")),
            "stderr": _clip(record.get("stderr") or result_metadata.get("stderr")),
            "error": None,
        }
    )
    if status not in ("ok", "pending", None):
        trace = result_content.get("traceback") or []
        page["error"] = {
            "ename": str(result_content.get("ename", "")),
            "evalue": str(result_content.get("evalue", "")),
            "traceback": _clip("\n".join(str(line) for line in trace)),
        }
    return page
