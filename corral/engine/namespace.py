"""The engine's user namespace: running applied functions and code cells.

No sockets here. The engine's main thread calls :meth:`Namespace.apply` and
:meth:`Namespace.execute` inside an :class:`~corral.engine.capture.OutputCapture`, which hands
printed text to a publish callback (the engine turns it into iopub ``stream`` messages) and
keeps it for the reply metadata. Exceptions from user code propagate unchanged: turning them
into error replies, and surviving them, is the caller's job; :func:`strip_engine_frames`
leaves the user's frames of their tracebacks.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import types
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.native import COMPILED
from corral.protocol.references import Reference, bind_namespace

from .ipython import IPYTHON_HINT, looks_like_ipython

_ENGINE_DIR = str(Path(__file__).resolve().parent)
#: The file names a compiled engine module (``make native``) gives its functions in
#: tracebacks: their paths as the build named them, relative (``corral/engine/interrupts.py``)
_COMPILED_ENGINE_FILES = frozenset(
    "/".join(module.split(".")) + ".py"
    for module in COMPILED
    if module.startswith("corral.engine.")
)
_LINECACHE_KEEP = 256


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
        ``a.b`` or ``g[0]``), and an interactive function bound to the namespace
        (:func:`bind_namespace`); those inside a list, tuple or dict argument too, as
        ipyparallel does (its canning reaches as deep). Anything else unchanged."""
        if isinstance(value, types.FunctionType):
            return bind_namespace(value, self.user_ns)
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

    def apply(self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``f(*args, **kwargs)`` with top-level References resolved from the namespace.

        An interactive function (``@interactive`` or defined in the client's ``__main__``) runs
        with the namespace as its globals, so it reads pushed names and ``global x`` writes land
        where ``execute`` and later applies see them; so does one passed as an argument (a
        callback), as in ipyparallel.
        """
        if args:
            args = tuple(self.resolve(arg) for arg in args)
        if kwargs:
            kwargs = {key: self.resolve(value) for key, value in kwargs.items()}
        f = self.resolve(f, 1)
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
    """A frame of the engine's own code: run from source, or compiled (a compiled function's
    entry in a traceback names its module's source relative to the build, e.g. the signal
    handler of :mod:`corral.engine.interrupts` that raises KeyboardInterrupt in a task)."""
    filename = tb.tb_frame.f_code.co_filename
    return filename.startswith(_ENGINE_DIR) or filename in _COMPILED_ENGINE_FILES
