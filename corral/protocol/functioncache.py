"""When the pickle of a function may be reused for the next call of it, opcode for opcode.

An apply request is one pickle of ``(f, args, kwargs)`` (:mod:`corral.protocol.serialize`).
For a function defined in ``__main__`` (a script, a notebook) or inside another function,
cloudpickle writes the function by value: its code, the globals it reads, its closure, its
defaults and attributes. That is about three quarters of the CPU of packing a no-op call, and
it is the same work for every call of the same function, as long as nothing it reads changed.

This module decides when nothing can have changed. :func:`fingerprint` lists, by identity,
every object cloudpickle reads to write the function: the function and its code, the values of
the globals its code names (or their absence), the module attributes cloudpickle stores with
them, the closure cells' contents, name, qualified name, module, docstring, defaults, keyword
defaults, annotations and attribute dict (their keys and values). A pickle made once is reused
only while every one of those objects is the same object as then *and* was, then, deeply
immutable (:func:`reusable`: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes`` of
exactly those types, tuples and frozensets of them, and code whose constants are such; and the
builtin types, ``int`` or ``list``, with ``list[int]`` and ``int | None`` made of them, the
annotations of most typed functions). The pickler writes the values natively and the builtin
types by their names, never through ``copyreg`` (a ``list[int]`` through its own reduction,
its origin and arguments: the same each time), so the same objects give the same bytes.
Globals the pickler writes by name (a module or package, a module's function, class or
builtin function, ``np.sum``, a ufunc) are accepted too, with what the pickler
consults to write them in the fingerprint (:mod:`corral.protocol.byname`); and so are other
by-value functions it reads (a ``__main__`` helper it calls, itself when recursive), each with
its own fingerprint after the first, by the same rules; and so are small lists, dicts and sets
of deeply immutable values (:func:`container_frozen`), whose items the fingerprint lists in
order at every call. A function that reads anything else (a larger or nested container, a
class of its own, ``functools.partial``) is pickled afresh on every call, as before.

Sharing between the function and the arguments is kept: the reused part comes with the
pickler's memo as it stood after the function (:mod:`corral.protocol.serialize` seeds the
pickler with it before writing the arguments), so an argument that is an object of the
function's pickle is written as a reference to it, exactly as in one pickle. The result holds
the very opcodes a fresh pickle would (tests/protocol/test_functioncache.py compares them),
framed in two, the function's part first, so that an engine can rebuild the function once and
unpickle only the arguments (:mod:`corral.protocol.functiontemplates`, docs/wire-flows.md
"apply_request"); a call that would not fit one 64 KiB frame is pickled afresh. The kept
pickle is used only for calls whose arguments are small (:func:`small_arguments`): for the
others the arguments cost more than the function, and must never be pickled twice.
"""

from __future__ import annotations

import builtins
import operator
import weakref
from types import CodeType, FunctionType, GenericAlias, NoneType, UnionType
from typing import Any, Final

from corral.protocol import byname

__all__ = [
    "FRAME_LIMIT",
    "small_arguments",
    "CallEntry",
    "by_value",
    "code_frozen",
    "fingerprint",
    "frame_body",
    "frozen",
    "reusable",
    "same",
]

FRAME_LIMIT: Final = 64 * 1024  # the C pickler's frame size target: one frame below it
_PROTO: Final = b"\x80\x05"
_FRAME: Final = 0x95
_FRAME_HEADER: Final = 9  # FRAME opcode + 8-byte little-endian length
_STOP: Final = ord(".")

_ABSENT: Final = object()  # a global the function's code names but its globals lack
_EMPTY_CELL: Final = object()  # a closure cell without a value yet
_END: Final = object()  # closes a variable-length section of a fingerprint
_BY_NAME: Final = object()  # opens a section: byname.name_parts of the function's globals
_NESTED: Final = object()  # opens the segment of a by-value function the one before reads
_MAX_HELPERS: Final = 8
_MAX_ITEMS: Final = 32  # items of a global list, dict or set listed in a fingerprint
_NO_MAPPING: Final = object()  # a mapping attribute that is None
_MARKERS: Final = (_ABSENT, _EMPTY_CELL, _END, _NO_MAPPING)
_STRUCTURE: Final = (0, 1, 2, 8)  # the function, its code, its globals, its closure's cells
_ATOMS: Final = frozenset({type(None), bool, int, float, str, bytes})
# no global written by name, nor a function, among them (object: _ABSENT)
_PLAIN: Final = _ATOMS | {object, tuple, frozenset}
_MODULE_KEYS: Final = ("__package__", "__name__", "__path__", "__file__")  # cloudpickle's
_IMMUTABLE_TYPE: Final = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: no attribute of it can be set
_MAX_DEPTH: Final = 32
_MAX_SKIP: Final = 64  # calls pickled without a look after many changes in a row


class CallEntry:
    """What one thread's pickler knows of a by-value function it pickled (its ``function``,
    weakly: a function called once is not kept alive by being noted).

    - noted: no ``fingerprint`` yet (or none worth keeping: the function read something
      not deeply immutable, and ``skip`` calls are pickled afresh before it looks again);
    - candidate: a ``fingerprint`` of deeply immutable objects, no ``ops`` yet: kept if the
      next call finds the same;
    - kept: ``ops`` (and ``opening``: a call pickle's bytes up to the length of its
      arguments' frame, ``ops`` framed) and the pickler ``memo`` after them (cloudpickle's
      ``globals_ref`` plays
      no part: the arguments of a reused call hold no function, see :func:`small_arguments`),
      and once it was called without arguments, that call's whole frame (``bare``): the
      same bytes for every such call while the fingerprint holds, so they are not rebuilt.

    Only fingerprints of :func:`reusable` functions are held, and holding one keeps its
    objects alive, so no identity in it can be taken by a new object. ``misses``: looks in a
    row that found the function changed or not reusable; the next ``min(2**misses, 64)``
    calls are pickled afresh without a look.
    """

    __slots__ = ("bare", "fingerprint", "function", "memo", "misses", "opening", "ops", "skip")

    def __init__(
        self,
        function: weakref.ref[FunctionType],
        fingerprint: tuple[object, ...] | None = None,
        *,
        misses: int = 0,
    ) -> None:
        self.function = function
        self.fingerprint = fingerprint
        self.ops: bytes | None = None
        self.opening: bytes | None = None
        self.bare: bytes | None = None
        self.memo: dict[int, tuple[int, object]] | None = None
        self.misses = misses
        self.skip = min(2**misses, _MAX_SKIP) if misses else 0


def by_value(f: FunctionType) -> bool:
    """Whether cloudpickle writes ``f`` by value whatever modules are imported: defined in
    ``__main__``, or inside another function (``<locals>`` in its qualified name, which no
    module attribute lookup resolves)."""
    module = f.__module__
    if type(module) is str and module == "__main__":
        return True
    return "<locals>" in f.__qualname__.split(".")


def _names(code: CodeType) -> tuple[str, ...]:
    """Every name ``code`` and the code nested in it may read as a global (a superset of
    cloudpickle's: attribute names are among ``co_names`` too)."""
    found: dict[str, None] = dict.fromkeys(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            found.update(dict.fromkeys(_names(constant)))
    return tuple(found)


_NAMES: dict[CodeType, tuple[tuple[str, ...], tuple[object, ...]]] = {}
_NAMES_LIMIT: Final = 256
_MODULE_ABSENT: Final = (_ABSENT,) * len(_MODULE_KEYS)


def _global_names(code: CodeType) -> tuple[tuple[str, ...], tuple[object, ...]]:
    """:func:`_names` of ``code``, and as many ``_ABSENT`` (the default of each look-up:
    ``map(namespace.get, names, absent)`` reads them all without a Python loop)."""
    found = _NAMES.get(code)
    if found is None:
        if len(_NAMES) >= _NAMES_LIMIT:
            _NAMES.clear()
        names = _names(code)
        found = _NAMES[code] = (names, (_ABSENT,) * len(names))
    return found


def fingerprint(f: Any) -> tuple[object, ...] | None:
    """Every object cloudpickle reads to write ``f`` (see the module doc), in a fixed order;
    None if ``f`` is not a plain function written by value. Each other by-value function it
    reads as a global (a helper of ``__main__`` it calls), and each those read, adds its own
    fingerprint after a ``_NESTED`` marker, at most ``_MAX_HELPERS`` of them."""
    if type(f) is not FunctionType or not by_value(f):
        return None
    parts: list[object] = []
    values = _own_parts(f, parts)
    if values is not None:
        _by_name_and_helpers(f.__code__, values, parts, [f])
    return tuple(parts)


def _own_parts(f: FunctionType, parts: list[object]) -> list[object] | None:
    """Append the fingerprint of ``f`` alone to ``parts``; the values of its globals if any is
    not a plain value (one written by name or a by-value function may be among them), else
    None."""
    code = f.__code__
    namespace = f.__globals__
    closure = f.__closure__
    parts += (f, code, namespace, f.__name__, f.__qualname__, f.__module__)
    parts += (f.__doc__, f.__defaults__, closure)
    names, absent = _global_names(code)
    look_up = namespace.get
    values = list(map(look_up, names, absent))  # one call per name, no Python loop
    parts += values
    parts.append(_END)
    parts += map(look_up, _MODULE_KEYS, _MODULE_ABSENT)
    for cell in closure or ():
        try:
            parts.append(cell.cell_contents)
        except ValueError:
            parts.append(_EMPTY_CELL)
    parts.append(_END)
    for mapping in (f.__kwdefaults__, f.__annotations__, f.__dict__):
        if mapping is None:
            parts.append(_NO_MAPPING)
            continue
        parts += mapping.keys()
        parts.append(_END)
        parts += mapping.values()
        parts.append(_END)
    if not values or _PLAIN.issuperset(map(type, values)):
        return None
    return values


def _by_name_and_helpers(
    code: CodeType, values: list[object], parts: list[object], seen: list[FunctionType]
) -> None:
    """Append what the pickler consults for the globals ``values`` (of a function of ``code``)
    it writes by name, then the segment of each by-value function among them not ``seen``
    yet (recursion and mutual calls end there)."""
    parts.append(_BY_NAME)
    byname.name_parts(values, parts, code)
    for value in values:
        kind = type(value)
        if kind is list or kind is dict or kind is set:
            container: Any = value
            parts.append(kind)  # a small container's items, in order (see container_frozen)
            if len(container) > _MAX_ITEMS:
                parts.append(_ABSENT)
                continue
            parts.append(len(container))
            parts += container
            if kind is dict:
                parts += container.values()
    for value in values:
        if type(value) is FunctionType and by_value(value) and not _among(value, seen):
            if len(seen) > _MAX_HELPERS:
                return  # the rest without a segment: not reusable
            seen.append(value)
            parts.append(_NESTED)
            more = _own_parts(value, parts)
            if more is not None:
                _by_name_and_helpers(value.__code__, more, parts, seen)


def container_frozen(value: object) -> bool:
    """Whether ``value`` is a list, dict or set (exactly) of at most 32 :func:`frozen` items
    (keys and values): mutable, but its pickle is the same while the same items are in it in
    the same order, which a fingerprint lists at every call (a few of them are cheap to list;
    the engine's template copies it for every call)."""
    kind = type(value)
    if kind is dict:
        mapping: dict[object, object] = value  # type: ignore[assignment]
        return len(mapping) <= _MAX_ITEMS and all(
            frozen(key) and frozen(item) for key, item in mapping.items()
        )
    if kind is list or kind is set:
        items: list[object] | set[object] = value  # type: ignore[assignment]
        return len(items) <= _MAX_ITEMS and all(frozen(item) for item in items)
    return False


def _among(value: object, objects: list[FunctionType]) -> bool:
    return any(value is item for item in objects)


def same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Whether two fingerprints hold the same objects (identity: ``1``, ``1.0`` and ``True``
    are equal, but pickle differently)."""
    return len(a) == len(b) and all(map(operator.is_, a, b))


def frozen(value: object, depth: int = 0) -> bool:
    """Whether ``value`` is deeply immutable and always pickled to the same bytes: ``None``,
    ``bool``, ``int``, ``float``, ``str``, ``bytes`` of exactly those types, tuples and
    frozensets of them, the builtin types (:func:`builtin_type`), and ``list[int]`` or
    ``int | None`` made of frozen parts."""
    kind = type(value)
    if kind in _ATOMS:
        return True
    if depth >= _MAX_DEPTH:
        return False
    if kind is tuple or kind is frozenset:
        return all(frozen(item, depth + 1) for item in value)  # type: ignore[attr-defined]
    if kind is type:
        return builtin_type(value)  # type: ignore[arg-type]
    if kind is GenericAlias:
        alias: Any = value
        return builtin_type(alias.__origin__) and frozen(alias.__args__, depth + 1)
    if kind is UnionType:
        return frozen(value.__args__, depth + 1)  # type: ignore[attr-defined]
    return False


def builtin_type(value: type) -> bool:
    """Whether ``value`` is one of the interpreter's builtin types (``int``, ``str``, ``list``,
    ``NoneType`` ...): none of its attributes can be set, and every pickler writes it by its
    name. A class of the user's, or of a module, may change or be pickled by value: never."""
    if value is NoneType:
        return True
    return (
        value.__module__ == "builtins"
        and bool(value.__flags__ & _IMMUTABLE_TYPE)
        and getattr(builtins, value.__qualname__, None) is value
    )


def code_frozen(code: CodeType, depth: int = 0) -> bool:
    """Whether every constant of ``code``, and of the code nested in it, is :func:`frozen`."""
    if depth >= _MAX_DEPTH:
        return False
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            if type(constant) is not CodeType or not code_frozen(constant, depth + 1):
                return False
        elif not frozen(constant):
            return False
    return True


def reusable(print_: tuple[object, ...]) -> bool:
    """Whether the function of fingerprint ``print_`` reads only deeply immutable objects of
    natively pickled types, globals written by name (:func:`corral.protocol.byname.named`,
    whose state its section after ``_BY_NAME`` holds) and by-value functions of which the
    same holds (each its own segment after a ``_NESTED`` marker), so that the same objects
    always pickle to the same bytes."""
    segments: list[list[object]] = [[]]
    for part in print_:
        if part is _NESTED:
            segments.append([])
        else:
            segments[-1].append(part)
    functions = [segment[0] for segment in segments if segment]
    return all(_segment_reusable(segment, functions) for segment in segments)


def _segment_reusable(segment: list[object], functions: list[object]) -> bool:
    """:func:`reusable` for one function's segment, ``functions`` those with a segment."""
    if len(segment) <= _STRUCTURE[-1]:
        return False
    code, namespace, closure = segment[1], segment[2], segment[8]
    if type(code) is not CodeType or not code_frozen(code):
        return False
    if type(namespace) is not dict or (closure is not None and type(closure) is not tuple):
        return False
    in_globals = True  # the globals' values come first, up to the first _END
    for index, part in enumerate(segment):
        if part is _BY_NAME:
            return True  # the rest is what byname.named() consulted
        if index in _STRUCTURE or frozen(part):
            continue
        if part is _END:
            in_globals = False
        elif not any(part is marker for marker in _MARKERS):
            if not (in_globals and index > _STRUCTURE[-1]):
                return False
            if type(part) is FunctionType and _among(part, functions):  # type: ignore[arg-type]
                continue
            if container_frozen(part):
                continue
            if not byname.named(part, code):
                return False
    return True


_ARGUMENT_BUDGET: Final = 16 * 1024  # bytes, a bound on the arguments' pickle (see below)
_ATOM_SIZE: Final = 16  # at most what pickle writes for a number, None or a bool, with opcode
_MAX_LOOKS: Final = 32  # objects small_arguments looks at before it gives up


def small_arguments(args: Any, kwargs: Any) -> bool:
    """Whether ``args`` and ``kwargs`` surely pickle to well under one 64 KiB frame, judged
    in at most 32 looks: numbers, strings and bytes (counted at four bytes a character) and
    containers of those, within a budget of 16 KiB. The kept pickle is used only for such
    calls; for others the arguments cost more than the function anyway, and pickling them
    afresh never pickles them twice (when the whole would not fit one frame). Looking costs
    far more per object than the C pickler does, so it stops early."""
    if type(args) is not tuple or type(kwargs) is not dict:
        return False
    if not args and not kwargs:
        return True  # a call without arguments (the usual no-op): nothing to look at
    left = _ARGUMENT_BUDGET
    looks = _MAX_LOOKS
    pending: list[Any] = [args, *kwargs.values()]
    while pending:
        value = pending.pop()
        looks -= 1
        kind = type(value)
        if kind is str:
            left -= 4 * len(value) + _ATOM_SIZE
        elif kind is bytes:
            left -= len(value) + _ATOM_SIZE
        elif kind in _ATOMS:
            left -= _ATOM_SIZE
        elif kind is tuple or kind is list or kind is frozenset or kind is set or kind is dict:
            left -= _ATOM_SIZE
            if len(pending) + len(value) * (2 if kind is dict else 1) > looks:
                return False
            pending.extend(value)
            if kind is dict:
                pending.extend(value.values())
        else:
            return False  # anything else is not counted
        if left < 0 or looks < 0:
            return False
    return True


def frame_body(output: memoryview) -> memoryview | None:
    """The opcodes of one complete pickle the C pickler wrote at protocol 5 (``PROTO 5``, one
    frame or a tiny unframed tail, ``STOP``), without ``PROTO``, framing and ``STOP``; None if
    it is not that shape (several frames: large data)."""
    if len(output) < 3 or output[0] != _PROTO[0] or output[1] != _PROTO[1] or output[-1] != _STOP:
        return None
    if output[2] != _FRAME:
        return output[2:-1] if len(output) < 2 + 4 else None  # frames under 4 bytes: unframed
    if len(output) < 2 + _FRAME_HEADER + 1:
        return None
    length = int.from_bytes(output[3 : 3 + 8], "little")
    if length != len(output) - 2 - _FRAME_HEADER:
        return None
    return output[2 + _FRAME_HEADER : -1]
