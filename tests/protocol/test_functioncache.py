"""corral.protocol.functioncache: a call pickle reused from a kept function pickle holds, opcode
for opcode, what cloudpickle writes afresh, whatever changed in between (framed in two, the
function's part first, for the engine's templates); and it is reused."""

from __future__ import annotations

import gc
import threading
import weakref
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.protocol import functioncache, functiontemplates
from corral.protocol.serialize import (
    _Pickler,
    _thread_pickler,
    _wrap_large_bytes,
    pack_apply_message,
    unpack_apply_message,
)
from tests.protocol.pickles import script, unframed

THRESHOLD = 1024


def fresh(f: Callable[..., Any], args: tuple[Any, ...] = (), kwargs: Any = None) -> list[bytes]:
    """The frames a new pickler writes for the call now (no kept pickle anywhere)."""
    kwargs = kwargs or {}
    wrapped: dict[int, Any] = {}
    args = tuple(_wrap_large_bytes(arg, THRESHOLD, wrapped) for arg in args)
    kwargs = {k: _wrap_large_bytes(v, THRESHOLD, wrapped) for k, v in kwargs.items()}
    return [bytes(frame) for frame in _Pickler().dump_frames((f, args, kwargs), THRESHOLD)]


def packed(f: Callable[..., Any], args: tuple[Any, ...] = (), kwargs: Any = None) -> list[bytes]:
    return [bytes(frame) for frame in pack_apply_message(f, args, kwargs or {})]


def opcodes(frames: list[bytes]) -> list[bytes]:
    """``frames`` with the framing of the pickle taken out (its checksum checked): what an
    unpickler reads, whether the call was framed in one or, from a kept pickle, in two."""
    head, rest = frames[0], frames[1:]
    pickled = head[8:]
    assert zlib.crc32(pickled) == int.from_bytes(head[4:8], "little")
    return [head[:4] + unframed(pickled), *rest]


def same(reused: list[bytes], afresh: list[bytes]) -> bool:
    """Whether a call packed through the cache holds what a fresh pickle holds: the same bytes,
    or the same opcodes framed in two with the function's part first."""
    if reused == afresh:
        return True
    end = functiontemplates.function_end(reused[0], 8)
    return end is not None and opcodes(reused) == opcodes(afresh)


def reused() -> int:
    return _thread_pickler().reused


def check(f: Callable[..., Any], args: tuple[Any, ...] = (), kwargs: Any = None) -> int:
    """Pack the call four times, each the same as a fresh pickle; how many were reused."""
    before = reused()
    for _ in range(4):
        assert same(packed(f, args, kwargs), fresh(f, args, kwargs))
    return reused() - before


def test_a_no_op_is_reused_and_identical() -> None:
    f = script("def one():\n    return 1\n")["one"]
    assert check(f) == 2  # noted, then its fingerprint taken, then kept from its third call
    g, args, kwargs = unpack_apply_message(pack_apply_message(f, (), {}))
    assert g() == 1 and args == () and kwargs == {}


def test_small_arguments_of_every_kind() -> None:
    f = script("def f(*a, **k):\n    return a, k\n")["f"]
    args = (1, "x", [1, 2, {"a": (3, 4)}], None, 2.5, b"y" * 500, True, -(10**30))
    kwargs = {"key": {1, 2}, "other": frozenset({"a"}), "text": "\u00e9" * 100}
    assert check(f, args, kwargs) == 2
    g, got_args, got_kwargs = unpack_apply_message(pack_apply_message(f, args, kwargs))
    assert got_args == args and got_kwargs == kwargs and g(1) == ((1,), {})


def test_large_or_other_arguments_are_pickled_afresh_with_the_function() -> None:
    """Buffers, arrays, functions, objects: pickled afresh (equal bytes, nothing reused), so
    that arguments costing more than the function are never pickled twice."""
    f = script("def f(*a, **k):\n    return a, k\n")["f"]
    array = np.arange(10000, dtype=np.float64)
    for args, kwargs in [
        ((array,), {}),
        ((b"y" * 5000, bytearray(b"z" * 3000)), {}),
        ((), {"view": memoryview(b"w" * 4000)}),
        ((list(range(30000)),), {}),  # in-band, over one frame
        (("x" * 20000,), {}),
        ((f,), {}),
        ((ValueError("an object"),), {}),
    ]:
        assert check(f, args, kwargs) == 0
    frames = pack_apply_message(f, (array,), {})
    assert len(frames) > 1  # the array still travels out of band, after the pickle
    assert np.array_equal(unpack_apply_message(frames)[1][0], array)
    assert check(f, (1,)) >= 2  # kept all along for small calls


def test_objects_shared_with_the_arguments_stay_shared() -> None:
    namespace = script(
        "T = (1, 'shared', (2, 3))\n"
        "def make():\n    s = 'cell'\n    def f(x, y=None):\n        return T, s, x\n    return f\n"
        "f = make()\n"
    )
    f, shared = namespace["f"], namespace["T"]
    cell = f.__closure__[0].cell_contents
    assert check(f, (shared, cell)) >= 2
    g, args, _ = unpack_apply_message(pack_apply_message(f, (shared, cell), {}))
    globals_tuple, closure_value, _ = g(0)
    assert args[0] is globals_tuple and args[1] is closure_value


def test_another_function_with_the_same_globals_shares_them() -> None:
    namespace = script("def f(g):\n    return g\ndef h():\n    return 2\n")
    f, h = namespace["f"], namespace["h"]
    assert check(f, (h,)) == 0  # a function argument: pickled afresh, as one pickle
    g, (h2,), _ = unpack_apply_message(pack_apply_message(f, (h,), {}))
    assert g.__globals__ is h2.__globals__


@pytest.mark.parametrize(
    "change",
    [
        "ns['X'] = 2",
        "ns['X'] = 1.0",  # equal to 1, pickled differently
        "ns['X'] = True",
        "ns['Y'] = 5",  # a name the code reads, absent until now
        "del ns['X']",
        "ns['__file__'] = 'other.py'",  # stored with the globals by cloudpickle
        "f.__defaults__ = (7,)",
        "f.__kwdefaults__ = {'k': 3}",
        "f.__dict__['tag'] = 'a'",
        "f.__doc__ = 'documented'",
        "f.__name__ = 'renamed'",
        "f.__qualname__ = 'renamed'",
        "f.__annotations__['x'] = 'int'",
        "f.__code__ = ns['other'].__code__",
        "ns['set_cell'](9)",  # a closure cell assigned through nonlocal
    ],
)
def test_any_change_to_what_the_function_reads_is_sent(change: str) -> None:
    ns = script(
        "X = 1\n"
        "def make():\n"
        "    c = 0\n"
        "    def f(x=1, *, k=2):\n        return X + x + k + c + (Y if X > 100 else 0)\n"
        "    def set_cell(v):\n        nonlocal c\n        c = v\n"
        "    def other(x=1, *, k=2):\n        return c - 1\n"
        "    return f, set_cell, other\n"
        "f, set_cell, other = make()\n"
    )
    f = ns["f"]
    assert check(f, (1,)) >= 2
    exec(change, {"ns": ns, "f": f})  # noqa: S102 - the change under test
    assert packed(f, (1,)) == fresh(f, (1,))  # pickled afresh: the new state is sent
    assert check(f, (1,)) == 4  # and kept again from the next call on


@pytest.mark.parametrize(
    "change",
    [
        "ns['X'] = 2",
        "ns['X'] = 1.0",
        "f.__defaults__ = (5,)",
        "f.__kwdefaults__ = {'k': 3}",
        "f.__code__ = ns['other'].__code__",
        "ns['set_cell'](9)",
    ],
)
def test_a_call_without_arguments_is_kept_whole_until_a_change(change: str) -> None:
    """A kept function called without arguments is sent as the same frame every time (made
    once), calls with arguments in between are not confused with it, and any change to what
    the function reads is sent."""
    ns = script(
        "X = 1\n"
        "def make():\n"
        "    c = 0\n"
        "    def f(x=1, *, k=2):\n        return X + x + k + c\n"
        "    def set_cell(v):\n        nonlocal c\n        c = v\n"
        "    def other(x=1, *, k=2):\n        return c - 1\n"
        "    return f, set_cell, other\n"
        "f, set_cell, other = make()\n"
    )
    f = ns["f"]
    assert check(f) >= 2
    assert pack_apply_message(f, (), {})[0] is pack_apply_message(f, (), {})[0]
    assert same(packed(f, (1,)), fresh(f, (1,)))
    assert same(packed(f), fresh(f))
    exec(change, {"ns": ns, "f": f})  # noqa: S102 - the change under test
    assert packed(f) == fresh(f)
    assert check(f) == 4
    assert unpack_apply_message(pack_apply_message(f, (), {}))[0]() == f()


def test_a_function_reading_a_small_list_sends_it_as_it_is_at_each_call() -> None:
    ns = script("STATE = [1]\ndef f():\n    return sum(STATE)\n")
    f = ns["f"]
    assert check(f) == 2  # kept: its items are listed in the fingerprint at every call
    ns["STATE"].append(41)
    assert same(packed(f), fresh(f))
    g, _, _ = unpack_apply_message(pack_apply_message(f, (), {}))
    assert g() == 42


def test_a_function_reading_mutable_state_is_never_reused() -> None:
    ns = script("STATE = [[1]]\ndef f():\n    return sum(STATE[0])\n")
    f = ns["f"]
    assert check(f) == 0
    ns["STATE"][0].append(41)
    assert packed(f) == fresh(f)
    g, _, _ = unpack_apply_message(pack_apply_message(f, (), {}))
    assert g() == 42


@pytest.mark.parametrize(
    "value",
    [
        "[[1]]",
        "{'a': [1]}",
        "{1: {2}}",
        "[1] * 33",  # more items than a fingerprint lists
        "(1, [2])",
        "1j",
        "...",
        "type('Own', (), {})",
        "__import__('typing').Optional[int]",
        "list[type('Own', (), {})]",
        "__import__('functools').partial(print)",
    ],
)
def test_globals_that_are_not_deeply_immutable_are_never_reused(value: str) -> None:
    ns = script(f"V = {value}\ndef f():\n    return V\n")
    assert check(ns["f"]) == 0


@pytest.mark.parametrize(
    "value", ["int", "type(None)", "list[int]", "dict[str, tuple[int, str]]", "int | None"]
)
def test_builtin_types_and_their_aliases_are_reused_and_identical(value: str) -> None:
    """``int``, ``list[int]``, ``int | None``: a global, or the annotations of a typed
    function (pickled afresh at every call before: 28 against 8 us a call)."""
    ns = script(
        f"V = {value}\ndef f():\n    return V\ndef g(x: {value}) -> {value}:\n    return x\n"
    )
    assert check(ns["f"]) == 2 and check(ns["g"], (1,)) == 2
    g, args, _ = unpack_apply_message(pack_apply_message(ns["g"], (1,), {}))
    assert g(*args) == 1 and g.__annotations__ == ns["g"].__annotations__


def test_a_typed_function_whose_annotation_changes_is_sent_changed() -> None:
    ns = script("def g(x: int) -> int:\n    return x\n")
    g = ns["g"]
    assert check(g, (1,)) == 2
    g.__annotations__["x"] = str
    assert same(packed(g, (1,)), fresh(g, (1,)))
    assert unpack_apply_message(pack_apply_message(g, (1,), {}))[0].__annotations__["x"] is str


def test_functions_pickled_by_reference_or_made_per_call_are_not_kept() -> None:
    assert check(len) == 0
    assert check(functioncache.by_value) == 0  # importable: pickled by name
    before = reused()
    for index in range(5):
        g = script(f"def g():\n    return {index}\n")["g"]
        assert packed(g) == fresh(g)  # a new function each time: pickled afresh
    assert reused() == before


def test_a_function_whose_globals_change_at_every_call_is_never_pickled_twice() -> None:
    ns = script("N = 0\ndef f():\n    return N\n")
    f, pickler = ns["f"], _thread_pickler()
    kept, before = pickler.kept, reused()
    for _ in range(10):
        ns["N"] += 1000  # a new int object each time
        assert packed(f) == fresh(f)
    assert pickler.kept == kept and reused() == before


def test_what_a_function_reads_is_not_kept_alive_by_the_pickler() -> None:
    """Only kept pickles hold their function (and its immutable state); a function noted or
    looked at, and anything mutable it reads, is freed as soon as the caller drops it."""

    class Payload(list[int]):  # a list that can be referred to weakly
        pass

    make = script("def make(p):\n    def f():\n        return p\n    return f\n")["make"]
    payload = Payload([1])
    f = make(payload)
    payload_ref, function_ref = weakref.ref(payload), weakref.ref(f)
    for _ in range(4):
        assert packed(f) == fresh(f)
    del f, payload
    gc.collect()
    assert payload_ref() is None and function_ref() is None


def test_the_budget_of_small_arguments() -> None:
    assert functioncache.small_arguments((), {})
    assert functioncache.small_arguments((1, "x" * 1000, [1.0] * 10), {"a": (None, b"x")})
    assert not functioncache.small_arguments(("x" * 5000,), {})  # 4 bytes a character
    assert not functioncache.small_arguments((list(range(100)),), {})  # too many to look at
    assert not functioncache.small_arguments(([[[[[[[[[[1] * 5] * 5] * 5]]]]]]],), {})
    assert not functioncache.small_arguments((), {"a": object()})
    assert not functioncache.small_arguments([1], {})  # args are a tuple


def test_each_thread_keeps_its_own() -> None:
    f = script("def f(x):\n    return x\n")["f"]
    failures: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for index in range(200):
                assert same(packed(f, (offset + index,)), fresh(f, (offset + index,)))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures and not any(thread.is_alive() for thread in threads)


def test_the_kept_pickles_are_bounded() -> None:
    for index in range(100):
        g = script(f"def g():\n    return {index}\n")["g"]
        packed(g)
        packed(g)
    pickler = _thread_pickler()
    assert len(pickler._calls) <= 32


atoms = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
frozen_values = (
    atoms
    | st.tuples(atoms, atoms)
    | st.tuples(st.tuples(atoms, atoms), atoms)
    | st.frozensets(st.integers(), max_size=3)
)
any_values = (
    frozen_values
    | st.lists(st.integers(), max_size=3)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["A", "B", "default"]), any_values), max_size=6))
def test_random_histories_of_changes(changes: list[tuple[str, Any]]) -> None:
    ns = script("A = 0\nB = 'b'\ndef f(x, d=0):\n    return (A, B, x, d)\n")
    f = ns["f"]
    for name, value in changes:
        if name == "default":
            f.__defaults__ = (value,)
        else:
            ns[name] = value
        for _ in range(2):
            assert same(packed(f, (value,)), fresh(f, (value,)))
    assert unpack_apply_message(pack_apply_message(f, (1,), {}))[0](1)[2] == 1


def test_fingerprints_compare_by_identity() -> None:
    assert functioncache.same((1, "a"), (1, "a"))
    assert not functioncache.same((1,), (1.0,))
    assert not functioncache.same((1,), (1, 2))
    assert functioncache.fingerprint(len) is None
    assert functioncache.fingerprint(functioncache.by_value) is None  # importable


def test_frame_body_refuses_what_is_not_one_frame() -> None:
    assert functioncache.frame_body(memoryview(b"\x80\x05).")) == b")"
    assert functioncache.frame_body(memoryview(b"garbage")) is None
    assert (
        functioncache.frame_body(memoryview(b"\x80\x05\x95" + (99).to_bytes(8, "little") + b"}."))
        is None
    )
