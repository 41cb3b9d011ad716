"""A client's waits: for engines, for results, for the controller link. Each is bounded:
once the controller has been unreachable too long (the client's ``timeout``, or its
``outage_grace`` for results) it fails with ConnectionError instead of waiting for ever. The
link itself, its outages and what is recovered after one: :mod:`corral.client.link`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import TYPE_CHECKING, Any, cast

from corral.errors import ConnectionError, TimeoutError

if TYPE_CHECKING:
    from corral.client.client import Client
    from corral.client.io_shell import ClientIO
    from corral.client.socket_gate import Sleepy

__all__ = ["LINK_CHECK", "LinkWaits"]

log = logging.getLogger("corral.client")

LINK_CHECK = 0.25  # seconds between looks at the controller link while waiting for results
_FEW = 8  # futures waited for one at a time (reading replies meanwhile); more: futures.wait


class LinkWaits:
    """The waits of a Client (see the module doc)."""

    if TYPE_CHECKING:  # provided by Client
        timeout: float
        outage_grace: float
        addresses: dict[str, str]
        _io: ClientIO
        _engines: dict[int, str]
        _engines_changed: threading.Condition
        _link_lost_at: float | None
        _helpers: set[threading.Thread]

    def wait_for_engines(
        self,
        n: int | None = None,
        timeout: float | None = -1,
        block: bool = True,
        interactive: bool | None = None,
        widget: bool | None = None,
    ) -> futures.Future[None] | None:
        """Block until at least ``n`` engines are registered (None: as ipyparallel's, the
        ``n`` of the Cluster that connected this client, else one); TimeoutError after
        ``timeout`` seconds (None or negative: wait forever), ConnectionError once the
        controller has been unreachable for the client's own ``timeout`` (while it is, the
        engine table is stale and does not count). ``block=False``: a Future of the same wait
        at once. ``interactive``: show a progress bar of the engines meanwhile (``widget``:
        a notebook widget or not; default: a widget in a notebook)."""
        cluster = cast("Client", self).cluster
        count = n if n is not None else (cluster.n if cluster is not None and cluster.n else 1)
        if interactive and block:
            from corral.client.progress import wait_for_engines

            wait_for_engines(cast("Client", self), count, timeout=timeout, widget=widget)
            return None
        if not block:
            waiting: futures.Future[None] = futures.Future()

            def wait_in_thread() -> None:
                try:
                    self._wait_for_engines(count, timeout)
                except BaseException as exc:  # noqa: BLE001 - the future carries it
                    waiting.set_exception(exc)
                else:
                    waiting.set_result(None)

            self._start_helper("corral-wait-for-engines", wait_in_thread)
            return waiting
        self._wait_for_engines(count, timeout)
        return None

    def _start_helper(self, name: str, run: Callable[[], None]) -> None:
        """Run ``run`` on a thread this client owns: :meth:`_join_helpers` (from ``close``)
        joins it, once closing has woken every wait."""

        def helper() -> None:
            try:
                run()
            finally:
                with self._engines_changed:
                    self._helpers.discard(threading.current_thread())

        thread = threading.Thread(target=helper, name=name, daemon=True)
        with self._engines_changed:
            self._helpers.add(thread)
        thread.start()

    def _join_helpers(self, timeout: float = 10.0) -> None:
        with self._engines_changed:
            helpers = list(self._helpers)
        for thread in helpers:
            if thread is not threading.current_thread():
                thread.join(timeout)
                if thread.is_alive():
                    log.error("client: helper %s did not end within %s s", thread.name, timeout)

    def _wait_for_engines(self, n: int, timeout: float | None) -> None:
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        with self._engines_changed:
            while len(self._engines) < n or self._link_lost_at is not None:
                if self._io.closed:
                    raise self._io.closed_error()
                now = time.monotonic()
                wait = None if deadline is None else deadline - now
                if wait is not None and wait <= 0:
                    raise TimeoutError(
                        f"{len(self._engines)} of {n} engines registered after {timeout} s"
                    )
                if self._link_lost_at is not None:
                    link_left = self._link_lost_at + self.timeout - now
                    if link_left <= 0:
                        raise self._unreachable(f"waiting for {n} engines")
                    wait = link_left if wait is None else min(wait, link_left)
                self._engines_changed.wait(wait if wait is not None else 1.0)

    def _unreachable(self, doing: str, within: float | None = None) -> ConnectionError:
        lost = self._link_lost_at
        since = f"{time.monotonic() - lost:.1f} s ago" if lost is not None else "just now"
        return ConnectionError(
            f"{doing}: the controller at {self.addresses['hub']} did not answer: it is "
            f"unreachable (the connection dropped {since} and did not come back within "
            f"{self.timeout if within is None else within} s). Is it running? A controller "
            "restarted with --restore is found again by this client by itself."
        )

    def wait_for_futures(
        self,
        pending: Iterable[futures.Future[Any]],
        timeout: float | None,
        doing: str,
        *,
        any_done: bool = False,
    ) -> bool:
        """Wait until every future (``any_done``: one) is done (True) or ``timeout`` passes
        (False; None or negative: no limit). ConnectionError once the controller has been
        unreachable for ``outage_grace`` seconds with some still pending: nothing could complete
        them then. A controller back within the grace changes nothing."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        everything = list(pending)
        waiting = [f for f in everything if not f.done()]
        while waiting and not (any_done and len(waiting) < len(everything)):
            now = time.monotonic()
            lost = self._link_lost_at
            step = LINK_CHECK
            if lost is not None:
                step = lost + self.outage_grace - now
                if step <= 0:
                    raise self._unreachable(doing, self.outage_grace)
            if deadline is not None:
                if deadline <= now:
                    return False
                step = min(step, deadline - now)
            if len(waiting) == 1 or (len(waiting) <= _FEW and not any_done):
                # get() of one result, or all of a few, one at a time: this thread reads the
                # replies itself if no other does (corral.client.socket_gate), else it waits
                # on the future's own condition (no waiter object)
                first = waiting[0]
                channel = getattr(first, "reply_channel", None)
                if channel is None or not self._io.wait_reading(
                    channel, cast("Sleepy", first), step
                ):
                    _wait_one(first, step)
                waiting = [f for f in waiting if not f.done()]
                continue
            _, not_done = futures.wait(
                waiting, step, futures.FIRST_COMPLETED if any_done else futures.ALL_COMPLETED
            )
            waiting = list(not_done)
        return True

    def _wait_for_link(self, deadline: float, doing: str) -> None:
        """Return once the controller link is up; ConnectionError if not by ``deadline``."""
        with self._engines_changed:
            while self._link_lost_at is not None:
                if self._io.closed:
                    raise self._io.closed_error()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._unreachable(doing)
                self._engines_changed.wait(left)


def _wait_one(future: futures.Future[Any], timeout: float) -> None:
    """Wait until ``future`` is done or ``timeout`` passes: ``futures.wait`` for one future,
    without building and installing a waiter in it (about 10 us less per round trip, on the
    latency path)."""
    try:
        future.exception(timeout)
    except (futures.TimeoutError, futures.CancelledError):
        pass
