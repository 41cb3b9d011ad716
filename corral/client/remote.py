"""Functions a client sends to engines to run on its behalf: push, pull, map parts, guards.

They travel by value (a few hundred bytes of pickle), with only the globals they use, so that
binding them to the engine's namespace brings nothing else along. Those marked
:func:`interactive` run with the engine's user namespace as their globals: that is how ``push``
writes into it and ``pull`` reads from it. Inside them only builtins and names imported in the
body are available, which is why they import their helpers locally.

A user function handed to one of these (the ``f`` of a map, the function under ``depend``) is
bound to the namespace by :func:`corral.protocol.references.bind_namespace` when it is
interactive, exactly as the engine binds a function applied directly; otherwise it keeps its
own globals.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from corral.errors import UnmetDependency
from corral.protocol.references import interactive

__all__ = [
    "call_chunk",
    "guarded",
    "map_chunk",
    "pull_namespace",
    "push_namespace",
    "results_per_part",
]


@interactive
def push_namespace(values: dict[str, Any]) -> None:
    """Assign ``values`` in the engine's namespace (``DirectView.push``); a dotted name
    ``"a.b"`` sets attribute ``b`` of the engine's ``a``. An interactive function pushed is
    bound to the namespace, so that calling it there reads the engine's names, as when it is
    applied."""
    from corral.protocol.references import bind_namespace

    namespace = globals()
    for name, pushed in values.items():
        value = bind_namespace(pushed, namespace)
        owner, dot, attribute = name.rpartition(".")
        if not dot:
            namespace[name] = value
            continue
        target = namespace[owner.split(".")[0]]
        for part in owner.split(".")[1:]:
            target = getattr(target, part)
        setattr(target, attribute, value)


@interactive
def pull_namespace(names: str | list[str]) -> Any:
    """The values of ``names`` in the engine's namespace (``DirectView.pull``); a dotted name
    ``"a.b"`` reads attribute ``b`` of ``a``. NameError for a name that is not defined there,
    as reading it in code would raise."""
    namespace = globals()
    wanted = [names] if isinstance(names, str) else names
    values = []
    for name in wanted:
        first, *rest = name.split(".")
        if first not in namespace:
            raise NameError(f"name {first!r} is not defined on this engine")
        value = namespace[first]
        for part in rest:
            value = getattr(value, part)
        values.append(value)
    return values[0] if isinstance(names, str) else values


@interactive
def map_chunk(f: Callable[..., Any], *chunks: Sequence[Any]) -> list[Any]:
    """``list(map(f, *chunks))`` on the engine: one part of a parallel map."""
    from corral.protocol.references import bind_namespace

    return list(map(bind_namespace(f, globals()), *chunks))


@interactive
def call_chunk(f: Callable[..., Any], *chunks: Sequence[Any]) -> Any:
    """``f(*chunks)`` on the engine: one part of a ``parallel`` function's call, shaped as
    a part of the joined result.

    As in ipyparallel, a call returning a list or tuple contributes its elements and one
    returning a numpy array its rows (the arrays are concatenated), while any other value (a
    str, a dict, a number, a 0-d array) is one element: ``pf(range(5))`` over 4 engines with
    ``f = str`` is a list of 4 strings, not the strings run together, and dicts are not cut
    into their keys. The caller's join (:func:`corral.client.mapping.join`) and item
    iteration then need no rule of their own for it.
    """
    import sys

    from corral.protocol.references import bind_namespace

    result = bind_namespace(f, globals())(*chunks)
    if isinstance(result, list):
        return result
    if isinstance(result, tuple):
        return list(result)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(result, numpy.ndarray) and result.ndim > 0:
        return result
    return [result]


def results_per_part(part_function: Callable[..., Any], items: int) -> int:
    """How many elements of a map's result one request of ``items`` items stands for: one
    per item for a map (:func:`map_chunk`), one for a ``parallel`` function's call
    (:func:`call_chunk`, whose value may be anything), as ipyparallel counts them; it is the
    result's ``len()`` and ``progress`` unit, and how often a failed request's error stands
    in the result with ``return_exceptions``."""
    return items if part_function is map_chunk else 1


def guarded(
    function: Callable[..., Any],
    *,
    condition: Callable[..., Any] | None = None,
    condition_args: tuple[Any, ...] = (),
    condition_kwargs: Mapping[str, Any] | None = None,
    modules: Sequence[str] = (),
    objects: Mapping[str, Any] | None = None,
) -> Callable[..., Any]:
    """``function`` behind checks made where it runs: import ``modules`` and put ``objects``
    into the engine's namespace, then require ``condition(*args, **kwargs)`` to be true.

    A failed import or a false condition raises :class:`~corral.errors.UnmetDependency`, which
    the scheduler may answer by trying another engine (if the task has retries left). The
    wrapper is a plain interactive function, so it is pickled by value with what it checks and
    the engine binds it to its namespace; guards can be stacked.
    """
    unmet = UnmetDependency
    module_name = __name__
    needed = tuple(modules)
    pushed = dict(objects or {})
    cond_kwargs = dict(condition_kwargs or {})

    def guarded_call(*args: Any, **kwargs: Any) -> Any:
        from importlib import import_module

        from corral.protocol.references import bind_namespace

        namespace = globals()
        on_engine = namespace.get("__name__") != module_name
        bindings: dict[str, Any] = {}
        for name in needed:
            try:
                import_module(name)
                top = import_module(name.partition(".")[0])
            except Exception as exc:
                raise unmet("UnmetDependency", f"cannot import {name!r} here: {exc}") from exc
            bindings[top.__name__] = top
        bindings.update(pushed)
        if on_engine:
            namespace.update(bindings)
        if condition is not None:
            check = bind_namespace(condition, namespace) if on_engine else condition
            if not check(*condition_args, **cond_kwargs):
                name = getattr(condition, "__name__", repr(condition))
                raise unmet("UnmetDependency", f"dependency {name}(...) is false on this engine")
        target = bind_namespace(function, namespace) if on_engine else function
        own_globals = getattr(target, "__globals__", None)
        if own_globals is not None and own_globals is not namespace:
            for key, value in bindings.items():  # a function with its own globals sees them too
                own_globals.setdefault(key, value)
        return target(*args, **kwargs)

    functools.update_wrapper(guarded_call, function)
    return interactive(guarded_call)


# Pickled by value rather than by reference, so that an engine binding one of these functions
# to its namespace adds only the names the function uses, never this module's globals.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
