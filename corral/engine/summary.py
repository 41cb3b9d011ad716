"""A short, bounded description of a call, for the task's record: ``pow(2, 10)``.

The engine adds it to an apply reply's metadata (``call``), so the Hub stores it with the
result and the dashboard shows what a task was asked to do without keeping its arguments.
It must cost a task next to nothing and never run user code: builtin scalars and containers
are shown (truncated), anything else only by its type (arrays with their shape and dtype),
never through its ``__repr__``, which could be slow, huge or raise.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

MAX_CALL = 200  # characters of the whole description
MAX_ITEMS = 4  # items shown of a container, arguments shown of a call: 6
MAX_TEXT = 40  # characters shown of a string
_NAMED = (  # shown by their qualified name
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.BuiltinMethodType,
    type,
)


def describe_call(f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``name(arg, ..., key=value)``, at most MAX_CALL characters."""
    name = getattr(f, "__qualname__", None) or type(f).__name__
    if not args and not kwargs:
        return f"{name}()" if len(name) <= MAX_CALL - 2 else name[: MAX_CALL - 1] + "…"
    parts = [describe(arg) for arg in args[:6]]
    if len(args) > 6:
        parts.append(f"... {len(args) - 6} more")
    parts += [f"{key}={describe(value)}" for key, value in list(kwargs.items())[:6]]
    if len(kwargs) > 6:
        parts.append(f"... {len(kwargs) - 6} more")
    text = f"{name}({', '.join(parts)})"
    return text if len(text) <= MAX_CALL else text[: MAX_CALL - 1] + "…"


def describe(value: Any, depth: int = 0) -> str:
    """A bounded text for one value (see the module docs for what is shown)."""
    kind = type(value)
    if value is None or kind in (bool, float, complex, range):
        return repr(value)
    if kind in _NAMED:
        return str(getattr(value, "__qualname__", None) or kind.__name__)
    if kind is int:
        return repr(value) if value.bit_length() <= 64 else f"<int of {value.bit_length()} bits>"
    if kind is str:
        return repr(value) if len(value) <= MAX_TEXT else repr(value[:MAX_TEXT]) + "…"
    if kind in (bytes, bytearray):
        return repr(value) if len(value) <= MAX_TEXT else f"<{kind.__name__} of {len(value)}>"
    if kind in (list, tuple, set, frozenset, dict):
        if depth >= 2:
            return f"<{kind.__name__} of {len(value)}>"
        items = list(value.items() if kind is dict else value)[:MAX_ITEMS] if value else []
        if kind is dict:
            shown = [f"{describe(k, depth + 1)}: {describe(v, depth + 1)}" for k, v in items]
        else:
            shown = [describe(item, depth + 1) for item in items]
        if len(value) > MAX_ITEMS:
            shown.append(f"... {len(value)} items")
        inner = ", ".join(shown)
        if kind is list:
            return f"[{inner}]"
        if kind is tuple:
            return f"({inner}{',' if len(value) == 1 else ''})"
        if kind is dict:
            return f"{{{inner}}}"
        return f"{kind.__name__}({{{inner}}})" if value else f"{kind.__name__}()"
    shape = getattr(value, "shape", None) if hasattr(kind, "shape") else None
    if isinstance(shape, tuple):
        return f"{kind.__name__}(shape={shape}, dtype={getattr(value, 'dtype', '?')})"
    return f"<{kind.__module__}.{kind.__qualname__}>"
