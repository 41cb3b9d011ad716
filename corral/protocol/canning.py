"""ipyparallel's serializer names (``can``, ``PrePickled``, ``serialize_object`` ...) over
corral's one wire format.

ipyparallel "cans" what plain pickle cannot send (functions, classes) into wrapper objects and
serializes data itself; corral's format (:mod:`corral.protocol.serialize`) is cloudpickle with
protocol 5 buffers, which already sends functions, lambdas and classes by value. These names
exist so that programs written for ipyparallel keep working, with its signatures and return
shapes:

- :func:`can` wraps a function or class in :class:`Canned` (its cloudpickle bytes), which any
  pickler, even the standard library's with a plain ``pickle.dumps``, can then carry;
  :func:`uncan` turns it back, optionally with new globals (``g``, as ipyparallel's does for
  functions that should see an engine's namespace). Data is left as it is, as there.
- :class:`PrePickled` pickles an object once, for sending the same large object to many
  engines or in many calls without pickling it again; the receiver gets the object itself.
- :func:`deserialize_object` returns ``(object, remaining_buffers)`` and
  :func:`unpack_apply_message` takes ``g`` and ``copy``, like ipyparallel's; corral's own
  :mod:`~corral.protocol.serialize` functions keep their simpler shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import BuiltinFunctionType, FunctionType, MethodType
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from corral.protocol import serialize
from corral.protocol.references import with_globals
from corral.protocol.unpickling import FrameLike

__all__ = [
    "Canned",
    "PrePickled",
    "can",
    "can_map",
    "deserialize_object",
    "pack_apply_message",
    "serialize_object",
    "uncan",
    "uncan_map",
    "unpack_apply_message",
]

#: ipyparallel's defaults: buffers from 1 KiB go out of band; ``item_threshold`` (how many
#: items of a container it cans one by one) has no meaning for corral's single pickle.
MAX_BYTES = 1024
MAX_ITEMS = 64


class Canned:
    """A function, method or class in its cloudpickle form: picklable by any pickler.

    :func:`uncan` (or :meth:`get_object`) gives back the object; ``g`` replaces a function's
    globals.
    """

    __slots__ = ("data", "name")

    def __init__(self, obj: object) -> None:
        self.name: str = getattr(obj, "__qualname__", None) or type(obj).__name__
        self.data: bytes = cloudpickle.dumps(obj, protocol=5)

    def get_object(self, g: dict[str, Any] | None = None) -> Any:
        obj = cloudpickle.loads(self.data)
        if g is not None and isinstance(obj, FunctionType):
            return with_globals(obj, g)
        return obj

    def __repr__(self) -> str:
        return f"<Canned {self.name} ({len(self.data)} bytes)>"


def _needs_canning(obj: object) -> bool:
    if isinstance(obj, BuiltinFunctionType):
        return False  # pickled by reference everywhere
    return isinstance(obj, FunctionType | MethodType | type)


def can(obj: Any) -> Any:
    """``obj`` ready for any pickler: functions, methods and classes become :class:`Canned`;
    containers and data are returned unchanged (as ipyparallel does for plain data)."""
    return Canned(obj) if _needs_canning(obj) else obj


def uncan(obj: Any, g: dict[str, Any] | None = None) -> Any:
    """The inverse of :func:`can`: a :class:`Canned` becomes its object (a function gets ``g``
    as its globals when given); anything else is returned unchanged."""
    return obj.get_object(g) if isinstance(obj, Canned) else obj


def can_map(obj: Mapping[Any, Any]) -> dict[Any, Any]:
    """:func:`can` applied to each value of a mapping (a namespace to push, say)."""
    return {key: can(value) for key, value in obj.items()}


def uncan_map(obj: Mapping[Any, Any], g: dict[str, Any] | None = None) -> dict[Any, Any]:
    """:func:`uncan` applied to each value of a mapping."""
    return {key: uncan(value, g) for key, value in obj.items()}


def _loads(data: bytes) -> Any:
    return cloudpickle.loads(data)


class PrePickled:
    """``obj`` pickled once, now: send the wrapper instead of ``obj`` to pickle it no more.

    Wherever it is unpickled (an engine running an apply, a pull) it becomes ``obj`` itself,
    not the wrapper. Changes made to ``obj`` after wrapping are not sent: the bytes are fixed.
    """

    __slots__ = ("data", "obj")

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.data: bytes = cloudpickle.dumps(obj, protocol=5)

    def __reduce__(self) -> tuple[Callable[[bytes], Any], tuple[bytes]]:
        return _loads, (self.data,)

    def __repr__(self) -> str:
        return f"<PrePickled {type(self.obj).__name__} ({len(self.data)} bytes)>"


def serialize_object(
    obj: object, buffer_threshold: int = MAX_BYTES, item_threshold: int = MAX_ITEMS
) -> list[bytes | memoryview]:
    """Frames for ``obj``: one pickle frame, then its large buffers (zero-copy).
    ``item_threshold`` is accepted for ipyparallel's signature and has no effect."""
    return serialize.serialize_object(obj, buffer_threshold)


def deserialize_object(
    buffers: Sequence[FrameLike], g: dict[str, Any] | None = None
) -> tuple[Any, list[FrameLike]]:
    """``(obj, remaining_buffers)`` from the frames of :func:`serialize_object`, as
    ipyparallel returns it. corral's format uses every frame it was given, so the remaining
    list is empty; ``g`` becomes the globals of a :class:`Canned` function inside."""
    return uncan(serialize.deserialize_object(buffers), g), []


def pack_apply_message(
    f: Callable[..., Any],
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    buffer_threshold: int = MAX_BYTES,
    item_threshold: int = MAX_ITEMS,
) -> list[bytes | memoryview]:
    """Frames for the call ``f(*args, **kwargs)`` (one pickle, then buffers)."""
    return serialize.pack_apply_message(f, args, kwargs, buffer_threshold)


def unpack_apply_message(
    bufs: Sequence[FrameLike], g: dict[str, Any] | None = None, copy: bool = True
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """``(f, args, kwargs)`` from :func:`pack_apply_message`'s frames; with ``g``, a plain
    function ``f`` runs with ``g`` as its globals (as an engine binds it to its namespace).
    ``copy`` is accepted for ipyparallel's signature: corral never copies large buffers."""
    f, args, kwargs = serialize.unpack_apply_message(bufs)
    if g is not None and isinstance(f, FunctionType):
        f = Canned(f).get_object(g)
    return f, args, kwargs
