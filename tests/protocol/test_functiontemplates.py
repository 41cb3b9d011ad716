"""corral.protocol.functiontemplates: a call the client framed from a kept function pickle is
unpacked on the engine exactly as a whole unpickle of it would be (values, types, sharing
between the function and its arguments), with a new function each time; a wrong boundary or
anything unusual is unpickled whole; the templates are bounded and kept per thread."""

from __future__ import annotations

import io
import pickle
import pickletools
import threading
import zlib
from collections.abc import Callable
from types import CodeType, FunctionType
from typing import Any

import cloudpickle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import SerializationError
from corral.protocol import functiontemplates
from corral.protocol.functiontemplates import FunctionTemplates, function_end, thread_templates
from corral.protocol.serialize import pack_apply_message, unpack_apply_message
from tests.protocol.pickles import script, unframed

HEADER = 8  # marker, version, CRC-32 before the pickle (corral.protocol.serialize)


def kept(f: Callable[..., Any], args: tuple[Any, ...] = (), kwargs: Any = None) -> list[bytes]:
    """The frames the client sends for the call once the function's pickle is kept (framed in
    two); fails if it would not keep it."""
    for _ in range(3):
        frames = pack_apply_message(f, args, kwargs or {})
    frames = [bytes(frame) for frame in pack_apply_message(f, args, kwargs or {})]
    assert function_end(frames[0], HEADER) is not None, "the client did not frame it in two"
    return frames


def whole(frames: list[bytes]) -> tuple[Any, Any, Any]:
    """The call as one unpickle of all of it reads it (what an engine without templates gets)."""
    loaded = pickle.loads(frames[0][HEADER:])
    assert isinstance(loaded, tuple)
    return loaded


def sharing(value: object, seen: dict[int, int], depth: int = 0) -> object:
    """``value`` as nested tuples in which an object met before is its first position: two
    graphs have the same shape iff they hold equal values shared in the same places."""
    if id(value) in seen:
        return ("seen", seen[id(value)])
    kind = type(value)
    if kind in (int, float, bool, type(None)):
        return (kind.__name__, repr(value))
    seen[id(value)] = len(seen)
    if kind in (str, bytes):
        return (kind.__name__, value)
    if kind is CodeType:
        assert isinstance(value, CodeType)
        parts = (value.co_code, value.co_names, value.co_varnames, value.co_consts)
        return ("code", sharing(parts, seen, depth + 1))
    if kind in (tuple, list):
        assert isinstance(value, tuple | list)
        return (kind.__name__, tuple(sharing(item, seen, depth + 1) for item in value))
    if kind in (set, frozenset):
        assert isinstance(value, set | frozenset)
        return (kind.__name__, tuple(sorted(map(repr, value))))
    if kind is dict:
        assert isinstance(value, dict)
        return ("dict", tuple((sharing(k, seen), sharing(v, seen)) for k, v in value.items()))
    if kind is FunctionType:
        assert isinstance(value, FunctionType)
        closure = tuple(map(_contents, value.__closure__ or ()))
        parts = [value.__code__, value.__name__, value.__qualname__, value.__module__]
        parts += [value.__doc__, value.__defaults__, value.__kwdefaults__, closure]
        parts += [value.__annotations__, dict(value.__dict__)]
        names = {k: v for k, v in value.__globals__.items() if k != "__builtins__"}
        return ("function", sharing((*parts, names), seen, depth + 1))
    return ("other", repr(value))


def _contents(cell: Any) -> object:
    try:
        return cell.cell_contents
    except ValueError:
        return "<an empty cell>"


def shape(call: tuple[Any, Any, Any]) -> object:
    return sharing(call, {})


def unpacked(frames: list[bytes]) -> tuple[Any, Any, Any]:
    return unpack_apply_message(frames)


SOURCE = """
X = 3
NAME = "name"
T = (1, "x", (2.5, None))
def no_op():
    return 1
def defaults(a, b=2, *, k=T, **rest):
    "a docstring"
    return a, b, k, rest
def reads(value):
    return value, X, NAME, T
def make():
    captured = ("cell", 7)
    count = 0
    def inner(step=1):
        nonlocal count
        count += step
        return captured, count
    return inner
counter = make()
def make_empty():
    def inner():
        return later
    result = inner
    if False:
        later = 1
    return result
empty_cell = make_empty()
def annotated(a: "int", b: "str" = "b") -> "tuple":
    return a, b
annotated.tag = "attribute"
lam = lambda *a, **k: (a, k)
def comprehension(n):
    return [i * X for i in range(n)], {k: k for k in "ab"}
"""

FUNCTIONS = ["no_op", "defaults", "reads", "counter", "annotated", "lam", "comprehension"]
ARGUMENTS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}),
    ((1,), {}),
    ((1, 2), {"k": 3}),
    (("name", "name", "x"), {}),  # a string of the function's pickle, and repeated
    ((T := (1, "x", (2.5, None)), T, [T]), {}),
    (([1, [2, [3]], {"a": (4,)}], {1, 2}, frozenset({"z"})), {"text": "\u00e9" * 40}),
    ((b"bytes" * 20, -(10**40), 1.5, None, True), {"rest": {"nested": [None]}}),
    ((104, 103, 106, "ghj"), {"b": "hjg"}),  # bytes of the memo-reading opcodes as data
]


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("arguments", ARGUMENTS, ids=range(len(ARGUMENTS)))
def test_the_same_call_as_a_whole_unpickle(
    name: str, arguments: tuple[tuple[Any, ...], dict[str, Any]]
) -> None:
    f = script(SOURCE)[name]
    args, kwargs = arguments
    frames = kept(f, args, kwargs)
    templates = thread_templates()
    before = templates.used
    for _ in range(3):
        got, reference = unpacked(frames), whole(frames)
        assert shape(got) == shape(reference)
        assert got[0] is not reference[0] and got[0] is not unpacked(frames)[0]
    assert templates.used > before


def test_an_argument_shared_with_the_function_is_its_object() -> None:
    """Sharing between the function and its arguments is kept, as in one pickle: a name the
    code holds, its defaults tuple, a global's value, a closure cell's contents."""
    ns = script(SOURCE)
    f = ns["defaults"]
    frames = kept(f, (ns["T"], "a"), {"k": f.__defaults__})
    g, args, kwargs = unpacked(frames)
    assert args[0] is g.__kwdefaults__["k"]
    assert kwargs["k"] is g.__defaults__
    reference, reference_args, reference_kwargs = whole(frames)
    assert (next(iter(kwargs)) is g.__code__.co_varnames[2]) == (
        next(iter(reference_kwargs)) is reference.__code__.co_varnames[2]
    )
    assert shape((g, args, kwargs)) == shape((reference, reference_args, reference_kwargs))
    captured = ns["counter"].__closure__[0].cell_contents
    g, args, _ = unpacked(kept(ns["counter"], (captured,)))
    assert args[0] is g.__closure__[0].cell_contents


def test_a_mutable_object_of_the_function_given_as_an_argument_is_unpickled_whole() -> None:
    """The function's keyword defaults dict passed as an argument: the template could only
    give a copy, so the call is unpickled whole and the argument is the function's own dict."""
    f = script(SOURCE)["defaults"]
    frames = kept(f, (f.__kwdefaults__,))
    templates = thread_templates()
    before = templates.used
    g, args, _ = unpacked(frames)
    assert args[0] is g.__kwdefaults__ and templates.used == before


def test_each_call_gets_a_new_function_whatever_the_last_one_did() -> None:
    ns = script(SOURCE)
    frames = kept(ns["counter"], (1,))
    for _ in range(3):
        g, args, kwargs = unpacked(frames)
        assert g(*args, **kwargs) == (("cell", 7), 1)  # nonlocal count: its own cell
        assert g(*args, **kwargs) == (("cell", 7), 2)
        g.__closure__[1].cell_contents = 100
        g.__defaults__ = (50,)
        g.__dict__["extra"] = []
        g.__annotations__["a"] = "changed"
        g.__globals__["X"] = "changed"
        g.__name__ = g.__qualname__ = "changed"
        g.__doc__ = "changed"
    frames = kept(ns["defaults"], (1,))
    for _ in range(3):
        g, args, kwargs = unpacked(frames)
        assert g(*args, **kwargs) == (1, 2, ns["T"], {})
        assert g.__doc__ == "a docstring" and g.__kwdefaults__ == {"k": ns["T"]}
        g.__kwdefaults__["k"] = "changed"
        g.__defaults__ = (9,)
    frames = kept(script("N = 1\ndef f():\n    global N\n    N += 1\n    return N\n")["f"])
    assert [unpacked(frames)[0]() for _ in range(3)] == [2, 2, 2]  # its own globals


def test_an_empty_closure_cell_stays_empty() -> None:
    f = script(SOURCE)["empty_cell"]
    g, _, _ = unpacked(kept(f))
    with pytest.raises(NameError):
        g()
    assert shape(unpacked(kept(f))) == shape(whole(kept(f)))


def framed_in_two(ops: bytes, boundary: int) -> list[bytes]:
    """The call whose opcodes (``STOP`` included) are ``ops``, framed in two at ``boundary``
    as a client frames a kept function's call, with corral's marker and checksum."""
    first, second = ops[:boundary], ops[boundary:]
    pickled = b"".join(
        (
            b"\x80\x05\x95",
            len(first).to_bytes(8, "little"),
            first,
            b"\x95",
            len(second).to_bytes(8, "little"),
            second,
        )
    )
    return [b"CRL\x01" + zlib.crc32(pickled).to_bytes(4, "little") + pickled]


def same_or_same_error(frames: list[bytes]) -> None:
    """Unpacked twice (a template made, then used): what a whole unpickle reads, or an error
    where it fails."""
    for _ in range(2):
        try:
            reference = whole(frames)
        except Exception:
            with pytest.raises(SerializationError):
                unpacked(frames)
            continue
        assert shape(unpacked(frames)) == shape(reference)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_a_wrong_boundary_gives_the_whole_unpickle(data: st.DataObject) -> None:
    """Framed in two anywhere, at an opcode or inside one: the call is what a whole unpickle
    reads (the same function and arguments), or the same error; never another function."""
    ns = script(SOURCE)
    name = data.draw(st.sampled_from(FUNCTIONS))
    args = data.draw(st.sampled_from(ARGUMENTS))
    ops = unframed(kept(ns[name], *args)[0][HEADER:])
    at_opcodes = [position - 2 for _, _, position in pickletools.genops(b"\x80\x05" + ops)]
    boundary = data.draw(st.sampled_from(at_opcodes[1:]) | st.integers(1, len(ops) - 1))
    same_or_same_error(framed_in_two(ops, boundary))


def test_frames_that_are_not_a_function_give_no_template() -> None:
    templates = thread_templates()
    made = templates.made
    ops = unframed(pickle.dumps((1, (2,), {}), protocol=5))  # K\x01 K\x02 ...
    for boundary in range(1, len(ops)):
        frames = framed_in_two(ops, boundary)
        try:
            assert whole(frames)[0] == 1
        except pickle.UnpicklingError:  # inside an opcode
            with pytest.raises(SerializationError, match="cannot deserialize"):
                unpacked(frames)
            continue
        with pytest.raises(SerializationError, match="not callable"):
            unpacked(frames)
    assert templates.made == made


def test_a_function_reading_mutable_state_framed_in_two_gets_no_template() -> None:
    """A client that frames a function the engine's rule refuses (it reads a list of lists):
    every call is unpickled whole, each with its own list."""
    ns = script("L = [[1]]\ndef f():\n    L.append(2)\n    return L\n")
    function_ops = unframed(cloudpickle.dumps(ns["f"], protocol=5))[:-1]
    ops = unframed(cloudpickle.dumps((ns["f"], (), {}), protocol=5))
    assert ops.startswith(function_ops)
    frames = framed_in_two(ops, len(function_ops))
    templates = thread_templates()
    made = templates.made
    assert [unpacked(frames)[0]() for _ in range(3)] == [[[1], 2]] * 3
    assert templates.made == made


def test_arguments_that_keep_an_object_of_the_function_are_unpickled_whole() -> None:
    """A crafted second frame whose argument is the function itself (a memo entry of the
    first frame the template withholds): the whole unpickle's reading, never a stand-in."""
    f = script(SOURCE)["no_op"]
    frames = kept(f, ("name",))
    end = function_end(frames[0], HEADER)
    assert end is not None
    function_ops = unframed(frames[0][HEADER:])[: end - HEADER - 11]
    memo = _memo_after(function_ops)
    index = next(i for i, value in enumerate(memo) if getattr(value, "__name__", "") == "no_op")
    crafted = b"h" + bytes([index]) + b"\x85\x94}\x94\x87\x94."  # args: (the function,)
    frames = framed_in_two(function_ops + crafted, len(function_ops))
    templates = thread_templates()
    before = templates.used
    for _ in range(2):
        g, args, _ = unpacked(frames)
        assert args[0] is g
    assert templates.used == before
    # an argument that is a deeply immutable object of the first frame is that object
    index = next(i for i, value in enumerate(memo) if value == "no_op")
    crafted = b"h" + bytes([index]) + b"\x85\x94}\x94\x87\x94."
    frames = framed_in_two(function_ops + crafted, len(function_ops))
    g, args, _ = unpacked(frames)
    assert templates.used == before + 1
    names = (g.__name__, g.__qualname__, g.__code__.co_name, g.__code__.co_qualname)
    assert any(args[0] is name for name in names)
    same_or_same_error(frames)


def _memo_after(ops: bytes) -> list[object]:
    unpickler = pickle.Unpickler(io.BytesIO(b"\x80\x05" + ops + b"."))
    unpickler.load()
    memo = unpickler.memo.copy()
    return [memo[index] for index in range(len(memo))]


def test_a_call_in_one_frame_never_uses_a_template() -> None:
    f = script(SOURCE)["no_op"]
    one_frame = [bytes(frame) for frame in pack_apply_message(f, (), {})]
    f = script(SOURCE)["no_op"]  # a new function: its first call, pickled afresh
    one_frame = [bytes(frame) for frame in pack_apply_message(f, (), {})]
    assert function_end(one_frame[0], HEADER) is None
    templates = thread_templates()
    before = templates.used
    assert unpacked(one_frame)[0]() == 1 and templates.used == before


def test_the_templates_are_bounded_and_the_least_recently_used_goes() -> None:
    templates = FunctionTemplates(limit=4)
    functions = [script(f"def f():\n    return {index}\n")["f"] for index in range(6)]
    calls = [kept(f) for f in functions]

    def load(frames: list[bytes]) -> Any:
        end = function_end(frames[0], HEADER)
        assert end is not None
        return templates.load_call(frames[0], HEADER, end)

    for frames in calls[:4]:
        assert load(frames)[0]() is not None
    assert templates.made == 4 and len(templates) == 4
    load(calls[0])  # the newest now
    load(calls[4])  # the fifth: calls[1] goes
    assert len(templates) == 4 and templates.made == 5
    load(calls[0])
    assert templates.made == 5
    load(calls[1])
    assert templates.made == 6 and len(templates) == 4
    assert [load(frames)[0]() for frames in calls] == list(range(6))


def test_each_thread_has_its_own_templates() -> None:
    f = script("def f(x):\n    return x\n")["f"]
    frames = kept(f, (5,))
    seen: list[Any] = []
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                g, args, _ = unpacked(frames)
                assert g(*args) == 5
            seen.append(thread_templates())
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures and len({id(t) for t in seen}) == 3
    assert all(t.used >= 49 for t in seen)


def test_function_end_reads_only_a_call_framed_in_two() -> None:
    call = b"\x80\x05\x95" + (2).to_bytes(8, "little") + b"N\x94"
    second = b"\x95" + (2).to_bytes(8, "little") + b"N."
    assert function_end(b"12345678" + call + second, 8) == 8 + 11 + 2
    assert function_end(call + second, 0) == 11 + 2
    assert function_end(call + second[:-1], 0) is None  # the second frame's length is wrong
    assert function_end(call + b"N.", 0) is None  # no second frame
    assert function_end(b"\x80\x04" + call[2:] + second, 0) is None
    big = b"\x80\x05\x95" + functiontemplates.FRAME_LIMIT.to_bytes(8, "little")
    assert function_end(big + b"N" * functiontemplates.FRAME_LIMIT + second, 0) is None
    assert function_end(b"", 0) is None


def test_a_typed_function_gets_a_template() -> None:
    """Annotations of builtin types (``int``, ``list[str]``, ``float | None``) are deeply
    immutable: the engine rebuilds such a function from its template, each call's own."""
    f = script("def f(x: int, y: list[str]) -> float | None:\n    return x + len(y)\n")["f"]
    frames = kept(f, (1, ["a"]))
    templates = thread_templates()
    before = templates.used
    for _ in range(3):
        g, args, kwargs = unpacked(frames)
        assert g(*args, **kwargs) == 2 and g.__annotations__ == f.__annotations__
    assert templates.used > before


def test_a_function_walking_the_heap_with_isinstance_sees_the_stand_ins_as_they_are() -> None:
    """A template's stand-ins are reachable through gc.get_objects() while it lives: a task
    testing the type of every object (a memory profiler's walk) works at every call."""
    ns = script(
        "def count_dicts(n):\n"
        "    import gc, weakref\n"
        "    proxies = (weakref.ProxyType, weakref.CallableProxyType)  # may be dead: skipped\n"
        "    objects = [o for o in gc.get_objects() if type(o) not in proxies]\n"
        "    return n + sum(1 for o in objects if isinstance(o, dict))\n"
    )
    frames = kept(ns["count_dicts"], (1,))
    templates = thread_templates()
    before = templates.used
    for _ in range(3):
        g, args, kwargs = unpacked(frames)
        assert g(*args, **kwargs) >= 1
    assert templates.used > before
    stand_in = functiontemplates._StandIn()
    assert not isinstance(stand_in, int) and isinstance(stand_in, functiontemplates._StandIn)
    with pytest.raises(TypeError, match="used by its arguments"):
        stand_in.__dict__  # noqa: B018 (every other attribute still refused)


@pytest.mark.timeout(120)
def test_a_by_value_function_on_a_real_engine(rc) -> None:  # type: ignore[no-untyped-def]
    """From a client to an engine, direct and load-balanced: a closure counter starts from
    its own cell at every call, and the engine rebuilt the function from its template."""
    ns = script(
        "def make():\n"
        "    count = 0\n"
        "    def counter(step):\n"
        "        nonlocal count\n"
        "        count += step\n"
        "        return count\n"
        "    return counter\n"
        "counter = make()\n"
    )
    dv = rc[0]
    dv.execute("from corral.protocol.functiontemplates import thread_templates", block=True)
    dv.execute("used = thread_templates().used", block=True)
    before = dv.pull("used", block=True)
    assert [dv.apply_sync(ns["counter"], 2) for _ in range(8)] == [2] * 8
    dv.execute("used = thread_templates().used", block=True)
    assert dv.pull("used", block=True) - before >= 4
    view = rc.load_balanced_view()
    assert [view.apply_sync(ns["counter"], 1) for _ in range(8)] == [1] * 8
    assert view.map_sync(ns["counter"], [1] * 20) == [1] * 20


def test_a_templated_call_is_still_checksummed_whole() -> None:
    """Its template keeps the checksum of the function's part; a changed byte anywhere in the
    call (its arguments, or its function's frame, met first or once its template is kept)
    is still refused as the checksum's mismatch, and no template is made from it."""
    f = script("def f(x):\n    return x\n")["f"]
    frames = kept(f, (b"abcdefgh",))
    assert unpacked(frames)[1] == (b"abcdefgh",)  # its template made
    end = function_end(frames[0], HEADER)
    assert end is not None
    changed_argument = frames[0].replace(b"abcdefgh", b"abcdefgX")
    changed_function = frames[0][: end - 4] + bytes([frames[0][end - 4] ^ 1]) + frames[0][end - 3 :]
    templates = thread_templates()
    for corrupt in (changed_argument, changed_function, changed_function):
        made = templates.made
        with pytest.raises(SerializationError, match="checksum"):
            unpacked([corrupt])
        assert templates.made == made
    assert unpacked(frames)[1] == (b"abcdefgh",)
