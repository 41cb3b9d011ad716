"""The Client's control calls to engines: abort, cancel, clear, signal, shutdown.

They go on the control channel, which an engine serves even while a task runs. A mixin of
:class:`corral.client.client.Client` (which owns the connection and the engine table); each
waits for the engines' answers for at most the client's ``timeout`` (TimeoutError naming the
silent engines), unless ``block=False`` returns the AsyncResult of the answers at once.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any, cast

from corral.client.asyncresult import AsyncResult
from corral.errors import ConnectionError, EngineError, TimeoutError

if TYPE_CHECKING:
    from corral.client.client import Client
    from corral.client.records import Records
    from corral.client.submitter import Target, Targets

__all__ = ["ControlCalls"]


class ControlCalls:
    """Control calls of a Client (see the module doc)."""

    if TYPE_CHECKING:  # provided by Client
        _records: Records
        timeout: float
        _link_lost_at: float | None
        _engines: dict[int, str]

        def resolve_targets(self, targets: Targets) -> list[Target]: ...
        def _meant_for(self) -> dict[str, str]: ...
        def msg_ids_of(self, jobs: Any) -> list[str]: ...
        def send_request(
            self,
            channel: str,
            msg_type: str,
            content: dict[str, Any],
            *,
            target: Target | None = ...,
            in_history: bool = ...,
        ) -> str: ...
        def _query(self, msg_type: str, content: dict[str, Any]) -> Any: ...
        def _unreachable(self, doing: str) -> ConnectionError: ...

    def _control(
        self,
        msg_type: str,
        content: dict[str, Any],
        targets: Targets,
        block: bool | None,
        ignore: type[BaseException] | None = None,
    ) -> AsyncResult | None:
        resolved = self.resolve_targets(targets)
        msg_ids = [
            self.send_request("control", msg_type, content, target=target, in_history=False)
            for target in resolved
        ]
        result = AsyncResult(self._records, msg_ids, fname=msg_type, client=cast("Client", self))
        if block is False:
            return result
        if not result.wait(self.timeout):
            if self._link_lost_at is not None:
                raise self._unreachable(msg_type)
            late = [
                i
                for (i, _), m in zip(resolved, msg_ids, strict=True)
                if not self._records.futures[m].done()
            ]
            raise TimeoutError(
                f"engine(s) {late} did not answer {msg_type} within {self.timeout} s"
            )
        for msg_id in msg_ids:
            error = self._records.futures[msg_id].exception()
            if error is not None and not (ignore and isinstance(error, ignore)):
                result.get()
        return None

    def abort(
        self, jobs: Any = None, targets: Targets = None, block: bool | None = None
    ) -> AsyncResult | None:
        """Abort ``jobs`` (default: everything queued) on ``targets`` (default: all engines).
        Named jobs that are queued never start, and one that is running is interrupted (as by
        SIGINT); each fails with TaskAborted. ``jobs=None`` leaves running tasks alone. Waits
        for the engines' answers unless ``block=False``."""
        msg_ids = None if jobs is None else self.msg_ids_of(jobs)
        return self._control("abort_request", {"msg_ids": msg_ids}, targets, block)

    def cancel_requests(self, msg_ids: list[str]) -> bool:
        """Abort ``msg_ids`` wherever they wait, unless one is already running (then that one
        is left alone, and False); True if none was. TimeoutError if an engine does not
        answer within ``timeout``."""
        result = self._control(
            "abort_request", {"msg_ids": msg_ids, "running": False}, "all", block=False
        )
        assert result is not None
        if not result.wait(self.timeout):
            raise TimeoutError(f"the engines did not answer a cancel within {self.timeout} s")
        return not any(result.get(0))

    def clear(self, targets: Targets = None, block: bool | None = None) -> AsyncResult | None:
        """Empty the engines' namespaces. Each engine does it between tasks: after the task it
        is running (waited for, up to ``timeout``), before the tasks queued behind it."""
        return self._control("clear_request", {}, targets, block)

    def send_signal(
        self, sig: int | str, targets: Targets = None, block: bool | None = None
    ) -> AsyncResult | None:
        """Deliver signal ``sig`` (a number or a name such as ``"SIGINT"``) to the engine
        processes (SIGINT interrupts the running task)."""
        if isinstance(sig, str):
            name = sig if sig.startswith("SIG") else f"SIG{sig}"
            number = getattr(signal, name, None)
            if not isinstance(number, int):
                raise ValueError(f"no signal named {sig!r} here")
            sig = number
        return self._control("signal_request", {"sig": int(sig)}, targets, block)

    def shutdown(
        self,
        targets: Targets = "all",
        restart: bool = False,
        hub: bool = False,
        block: bool | None = None,
    ) -> None:
        """Stop the engines in ``targets`` (None: none), then, with ``hub=True``, the
        controller itself. Engines that vanish while being asked count as stopped.
        ``restart=True`` is refused: engines are restarted by whoever started them (the
        Cluster, or ``corral engine``), not by the controller."""
        if restart:
            raise ValueError(
                "engines cannot be restarted through the controller; stop them and start new "
                "ones (Cluster.start_engines, or `corral engine`)"
            )
        if targets is not None and not (targets == "all" and not self._engines):
            self._control("shutdown_request", {}, targets, True if hub else block, EngineError)
        if hub:
            self._query("hub_shutdown_request", self._meant_for())
