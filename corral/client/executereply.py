"""The value of an ``execute`` request: what a cell returned, and how front ends show it.

Kept apart from :mod:`corral.client.records`, which builds it from an ``execute_reply``
(importable from there too, as before).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ExecuteReply"]


class ExecuteReply:
    """The result of ``execute``: the execution count, the value of a trailing expression
    (``execute_result``: ``{"data": {mime: ...}, "metadata": ..., "execution_count": n}``,
    None for a silent execute) and every other metadata key as an attribute (``stdout``,
    ``outputs``, ``engine_id``...). Rich front ends show the result through ``_repr_*_``."""

    def __init__(self, msg_id: str, content: Mapping[str, Any], metadata: Mapping[str, Any]):
        self.msg_id = msg_id
        self.content = dict(content)
        self.metadata = metadata

    @property
    def execution_count(self) -> int | None:
        count = self.content.get("execution_count")
        return count if isinstance(count, int) else None

    @property
    def execute_result(self) -> dict[str, Any] | None:
        result = self.metadata.get("execute_result")
        return result if isinstance(result, dict) else None

    @property
    def data(self) -> dict[str, Any]:
        """The mime bundle of the result (empty without one)."""
        result = self.execute_result
        return dict(result.get("data") or {}) if result else {}

    def _repr_mime_(self, mime: str) -> Any:
        if mime not in self.data:
            return None
        value = self.data[mime]
        extra = ((self.execute_result or {}).get("metadata") or {}).get(mime)
        return (value, extra) if extra else value

    def _repr_html_(self) -> Any:
        return self._repr_mime_("text/html")

    def _repr_png_(self) -> Any:
        return self._repr_mime_("image/png")

    def _repr_jpeg_(self) -> Any:
        return self._repr_mime_("image/jpeg")

    def _repr_svg_(self) -> Any:
        return self._repr_mime_("image/svg+xml")

    def _repr_latex_(self) -> Any:
        return self._repr_mime_("text/latex")

    def _repr_markdown_(self) -> Any:
        return self._repr_mime_("text/markdown")

    def _repr_json_(self) -> Any:
        return self._repr_mime_("application/json")

    def __getitem__(self, key: str) -> Any:
        return self.metadata[key]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key not in self.metadata:
            raise AttributeError(f"'ExecuteReply' object has no attribute {key!r}")
        return self.metadata[key]

    def __repr__(self) -> str:
        text = self.data.get("text/plain", "")
        if "\n" in text:
            text = "\n" + text
        return f"<ExecuteReply[{self.execution_count}]: {text}>"
