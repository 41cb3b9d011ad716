"""The engine's output capture: what a task prints, kept for its reply and streamed as it comes.

Every task enters a capture (:meth:`OutputCapture.capture`), so it is on every task's path and
compiled (``make native``); the stand-in streams user code writes to are in
:mod:`corral.engine.streams`, run from source.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .streams import CapturedStream

PublishCallback = Callable[[str, str], None]
"""``publish(stream_name, text)``: called with ``"stdout"`` or ``"stderr"`` and new text."""

TASK_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2}
"""Signals the engine's helper threads block, so that they reach the main thread (running the
task), where a Python handler interrupts blocking calls such as ``time.sleep``."""


class OutputCapture:
    """Captures sys.stdout/sys.stderr for one task at a time, and streams it as it comes.

    Text is kept whole for the reply metadata (up to ``max_chars`` per stream) and handed to the
    publish callback in coalesced chunks: when a newline is written (or the stream is flushed)
    and ``flush_interval`` has passed since the last publish; otherwise a background flusher
    publishes it when the interval ends, so a line printed before a long computation still
    arrives promptly. Text without a newline is always left to the flusher. Everything left
    is published when the task ends, before :meth:`capture` returns, so a client sees all
    streamed output before the reply.

    The publish callback is called from the task's thread or from the flusher thread, one call
    at a time, in write order: it must be safe to call from either.
    """

    def __init__(
        self,
        flush_interval: float = 0.05,
        max_chars: int = 1_000_000,
        log: logging.Logger | None = None,
    ) -> None:
        self.flush_interval = flush_interval
        self.log = log or logging.getLogger("corral.engine")
        self.max_chars = max_chars
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._publish: PublishCallback | None = None
        self._pending: list[tuple[str, str]] = []
        self._kept: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._sizes: dict[str, int] = {"stdout": 0, "stderr": 0}
        self._last_publish = 0.0
        self._deadline: float | None = None
        self._flusher: threading.Thread | None = None
        self._closed = False
        self._streams: tuple[CapturedStream, CapturedStream] | None = None
        self._written = False  # text came since the last _begin (or ever, before the first)

    def capture(self, publish: PublishCallback | None = None) -> _CaptureBlock:
        """Redirect stdout/stderr into this capture until the block ends.

        The yielded :class:`CapturedOutput` holds the task's complete text once the block
        has exited (also when it exits with an exception). Every task of an engine enters
        one, so it is a plain class rather than a generator-based context manager, and the
        two stand-in streams are made once and reused while they stay open.
        """
        return _CaptureBlock(self, publish)

    def _begin(self, publish: PublishCallback | None) -> None:
        with self._lock:
            self._publish = publish
            if self._written:  # else the lists and counts are still empty: nothing to renew
                self._written = False
                self._pending = []
                self._kept = {"stdout": [], "stderr": []}
                self._sizes = {"stdout": 0, "stderr": 0}
            self._deadline = None
        streams = self._streams
        if streams is None or streams[0].closed or streams[1].closed:  # user code closed one
            streams = self._streams = (
                CapturedStream(self, "stdout"),
                CapturedStream(self, "stderr"),
            )
        sys.stdout, sys.stderr = streams

    def _end(self, output: CapturedOutput) -> None:
        with self._lock:
            if self._pending:
                self._publish_pending()
            else:  # what _publish_pending does when nothing is pending
                self._last_publish = time.monotonic()
            self._publish = None
            self._deadline = None
            if self._written:  # a task that printed nothing leaves the output's "" as it is
                output.stdout = self._text("stdout")
                output.stderr = self._text("stderr")

    def write(self, name: str, text: str) -> None:
        """Record ``text`` written to stream ``name`` (called by :class:`CapturedStream`)."""
        if not text:
            return
        with self._lock:
            self._written = True
            size = self._sizes[name]
            if size < self.max_chars:
                self._kept[name].append(text[: self.max_chars - size])
            self._sizes[name] = size + len(text)
            if self._pending and self._pending[-1][0] == name:
                self._pending[-1] = (name, self._pending[-1][1] + text)
            else:
                self._pending.append((name, text))
            if "\n" in text:
                self._schedule()
            elif self._deadline is None:
                self._defer()

    def publish_now(self) -> None:
        """Publish pending text at once (before a display, so output keeps its order)."""
        with self._lock:
            self._publish_pending()

    def request_flush(self) -> None:
        """An explicit flush publishes like a newline does, within the same rate limit."""
        with self._lock:
            if self._pending:
                self._schedule()

    def _schedule(self) -> None:
        """Publish now if the interval has passed, else make sure the flusher will. Locked."""
        now = time.monotonic()
        if now - self._last_publish >= self.flush_interval:
            self._publish_pending()
            return
        due = self._last_publish + self.flush_interval
        if self._deadline is None or due < self._deadline:  # sooner than a partial line's
            self._deadline = due
            self._start_flusher()
            self._wakeup.notify()

    def _defer(self) -> None:
        """Text without a newline (``print(".", end="")`` as progress): the flusher publishes
        it one interval after it was written, never this call, so that it is seen while the
        task still runs, as ipykernel's streams do. Not sooner: ``print("e")`` writes "e"
        and "\n" apart, and the rest of a line that comes within the interval goes with it
        (its newline publishes at once when the rate limit allows). Locked."""
        self._deadline = time.monotonic() + self.flush_interval
        self._start_flusher()
        self._wakeup.notify()

    def _publish_pending(self) -> None:
        """Hand every pending chunk to the callback, in order. Locked."""
        pending, self._pending = self._pending, []
        self._deadline = None
        self._last_publish = time.monotonic()
        if self._publish is None:
            return
        for name, text in pending:
            try:
                self._publish(name, text)
            except Exception:  # a broken publisher must not break print() in user code
                self.log.exception("publishing %d characters of %s failed", len(text), name)

    def _text(self, name: str) -> str:
        text = "".join(self._kept[name])
        dropped = self._sizes[name] - self.max_chars
        if dropped > 0:
            text += f"\n[corral: {dropped} more characters were streamed but not kept]\n"
        return text

    def close(self, timeout: float = 5.0) -> None:
        """Publish what is pending, then stop and join the flusher thread (at most
        ``timeout`` seconds). Later text is kept for the reply but no longer streamed early."""
        with self._lock:
            self._closed = True
            self._publish_pending()
            self._wakeup.notify()
            flusher = self._flusher
        if flusher is not None:
            flusher.join(timeout)

    def _start_flusher(self) -> None:
        if self._flusher is None and not self._closed:
            self._flusher = threading.Thread(
                target=self._flush_loop, name="corral-output-flusher", daemon=True
            )
            self._flusher.start()

    def _flush_loop(self) -> None:
        """Publish pending text when a deadline passes, until :meth:`close`."""
        signal.pthread_sigmask(signal.SIG_BLOCK, TASK_SIGNALS)
        with self._lock:
            while not self._closed:
                if self._deadline is None:
                    self._wakeup.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._wakeup.wait(remaining)
                    continue
                self._publish_pending()


class _CaptureBlock:
    """The ``with`` block of :meth:`OutputCapture.capture`."""

    __slots__ = ("_capture", "_publish", "_output", "_saved")

    def __init__(self, capture: OutputCapture, publish: PublishCallback | None) -> None:
        self._capture = capture
        self._publish = publish
        self._output = CapturedOutput()
        self._saved: tuple[Any, Any] = (None, None)

    def __enter__(self) -> CapturedOutput:
        self._saved = sys.stdout, sys.stderr
        self._capture._begin(self._publish)  # noqa: SLF001 - the capture's own block
        return self._output

    def __exit__(self, *exc: object) -> None:
        sys.stdout, sys.stderr = self._saved
        self._capture._end(self._output)  # noqa: SLF001


class CapturedOutput:
    """What one task printed; filled in when its capture block exits."""

    def __init__(self) -> None:
        self.stdout = ""
        self.stderr = ""
