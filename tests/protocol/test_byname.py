"""corral.protocol.byname: a ``__main__`` function reading a module, a module's function, class
or builtin function keeps its pickle (client) and its template (engine); any change to what
the pickler consulted to write such a global by name (the global rebound, the module
registered by value, its ``sys.modules`` entry, the names of the object, the attribute it is
found under, ``copyreg``) sends what a fresh pickle sends, and an engine whose modules changed
unpickles the call whole."""

from __future__ import annotations

import cmath
import copyreg
import math
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import numpy as np
import pytest

from corral.errors import RemoteError
from corral.protocol import byname
from corral.protocol.functiontemplates import thread_templates
from corral.protocol.serialize import pack_apply_message, unpack_apply_message
from tests.protocol.pickles import script
from tests.protocol.test_functioncache import check, fresh, packed, same
from tests.protocol.test_functiontemplates import kept, whole

PROBE = "corral_byname_probe"  # a module only this process has (the engines cannot import it)

SHAPES = {
    "module": ("import math\ndef f(x):\n    return math.sqrt(x)\n", 2.0),
    "module under another name": ("import math as m\ndef f(x):\n    return m.floor(x)\n", 2),
    "builtin function": ("from math import sqrt\ndef f(x):\n    return sqrt(x)\n", 2.0),
    "builtins' function": ("P = print\ndef f(x):\n    return P is print and x\n", 2.0),
    "module function": ("from os.path import join\ndef f(x):\n    return join('a', x)\n", "b"),
    "class of C": (
        "from collections import OrderedDict\ndef f(x):\n    return OrderedDict(a=x)['a']\n",
        2.0,
    ),
    "class of Python": (
        "from textwrap import TextWrapper\ndef f(x):\n    return TextWrapper(width=x).width\n",
        2,
    ),
    "np.sum taken": ("from numpy import sum as total\ndef f(x):\n    return total(x)\n", 2.0),
    "ufunc taken": ("from numpy import sqrt\ndef f(x):\n    return sqrt(x)\n", 4.0),
    "several": (
        "import math, os\nfrom math import floor\nK = 3\n"
        "def f(x):\n    return (math.sqrt(x), floor(x), os.sep, K)\n",
        2.0,
    ),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_globals_written_by_name_keep_the_pickle_and_the_template(shape: str) -> None:
    source, argument = SHAPES[shape]
    f = script(source)["f"]
    assert check(f, (argument,)) == 2  # kept from the third call, identical to a fresh pickle
    frames = kept(f, (argument,))
    templates = thread_templates()
    before = templates.used
    for _ in range(3):
        g, args, kwargs = unpack_apply_message(frames)
        assert g(*args, **kwargs) == f(argument)
    assert templates.used - before == 3


def test_a_package_keeps_the_pickle_with_its_imported_submodules() -> None:
    """cloudpickle writes, with a package, every imported submodule the code can spell
    (``numpy.linalg`` here): kept, and the same bytes."""
    f = script("import numpy as np\ndef f(x):\n    return float(np.linalg.norm(x))\n")["f"]
    assert check(f, (2.0,)) == 2
    g, args, _ = unpack_apply_message(kept(f, (2.0,)))
    assert g(*args) == 2.0


@pytest.mark.parametrize(
    "change",
    [
        "sys.modules[PROBE + '.sub'] = sub",  # a submodule the code spells, imported
        "sys.modules[PROBE + '.sub.VALUE'] = sub",  # deeper, every part spelled
        "sys.modules[PROBE + '.other'] = sub",  # one it does not spell: the same pickle
        "sys.modules[PROBE + '.sub'] = sub; sys.modules[PROBE + '.sub.sub'] = sub; "
        "sys.modules[PROBE + '.sub'] = sys.modules.pop(PROBE + '.sub')",  # order changed
        "probe.__package__ = ''",
        "sys.modules[PROBE + '.sub'] = sub; sub.__name__ = 'nowhere'",  # by value
    ],
)
def test_a_package_whose_submodules_change_is_sent_changed(
    probe: types.ModuleType, change: str
) -> None:
    probe.__package__ = PROBE
    probe.__path__ = []  # type: ignore[attr-defined]
    sub = types.ModuleType(PROBE + ".sub")
    probe.sub = sub  # type: ignore[attr-defined]
    ns = script(f"import {PROBE} as p\ndef f():\n    return p.sub.VALUE\n")
    scope = {"sys": sys, "PROBE": PROBE, "probe": probe, "sub": sub}
    try:
        follows(ns["f"], (), lambda: exec(change, scope))  # noqa: S102
    finally:
        for name in list(sys.modules):
            if name.startswith(PROBE + "."):
                del sys.modules[name]


def test_an_engine_that_lost_a_submodule_unpickles_the_call_whole(
    probe: types.ModuleType,
) -> None:
    probe.__package__ = PROBE
    sub = types.ModuleType(PROBE + ".sub")
    sub.VALUE = 5  # type: ignore[attr-defined]
    probe.sub = sub  # type: ignore[attr-defined]
    sys.modules[sub.__name__] = sub
    try:
        frames = kept(script(f"import {PROBE} as p\ndef f():\n    return p.sub.VALUE\n")["f"])
        templates = thread_templates()
        before = templates.used
        assert unpack_apply_message(frames)[0]() == 5
        assert templates.used == before + 1
        del sys.modules[sub.__name__]  # a whole unpickle imports it again: here it cannot
        with pytest.raises(Exception, match="sub"):
            unpack_apply_message(frames)
        assert templates.used == before + 1
    finally:
        sys.modules.pop(sub.__name__, None)


@pytest.fixture
def probe() -> Iterator[types.ModuleType]:
    """A module in ``sys.modules`` with a constant, a function and a class of its own; taken
    out (and out of cloudpickle's registry) after the test."""
    module = types.ModuleType(PROBE)
    exec(  # noqa: S102 - the module's own code
        "VALUE = 7\ndef helper():\n    return 'helper'\nclass Thing:\n    pass\n",
        module.__dict__,
    )
    sys.modules[PROBE] = module
    try:
        yield module
    finally:
        sys.modules.pop(PROBE, None)
        if PROBE in cloudpickle.list_registry_pickle_by_value():
            cloudpickle.unregister_pickle_by_value(module)


def follows(f: Callable[..., Any], args: tuple[Any, ...], change: Callable[[], None]) -> None:
    """``f`` kept, then ``change``: the next calls send what a fresh pickle sends."""
    assert check(f, args) >= 2
    change()
    for _ in range(3):
        assert same(packed(f, args), fresh(f, args))


def test_a_module_global_rebound_is_sent() -> None:
    ns = script("import math as m\ndef f(x):\n    return m.sqrt(x)\n")
    follows(ns["f"], (4.0,), lambda: ns.__setitem__("m", cmath))
    g, args, _ = unpack_apply_message(pack_apply_message(ns["f"], (4.0,), {}))
    assert g(*args) == 2 + 0j and type(g(*args)) is complex


def test_a_module_registered_by_value_is_sent_by_value(probe: types.ModuleType) -> None:
    ns = script(f"import {PROBE} as p\ndef f():\n    return p.VALUE\n")
    follows(ns["f"], (), lambda: cloudpickle.register_pickle_by_value(probe))
    del sys.modules[PROBE]  # the engine's side: only by value can it be read
    g, _, _ = unpack_apply_message(pack_apply_message(ns["f"], (), {}))
    assert g() == 7
    assert check(ns["f"]) == 0  # by value: what it holds may change, never kept


def test_a_package_above_registered_by_value_is_sent_by_value(probe: types.ModuleType) -> None:
    child = types.ModuleType(f"{PROBE}.child")
    sys.modules[child.__name__] = probe.child = child  # type: ignore[attr-defined]
    try:
        ns = script(f"import {PROBE}.child\nc = {PROBE}.child\ndef f():\n    return c\n")
        follows(ns["f"], (), lambda: cloudpickle.register_pickle_by_value(probe))
    finally:
        del sys.modules[child.__name__]


@pytest.mark.parametrize(
    "change",
    [
        "del sys.modules[PROBE]",
        "sys.modules[PROBE] = types.ModuleType(PROBE)",
        "probe.__name__ = 'math'",
        "probe.__package__ = PROBE",
    ],
)
def test_a_module_whose_entry_or_names_change_is_sent_changed(
    probe: types.ModuleType, change: str
) -> None:
    ns = script(f"import {PROBE} as p\ndef f():\n    return p.VALUE\n")
    scope = {"sys": sys, "types": types, "PROBE": PROBE, "probe": probe}
    follows(ns["f"], (), lambda: exec(change, scope))  # noqa: S102


@pytest.mark.parametrize(
    "change",
    [
        "probe.helper = lambda: 'other'",
        "del probe.helper",
        "helper.__qualname__ = 'Thing'",
        "helper.__module__ = 'os'",
        "probe.Thing = int",
        "Thing.__qualname__ = 'helper'",
        "Thing.__module__ = '__main__'",
        "cloudpickle.register_pickle_by_value(probe)",
        "sys.modules[PROBE] = types.ModuleType(PROBE)",
    ],
)
def test_a_function_or_class_of_a_module_that_changes_is_sent_changed(
    probe: types.ModuleType, change: str
) -> None:
    ns = script(f"from {PROBE} import helper, Thing\ndef f():\n    return helper(), Thing\n")
    scope = {
        "sys": sys,
        "types": types,
        "cloudpickle": cloudpickle,
        "PROBE": PROBE,
        "probe": probe,
        "helper": probe.helper,
        "Thing": probe.Thing,
    }
    follows(ns["f"], (), lambda: exec(change, scope))  # noqa: S102


def test_a_builtin_function_rebound_or_given_a_reducer_is_sent_changed() -> None:
    ns = script("from math import sqrt\ndef f(x):\n    return sqrt(x)\n")
    follows(ns["f"], (4.0,), lambda: ns.__setitem__("sqrt", cmath.sqrt))
    assert type(unpack_apply_message(pack_apply_message(ns["f"], (4.0,), {}))[0](4.0)) is complex
    ns["sqrt"] = math.sqrt
    try:
        follows(
            ns["f"],
            (4.0,),
            lambda: copyreg.pickle(types.BuiltinFunctionType, lambda _: (int, ("1",))),
        )
        g = unpack_apply_message(pack_apply_message(ns["f"], (4.0,), {}))[0]
        assert g.__globals__["sqrt"] == 1  # type: ignore[attr-defined]
    finally:
        copyreg.dispatch_table.pop(types.BuiltinFunctionType, None)


def test_a_c_callable_whose_reducer_changes_is_sent_changed() -> None:
    """``np.sum`` (its own ``__reduce_ex__``, here shadowed on the object) and a ufunc
    (``copyreg``'s reducer for the class, here replaced): what the reducer gives is sent."""
    ns = script("from numpy import sum as total\ndef f(x):\n    return total(x)\n")
    ufunc_reducer = copyreg.dispatch_table[np.ufunc]
    try:
        follows(ns["f"], (4.0,), lambda: setattr(np.sum, "__reduce_ex__", lambda _: (int, ("5",))))
        g = unpack_apply_message(pack_apply_message(ns["f"], (4.0,), {}))[0]
        assert g.__globals__["total"] == 5  # type: ignore[attr-defined]
        del np.sum.__reduce_ex__
        f = script("from numpy import sqrt\ndef f(x):\n    return sqrt(x)\n")["f"]
        follows(f, (4.0,), lambda: copyreg.pickle(np.ufunc, lambda _: (int, ("6",))))
        g = unpack_apply_message(pack_apply_message(f, (4.0,), {}))[0]
        assert g.__globals__["sqrt"] == 6  # type: ignore[attr-defined]
    finally:
        vars(np.sum).pop("__reduce_ex__", None)
        copyreg.pickle(np.ufunc, ufunc_reducer)


def test_a_name_registered_as_a_copyreg_extension_is_sent_as_its_code() -> None:
    ns = script("from math import sqrt, floor\ndef f(x):\n    return sqrt(x), floor(x)\n")
    try:
        follows(ns["f"], (4.0,), lambda: copyreg.add_extension("math", "floor", 0x7FFFFF01))
    finally:
        copyreg.remove_extension("math", "floor", 0x7FFFFF01)
    assert same(packed(ns["f"], (4.0,)), fresh(ns["f"], (4.0,)))


def test_a_registration_elsewhere_changes_the_token_only() -> None:
    token = byname.registry_token()
    assert byname.registry_token() is token
    module = types.ModuleType(PROBE)
    sys.modules[PROBE] = module
    try:
        cloudpickle.register_pickle_by_value(module)
        assert byname.registry_token() is not token and PROBE in byname.registry_token()[0]
        ns = script("import math\ndef f(x):\n    return math.sqrt(x)\n")
        assert check(ns["f"], (4.0,)) == 2  # another module registered: still kept
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules[PROBE]


def test_an_engine_whose_module_changed_unpickles_the_call_whole(
    probe: types.ModuleType,
) -> None:
    """The template holds the module and the function it found by name; when the engine's
    ``sys.modules`` or the module's attribute lead elsewhere, a whole unpickle finds the new
    one, and so does the call."""
    source = f"import {PROBE} as p\nfrom {PROBE} import helper\ndef f():\n    return p, helper\n"
    ns = script(source)
    frames = kept(ns["f"])
    templates = thread_templates()
    before = templates.used
    assert unpack_apply_message(frames)[0]() == (probe, probe.helper)
    assert templates.used == before + 1
    other = types.ModuleType(PROBE)
    other.helper = probe.helper  # type: ignore[attr-defined]
    sys.modules[PROBE] = other
    assert unpack_apply_message(frames)[0]() == (other, probe.helper)
    sys.modules[PROBE] = probe
    probe.helper = lambda: "replaced"  # type: ignore[attr-defined]
    g = unpack_apply_message(frames)[0]
    assert g()[1] is probe.helper
    assert templates.used == before + 1  # both unpickled whole
    del sys.modules[PROBE]
    with pytest.raises(Exception, match=PROBE):
        unpack_apply_message(frames)


HELPERS = {
    "helper": "def g(x):\n    return x + K\nK = 1\ndef f(x):\n    return g(x)\n",
    "recursive": "def f(x):\n    return x if x < 1 else f(x - 1)\n",
    "mutual": ("def f(x):\n    return x if x < 1 else g(x - 1)\ndef g(x):\n    return f(x)\n"),
    "helper's helper by name": (
        "import math\ndef h(x):\n    return math.sqrt(x)\ndef g(x):\n    return h(x)\n"
        "def f(x):\n    return g(x), h(x)\n"
    ),
    "lambda and closure": (
        "def make(n):\n    def add(x):\n        return x + n\n    return add\n"
        "add = make(2)\ntwice = lambda x: 2 * x\ndef f(x):\n    return add(twice(x))\n"
    ),
}


@pytest.mark.parametrize("shape", HELPERS)
def test_main_helpers_keep_the_pickle(shape: str) -> None:
    """A ``__main__`` function calling other by-value functions: each adds its own
    fingerprint, and the pickle is kept while none changes."""
    f = script(HELPERS[shape])["f"]
    assert check(f, (4,)) == 2
    g, args, _ = unpack_apply_message(pack_apply_message(f, (4,), {}))
    assert g(*args) == f(4)


@pytest.mark.parametrize("shape", HELPERS)
def test_main_helpers_are_rebuilt_from_the_template_as_a_whole_unpickle_builds_them(
    shape: str,
) -> None:
    """The engine's template rebuilds the helpers with the function at every call: new
    functions, one new globals dict shared as in the whole unpickle, each helper there the new
    one (a recursive function finds itself)."""
    f = script(HELPERS[shape])["f"]
    frames = kept(f, (4,))
    templates = thread_templates()
    before = templates.used
    first = unpack_apply_message(frames)[0]
    second, args, _ = unpack_apply_message(frames)
    reference = whole(frames)[0]
    assert templates.used - before == 2
    assert second(*args) == reference(*args) == f(4)
    assert first is not second and first.__globals__ is not second.__globals__
    for built, unpickled in ((first, reference), (second, reference)):
        assert sorted(built.__globals__) == sorted(unpickled.__globals__)
        for name, value in unpickled.__globals__.items():
            if type(value) is types.FunctionType and name != "__builtins__":
                assert type(built.__globals__[name]) is types.FunctionType
                assert (built.__globals__[name] is built) == (value is reference)
                assert (built.__globals__[name].__globals__ is built.__globals__) == (
                    value.__globals__ is unpickled.__globals__
                )
                assert built.__globals__[name] is not value


def test_a_helper_that_changes_itself_or_a_global_leaks_nothing_into_the_next_call() -> None:
    ns = script(
        "K = 0\n"
        "def g():\n"
        "    global K\n"
        "    K += 1\n"
        "    g.calls = getattr(g, 'calls', 0) + 1\n"
        "    return K, g.calls\n"
        "def f():\n"
        "    return g()\n"
    )
    frames = kept(ns["f"])
    templates = thread_templates()
    before = templates.used
    assert [unpack_apply_message(frames)[0]() for _ in range(3)] == [(1, 1)] * 3
    assert templates.used - before == 3


@pytest.mark.parametrize(
    "change",
    [
        "def g(x):\n    return x + 10\n",
        "K = 2",
        "K = [2]",
        "g.__defaults__ = (1,)",
        "g.tag = 'x'",
        "g.__code__ = (lambda x: -x).__code__",
        "h = None",
    ],
)
def test_a_helper_that_changes_is_sent_changed(change: str) -> None:
    ns = script("K = 1\nh = 0\ndef g(x):\n    return x + K + h\ndef f(x):\n    return g(x)\n")
    follows(ns["f"], (4,), lambda: exec(change, ns))  # noqa: S102


def test_helpers_reading_mutable_state_or_too_many_are_pickled_afresh() -> None:
    ns = script("L = [[1]]\ndef g():\n    return L\ndef f():\n    return g()\n")
    assert check(ns["f"]) == 0
    chain = "def h0():\n    return 0\n" + "".join(
        f"def h{i}():\n    return h{i - 1}()\n" for i in range(1, 12)
    )
    assert check(script(chain)["h11"]) == 0  # more than 8 functions to follow
    assert check(script(chain)["h5"]) == 2


CONTAINERS = "L = [1, 'a', (2, 3)]\nD = {'k': 1, 'j': None}\nS = {1, 2}\nAGAIN = L\n"


@pytest.mark.parametrize(
    "change",
    [
        "L.append(4)",
        "L[0] = 1.0",
        "L[0] = True",
        "L.reverse()",
        "del L[:]",
        "D['k'] = 2",
        "D['new'] = 0",
        "D['k'] = D.pop('k')",  # the same items, another order
        "S.add(3)",
        "S.discard(1)",
        "AGAIN = list(L)",  # the same items, no longer the same list
        "L.extend(range(40))",  # more than a fingerprint lists
        "L.append([5])",  # an item not deeply immutable
    ],
)
def test_a_small_list_dict_or_set_changed_in_place_is_sent_changed(change: str) -> None:
    ns = script(CONTAINERS + "def f():\n    return L, D, S, AGAIN\n")
    follows(ns["f"], (), lambda: exec(change, ns))  # noqa: S102


def test_a_small_container_is_copied_for_every_call_by_the_template() -> None:
    """A template holds the lists, dicts and sets of the first unpickle and gives every call
    copies (the same copy under two names bound to one list), as a whole unpickle does: a call
    that changes them leaks nothing into the next."""
    ns = script(
        CONTAINERS + "def f():\n"
        "    L.append(len(L))\n    D['n'] = len(D)\n    S.add(len(S) + 10)\n"
        "    return L is AGAIN, list(L), dict(D), sorted(S)\n"
    )
    frames = kept(ns["f"])
    templates = thread_templates()
    before = templates.used
    reference = whole(frames)[0]()
    assert reference == (True, [1, "a", (2, 3), 3], {"k": 1, "j": None, "n": 2}, [1, 2, 12])
    assert [unpack_apply_message(frames)[0]() for _ in range(3)] == [reference] * 3
    assert templates.used - before == 3


# ---------------------------------------------------------------- on a real cluster
#
# An engine binds a ``__main__`` function to its own namespace, and a name it already holds
# wins over the value the call carries (corral.protocol.references.bind_function): to see the
# value a call carries, the test takes the name out of the engine's namespace first.


def engine_templates_used(dv: Any) -> int:
    dv.execute("from corral.protocol.functiontemplates import thread_templates", block=True)
    dv.execute("used = thread_templates().used", block=True)
    return int(dv.pull("used", block=True))


@pytest.mark.timeout(120)
def test_a_module_global_rebound_on_a_real_engine(rc) -> None:  # type: ignore[no-untyped-def]
    """``m`` read from ``math`` kept and templated on the engine, then rebound to ``cmath``
    (and ``sqrt`` likewise): the next result is cmath's."""
    ns = script(
        "import math as m\nfrom math import sqrt\n"
        "def f(x):\n    return repr((m.sqrt(x), sqrt(x)))\n"
    )
    dv = rc[0]
    before = engine_templates_used(dv)
    assert [dv.apply_sync(ns["f"], 4.0) for _ in range(6)] == ["(2.0, 2.0)"] * 6
    assert engine_templates_used(dv) - before >= 3
    ns["m"] = cmath
    dv.execute("del m", block=True)
    assert dv.apply_sync(ns["f"], 4.0) == "((2+0j), 2.0)"
    ns["sqrt"] = cmath.sqrt
    dv.execute("del sqrt", block=True)
    assert dv.apply_sync(ns["f"], 4.0) == "((2+0j), (2+0j))"
    rc[:].execute("m = sqrt = None; del m, sqrt", block=True)
    view = rc.load_balanced_view()
    assert view.map_sync(ns["f"], [4.0] * 8) == ["((2+0j), (2+0j))"] * 8


@pytest.mark.timeout(120)
def test_a_module_registered_by_value_on_a_real_engine(rc, probe) -> None:  # type: ignore[no-untyped-def]
    """A module only the client has: by name the engine cannot import it; registered by
    value between calls, the next call carries it and succeeds."""
    ns = script(f"import {PROBE} as p\ndef f():\n    return p.VALUE\n")
    dv = rc[0]
    for _ in range(4):
        with pytest.raises(RemoteError, match=PROBE):
            dv.apply_sync(ns["f"])
    cloudpickle.register_pickle_by_value(probe)
    assert dv.apply_sync(ns["f"]) == 7
    probe.VALUE = 8
    dv.execute("del p", block=True)
    assert dv.apply_sync(ns["f"]) == 8


@pytest.mark.timeout(120)
def test_a_helper_redefined_on_a_real_engine(rc) -> None:  # type: ignore[no-untyped-def]
    ns = script("def g(x):\n    return x + 1\ndef f(x):\n    return g(x)\n")
    dv = rc[0]
    assert [dv.apply_sync(ns["f"], 1) for _ in range(4)] == [2] * 4
    exec(compile("def g(x):\n    return x + 10\n", "<script>", "exec"), ns)  # noqa: S102
    dv.execute("del g", block=True)
    assert dv.apply_sync(ns["f"], 1) == 11
