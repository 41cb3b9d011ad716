"""The Client's way out for a request: signed, tracked, then sent.

A mixin of :class:`corral.client.client.Client` (which owns the connection, the records and
the shared-memory link). Views see it through the
:class:`~corral.client.submitter.Submitter` protocol: :meth:`RequestSending.prepare_request`
makes a request and its future (so an AsyncResult exists before anything leaves), and
:meth:`RequestSending.dispatch_request` sends it, from the calling thread when it is alone in
flight, through the I/O thread in a burst. Large buffers go by shared memory when every
engine that may read them is on this host.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from corral.client.link import engine_gone
from corral.client.outgoing import OutgoingRequest, make_request
from corral.client.submitter import Target
from corral.protocol.session import Frame
from corral.protocol.shm import METADATA_KEY, SegmentRef, encode_refs

if TYPE_CHECKING:
    from corral.client.io_shell import ClientIO
    from corral.client.records import Records
    from corral.client.recovery import Resender
    from corral.protocol.session import Session
    from corral.sharedmem import SharedMemory

__all__ = ["RequestSending"]


class RequestSending:
    """Making and sending requests, for a Client (see the module doc)."""

    if TYPE_CHECKING:  # provided by Client
        session: Session
        timeout: float
        _io: ClientIO
        _records: Records
        _resender: Resender
        _shm: SharedMemory
        _shm_reader: dict[str, Any]
        _shm_reader_json: bytes
        _shm_threshold: int
        _shm_hosts: dict[str, str]
        _request_segments: dict[str, list[dict[str, Any]]]
        _all_share_host: tuple[dict[str, int], int, bool] | None
        _uuids: dict[str, int]
        _link_lost_at: float | None

        def _wait_for_link(self, deadline: float, doing: str) -> None: ...

    def send_request(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any],
        *,
        buffers: Sequence[Frame] = (),
        metadata: dict[str, Any] | None = None,
        target: Target | None = None,
        in_history: bool = True,
        track: bool = False,
        header: dict[str, Any] | None = None,
    ) -> str:
        """Sign, track and hand off one request; its msg_id: :meth:`prepare_request` (see
        there for the arguments) then :meth:`dispatch_request`."""
        request = self.prepare_request(
            channel,
            msg_type,
            content,
            buffers=buffers,
            metadata=metadata,
            target=target,
            in_history=in_history,
            track=track,
            header=header,
        )
        self.dispatch_request(request)
        return request.msg_id

    def prepare_request(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any],
        *,
        buffers: Sequence[Frame] = (),
        metadata: dict[str, Any] | None = None,
        target: Target | None = None,
        in_history: bool = True,
        track: bool = False,
        header: dict[str, Any] | None = None,
    ) -> OutgoingRequest:
        """Sign and track one request, not yet sent: its future is in the records, so what
        the call returns (an AsyncResult) can be built before :meth:`dispatch_request` sends
        it. With a ``target`` it goes to that engine (mux or control). ``track``: keep a
        MessageTracker of the data buffers in ``_records.trackers`` (made by the dispatch).
        ``header``: one made earlier, for a request already tracked (a held task, see
        :mod:`corral.client.deferred`).
        While the controller is unreachable such a request waits up to ``timeout`` for it, then
        raises ConnectionError; load-balanced ones are queued (the scheduler holds them until
        engines are back)."""
        if target is not None and self._link_lost_at is not None:
            self._wait_for_link(time.monotonic() + self.timeout, msg_type)
        # released results forgotten before the request is made, not once it is on its way:
        # then the submitting thread runs nothing while its request is in transit
        self._records.sweep()
        session = self.session
        refs: list[SegmentRef] = []
        if msg_type == "apply_request" and self._shm_reader:
            metadata = {**metadata, **self._shm_reader} if metadata else self._shm_reader
            if _may_export(buffers, self._shm_threshold) and self._engines_share_host(
                channel, target
            ):
                # held until this request settles, and for the Hub until it has read them
                buffers, refs = self._shm.export(buffers, hub_link=True)
                if refs:
                    metadata = {**metadata, METADATA_KEY: encode_refs(refs)}
        request = make_request(
            session,
            self._records,
            self._resender,
            channel,
            msg_type,
            content,
            buffers,
            metadata,
            self._shm_reader,
            self._shm_reader_json,
            target,
            in_history,
            track,
            header,
        )
        if refs:
            # named in a report of the task lost, if its engine dies with its copy
            msg_id = request.msg_id
            self._request_segments[msg_id] = encode_refs(refs)
            self._records.futures[msg_id].add_done_callback(
                lambda _: self._segments_settled(msg_id, refs)
            )
        return request

    def _segments_settled(self, msg_id: str, refs: list[SegmentRef]) -> None:
        """The request settled: its segments go to the pool (the Hub's link keeps one for
        the Hub until it has read the request's copy)."""
        self._request_segments.pop(msg_id, None)
        self._shm.release(refs)

    def dispatch_request(self, request: OutgoingRequest) -> None:
        """Send a request :meth:`prepare_request` made (once). A target already gone fails it
        at once with EngineError; an error of the send fails it and is raised."""
        msg_id, uuid, records = request.msg_id, request.engine_uuid, self._records
        if uuid is not None and uuid not in self._uuids:
            records.fail(msg_id, engine_gone(request.engine_id, uuid), at_once=True)
            return
        try:
            # alone in flight, the request leaves from this thread (no I/O thread wake-up
            # on the way out); in a burst, through the I/O thread, in bundles
            tracker = self._io.send(
                request.channel.encode(),
                request.frames,
                request.track_from,
                at_once=len(records.outstanding) <= 1,
            )
        except BaseException as exc:  # Ctrl-C too: it may have left half a message, dropped
            records.fail(msg_id, exc, at_once=True)
            raise
        if tracker is not None:
            records.trackers[msg_id] = tracker

    def _engines_share_host(self, channel: str, target: Target | None) -> bool:
        """Whether the engine(s) that may read a request see this process's shared memory:
        the target, or for a load-balanced task every registered engine."""
        if target is not None:
            return self._shm.same_host(self._shm_hosts.get(target[1]))
        if channel != "task":
            return False
        uuids = self._uuids  # replaced, never changed in place, when the table changes
        key = (uuids, len(self._shm_hosts))  # a host is learnt before its engine is added
        cached = self._all_share_host
        if cached is not None and cached[0] is key[0] and cached[1] == key[1]:
            return cached[2]
        shared = bool(uuids) and all(
            self._shm.same_host(self._shm_hosts.get(uuid)) for uuid in uuids
        )
        self._all_share_host = (uuids, key[1], shared)
        return shared

    def fail_request(self, msg_type: str, metadata: dict[str, Any], error: BaseException) -> str:
        """Record a request that is never sent because it is known to fail (an impossible
        dependency): it gets a msg_id, a failed result, and later tasks can depend on it."""
        msg = self.session.msg(msg_type, {}, metadata=metadata)
        self._records.track(msg, "task")
        self._records.fail(msg.msg_id, error, at_once=True)
        return msg.msg_id


def _may_export(buffers: Sequence[Frame], threshold: int) -> bool:
    """Whether some buffer may be large enough for shared memory: False at once for the
    usual small call (its pickle alone, as bytes, under the threshold), which would
    otherwise cost a memoryview per frame in ``SharedMemory.export`` per task."""
    if not buffers:
        return False
    if len(buffers) == 1 and type(buffers[0]) is bytes:
        return len(buffers[0]) >= threshold
    return True
