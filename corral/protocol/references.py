"""Values a client puts into an apply call that the engine resolves in its own namespace,
and the one rule (:func:`bind_namespace`) by which an interactive function runs there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FunctionType
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

INTERACTIVE_ATTRIBUTE = "__corral_interactive__"

# Module attributes cloudpickle stores with a function's globals; they describe the client's
# module, not user data, so they never overwrite or pollute the engine namespace.
MODULE_DUNDERS = frozenset(
    {
        "__builtins__",
        "__name__",
        "__package__",
        "__path__",
        "__file__",
        "__loader__",
        "__spec__",
        "__doc__",
        "__cached__",
    }
)


@dataclass(frozen=True)
class Reference:
    """A name in the engine's namespace, passed as an argument: ``dv.apply(f, Reference('a'))``
    calls ``f(a)`` with the engine's ``a``, without sending ``a`` anywhere. An expression
    (``Reference('a.b')``, ``Reference('g[0]')``) is evaluated there; a Reference inside a list
    or dict argument is resolved too."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"Reference needs a name or expression, got {self.name!r}")
        try:
            compile(self.name, "<Reference>", "eval")
        except SyntaxError:
            raise ValueError(
                f"Reference needs a Python name or expression, got {self.name!r}"
            ) from None


def interactive(f: F) -> F:
    """Run ``f`` on the engine with the engine's namespace as its globals.

    Names the function reads are looked up in what was pushed or executed there, and
    ``global x; x = ...`` inside it writes into that namespace. Functions defined in
    ``__main__`` (scripts, notebooks) behave this way without the decorator.
    """
    setattr(f, INTERACTIVE_ATTRIBUTE, True)
    return f


def is_interactive(f: Callable[..., Any]) -> bool:
    """Whether the engine should rebind ``f``'s globals to its namespace."""
    return (
        bool(getattr(f, INTERACTIVE_ATTRIBUTE, False)) or getattr(f, "__module__", "") == "__main__"
    )


def global_names(code: CodeType) -> frozenset[str]:
    """Names ``code`` and the code nested in it (inner functions, lambdas, comprehensions)
    may read as globals: their ``co_names``. Attribute names are among them, so this is a
    superset, but bounded by what the code mentions.

    Kept for the last :data:`NAMES_KEPT` code objects (by identity, each held so its id is
    not reused): the engine builds a new function for every call of a by-value function from
    its template (:mod:`corral.protocol.functiontemplates`), all of them sharing one code."""
    kept = _names_by_code.get(id(code))
    if kept is not None and kept[0] is code:
        return kept[1]
    names = frozenset(_names(code))
    if len(_names_by_code) >= NAMES_KEPT:
        _names_by_code.clear()
    _names_by_code[id(code)] = (code, names)
    return names


NAMES_KEPT = 256
_names_by_code: dict[int, tuple[CodeType, frozenset[str]]] = {}


def _names(code: CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            names |= _names(constant)
    return names


def with_globals(f: FunctionType, namespace: dict[str, Any]) -> FunctionType:
    """A copy of ``f`` whose globals are ``namespace``, keeping its defaults, closure, name,
    attributes, docstring and annotations."""
    bound = FunctionType(f.__code__, namespace, f.__name__, f.__defaults__, f.__closure__)
    bound.__kwdefaults__ = f.__kwdefaults__
    bound.__dict__.update(f.__dict__)
    bound.__qualname__ = f.__qualname__
    bound.__module__ = f.__module__
    bound.__doc__ = f.__doc__
    bound.__annotations__ = f.__annotations__
    return bound


def bind_namespace(f: Any, namespace: dict[str, Any]) -> Any:
    """``f`` with ``namespace`` as its globals if it is an interactive function (see
    :func:`bind_function`); anything else unchanged. The client's helpers that run on the
    engine (push, map parts) bind user functions with it, as the engine binds one applied
    directly."""
    if not isinstance(f, FunctionType) or not is_interactive(f) or f.__globals__ is namespace:
        return f
    return bind_function(f, namespace)


def bind_function(f: FunctionType, namespace: dict[str, Any]) -> FunctionType:
    """A copy of ``f`` whose globals are ``namespace``.

    Of the names ``f`` captured on the client (its ``__globals__``), only those its code reads
    (:func:`global_names`) are added to the namespace, and only where it lacks them: what the
    engine already holds wins, so a pushed value is never silently replaced by a stale client
    copy, and a function from an importable module (whose ``__globals__`` is that whole module)
    does not pour the module into the namespace.
    """
    captured = f.__globals__
    for name in global_names(f.__code__):
        if name in captured and name not in MODULE_DUNDERS and name not in namespace:
            namespace[name] = captured[name]
    return with_globals(f, namespace)
