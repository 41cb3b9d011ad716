"""The seam between views and the client: what a view may ask of the client it submits through.

Views (:mod:`corral.client.view`, :mod:`corral.client.dataview`, the executor, the joblib
backend, the magics) and AsyncResults hold a :class:`Submitter`, never the Client's internals:
they submit requests, track them through the client's :class:`~corral.client.records.Records`,
and query the Hub through these methods only. :class:`corral.client.client.Client` is the one
implementation; the protocol says what a view relies on, so the client's insides (its I/O
shell, engine table, recovery after outages) can change without touching any view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping, Sequence
from concurrent import futures
from typing import TYPE_CHECKING, Any, Protocol

from corral.client.outgoing import OutgoingRequest

if TYPE_CHECKING:
    import zmq

    from corral.client.asyncresult import AsyncResult
    from corral.client.balanced import LoadBalancedView
    from corral.client.records import Records
    from corral.client.view import View
    from corral.protocol.session import Frame, Session

__all__ = ["OutgoingRequest", "Submitter", "Target", "Targets"]

Target = tuple[int, str]  # (engine id, engine uuid)
Targets = int | Sequence[int] | slice | str | None  # an id, ids, a slice of ids, or "all"


class Submitter(Protocol):
    """What views and AsyncResults use of a client (see the module doc)."""

    session: Session
    timeout: float

    # ------------------------------------------------------------------ state

    @property
    def records(self) -> Records:
        """Futures, results and metadata of the requests sent (read; written by the client)."""
        ...

    @property
    def closed(self) -> bool:
        """Whether requests are refused (the client closed, or its I/O thread failed)."""
        ...

    @property
    def ids(self) -> list[int]: ...

    @property
    def outstanding(self) -> set[str]: ...

    @property
    def results(self) -> MutableMapping[str, Any]: ...

    def __len__(self) -> int: ...

    def engine_uuids(self) -> set[str]:
        """The uuids of the engines registered now."""
        ...

    def resolve_targets(self, targets: Targets) -> list[Target]: ...

    # ------------------------------------------------------------------ submitting

    def send_request(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any],
        *,
        buffers: Sequence[Frame] = ...,
        metadata: dict[str, Any] | None = ...,
        target: Target | None = ...,
        in_history: bool = ...,
        track: bool = ...,
        header: dict[str, Any] | None = ...,
    ) -> str: ...

    def prepare_request(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any],
        *,
        buffers: Sequence[Frame] = ...,
        metadata: dict[str, Any] | None = ...,
        target: Target | None = ...,
        in_history: bool = ...,
        track: bool = ...,
        header: dict[str, Any] | None = ...,
    ) -> OutgoingRequest:
        """``send_request``'s first half: signed and tracked (its future in ``records``)."""
        ...

    def dispatch_request(self, request: OutgoingRequest) -> None:
        """``send_request``'s second half: send what ``prepare_request`` made, once."""
        ...

    def fail_request(
        self, msg_type: str, metadata: dict[str, Any], error: BaseException
    ) -> str: ...

    def take_trackers(self, msg_ids: Iterable[str]) -> list[zmq.MessageTracker]:
        """The MessageTrackers of ``msg_ids`` sent with ``track``, handed over once."""
        ...

    def register_view(self, view: View) -> None:
        """Keep ``view``'s history in step with the records (purging trims it too)."""
        ...

    def run_callback(self, call: Callable[[], None]) -> None:
        """Run a user's done-callback on the client's callbacks thread."""
        ...

    # ------------------------------------------------------------------ waiting and control

    def wait(self, jobs: Any = ..., timeout: float | None = ...) -> bool: ...

    def wait_for_futures(
        self,
        pending: Iterable[futures.Future[Any]],
        timeout: float | None,
        doing: str,
        *,
        any_done: bool = ...,
    ) -> bool: ...

    def cancel_requests(self, msg_ids: list[str]) -> bool:
        """Abort ``msg_ids`` unless one already runs; True if none did."""
        ...

    def abort(
        self, jobs: Any = ..., targets: Targets = ..., block: bool | None = ...
    ) -> AsyncResult | None: ...

    def clear(self, targets: Targets = ..., block: bool | None = ...) -> AsyncResult | None: ...

    def send_signal(
        self, sig: int | str, targets: Targets = ..., block: bool | None = ...
    ) -> AsyncResult | None: ...

    def shutdown(
        self,
        targets: Targets = ...,
        restart: bool = ...,
        hub: bool = ...,
        block: bool | None = ...,
    ) -> None: ...

    def spin(self) -> None: ...

    def close(self, linger: int | None = ...) -> None: ...

    # ------------------------------------------------------------------ the Hub

    def get_result(
        self, indices_or_msg_ids: Any = ..., block: bool | None = ..., owner: bool = ...
    ) -> Any: ...

    def queue_status(self, targets: Targets = ..., verbose: bool = ...) -> dict[Any, Any]: ...

    def purge_results(self, jobs: Any = ..., targets: Any = ...) -> None: ...

    def load_balanced_view(
        self, targets: int | Sequence[int] | str | None = ..., **flags: Any
    ) -> LoadBalancedView: ...
