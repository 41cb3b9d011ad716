"""Values a client puts into an apply call that the engine resolves in its own namespace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

INTERACTIVE_ATTRIBUTE = "__corral_interactive__"


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
