"""Globals that a by-value function's pickle names instead of writing: when they may be reused.

A function defined in ``__main__`` that reads ``math`` (``import math``), ``sqrt`` (``from math
import sqrt``), ``join`` (``from os.path import join``) or ``OrderedDict`` carries those globals
in its pickle by name: cloudpickle writes a module as ``subimport("math")`` and a module's
function, class or builtin function as one global opcode (``math sqrt``), which the engine
resolves in its own modules. Such a pickle stays the same bytes as long as everything the
pickler consulted to choose and write the name is unchanged, and this module lists exactly that,
for :func:`corral.protocol.functioncache.fingerprint` to compare by identity at every call
(:func:`name_parts`) and :func:`~corral.protocol.functioncache.reusable` to accept once
(:func:`named`):

- a module ``m`` (exactly ``ModuleType``): its ``__name__``, ``sys.modules``'s entry for that
  name (cloudpickle writes it by name only while the name is there) and cloudpickle's
  by-value registry (:func:`registry_token`: ``register_pickle_by_value`` turns a module, and
  every function and class of it, into a by-value pickle), and ``__package__``. With a
  package (``numpy``) cloudpickle also writes every imported submodule whose name the
  function's code can spell (its ``_cloudpickle_submodules``: ``numpy.linalg`` for
  ``np.linalg.norm``), found by a scan of all of ``sys.modules`` (about 50 us over 370
  modules); so for a package the fingerprint holds the names of ``sys.modules``, in order, as
  one object while they do not change (:func:`modules_token`: comparing them is one list
  comparison, 1.5 us), and each such submodule and its ``__name__``;
- a builtin function of a module (``math.sqrt``: ``builtin_function_or_method`` whose
  ``__self__`` is a module): its ``__module__`` (settable), that module's ``sys.modules`` entry
  and the attribute of it by the function's name (the pickler checks that it finds the same
  object), and ``copyreg.dispatch_table``'s entry for the type (a reducer there would be used
  instead); its name is the interpreter's, fixed;
- a function or class of an importable module (a plain ``FunctionType`` not written by value,
  or a class whose metaclass is ``type``): its ``__qualname__`` and ``__module__`` (both
  settable, but for a class of C, whose ``__qualname__`` is made afresh from its fixed name at
  every read), the module's ``sys.modules`` entry, its ``__name__`` (the registry is looked up
  by it) and the attribute the qualified name leads to, and the registry.

- a callable object of a C class (a numpy ufunc, ``np.sum``): the reducer the pickler would
  use (``copyreg``'s for the class, else the object's ``__reduce_ex__``), called at every call,
  the name it gives, the object's ``__module__`` and what the name leads to there.

With any of these the fingerprint also holds :func:`registry_token` (cloudpickle's by-value
registry, and ``copyreg``'s extension registry, by which a name may be written as a code).
Strings are compared by identity: the pickler memoizes the names it writes, so an equal but
other string object could be written as a reference to an earlier equal object of the pickle.
Anything else a function reads (an instance, ``functools.partial``, a ``__main__`` class or
function) is not by name, and keeps its function pickled afresh
(:mod:`corral.protocol.functioncache`). The engine's side of the same rule is in
:mod:`corral.protocol.functiontemplates` (its anchors).
"""

from __future__ import annotations

import copyreg
import sys
from types import BuiltinFunctionType, CodeType, FunctionType, ModuleType
from typing import Any, Final

import cloudpickle  # type: ignore[import-untyped]

__all__ = ["name_parts", "named", "registry_token", "resolve"]

_ABSENT: Final = object()  # an attribute or entry not there
_FIXED: Final = object()  # a name the interpreter makes afresh at each read from fixed C data
_IMMUTABLE_TYPE: Final = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: no attribute of the class settable
_HEAP_TYPE: Final = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made at run time (its names settable)
# cloudpickle's set of module names registered by value (register_pickle_by_value), read at every
# call: the public list_registry_pickle_by_value() copies it
_REGISTRY: Final[set[str]] = cloudpickle.cloudpickle._PICKLE_BY_VALUE_MODULES
_PICKLER_TABLE: Final[dict[type, Any]] = cloudpickle.Pickler._dispatch_table
_TYPES_BY_REDUCER: Final[dict[type, str]] = cloudpickle.cloudpickle._BUILTIN_TYPE_NAMES
_EXTENSIONS: Final[dict[tuple[str, str], int]] = copyreg._extension_registry  # type: ignore[attr-defined]
# (frozenset of the registry, dict of the extensions), typed as a tuple of any length: compiled
# by mypyc, a fixed-length tuple is unboxed, and every return would be a new tuple object
_snapshot: tuple[object, ...] = (frozenset(), {})
# the names of sys.modules (modules_token) and the submodule names found in them, by package
# and code names (submodule_names)
_modules_state: tuple[list[str], dict[tuple[str, tuple[str, ...]], tuple[str, ...]]] = ([], {})


def registry_token() -> tuple[object, ...]:
    """Copies of cloudpickle's by-value registry and of ``copyreg``'s extension registry
    (``copyreg.add_extension``: a global so registered is written as a code, not by name),
    the same object while both are equal to them: a fingerprint holding it compares by
    identity, and any registration (or removal) since gives another object."""
    global _snapshot
    registry, extensions = _snapshot
    if _REGISTRY != registry or _EXTENSIONS != extensions:
        _snapshot = frozenset(_REGISTRY), dict(_EXTENSIONS)
    return _snapshot


def resolve(module_name: object, qualified_name: object) -> object:
    """What ``sys.modules[module_name]`` and then each attribute of the dotted
    ``qualified_name`` lead to (``_ABSENT`` if either is missing or not a string): the object a
    pickler checks it finds, and an unpickler finds."""
    if type(module_name) is not str or type(qualified_name) is not str:
        return _ABSENT
    found = sys.modules.get(module_name, _ABSENT)
    for part in qualified_name.split("."):
        if found is _ABSENT:
            break
        try:
            found = getattr(found, part, _ABSENT)
        except Exception:  # a module's __getattr__ may raise anything
            return _ABSENT
    return found


def name_parts(values: list[object], parts: list[object], code: CodeType) -> None:
    """Append to ``parts`` (a fingerprint being made) what the pickler consults to write each of
    ``values`` (the globals of a function of ``code``) by name, as listed in the module doc;
    nothing for the values that are not of those kinds. One call per pickled call: kept
    short."""
    token_added = False
    modules = sys.modules
    for value in values:
        kind = type(value)
        if kind is ModuleType:
            name = getattr(value, "__name__", _ABSENT)
            package = getattr(value, "__package__", _ABSENT)
            parts += (kind, name, modules.get(name, _ABSENT) if type(name) is str else _ABSENT)
            parts.append(package)
            if package and type(name) is str:
                token = modules_token()
                parts.append(token)
                for submodule in submodule_names(token, name, code.co_names):
                    found = modules.get(submodule, _ABSENT)
                    parts += (found, getattr(found, "__name__", _ABSENT))
                parts.append(_ABSENT)  # closes the list
        elif kind is BuiltinFunctionType:
            module_name = getattr(value, "__module__", _ABSENT)
            self = value.__self__  # type: ignore[attr-defined]
            found = resolve(module_name, value.__name__)  # type: ignore[attr-defined]
            parts += (kind, self, module_name, found, copyreg.dispatch_table.get(kind, _ABSENT))
        elif kind is FunctionType or kind is type:
            qualified_name = getattr(value, "__qualname__", _ABSENT)
            module_name = getattr(value, "__module__", _ABSENT)
            module = modules.get(module_name, _ABSENT) if type(module_name) is str else _ABSENT
            module_own_name = getattr(module, "__name__", _ABSENT)
            found = resolve(module_name, qualified_name)
            if kind is type and not value.__flags__ & _HEAP_TYPE:  # type: ignore[attr-defined]
                qualified_name = _FIXED  # a C type's, made afresh from its fixed tp_name
            parts += (kind, qualified_name, module_name, module, module_own_name, found)
        elif callable(value) and kind.__flags__ & _IMMUTABLE_TYPE and type(kind) is type:
            parts += _reduced_parts(kind, value)
        else:
            continue
        if not token_added:
            parts.append(registry_token())
            token_added = True


def modules_token() -> list[str]:
    """The names in ``sys.modules``, in order, as one list that is the same object while they
    are the same (a few microseconds per call for hundreds of modules: no Python loop); a
    fingerprint holding it compares by identity. A new list at every call if a name is not a
    string (cloudpickle's scan of them fails): never reused then."""
    global _modules_state
    names = list(sys.modules)
    known = _modules_state[0]
    if names == known:
        return known
    if not all(type(name) is str for name in names):
        names = [_ABSENT]  # type: ignore[list-item]
    _modules_state = names, {}  # one assignment: threads see both or neither
    return names


def submodule_names(token: list[str], package: str, code_names: tuple[str, ...]) -> tuple[str, ...]:
    """The names of ``token`` (:func:`modules_token`) below ``package`` all of whose parts a
    code naming ``code_names`` can spell (``numpy.linalg`` for ``np.linalg.norm``), in order:
    the submodules cloudpickle writes with a function that reads the package (its
    ``_cloudpickle_submodules``). Kept while the token is the present one."""
    names, kept = _modules_state
    key = (package, code_names)
    found = kept.get(key) if names is token else None
    if found is None:
        prefix = package + "."
        spelled = set(code_names)
        found = tuple(
            name
            for name in token
            if type(name) is str
            and name.startswith(prefix)
            and not set(name[len(prefix) :].split(".")) - spelled
        )
        if names is token:
            kept[key] = found
    return found


def _reduced_parts(kind: type, value: object) -> tuple[object, ...]:
    """What the pickler consults to write a callable object of a C class (a numpy ufunc or
    ``np.sum``) by name: the reducer it would call (``copyreg``'s for the class, or the
    object's own ``__reduce_ex__``), called now, and when that gives a name, the object's
    ``__module__`` and what the name leads to there. A name that is a new string at every
    call (a ufunc's) is held by value, interned, after a marker: no earlier object of the pickle
    can be it, so it is always written in full; any other string by identity."""
    reducer = _PICKLER_TABLE.get(kind, _ABSENT)
    if reducer is _ABSENT:
        reducer = copyreg.dispatch_table.get(kind, _ABSENT)
    try:
        reduced = value.__reduce_ex__(5) if reducer is _ABSENT else reducer(value)
    except Exception:
        return (kind, reducer, _ABSENT)
    if type(reduced) is not str:
        return (kind, reducer, _ABSENT)
    made = sys.getrefcount(reduced) == 2  # this name and the argument: made for this call
    module_name = getattr(value, "__module__", _ABSENT)
    found = resolve(module_name, reduced)  # (a look-up may keep a reference: counted before)
    if made:
        return (kind, reducer, _FIXED, sys.intern(reduced), module_name, found)
    return (kind, reducer, reduced, module_name, found)


def _registered(module_name: object) -> bool:
    """Whether cloudpickle writes the module of that name (and what it holds) by value: it or a
    package above it is in the registry. A name that is not a string counts as registered."""
    if type(module_name) is not str:
        return True
    name = module_name
    while True:
        if name in _REGISTRY:
            return True
        parent = name.rpartition(".")[0]
        if not parent:
            return False
        name = parent


def _module_by_name(value: object) -> bool:
    """Whether cloudpickle writes the module ``value`` as ``subimport(its name)``."""
    name = getattr(value, "__name__", None)
    return (
        type(value) is ModuleType
        and type(name) is str
        and name in sys.modules
        and not _registered(name)
    )


def named(value: object, code: CodeType) -> bool:
    """Whether cloudpickle writes ``value`` by name now, and only from what :func:`name_parts`
    lists (the module doc): a module in ``sys.modules`` that is not a package nor registered
    by value; a module's builtin function found again under its module and name; a function
    or plain class found again under its module and qualified name, not of ``__main__`` nor
    of a module registered by value; a callable object of a C class that its reducer names,
    found again under its ``__module__`` and that name."""
    kind = type(value)
    if kind is ModuleType:
        if not _module_by_name(value):
            return False
        package = getattr(value, "__package__", None)
        if not package:
            return True
        module: Any = value
        return type(package) is str and all(
            _module_by_name(sys.modules.get(name))
            for name in submodule_names(modules_token(), module.__name__, code.co_names)
        )
    if kind is BuiltinFunctionType:
        return (
            type(value.__self__) is ModuleType  # type: ignore[attr-defined]
            and kind not in copyreg.dispatch_table
            and kind not in _PICKLER_TABLE
            and resolve(getattr(value, "__module__", None), value.__name__) is value  # type: ignore[attr-defined]
        )
    if kind is FunctionType or kind is type:
        if kind is type and value in _TYPES_BY_REDUCER:
            return False  # types of the types module: cloudpickle's own reduction
        qualified_name = getattr(value, "__qualname__", None)
        module_name = getattr(value, "__module__", None)
        if type(qualified_name) is not str or module_name == "__main__":
            return False
        module = sys.modules.get(module_name) if type(module_name) is str else None
        return (
            type(module) is ModuleType
            and resolve(module_name, qualified_name) is value
            and not _registered(getattr(module, "__name__", None))
        )
    if callable(value) and kind.__flags__ & _IMMUTABLE_TYPE and type(kind) is type:
        if issubclass(kind, type):
            return False  # a class of a C metaclass: cloudpickle reduces every class itself
        parts = _reduced_parts(kind, value)
        return (
            len(parts) > 3
            and parts[-1] is value
            and type(parts[-2]) is str
            and parts[-2] != "__main__"
        )
    return False
