"""The one event loop of every corral process: sockets, timers, calls from other threads, signals.

The controller's Hub, the task scheduler, the engine's I/O thread and the client's I/O thread
each run one :class:`Loop` on the thread that owns their sockets. No other thread touches those
sockets: another thread hands work over with :meth:`Loop.call_soon_threadsafe`, the one wake-up
path (a FIFO plus one byte on a socket pair, written only when the FIFO goes from empty to
non-empty, so a burst of hand-offs costs one wake-up).

Why not asyncio: these threads only move frames between sockets and call small synchronous
cores. ``bench/bench_loop.py`` measures this loop against ``zmq.asyncio`` on the same relay
(latency and throughput); the plain poller loop costs less per message, so it is the loop here.

One turn of :meth:`Loop.run`::

    poll(sockets + readers + wake-up, timeout = next timer)   # one system call
    hand-offs from other threads, in order                    # call_soon_threadsafe
    ready sockets, in the order they were added               # priority: add the most urgent first
    calls queued with call_soon                               # loop thread only
    due timers                                                # call_at / call_later / call_every
    turn-end callbacks                                        # outboxes send what the turn queued

A socket added with :meth:`add_socket` is drained while ``zmq.EVENTS`` says a message waits (up
to ``batch`` per turn, so one busy socket cannot starve the others); raising ``zmq.Again`` on
every empty socket cost tens of microseconds per turn. The first message of a drain is the one
the poll saw, taken without that question (one ``getsockopt`` fewer per wake-up). A message
whose handler raises costs that message only: it is counted in :attr:`Loop.rejected` and
logged. A callback that raises is logged; neither ever stops the loop.

Signals: :meth:`handle_signals` (main thread only) points ``signal.set_wakeup_fd`` at the loop,
so a SIGTERM makes the poll return at once and its callback runs on the loop, instead of the
process noticing only when a poll timeout ends.

:class:`LoopThread` is a loop on its own thread with an owner: ``start()`` waits until its setup
ran (and raises if it failed), ``stop()`` stops and joins it. Once a loop has stopped, every
later hand-off raises :class:`~corral.errors.ConnectionError` with the reason, so no caller can
wait for a thread that is gone.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, cast

import zmq
import zmq.backend

from corral.bundles import Outbox, split_bundle
from corral.errors import ConnectionError, CorralError, ReplayError
from corral.sockets import recv_frames, recv_small_as_bytes

log = logging.getLogger("corral.loop")

__all__ = ["Loop", "LoopThread", "Timer"]

DRAIN_BATCH: Final = 1000
# the backend's ``get`` turns its option into a ``SocketOption`` on every call: given the
# member itself, that costs a third less than given an int; flags as plain ints
_EVENTS: Final = zmq.SocketOption.EVENTS
_POLLIN: Final = int(zmq.POLLIN)
_NOBLOCK: Final = int(zmq.NOBLOCK)
_backend_get: Final = zmq.backend.Socket.get
_STOPPED: Final = "the event loop has stopped"

Callback = Callable[..., object]
FrameHandler = Callable[[list[zmq.Frame]], object]
Pollable = zmq.Socket[Any] | int | socket.socket


class Timer:
    """A call scheduled on a loop; :meth:`cancel` it to drop it (safe from the loop thread)."""

    __slots__ = ("when", "period", "callback", "args", "cancelled")

    def __init__(
        self, when: float, period: float | None, callback: Callback, args: tuple[Any, ...]
    ) -> None:
        self.when = when
        self.period = period
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """One thread's event loop (see the module doc). Create it anywhere; run it on one thread."""

    def __init__(self, name: str = "loop") -> None:
        self.name = name
        self.rejected = 0  # messages dropped because their handler raised
        self._poller = zmq.Poller()
        self._handlers: dict[Pollable, Callable[[], None]] = {}
        self._turn_end: tuple[Callable[[], object], ...] = ()
        self._order: tuple[tuple[Pollable, Callable[[], None]], ...] = ()
        self._ready: deque[tuple[Callback, tuple[Any, ...]]] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._sequence = itertools.count()
        self._stopping = False
        self._loop_thread_id: int | None = None
        # the hand-off from other threads
        self._inbox: deque[tuple[Callback, tuple[Any, ...]]] = deque()
        self._inbox_lock = threading.Lock()
        self._closed_because: str | None = None
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._wake_fd = self._wake_reader.fileno()
        self._poller.register(self._wake_fd, zmq.POLLIN)
        # signals (handle_signals)
        self._signal_reader: socket.socket | None = None
        self._signal_writer: socket.socket | None = None
        self._previous_wakeup_fd = -1

    # ------------------------------------------------------------ sources

    def add_socket(
        self,
        sock: zmq.Socket[Any],
        handle: FrameHandler,
        *,
        batch: int = DRAIN_BATCH,
        bundles: bool = False,
        small_as_bytes: bool = False,
    ) -> None:
        """Call ``handle(frames)`` for each message ``sock`` receives (zero-copy frames).

        Sockets are served in the order they were added: add the most urgent first. With
        ``bundles``, a bundle (:mod:`corral.bundles`) is handed on message by message, each
        as if it had come alone (a bundle counts as one message of ``batch``). With
        ``small_as_bytes``, frames under 64 KiB are handed on as ``bytes``, larger ones as
        ``zmq.Frame`` (:func:`corral.sockets.recv_small_as_bytes`: cheaper for a handler that
        parses the envelope; not for one that needs a Frame's properties).
        """
        deliver = self.deliver if bundles else self._handle
        receive = cast(
            Callable[[zmq.Socket[Any], int], list[zmq.Frame]],
            recv_small_as_bytes if small_as_bytes else recv_frames,
        )  # handlers of such sockets read bytes and Frames alike

        def drain() -> None:
            # the poll saw a message: the first is taken without asking zmq.EVENTS (a
            # non-blocking receive, in case a handler took it since); each later one is asked for
            first = True
            for _ in range(batch):
                if first:
                    first = False
                    try:
                        frames = receive(sock, _NOBLOCK)
                    except zmq.Again:
                        return
                elif not cast(int, _backend_get(sock, _EVENTS)) & _POLLIN:
                    return
                else:
                    frames = receive(sock, 0)
                deliver(handle, frames)

        self._add(sock, drain)

    def deliver(self, handle: FrameHandler, frames: list[zmq.Frame]) -> None:
        """What a drain with ``bundles`` does with one message it received, for a shell that
        reads a socket itself (the Hub catching up on its monitors before a query): the
        messages of a bundle one by one, each failure (and a malformed bundle's) counted in
        :attr:`rejected` and logged, never raised."""
        try:
            messages = split_bundle(frames)
        except CorralError as err:
            self.rejected += 1
            log.warning("%s: dropped a bundle: %s", self.name, err)
            return
        if messages is None:
            self._handle(handle, frames)
            return
        for message in messages:
            self._handle(handle, message)  # type: ignore[arg-type]

    def _handle(self, handle: FrameHandler, frames: list[zmq.Frame]) -> None:
        try:
            handle(frames)
        except ReplayError as err:  # e.g. replies resent after a controller restart
            self.rejected += 1
            log.info("%s: dropped a message received before: %s", self.name, err)
        except CorralError as err:
            self.rejected += 1
            log.warning("%s: dropped a message: %s", self.name, err)
        except Exception:  # a bug must cost one message, never the process
            self.rejected += 1
            log.exception("%s: error while handling a message; dropped it", self.name)

    def add_outbox(self, outbox: Outbox) -> None:
        """Send what ``outbox`` holds at the end of every turn (and once more after the last
        hand-offs when the loop stops); a failed send is logged with what it cost."""

        def flush() -> None:
            for error, tags in outbox.flush():
                log.error("%s: %d message(s) not sent: %s", self.name, len(tags), error)

        self.at_turn_end(flush)

    def at_turn_end(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` at the end of every turn, after sockets, calls and timers, in
        the order added; and after the hand-offs run when the loop stops."""
        self._turn_end = (*self._turn_end, callback)

    def add_reader(self, source: Pollable, callback: Callable[[], object]) -> None:
        """Call ``callback()`` whenever ``source`` (a zmq socket, a file descriptor or a socket
        object) is readable; the callback does its own reading."""

        def ready() -> None:
            self._call(callback, ())

        self._add(source, ready)

    def add_writer(self, source: Pollable, callback: Callable[[], object]) -> None:
        """Call ``callback()`` whenever ``source`` (a descriptor or a socket object, never
        also read through this loop) is writable, until :meth:`remove`: for a backlog that
        waits for room (:class:`corral.lane.Lane`), watched only while there is one."""

        def ready() -> None:
            self._call(callback, ())

        self._add(source, ready, zmq.POLLOUT)

    def _add(self, source: Pollable, on_ready: Callable[[], None], events: int = _POLLIN) -> None:
        source = _key(source)
        if source in self._handlers:
            raise ValueError(f"{source!r} is already watched by loop {self.name}")
        self._poller.register(source, events)
        self._handlers[source] = on_ready
        self._order = tuple(self._handlers.items())

    def watching(self, source: Pollable) -> bool:
        """Whether ``source`` is watched now."""
        return _key(source) in self._handlers

    def remove(self, source: Pollable) -> None:
        """Stop watching ``source`` (does not close it); unknown sources are ignored."""
        source = _key(source)
        if self._handlers.pop(source, None) is not None:
            self._poller.unregister(source)
            self._order = tuple(self._handlers.items())

    # ------------------------------------------------------------ calls and timers

    def call_soon(self, callback: Callback, *args: Any) -> None:
        """Run ``callback(*args)`` on this loop's next turn; from the loop thread only."""
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callback, *args: Any) -> None:
        """Run ``callback(*args)`` on the loop thread, in the order handed over; from any thread.

        Never blocks. Raises ConnectionError (with the reason) once the loop has stopped, so
        nothing is queued that nobody will run. Not for signal handlers: they may interrupt a
        thread holding the hand-off lock (use :meth:`handle_signals`).
        """
        try:
            with self._inbox_lock:
                if self._closed_because is not None:
                    raise ConnectionError(self._closed_because)
                wake = not self._inbox
                self._inbox.append((callback, args))
            if wake:  # after the lock: the send lets the GIL go, and the loop may want the lock
                self._wake()
        except BaseException:
            # a KeyboardInterrupt (Ctrl-C in the main thread) between the append and the
            # wake-up byte would leave the call queued with no byte written: every later
            # hand-off finds the inbox not empty and writes none either, and the loop would
            # never take them. One byte too many only costs a turn.
            if self._inbox:
                self._wake()
            raise

    def _wake(self) -> None:
        try:
            self._wake_writer.send(b"\0")
        except OSError:  # a byte is pending (the loop wakes anyway), or the loop closed
            pass

    def call_at(self, when: float, callback: Callback, *args: Any) -> Timer:
        """Run ``callback(*args)`` at ``when`` (a :func:`time.monotonic` value); loop thread."""
        timer = Timer(when, None, callback, args)
        heapq.heappush(self._timers, (when, next(self._sequence), timer))
        return timer

    def call_later(self, delay: float, callback: Callback, *args: Any) -> Timer:
        """Run ``callback(*args)`` in ``delay`` seconds; loop thread only."""
        return self.call_at(time.monotonic() + delay, callback, *args)

    def call_every(self, period: float, callback: Callback, *args: Any) -> Timer:
        """Run ``callback(*args)`` every ``period`` seconds, the first time after one period.

        A late turn does not cause a burst of catch-up calls: the calls keep their schedule, and
        when the loop fell more than a period behind the missed ones are skipped and the next is
        one period after now.
        """
        if period <= 0:
            raise ValueError(f"call_every needs a positive period, not {period}")
        timer = Timer(time.monotonic() + period, period, callback, args)
        heapq.heappush(self._timers, (timer.when, next(self._sequence), timer))
        return timer

    @staticmethod
    def time() -> float:
        return time.monotonic()

    # ------------------------------------------------------------ signals

    def handle_signals(self, signums: Iterable[int], callback: Callable[[int], object]) -> None:
        """Run ``callback(signum)`` on this loop when one of ``signums`` arrives.

        Main thread only (Python's rule for signal handlers); one loop per process, since it
        takes over ``signal.set_wakeup_fd``. The C-level handler writes the signal number to
        the loop's wake-up socket, so the poll returns at once, whichever thread runs the loop.
        """
        if self._signal_reader is None:
            self._signal_reader, self._signal_writer = socket.socketpair()
            self._signal_reader.setblocking(False)
            self._signal_writer.setblocking(False)
            self._previous_wakeup_fd = signal.set_wakeup_fd(
                self._signal_writer.fileno(), warn_on_full_buffer=False
            )
            reader = self._signal_reader

            def on_signals() -> None:
                try:
                    data = reader.recv(256)
                except BlockingIOError:
                    return
                for signum in data:
                    self._call(callback, (signum,))

            self._add(reader, on_signals)
        for signum in signums:
            # a Python-level handler must exist for the wake-up byte to be written; the work
            # happens on the loop, so the handler itself does nothing
            signal.signal(signum, _note_signal)

    # ------------------------------------------------------------ running

    def run(self) -> None:
        """Serve until :meth:`stop`, then run the hand-offs accepted before it (a last message
        to send) and refuse later ones. Raises only if polling itself fails (a socket closed
        under the loop): that is a bug, and the caller must hear it."""
        self._loop_thread_id = threading.get_ident()
        try:
            while not self._stopping:
                self._turn()
        except BaseException as exc:
            self._refuse(f"the {self.name} event loop failed: {exc!r}")
            raise
        self._refuse(_STOPPED)
        self._run_pending()

    def _turn(self) -> None:
        timeout: int | None = None
        if self._ready:
            timeout = 0
        elif self._timers:
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            if self._timers:
                timeout = max(0, int((self._timers[0][0] - time.monotonic()) * 1000) + 1)
        events = self._poller.poll(timeout)
        if events:
            ready = dict(events)
            if self._wake_fd in ready:
                self._take_inbox()
            handlers = self._handlers
            served = 0
            for source, on_ready in self._order:
                if source in ready and source in handlers:
                    served += 1
                    on_ready()
            if served + (self._wake_fd in ready) < len(ready):
                self._check_sources(ready)
        ready_calls = self._ready
        for _ in range(len(ready_calls)):  # calls queued by these add themselves to the next turn
            callback, args = ready_calls.popleft()
            self._call(callback, args)
        if self._timers:
            self._run_timers()
        for callback in self._turn_end:
            self._call(callback, ())

    def _check_sources(self, ready: dict[Any, int]) -> None:
        """The poller named something we do not watch: a zmq socket closed under the loop
        shows up so (as descriptor 0) and would make every poll return at once. That is a bug
        in the shell; fail loudly rather than spin."""
        closed = [src for src in self._handlers if isinstance(src, zmq.Socket) and src.closed]
        if closed:
            raise CorralError(f"{self.name}: a socket was closed while the loop watched it")
        log.debug("%s: poll reported unwatched sources %s", self.name, list(ready))

    def _take_inbox(self) -> None:
        # The wake-up bytes are read first, outside the lock: a byte is written with the first
        # item of an empty inbox, in one critical section, so every byte read here belongs to
        # an item taken below, and an item put after the take writes a new byte. The lock is
        # held only for the swap: a hand-off waiting on it while this thread is in a system
        # call (which lets the GIL go) would make the two threads take turns at the GIL.
        try:
            self._wake_reader.recv(64)
        except BlockingIOError:
            pass
        with self._inbox_lock:
            items = self._inbox
            self._inbox = deque()
        for callback, args in items:
            self._call(callback, args)

    def _run_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if timer.cancelled:
                continue
            self._call(timer.callback, timer.args)
            if timer.period is not None and not timer.cancelled:
                following = timer.when + timer.period
                late = time.monotonic()
                timer.when = following if following > late else late + timer.period
                heapq.heappush(timers, (timer.when, next(self._sequence), timer))

    def _call(self, callback: Callback, args: tuple[Any, ...]) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("%s: a callback failed: %r", self.name, callback)

    def stop(self, reason: str = _STOPPED) -> None:
        """Make :meth:`run` return after the current turn; from any thread. Later hand-offs
        raise ConnectionError(``reason``)."""
        self._stopping = True
        if threading.get_ident() == self._loop_thread_id:
            self._refuse(reason)
            return
        try:
            self.call_soon_threadsafe(lambda: None)  # wake the poll
        except ConnectionError:
            pass  # already stopped
        self._refuse(reason)

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def closed_because(self) -> str | None:
        """Why hand-offs are refused, or None while the loop accepts them."""
        return self._closed_because

    def _refuse(self, reason: str) -> None:
        with self._inbox_lock:
            if self._closed_because is None:
                self._closed_because = reason

    def _run_pending(self) -> None:
        self._take_inbox()
        while self._ready:
            callback, args = self._ready.popleft()
            self._call(callback, args)
        for callback in self._turn_end:
            self._call(callback, ())

    def close(self) -> None:
        """Release the wake-up sockets (not the caller's sockets); after :meth:`run` returned."""
        self._refuse(_STOPPED)
        if self._signal_writer is not None:
            try:
                signal.set_wakeup_fd(self._previous_wakeup_fd)
            except ValueError:  # not the main thread: the process is ending anyway
                pass
        for sock in (
            self._wake_reader,
            self._wake_writer,
            self._signal_reader,
            self._signal_writer,
        ):
            if sock is not None:
                sock.close()
        self._handlers.clear()
        self._order = ()


def _key(source: Pollable) -> Pollable:
    """How the poller names ``source`` in its results: a zmq socket itself, anything else by
    its file descriptor number."""
    if isinstance(source, socket.socket):
        return source.fileno()
    return source


def _note_signal(signum: int, frame: object) -> None:
    """The Python-level handler behind :meth:`Loop.handle_signals` (the loop does the work)."""


class LoopThread:
    """A :class:`Loop` on its own thread, owned: whoever starts it stops and joins it.

    ``setup(loop)`` runs first on the new thread (create and add sockets there, so only that
    thread ever touches them); ``teardown()`` runs on it last, whatever happened (close the
    sockets). :meth:`start` waits for setup and raises what it raised. A loop that fails keeps
    the error in :attr:`failure`; hand-offs then raise ConnectionError naming it.
    """

    def __init__(
        self,
        name: str,
        setup: Callable[[Loop], object],
        teardown: Callable[[], object] | None = None,
    ) -> None:
        self.loop = Loop(name)
        self.failure: BaseException | None = None
        self._setup = setup
        self._teardown = teardown
        self._set_up = threading.Event()
        self._worker = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        """Start the thread and wait (at most ``timeout`` s) until its setup has run."""
        self._worker.start()
        if not self._set_up.wait(timeout):
            log.warning(
                "%s: its setup did not finish in %s s; it was at:\n%s",
                self.loop.name,
                timeout,
                thread_stack(self._worker),
            )
            self.stop()
            raise ConnectionError(f"{self.loop.name}: its setup did not finish in {timeout} s")
        if self.failure is not None:
            self._worker.join(timeout)
            raise self.failure

    def _main(self) -> None:
        running = False
        try:
            self._setup(self.loop)
            running = True
            self._set_up.set()
            self.loop.run()
        except BaseException as exc:
            self.failure = exc
            self.loop.stop(f"the {self.loop.name} thread failed: {exc!r}")
            if running:  # a failed setup is raised by start(), to its caller
                log.exception("%s: the thread failed", self.loop.name)
        finally:
            self._set_up.set()  # after failure is recorded: start() reads it next
            if self._teardown is not None:
                try:
                    self._teardown()
                except Exception:
                    log.exception("%s: teardown failed", self.loop.name)
            self.loop.close()

    @property
    def alive(self) -> bool:
        return self._worker.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop and join its thread; idempotent, callable from any thread (from the
        loop thread itself it only stops: the thread ends after the current turn)."""
        self.loop.stop()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout)
            if self._worker.is_alive():
                log.warning(
                    "%s: the thread did not stop within %s s; it is at:\n%s",
                    self.loop.name,
                    timeout,
                    thread_stack(self._worker),
                )


def thread_stack(thread: threading.Thread) -> str:
    """Where ``thread`` is now, as a traceback: what a thread stuck past its bound waits in
    (logged with the warning, so that a rare hang says where it was)."""
    frame = sys._current_frames().get(thread.ident or -1)  # noqa: SLF001 (the only way)
    if frame is None:
        return "  (not running)"
    return "".join(traceback.format_stack(frame)).rstrip()
