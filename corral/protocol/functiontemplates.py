"""A by-value function rebuilt once per engine thread, and each call's arguments unpickled alone.

A function defined in ``__main__`` travels by value: its code, globals, closure and defaults in
the pickle of every call. The client keeps that part of the pickle while nothing it reads can
have changed (:mod:`corral.protocol.functioncache`) and then frames the call in two
(docs/wire-flows.md, "apply_request")::

    PROTO 5 | FRAME a | the function's opcodes | FRAME b | the arguments' opcodes, TUPLE3,
                                                          MEMOIZE, STOP

Any unpickler reads that as the one pickle of ``(f, args, kwargs)`` it is, so an engine that
knows nothing of this still works. Unpickling the function was three quarters of unpacking a
no-op call (about 4 of 5.5 us) and made some forty objects per task; this module makes it once.

:class:`FunctionTemplates` (one per thread, :func:`thread_templates`) keys a bounded cache on the
bytes of the first frame. The first time, it unpickles them alone, and keeps a
:class:`FunctionTemplate` only if the function's state is deeply immutable (the same rule as the
client's, :func:`~corral.protocol.functioncache.frozen`): code, the values of its globals, its
closure cells' contents, name, qualified name, module, docstring, defaults, keyword defaults,
annotations and attributes. Three kinds of globals are accepted besides, as the client accepts
them: objects the unpickle found by name (a module, a module's function, class or builtin
function), each checked again before every call against the engine's ``sys.modules``
(:meth:`FunctionTemplate.anchored`); by-value functions (a ``__main__`` helper, the function
itself when recursive), held to the same rule and rebuilt with it; and small lists, dicts and
sets of deeply immutable items, copied. Every call then gets a *new* function built from those
parts, with new dicts, new cells, new helpers and new containers, so a function that changes
its own attributes, defaults, closure cells (``nonlocal``) or globals leaks nothing into the
next call, as a freshly unpickled one would.

The arguments are unpickled with the unpickler's memo as it stood after the function, so an
argument that is an object of the function's pickle (a string its code names, its defaults
tuple) is that very object, as in one pickle: the memo is rebuilt by a short prelude of
opcodes from the template's seed, the deeply immutable objects themselves and, for every other
one (the function, its dicts, cells, the helpers cloudpickle called), a stand-in. The function
itself is a stand-in too, at the bottom of the stack where the full unpickle has it. Whatever
uses a stand-in fails (it refuses attributes but its class, comparison, hashing, calls), and
one that the arguments keep is seen (its reference count), so such a call, and anything else
this path does not read exactly as a whole unpickle would, is unpickled whole instead. A first frame
that is not one function's pickle (a wrong or lying boundary) gives no template, and those
calls are unpickled whole too: never a wrong function. (One reading differs: a second frame
crafted to fetch a callable itself and hand it a stand-in that it only looks at by identity or
type, ``id()``, ``type()``, ``is``, computes from the stand-in. No pickler writes such a frame,
and a peer that can send one holds the key, so it can run any code on the engine anyway.)

Kept per thread without a lock: the engine unpacks calls on its main thread, and the reference
counts of a template's stand-ins are only meaningful while no other thread uses them.
"""

from __future__ import annotations

import builtins
import io
import pickle
import re
import struct
import sys
import threading
import zlib
from types import CellType, CodeType, FunctionType
from typing import Any, Final, NoReturn

from cloudpickle.cloudpickle import subimport as _subimport  # type: ignore[import-untyped]

from corral.protocol.functioncache import FRAME_LIMIT, code_frozen, container_frozen, frozen

__all__ = [
    "TEMPLATES_KEPT",
    "FunctionTemplate",
    "FunctionTemplates",
    "function_end",
    "thread_templates",
]

TEMPLATES_KEPT: Final = 32  # functions per thread; the least recently used goes first
_PROTO: Final = b"\x80\x05"
_FRAME: Final = 0x95
_PROTO_5: Final = int.from_bytes(_PROTO, "little")
_OPENING: Final = struct.Struct("<HBQ")  # PROTO 5, FRAME, the first frame's length
_FRAME_START: Final = struct.Struct("<BQ")  # FRAME, its length
_FRAME_HEADER: Final = 9  # FRAME opcode + 8-byte little-endian length
_FIRST: Final = len(_PROTO) + _FRAME_HEADER  # where the function's opcodes start
_FRAMED: Final = _PROTO + b"\x95"
_STOP: Final = b"."
_GETS: Final = re.compile(b"[hjg]")  # BINGET, LONG_BINGET, GET (or data bytes that match)
_NEXT_BUFFER: Final = b"\x97"  # pushes the next object of the ``buffers`` given to the unpickler
_MEMOIZE: Final = b"\x94"
_MARK: Final = b"("
_POP_MARK: Final = b"1"
_EMPTY_CELL: Final = object()  # a closure cell without a value
_BUILTINS: Final = (builtins, builtins.__dict__)  # what cloudpickle puts in a function's globals
_MISSING: Final = object()


def function_end(pickled: bytes, start: int) -> int | None:
    """Where the function's opcodes end in the call pickle at ``pickled[start:]`` if it is
    framed in two as the client frames a kept function's call (the module doc); None for any
    other pickle. A pickle the C pickler frames itself never starts with a frame under 64 KiB
    followed at once by another."""
    size = len(pickled)
    if size < start + _FIRST + _FRAME_HEADER + 1:
        return None
    protocol, frame, first = _OPENING.unpack_from(pickled, start)
    if protocol != _PROTO_5 or frame != _FRAME or first >= FRAME_LIMIT:
        return None
    end = start + _FIRST + first
    if end + _FRAME_HEADER >= size:
        return None
    frame, second = _FRAME_START.unpack_from(pickled, end)
    if frame != _FRAME or end + _FRAME_HEADER + second != size:
        return None
    return int(end)


class _StandIn:
    """Stands for an object of the function's part while a call's arguments are unpickled
    (see :meth:`FunctionTemplate.call`): every use of it raises, so that the call is unpickled
    whole instead; no attribute (but its class, as ``type()`` gives), no comparison, no hash,
    no truth value, no text."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]

    def __getattribute__(self, name: str) -> Any:
        if name == "__class__":
            # isinstance() reads it, and a stand-in stays reachable from the collector
            # (gc.get_objects()) while its template lives: a task that walks the heap testing
            # types (a memory profiler, say) must not fail on it; like type(), it tells nothing
            return _StandIn
        raise TypeError("an object of the function's pickle was used by its arguments")

    def __eq__(self, other: object) -> NoReturn:
        raise TypeError("an object of the function's pickle was compared by its arguments")

    __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __eq__

    def __bool__(self) -> NoReturn:
        raise TypeError("an object of the function's pickle was tested by its arguments")

    def __repr__(self) -> str:
        raise TypeError("an object of the function's pickle was shown by its arguments")

    __str__ = __repr__  # format() goes through it too


def _frozen_items(mapping: object) -> bool:
    return type(mapping) is dict and all(
        type(key) is str and frozen(value) for key, value in mapping.items()
    )


def _kept_in_seed(value: object) -> bool:
    """Whether an object of the function's pickle is given to the arguments as itself: deeply
    immutable, so sharing it from call to call is sharing it within one pickle."""
    return frozen(value) or (type(value) is CodeType and code_frozen(value))


class _FunctionParts:
    """The deeply immutable parts of one unpickled function: :meth:`make` builds a new one."""

    __slots__ = (
        "annotations",
        "attributes",
        "closure",
        "code",
        "defaults",
        "doc",
        "kwdefaults",
        "module",
        "name",
        "qualname",
    )

    def __init__(self, function: FunctionType) -> None:
        self.code = function.__code__
        self.name = function.__name__
        self.qualname = function.__qualname__
        self.module = function.__module__
        self.doc = function.__doc__
        self.defaults = function.__defaults__
        kwdefaults = function.__kwdefaults__
        self.kwdefaults = None if kwdefaults is None else kwdefaults.copy()
        self.annotations = function.__annotations__.copy()
        self.attributes = function.__dict__.copy()
        self.closure: tuple[object, ...] | None = None
        if function.__closure__ is not None:
            self.closure = tuple(_contents(cell) for cell in function.__closure__)

    def make(self, namespace: dict[str, Any]) -> FunctionType:
        """A new function, as the pickle unpickles to, with ``namespace`` as its globals: its
        own cells, keyword defaults, annotations and attribute dict; the immutable parts
        shared."""
        closure = None
        if self.closure is not None:
            closure = tuple(
                CellType() if value is _EMPTY_CELL else CellType(value) for value in self.closure
            )
        function = FunctionType(self.code, namespace, self.name, self.defaults, closure)
        if self.kwdefaults is not None:
            function.__kwdefaults__ = self.kwdefaults.copy()
        function.__annotations__ = self.annotations.copy()
        if self.attributes:
            function.__dict__.update(self.attributes)
        function.__qualname__ = self.qualname
        function.__module__ = self.module
        function.__doc__ = self.doc
        return function


class FunctionTemplate:
    """The deeply immutable parts of one unpickled function, and of the by-value functions it
    reads as globals (a ``__main__`` helper, itself when recursive), their globals dicts, and
    the memo the pickle left.

    :meth:`build` makes new functions from them for every call, with new globals dicts (one per
    dict of the whole unpickle: functions of one client module share theirs there too) in which
    each such function is the new one; :meth:`call` unpickles a call's arguments with that
    memo. Made only by :meth:`load`.
    """

    __slots__ = (
        "anchors",
        "containers",
        "functions",
        "held",
        "links",
        "namespaces",
        "_namespace_of",
        "_prelude",
        "_seed",
        "_stand_in",
        "_withheld",
    )

    def __init__(self, graph: list[FunctionType], memo: list[object]) -> None:
        self.functions = tuple(_FunctionParts(function) for function in graph)
        namespaces: list[dict[str, Any]] = []
        namespace_of: list[int] = []
        for function in graph:
            shared = [i for i, seen in enumerate(namespaces) if seen is function.__globals__]
            if not shared:
                shared.append(len(namespaces))
                namespaces.append(function.__globals__)
            namespace_of.append(shared[0])
        links = []  # (namespace, name, function): a function of the graph among the globals
        containers: list[object] = []  # small lists, dicts, sets among them: copied per call
        held = []  # (namespace, name, container)
        copies = []
        for index, namespace in enumerate(namespaces):
            copy = namespace.copy()
            for name, value in namespace.items():
                for number, function in enumerate(graph):
                    if value is function:
                        links.append((index, name, number))
                        copy[name] = None  # set to the new function at every build
                if container_frozen(value):
                    if not any(value is known for known in containers):
                        containers.append(value)
                    number = next(i for i, known in enumerate(containers) if known is value)
                    held.append((index, name, number))
                    copy[name] = None  # set to a new copy at every build
            copies.append(copy)
        self.namespaces = tuple(copies)
        self._namespace_of = tuple(namespace_of)
        self.links = tuple(links)
        self.containers = tuple(containers)
        self.held = tuple(held)
        # (module name, attribute path, object) of what the unpickle found by name: checked
        # again before every call (anchored); set by load
        self.anchors: tuple[tuple[str, tuple[str, ...], object], ...] = ()
        self._stand_in = _StandIn()  # the function, at the bottom of the stack
        self._withheld = _StandIn()  # every other object of the memo not given as itself
        withheld = self._withheld
        self._seed = (
            self._stand_in,
            *(value if _kept_in_seed(value) else withheld for value in memo),
        )
        # the stand-in for the function, then each memo entry pushed and memoized in order
        # (the unpickler numbers them 0, 1, ... as the whole pickle's did), then dropped
        self._prelude = _NEXT_BUFFER + _MARK + (_NEXT_BUFFER + _MEMOIZE) * len(memo) + _POP_MARK

    @staticmethod
    def load(ops: bytes) -> FunctionTemplate | None:
        """The template of the function that ``ops`` (one complete pickle's opcodes, without
        protocol, framing and stop) unpickle to; None if they are not that, or if its state
        (or that of a by-value function among its globals) is not deeply immutable but for
        globals found by name (:class:`_NameRecorder`), or if the memo they leave is not
        numbered 0, 1, ... (then the calls are unpickled whole)."""
        try:
            unpickler = _NameRecorder(io.BytesIO(_PROTO + ops + _STOP), buffers=())
            function = unpickler.load()
            memo = unpickler.memo.copy()
        except Exception:  # not one pickle: the boundary was not the function's end
            return None
        found = unpickler.found
        graph = _graph(function, found)
        if graph is None or not all(map(memo.__contains__, range(len(memo)))):
            return None  # (numbered otherwise, the prelude would number it wrong)
        template = FunctionTemplate(graph, [memo[index] for index in range(len(memo))])
        named = {
            id(value)
            for member in graph
            for value in member.__globals__.values()
            if not frozen(value)
        }
        template.anchors = tuple(
            (module_name, path, value)
            for module_name, path, value in found
            if not path or id(value) in named  # every module it imported, the globals found
        )
        return template

    def build(self) -> FunctionType:
        """A new function, as the template's pickle unpickles to: its own globals dict, cells,
        keyword defaults, annotations and attribute dict, and new functions for the by-value
        functions among its globals; the immutable parts shared."""
        if not self.links and not self.held:
            return self.functions[0].make(self.namespaces[0].copy())
        namespaces = [namespace.copy() for namespace in self.namespaces]
        functions = [
            parts.make(namespaces[index])
            for parts, index in zip(self.functions, self._namespace_of, strict=True)
        ]
        for namespace, name, number in self.links:
            namespaces[namespace][name] = functions[number]
        if self.held:
            copies = [container.copy() for container in self.containers]  # type: ignore[attr-defined]
            for namespace, name, number in self.held:
                namespaces[namespace][name] = copies[number]
        return functions[0]

    def anchored(self) -> bool:
        """Whether every global found by name, and every module imported, when the template
        was made is what a whole unpickle would find now (``sys.modules``, then each attribute
        of the name): the engine's own modules may have been replaced or taken out since."""
        modules = sys.modules
        for module_name, path, value in self.anchors:
            found = modules.get(module_name, _MISSING)
            for part in path:
                try:
                    found = getattr(found, part, _MISSING)
                except Exception:  # a module's __getattr__ may raise anything
                    return False
            if found is not value:
                return False
        return True

    def call(self, pickled: bytes, start: int) -> tuple[FunctionType, Any, Any] | None:
        """``(f, args, kwargs)`` from the second frame of a call pickle, at ``start`` (the
        arguments' opcodes, ``TUPLE3``, ``MEMOIZE``, ``STOP``), run after the prelude as one
        pickle framed like the original, so every opcode reads what it would have read in it;
        None (unpickle the call whole) if it fails, leaves anything but
        ``(function, args, kwargs)``, or keeps a stand-in anywhere. Opcodes that read no memo
        entry (no byte of one) need no prelude but the function's stand-in. A global found by
        name that a whole unpickle would find otherwise now (:meth:`anchored`): None too."""
        if self.anchors and not self.anchored():
            return None
        arguments = pickled[start:]
        prelude = self._prelude if _GETS.search(arguments) else _NEXT_BUFFER
        size = (len(prelude) + len(arguments)).to_bytes(8, "little")
        data = b"".join((_FRAMED, size, prelude, arguments))
        stand_in, withheld = self._stand_in, self._withheld
        held = sys.getrefcount(stand_in), sys.getrefcount(withheld)
        try:
            loaded = pickle.loads(data, buffers=self._seed)
        except Exception:
            return None
        if type(loaded) is not tuple or len(loaded) != 3 or loaded[0] is not stand_in:
            return None
        if (sys.getrefcount(stand_in) - 1, sys.getrefcount(withheld)) != held:
            return None  # an argument holds a stand-in: an object of the function's part
        return self.build(), loaded[1], loaded[2]


def _contents(cell: CellType) -> object:
    try:
        return cell.cell_contents
    except ValueError:
        return _EMPTY_CELL


class _NameRecorder(pickle.Unpickler):
    """An unpickler that notes what it finds by name: each ``(module, qualified name)`` a
    global opcode names, and each module cloudpickle's ``subimport`` imports, with the object
    found (``found``: module name, attribute path, object; an empty path for a module)."""

    def __init__(self, file: io.BytesIO, *, buffers: tuple[()]) -> None:
        super().__init__(file, buffers=buffers)
        self.found: list[tuple[str, tuple[str, ...], object]] = []

    def find_class(self, module_name: str, name: str) -> Any:
        value = super().find_class(module_name, name)
        if value is _subimport:
            return self._subimport
        self.found.append((module_name, tuple(name.split(".")), value))
        return value

    def _subimport(self, name: str) -> object:
        module = _subimport(name)
        self.found.append((name, (), module))
        return module


def _by_name(value: object, found: list[tuple[str, tuple[str, ...], object]]) -> bool:
    """Whether ``value`` is one of the objects the unpickle found by name (a module, a module's
    function, builtin function or class): the same object for every call while
    :meth:`FunctionTemplate.anchored` holds, as a whole unpickle would find it."""
    return any(value is item for _, _, item in found)


_MAX_FUNCTIONS: Final = 9  # the function and the by-value functions a template rebuilds with it


def _graph(
    function: object, found: list[tuple[str, tuple[str, ...], object]]
) -> list[FunctionType] | None:
    """``function`` and the by-value functions among its globals, and among theirs (each
    once, at most ``_MAX_FUNCTIONS``), if every one is :func:`_immutable_function` with the
    others as globals; else None."""
    if type(function) is not FunctionType:
        return None
    graph: list[FunctionType] = [function]
    for member in graph:  # grows as it goes
        for value in member.__globals__.values():
            if type(value) is not FunctionType or _by_name(value, found):
                continue
            if not any(value is known for known in graph):
                if len(graph) >= _MAX_FUNCTIONS:
                    return None
                graph.append(value)
    if all(_immutable_function(member, found, graph) for member in graph):
        return graph
    return None


def _immutable_function(
    function: object,
    found: list[tuple[str, tuple[str, ...], object]] | None = None,
    graph: list[FunctionType] | None = None,
) -> bool:
    """Whether ``function`` is a plain function whose state is deeply immutable (the module
    doc), its globals' ``__builtins__`` aside (the interpreter's, set by every unpickle), those
    ``found`` by name (see :class:`_NameRecorder`) and the functions of the ``graph`` rebuilt
    with it, and whose keyword defaults and annotations are not one dict (a template would part
    them)."""
    if type(function) is not FunctionType:
        return False
    if not code_frozen(function.__code__) or getattr(function, "__type_params__", None):
        return False
    namespace = function.__globals__
    if type(namespace) is not dict or not all(
        type(key) is str
        and (
            frozen(value)
            or (key == "__builtins__" and any(value is b for b in _BUILTINS))
            or (found is not None and _by_name(value, found))
            or (graph is not None and any(value is member for member in graph))
            or container_frozen(value)
        )
        for key, value in namespace.items()
    ):
        return False
    closure = function.__closure__
    if closure is not None and not all(
        frozen(value) for value in map(_contents, closure) if value is not _EMPTY_CELL
    ):
        return False
    kwdefaults = function.__kwdefaults__
    annotations = function.__annotations__
    return (
        frozen(function.__defaults__)
        and (kwdefaults is None or (_frozen_items(kwdefaults) and kwdefaults is not annotations))
        and _frozen_items(annotations)
        and _frozen_items(function.__dict__)
        and type(function.__name__) is str
        and type(function.__qualname__) is str
        and frozen(function.__module__)
        and frozen(function.__doc__)
    )


class FunctionTemplates:
    """One thread's templates, by the bytes of the function's frame (at most ``limit``, the
    least recently used dropped first); a frame that gave no template is remembered too, so
    its calls are unpickled whole without trying again.

    Each is kept with the checksum (CRC-32) of the call pickle up to the function's end: the
    same function bytes always give the same one, so a call's checksum is checked by going on
    from it over the arguments alone (``zlib.crc32(rest, head)`` is the checksum of the two
    in turn), not over the function's bytes again: the same check, for the arguments' bytes
    only."""

    def __init__(self, limit: int = TEMPLATES_KEPT) -> None:
        self.limit = limit
        self._entries: dict[bytes, tuple[FunctionTemplate | None, int]] = {}
        self.made = 0  # templates made (for tests)
        self.used = 0  # calls unpacked through a template (for tests)

    def __len__(self) -> int:
        return len(self._entries)

    def load_call(
        self, pickled: bytes, start: int, end: int, crc: int | None = None
    ) -> tuple[FunctionType, Any, Any] | None:
        """``(f, args, kwargs)`` of the call pickle at ``pickled[start:]`` framed in two by a
        client, ``end`` its :func:`function_end`; None for a function the template refused,
        and for arguments the template cannot read (the module doc). ``crc``: the checksum
        the frame carries, checked here (None for a mismatch, and nothing is kept); None: the
        caller checked it."""
        key = pickled[start + _FIRST : end]
        entries = self._entries
        entry = entries.pop(key, None)
        if entry is None:
            head = zlib.crc32(memoryview(pickled)[start:end])
            if crc is not None and zlib.crc32(memoryview(pickled)[end:], head) != crc:
                return None  # the general way names the failure
            template = FunctionTemplate.load(key)
            if template is not None:
                self.made += 1
            while len(entries) >= self.limit:
                del entries[next(iter(entries))]
            entry = (template, head)
        elif crc is not None and zlib.crc32(memoryview(pickled)[end:], entry[1]) != crc:
            entries[key] = entry
            return None
        entries[key] = entry
        template = entry[0]
        if template is None:
            return None
        call = template.call(pickled, end + _FRAME_HEADER)
        if call is not None:
            self.used += 1
        return call


_local = threading.local()


def thread_templates() -> FunctionTemplates:
    """This thread's templates (made at its first call)."""
    templates: FunctionTemplates | None = getattr(_local, "templates", None)
    if templates is None:
        templates = _local.templates = FunctionTemplates()
    return templates
