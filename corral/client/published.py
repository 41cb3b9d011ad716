"""What tasks sent with ``publish_data`` (corral.engine.datapub): merged into ``ar.data``.

A ``data_message`` on iopub carries a dict (serialized in its buffers) for the request it
names as parent. :class:`PublishedData` hands its decoding to the client's results worker (as
for results: never on the routing thread) and merges it into that request's
``Metadata["data"]`` in arrival order. Unlike streamed text, which the reply's metadata
replaces, data arriving after the reply still counts: the reply only says how many messages
the task sent (``data_messages``), and :meth:`PublishedData.wait` waits until that many are
merged, which is what ``AsyncResult.wait_for_output`` needs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from corral.errors import SerializationError
from corral.protocol.serialize import deserialize_object
from corral.protocol.session import Message

if TYPE_CHECKING:
    from corral.client.records import Metadata

log = logging.getLogger("corral.client")

__all__ = ["PublishedData"]


class PublishedData:
    """Counts and merges ``data_message`` per msg_id (see the module doc); ``defer`` runs the
    merge on the settling thread, ``known(msg_id)`` says whether the client still keeps it."""

    def __init__(
        self, defer: Callable[[Callable[[], None]], None], known: Callable[[str], bool]
    ) -> None:
        self._defer = defer
        self._known = known
        self._merged: dict[str, int] = {}
        self._changed = threading.Condition()

    def receive(self, msg_id: str, md: Metadata, msg: Message) -> None:
        """(I/O thread) A data_message for ``msg_id``, whose metadata is ``md``."""
        frames = list(msg.buffers)
        self._defer(lambda: self._merge(msg_id, md, frames))

    def _merge(self, msg_id: str, md: Metadata, frames: list[Any]) -> None:
        try:
            data = deserialize_object(frames)
        except SerializationError as err:
            log.warning("dropped data published by %s: %s", msg_id, err)
            data = None
        if isinstance(data, Mapping):
            md["data"].update(data)
        elif data is not None:
            log.warning("dropped data published by %s: not a dict", msg_id)
        with self._changed:
            if self._known(msg_id):
                self._merged[msg_id] = self._merged.get(msg_id, 0) + 1
            self._changed.notify_all()

    def merged(self, msg_id: str) -> int:
        """How many data messages of ``msg_id`` were merged."""
        return self._merged.get(msg_id, 0)

    def wait(self, expected: Mapping[str, int], timeout: float | None) -> bool:
        """Until each msg_id's ``expected`` count is merged; False after ``timeout`` seconds
        (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while any(self._merged.get(m, 0) < n for m, n in expected.items()):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def forget(self, msg_ids: Iterable[str]) -> None:
        with self._changed:
            for msg_id in msg_ids:
                self._merged.pop(msg_id, None)
