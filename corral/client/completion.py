"""Owned worker threads that keep slow work off the client's routing (I/O) thread.

The I/O thread only moves frames and updates what a reply says about its request. What may
take long runs on a :class:`Worker` instead:

- ``results``: deserializing a reply's value, settling its future and what that triggers
  (an AsyncResult joining the parts of a map, releasing shared-memory segments), for every
  reply the I/O thread does not settle itself (:mod:`corral.client.requestfuture`: small
  ones, whose callbacks not marked cheap are handed here);
- ``callbacks``: the done-callbacks users add to an AsyncResult, which may block for as long
  as they like without delaying any other result.

Each worker is one thread owned by the Client: calls run in the order handed over, a call that
raises is logged and costs nothing else, and :meth:`Worker.close` runs what is queued, then
stops and joins the thread. Once closed, a hand-off runs at once on the caller's thread, so
nothing handed over is ever lost.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Final

log = logging.getLogger("corral.client")

__all__ = ["Worker"]

_STOP: Final = None


class Worker:
    """A thread running handed-over calls one after another (see the module doc)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._worker_thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker_thread.start()

    def submit(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the worker, after what was handed over before it (at once on this
        thread if the worker is closed)."""
        with self._lock:
            if not self._closed:
                self._calls.put(call)
                return
        _run_one(self.name, call)

    def on_worker(self) -> bool:
        """Whether the calling thread is this worker's thread."""
        return threading.current_thread() is self._worker_thread

    def close(self, timeout: float = 10.0) -> None:
        """Run what is queued, then stop and join the thread (bounded by ``timeout``). From
        the worker's own thread (a call closing the client) it stops without joining itself.
        Calling it again does nothing."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._calls.put(_STOP)
        if self.on_worker():
            return
        self._worker_thread.join(timeout)
        if self._worker_thread.is_alive():
            log.error("client: %s did not finish within %s s; abandoning it", self.name, timeout)

    def _run(self) -> None:
        while True:
            call = self._calls.get()
            if call is _STOP:
                return
            _run_one(self.name, call)


def _run_one(name: str, call: Callable[[], None]) -> None:
    try:
        call()
    except BaseException:  # noqa: BLE001 - a call's failure (even SystemExit) costs that call only
        log.exception("client: a call on %s failed", name)
