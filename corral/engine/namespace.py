"""The engine's user namespace: running applied functions and code cells, capturing output.

No sockets here. The engine's main thread calls :meth:`Namespace.apply` and
:meth:`Namespace.execute` inside an :class:`OutputCapture`; the capture hands printed text to a
publish callback (the engine turns it into iopub ``stream`` messages) and keeps it for the reply
metadata. Exceptions from user code propagate unchanged: turning them into error replies, and
surviving them, is the caller's job.
"""

from __future__ import annotations

import ast
import builtins
import io
import linecache
import logging
import signal
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.protocol.references import Reference, bind_function, is_interactive

from .ipython import IPYTHON_HINT, looks_like_ipython

PublishCallback = Callable[[str, str], None]
"""``publish(stream_name, text)``: called with ``"stdout"`` or ``"stderr"`` and new text."""

_ENGINE_DIR = str(Path(__file__).resolve().parent)
_LINECACHE_KEEP = 256

TASK_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2}
"""Signals the engine's helper threads block, so that they reach the main thread (running the
task), where a Python handler interrupts blocking calls such as ``time.sleep``."""


class Namespace:
    """The dict user code runs in, shared by every apply and execute on one engine.

    It behaves like the ``__main__`` of a script: ``__name__`` is ``"__main__"`` and builtins are
    present, so functions defined by ``execute`` can be sent back to a client by value.
    """

    def __init__(self) -> None:
        self.user_ns: dict[str, Any] = {}
        # set by the engine when IPython is installed (corral.engine.ipython): a translator of
        # IPython syntax into Python, and a formatter of values into mime bundles and their
        # metadata (an image's size ...)
        self.transform: Callable[[str], str] | None = None
        self.formatter: Callable[[Any], tuple[dict[str, Any], dict[str, Any]]] | None = None
        self.execution_count = 0
        self._cells_run = 0
        self._cells: deque[str] = deque()
        self.clear()

    def clear(self) -> None:
        """Forget every name the user defined; builtins and ``__name__`` stay."""
        self.user_ns.clear()
        self.user_ns.update({"__builtins__": builtins, "__name__": "__main__"})

    def __getitem__(self, name: str) -> Any:
        return self.user_ns[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self.user_ns[name] = value

    def __contains__(self, name: object) -> bool:
        return name in self.user_ns

    # ------------------------------------------------------------------ apply

    def resolve(self, value: Any, depth: int = 0) -> Any:
        """The value of a Reference in this namespace (a name, or an expression such as
        ``a.b`` or ``g[0]``); References inside a list, tuple or dict argument are resolved
        too, as ipyparallel does. Anything else unchanged."""
        if isinstance(value, Reference):
            if value.name.isidentifier():
                try:
                    return self.user_ns[value.name]
                except KeyError:
                    raise NameError(
                        f"Reference({value.name!r}): name {value.name!r} is not defined on "
                        "the engine"
                    ) from None
            return eval(value.name, self.user_ns)  # noqa: S307 - the client's own expression
        if depth == 0 and type(value) in (list, tuple):
            return type(value)(self.resolve(item, 1) for item in value)
        if depth == 0 and type(value) is dict:
            return {key: self.resolve(item, 1) for key, item in value.items()}
        return value

    def bind(self, f: types.FunctionType) -> types.FunctionType:
        """A copy of ``f`` whose globals are this namespace (the rule, shared with the
        client's helpers, is :func:`corral.protocol.references.bind_function`)."""
        return bind_function(f, self.user_ns)

    def apply(self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``f(*args, **kwargs)`` with top-level References resolved from the namespace.

        An interactive function (``@interactive`` or defined in the client's ``__main__``) runs
        with the namespace as its globals, so it reads pushed names and ``global x`` writes land
        where ``execute`` and later applies see them.
        """
        if args:
            args = tuple(self.resolve(arg) for arg in args)
        if kwargs:
            kwargs = {key: self.resolve(value) for key, value in kwargs.items()}
        f = self.resolve(f, 1)
        if isinstance(f, types.FunctionType) and is_interactive(f):
            f = self.bind(f)
        return f(*args, **kwargs)

    # ------------------------------------------------------------------ execute

    def execute(self, code: str, *, silent: bool = False) -> str | None:
        """Run a cell; the repr of its last statement's value if that is a non-None expression
        (see :meth:`execute_bundle`)."""
        bundle = self.execute_bundle(code, silent=silent)
        return None if bundle is None else str(bundle["text/plain"])

    def execute_bundle(self, code: str, *, silent: bool = False) -> dict[str, Any] | None:
        """Run a cell; the mime bundle of its last statement's value if that is a non-None
        expression (see :meth:`execute_result`)."""
        result = self.execute_result(code, silent=silent)
        return None if result is None else result[0]

    def execute_result(
        self, code: str, *, silent: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Run a cell; ``(bundle, metadata)`` of its last statement's value if that is a
        non-None expression: ``({"text/plain": repr}, {})``, richer with IPython's formatters
        (whose metadata says e.g. an image's width).

        The whole cell is compiled before anything runs, so a syntax error anywhere runs
        nothing. Each cell gets a filename ``<cell-N>`` registered with linecache, so
        tracebacks show the offending source line. A ``silent`` cell (as in Jupyter) does not
        count in ``execution_count``. A cell that is not Python is translated by IPython's
        transformers when the engine has IPython (``transform``), else its SyntaxError says
        that IPython is missing if the cell looks like IPython syntax.
        """
        self._cells_run += 1
        if not silent:
            self.execution_count += 1
        filename = f"<cell-{self._cells_run}>"
        self._remember_source(filename, code)
        try:
            body, tail = _compile_cell(code, filename)
        except SyntaxError as err:
            body, tail = self._compile_ipython(code, filename, err)
        exec(body, self.user_ns)
        if tail is None:
            return None
        value = eval(tail, self.user_ns)
        if value is None:
            return None
        return self.formatter(value) if self.formatter else ({"text/plain": repr(value)}, {})

    def _compile_ipython(
        self, code: str, filename: str, error: SyntaxError
    ) -> tuple[types.CodeType, types.CodeType | None]:
        """Compile a cell that is not Python as IPython syntax, or raise its SyntaxError
        (without the compiler's frames, which tell nothing)."""
        if self.transform is None:
            if looks_like_ipython(code):
                error.msg = f"{error.msg}: {IPYTHON_HINT}"
                error.args = (error.msg, *error.args[1:])
            raise error.with_traceback(None) from None
        translated = self.transform(code)
        if translated.rstrip("\n") == code.rstrip("\n"):
            raise error.with_traceback(None) from None
        try:
            return _compile_cell(translated, filename)
        except SyntaxError as err:
            raise err.with_traceback(None) from None

    def _remember_source(self, filename: str, code: str) -> None:
        """Register a cell's source with linecache, keeping only the latest cells."""
        linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
        self._cells.append(filename)
        while len(self._cells) > _LINECACHE_KEEP:
            linecache.cache.pop(self._cells.popleft(), None)


def _compile_cell(code: str, filename: str) -> tuple[types.CodeType, types.CodeType | None]:
    """The cell without its last statement if that is an expression, and that expression."""
    tree = ast.parse(code, filename, "exec")
    last: ast.Expression | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body[-1].value)
        del tree.body[-1]
    # dont_inherit: this module's `from __future__` flags must not change user code
    body = compile(tree, filename, "exec", dont_inherit=True)
    tail = compile(last, filename, "eval", dont_inherit=True) if last is not None else None
    return body, tail


def strip_engine_frames(exc: BaseException) -> BaseException:
    """Keep only the user's frames of ``exc``'s traceback: those after the engine's last.

    Trailing engine frames are dropped first: when SIGINT interrupts user code, the
    KeyboardInterrupt comes from the engine's signal handler, called from the user's frame.
    An error raised by the engine itself (a missing Reference, a cell that does not compile)
    keeps no frames: its message says what happened.
    """
    frames: list[types.TracebackType] = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    end = len(frames)
    while end and _is_engine_frame(frames[end - 1]):
        end -= 1
    start = end
    while start and not _is_engine_frame(frames[start - 1]):
        start -= 1
    kept = frames[start:end]
    if not kept:
        return exc.with_traceback(None)
    kept[-1].tb_next = None
    return exc.with_traceback(kept[0])


def _is_engine_frame(tb: types.TracebackType) -> bool:
    return tb.tb_frame.f_code.co_filename.startswith(_ENGINE_DIR)


# ---------------------------------------------------------------------- output capture


class CapturedStream(io.TextIOBase):
    """A text stream standing in for sys.stdout or sys.stderr during a task."""

    def __init__(self, capture: OutputCapture, name: str) -> None:
        super().__init__()
        self._capture = capture
        self._name = name

    @property
    def name(self) -> str:
        return f"<corral {self._name}>"

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: object) -> int:
        """Capture ``text``; anything else than a str is refused as a real text stream refuses
        it (typed ``object``: user code may pass anything, and the check is this method's)."""
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._capture.write(self._name, text)
        return len(text)

    def flush(self) -> None:
        self._capture.request_flush()


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
