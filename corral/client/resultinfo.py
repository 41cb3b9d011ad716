"""What an AsyncResult tells besides its value: metadata, captured output, times, progress.

A mixin of :class:`corral.client.asyncresult.AsyncResult`, kept apart so that module holds
completion and waiting only. Everything here reads the client's records
(:class:`~corral.client.records.Records`) of the AsyncResult's requests, which stay while the
AsyncResult lives.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from corral.client.records import Metadata
from corral.errors import TimeoutError

if TYPE_CHECKING:
    from corral.client.records import Records
    from corral.client.requestfuture import LightFuture

__all__ = ["ResultInfo"]


class ResultInfo:
    """Metadata and output of an AsyncResult's requests (see the module doc)."""

    if TYPE_CHECKING:  # provided by AsyncResult

        @property
        def msg_ids(self) -> list[str]: ...

        _records: Records
        _single: bool
        _fname: str

        @property
        def _children(self) -> Sequence[LightFuture]: ...

        def done(self) -> bool: ...

    @property
    def progress(self) -> int:
        """How many of the items are done (requests, or map elements for a map)."""
        return sum(1 for child in self._children if child.done())

    @property
    def metadata(self) -> Metadata | list[Metadata]:
        """The request's Metadata (single target), or one per request."""
        found = [self._records.metadata.get(m) or Metadata(msg_id=m) for m in self.msg_ids]
        return found[0] if self._single else found

    def _metadata_values(self, key: str) -> Any:
        """One key of each request's metadata, read without building its Metadata."""
        value = self._records.metadata.value
        values = [value(m, key) for m in self.msg_ids]
        return values[0] if self._single else values

    @property
    def stdout(self) -> str | list[str]:
        """What the request(s) printed to stdout."""
        return self._metadata_values("stdout")  # type: ignore[no-any-return]

    @property
    def stderr(self) -> str | list[str]:
        """What the request(s) printed to stderr."""
        return self._metadata_values("stderr")  # type: ignore[no-any-return]

    @property
    def engine_id(self) -> int | None | list[int | None]:
        """Where the request(s) ran (known once started, or at once for direct calls)."""
        return self._metadata_values("engine_id")  # type: ignore[no-any-return]

    def _dates(self, key: str) -> list[datetime]:
        metadata = self._records.metadata
        return [
            d
            for d in (metadata.value(m, key) for m in self.msg_ids if m in metadata)
            if isinstance(d, datetime)
        ]

    @property
    def elapsed(self) -> float:
        """Seconds since the first request was submitted (until the last answer, once ready)."""
        submitted = self._dates("submitted")
        if not submitted:
            return 0.0
        if self.done():
            received = self._dates("received")
            if received:
                return (max(received) - min(submitted)).total_seconds()
        now = datetime.now(min(submitted).tzinfo)
        return (now - min(submitted)).total_seconds()

    @property
    def wall_time(self) -> float:
        """Seconds from the first submission to the last answer; TimeoutError until ready."""
        if not self.done():
            raise TimeoutError(f"{self._fname}: not ready, so no wall time yet")
        return self.elapsed

    @property
    def serial_time(self) -> float:
        """Seconds the requests spent running, added up over engines; TimeoutError until
        ready."""
        if not self.done():
            raise TimeoutError(f"{self._fname}: not ready, so no serial time yet")
        total = 0.0
        metadata = self._records.metadata
        for msg_id in self.msg_ids:
            if msg_id not in metadata:
                continue
            started = metadata.value(msg_id, "started", None)
            completed = metadata.value(msg_id, "completed", None)
            if isinstance(started, datetime) and isinstance(completed, datetime):
                total += (completed - started).total_seconds()
        return total

    def display_outputs(self, groupby: str = "type", result_only: bool = False) -> None:
        """Show what the requests printed and displayed, and execute results, labelled by
        engine as ipyparallel does (``[stdout:0] ...``, ``Out[0:3]: ...``); rich outputs render
        in Jupyter. ``groupby``: ``type``, ``engine`` or ``order`` (see
        :func:`corral.client.outputs.display_outputs`); ``result_only`` skips stdout/stderr.
        A single-engine result (``rc[3].execute(...)``) is shown without labels, as there."""
        from corral.client.outputs import display_outputs, display_single_output

        if self._single and len(self.msg_ids) == 1:
            display_single_output(self._records, self.msg_ids[0], result_only)
            return
        display_outputs(self._records, self.msg_ids, groupby, result_only)
