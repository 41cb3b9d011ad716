"""Load-balanced tasks that depend on direct tasks still running.

The scheduler judges ``after`` and ``follow`` from the outcomes of the tasks it scheduled; a
task sent straight to an engine (a DirectView) never passes through it, so it cannot wait for
one. This client, though, sees that direct task's reply. A load-balanced task whose
dependencies include direct tasks still pending here is therefore held by the client: it gets
its msg_id (and AsyncResult) at once, and is sent when the last of those direct tasks has
answered, with its dependencies pruned then (an ``after`` met is left out; a ``follow``
becomes "run on the engine it ran on"). A dependency that can no longer be met fails the task
with ImpossibleDependency, as at submission.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import TYPE_CHECKING, Any

from corral.errors import ImpossibleDependency

if TYPE_CHECKING:
    from corral.client.submitter import Submitter

__all__ = ["direct_pending", "submit_when_done"]


def direct_pending(client: Submitter, msg_ids: frozenset[str]) -> list[futures.Future[Any]]:
    """The futures of those ``msg_ids`` that are direct (MUX) requests still unanswered."""
    records = client.records
    waits = []
    for msg_id in msg_ids:
        pending = records.pending.get(msg_id)
        if pending is not None and pending.channel == "mux":
            waits.append(pending.future)
    return waits


def submit_when_done(
    client: Submitter,
    packed: Sequence[Sequence[Any]],
    waits: Sequence[futures.Future[Any]],
    metadata: Callable[[], dict[str, Any]],
    track: bool,
) -> list[str]:
    """msg_ids for the load-balanced calls ``packed``, sent once every future of ``waits``
    is done, with the request metadata ``metadata()`` computes then."""
    session = client.session
    headers = [session.header("apply_request") for _ in packed]
    msg_ids = [str(header["msg_id"]) for header in headers]
    for header, buffers in zip(headers, packed, strict=True):
        held = session.msg("apply_request", {}, metadata={}, buffers=buffers, header=header)
        client.records.track(held, "task")
    remaining = [len(waits)]
    lock = threading.Lock()

    def send() -> None:
        if client.closed or not any(m in client.records.pending for m in msg_ids):
            return  # the client closed (and failed them), or they were aborted meanwhile
        try:
            request_metadata = metadata()
        except ImpossibleDependency as error:
            for msg_id in msg_ids:
                client.records.fail(msg_id, error, at_once=True)
            return
        for header, buffers in zip(headers, packed, strict=True):
            if header["msg_id"] not in client.records.pending:
                continue
            client.send_request(
                "task",
                "apply_request",
                {},
                buffers=buffers,
                metadata=request_metadata,
                header=header,
                track=track,
            )

    def one_done(_: futures.Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            send()

    for wait in waits:
        wait.add_done_callback(one_done)
    return msg_ids
