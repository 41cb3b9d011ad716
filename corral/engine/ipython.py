"""IPython on an engine, when it is installed there: IPython syntax, ``display()``, rich reprs.

An engine runs plain Python. If IPython can be imported, :func:`load_shell` makes an
``InteractiveShell`` over the engine's own namespace, so that

- a cell that is not valid Python is translated by IPython (``%magic``, ``!shell``, ``obj?``)
  and run like any other cell (:meth:`EngineShell.transform`);
- ``display(obj)`` in user code reaches the client as a ``display_data`` message (the shell's
  display publisher hands each bundle to the task runner);
- a cell's last value is formatted by IPython's formatters (``text/html``, ``image/png`` ...),
  not only ``repr`` (:meth:`EngineShell.format`);
- IPython's ``pre_execute`` and ``post_execute`` events fire around each ``execute_request``
  as in a Jupyter kernel (:meth:`EngineShell.executing`), and matplotlib's default backend is
  matplotlib-inline's (``MPLBACKEND``, unless set), as in ipykernel: figures drawn in a
  ``%%px`` cell reach the client as images when the cell ends, as on ipyparallel's engines
  (the inline backend registers its flush on ``post_execute``).

Without IPython, a cell in IPython syntax fails with a SyntaxError that names the missing extra.
The shell never reads or writes history, and uses no colours (its text goes to a client).

The shell is made at its first use, not when the engine starts (:func:`on_first_use`): IPython
and its shell are some 5 MB of memory in each engine and 45 ms of its start (with 64 engines
on a 2-core host, 300 MB and 3 s of CPU), and most engines only ever run functions. Its first
use is the first ``execute_request`` (a cell), the first import of IPython by user code (so
that ``from IPython.display import display`` in an applied function publishes, as on an
engine whose shell was made at start), or a call of the builtins IPython offers
(``display``, ``get_ipython``). Until then ``matplotlib`` already gets the inline backend
(``MPLBACKEND``), which imports IPython when a figure is drawn.
"""

from __future__ import annotations

import base64
import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

__all__ = [
    "EngineShell",
    "IPYTHON_HINT",
    "load_shell",
    "looks_like_ipython",
    "on_first_use",
    "use_inline_backend",
]

DisplaySink = Callable[[dict[str, Any], dict[str, Any]], None]
"""``sink(data, metadata)``: publish one display bundle for the running task."""

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"

IPYTHON_HINT = (
    "this cell uses IPython syntax (%magic, !shell or ?), which needs IPython on the engines: "
    "install it there with pip install 'corral[ipython]'"
)


def looks_like_ipython(code: str) -> bool:
    """Whether a cell that failed to compile has a line in IPython-only syntax."""
    for line in code.splitlines():
        stripped = line.strip()
        if stripped.startswith(("%", "!")) or (stripped.endswith("?") and "#" not in stripped):
            return True
    return False


def jsonable_bundle(data: dict[str, Any]) -> dict[str, Any]:
    """A mime bundle fit for JSON: binary values (``image/png`` ...) base64-encoded, as in
    Jupyter's message spec."""
    return {
        key: base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
        for key, value in data.items()
    }


class EngineShell:
    """The engine's IPython shell (see the module doc). ``sink`` receives display bundles; the
    task runner points it at the running task and back to None afterwards."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.sink: DisplaySink | None = None

    def transform(self, code: str) -> str:
        """The cell in plain Python (IPython's input transformers)."""
        return str(self.shell.transform_cell(code))

    def format(self, value: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """``value``'s mime bundle (``text/plain`` always, richer types when it has them) and
        its metadata per mime type (``{"image/png": {"width": 10}}``)."""
        data, metadata = self.shell.display_formatter.format(value)
        bundle = jsonable_bundle(dict(data))
        bundle.setdefault("text/plain", repr(value))
        return bundle, jsonable_bundle(dict(metadata or {}))

    def bind(self, user_ns: dict[str, Any]) -> None:
        """Run magics in ``user_ns`` (the engine namespace) without adding a name to it, and
        offer ``get_ipython``, which translated cells call, as a builtin (as IPython does while
        it runs a cell): the user's namespace stays as clean as on an engine without IPython."""
        self.shell.user_ns = user_ns
        vars(builtins)["get_ipython"] = lambda: self.shell

    @contextmanager
    def executing(self) -> Iterator[None]:
        """Around a cell: IPython's ``pre_execute`` before it, ``post_execute`` after it,
        also when it failed (a callback's own error is printed by IPython to the cell's
        stderr, as in a kernel)."""
        self.shell.events.trigger("pre_execute")
        try:
            yield
        finally:
            self.shell.events.trigger("post_execute")

    def _publish(self, data: dict[str, Any], metadata: dict[str, Any] | None) -> None:
        if self.sink is not None:
            self.sink(jsonable_bundle(dict(data)), dict(metadata or {}))


def load_shell(user_ns: dict[str, Any], log: logging.Logger) -> EngineShell | None:
    """An :class:`EngineShell` over ``user_ns``, or None when IPython is not installed (or
    fails to start: logged, and the engine runs plain Python). The shell is made over a
    private dict, where IPython puts its own names (``In``, ``Out``, ``exit`` ...), then bound
    to ``user_ns``, which it never writes to (the I/O thread may read it meanwhile)."""
    try:
        from IPython.core.displaypub import DisplayPublisher
        from IPython.core.error import UsageError
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config
    except ImportError:
        return None
    try:
        config = Config()
        config.HistoryManager.enabled = False
        config.InteractiveShell.colors = "nocolor"

        class EngineInteractiveShell(InteractiveShell):
            """IPython's shell with no event loop to run a GUI in, as ipykernel's with the
            inline backend: ``%matplotlib inline`` and ``%pylab inline`` work."""

            def enable_gui(self, gui: str | None = None) -> None:
                if gui not in (None, "inline"):
                    raise UsageError(
                        f"an engine has no GUI event loop for {gui!r}: use %matplotlib inline"
                    )

        shell = EngineInteractiveShell.instance(config=config, user_ns={})
        engine_shell = EngineShell(shell)

        class EnginePublisher(DisplayPublisher):
            """Sends display() bundles to the client instead of printing them."""

            def publish(
                self,
                data: dict[str, Any],
                metadata: dict[str, Any] | None = None,
                *args: Any,
                **kwargs: Any,
            ) -> None:
                engine_shell._publish(data, metadata)

            def clear_output(self, wait: bool = False) -> None:
                """Nothing to clear on the client: outputs are kept per task."""

        publisher: Any = EnginePublisher
        shell.display_pub = publisher(shell=shell, parent=shell)
        engine_shell.bind(user_ns)
        use_inline_backend()
        return engine_shell
    except Exception:
        log.exception("IPython is installed but its shell did not start: plain Python only")
        return None


def use_inline_backend() -> None:
    """As ipykernel: figures of a cell are shown when it ends (set before matplotlib is
    imported, which reads it; a user's own choice stays)."""
    if importlib.util.find_spec("matplotlib_inline") is not None:
        os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)


#: The builtins an engine's IPython shell offers, stood in for until its first use.
FIRST_USE_BUILTINS = ("display", "get_ipython")


def on_first_use(load: Callable[[], None]) -> Callable[[], None]:
    """Call ``load`` (which makes the shell) at the first import of IPython on the main thread
    or the first call of ``display`` or ``get_ipython``, once; returns the function that
    removes these hooks (``load`` calls it first, so a failed load leaves none behind: the
    builtins then do not exist, as on an engine without IPython)."""
    finder = _FirstImport(load)
    stand_ins: dict[str, Callable[..., Any]] = {}

    def stand_in(name: str) -> Callable[..., Any]:
        def first_call(*args: Any, **kwargs: Any) -> Any:
            load()
            real = vars(builtins).get(name)
            if real is None or real is stand_ins.get(name):
                raise NameError(f"name {name!r} is not defined (IPython did not start)")
            return real(*args, **kwargs)

        first_call.__name__ = first_call.__qualname__ = name
        return first_call

    for name in FIRST_USE_BUILTINS:
        if name not in vars(builtins):
            stand_ins[name] = vars(builtins)[name] = stand_in(name)
    sys.meta_path.insert(0, finder)

    def remove() -> None:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        for name, function in stand_ins.items():
            if vars(builtins).get(name) is function:
                del vars(builtins)[name]

    return remove


class _FirstImport:
    """A ``sys.meta_path`` finder that lets IPython be imported as ever, then calls ``load``
    once the package's own code has run (on the main thread: the shell is made there)."""

    def __init__(self, load: Callable[[], None]) -> None:
        self.load = load

    def find_spec(
        self, name: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "IPython" or threading.current_thread() is not threading.main_thread():
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _ThenLoad(spec.loader, self.load)
        return spec


class _ThenLoad(importlib.abc.Loader):
    """A loader that runs IPython's own, then ``load``; anything else asked of it is the
    original loader's (resources, source)."""

    def __init__(self, loader: Any, load: Callable[[], None]) -> None:
        self._loader = loader
        self._load = load

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._load()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
