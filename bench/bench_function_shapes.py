"""What packing and unpacking a call costs per shape of ``__main__`` function (issue 13, round 14).

A function defined in ``__main__`` travels by value; the client keeps its pickle while nothing
it reads can have changed (``corral/protocol/functioncache.py``) and the engine rebuilds it
from a template (``corral/protocol/functiontemplates.py``). Which shapes get either depends on
what the function reads: this bench runs one small script per shape as ``__main__`` (compiled
with ``dont_inherit=True``, as a user's script runs), packs ``f(2.0)`` with
``pack_apply_message`` in a loop and unpacks the packed call with ``unpack_apply_message``
(thread CPU per call, best of ``--repeats``), and says whether the client reused its pickle
and the engine its template (their counters). Another tree is measured with
``CORRAL_BENCH_SOURCE=DIR PYTHONPATH=DIR``::

    PYTHONPATH=$PWD .venv/bin/python bench/bench_function_shapes.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from common import print_table, use_source, write_results

SHAPES: dict[str, str] = {
    "no global": "def f(x):\n    return x\n",
    "global constants": "K = 3\nS = 'a'\nT = (1, 'b')\ndef f(x):\n    return (x, K, S, T)\n",
    "module (math)": "import math\ndef f(x):\n    return math.sqrt(x)\n",
    "module (numpy)": "import numpy as np\ndef f(x):\n    return np.sum(x)\n",
    "builtin from module": "from math import sqrt\ndef f(x):\n    return sqrt(x)\n",
    "np.sum taken": "from numpy import sum as total\ndef f(x):\n    return total(x)\n",
    "ufunc taken": "from numpy import sqrt\ndef f(x):\n    return sqrt(x)\n",
    "module function": "from os.path import join\ndef f(x):\n    return join('a', str(x))\n",
    "module class": (
        "from collections import OrderedDict\ndef f(x):\n    return OrderedDict(a=x)['a']\n"
    ),
    "__main__ helper": "def g(x):\n    return x + 1\ndef f(x):\n    return g(x)\n",
    "lambda": "f = lambda x: x + 1\n",
    "closure": (
        "def make(a, b, c):\n    def f(x):\n        return (x, a, b, c)\n    return f\n"
        "f = make(1, 's', (1, 2))\n"
    ),
    "partial": "import functools\ndef g(x, y):\n    return x + y\nf = functools.partial(g, 1)\n",
    "__main__ class": (
        "class P:\n    def __init__(self, x):\n        self.x = x\ndef f(x):\n    return P(x).x\n"
    ),
    "global list, dict": "L = [1, 2]\nD = {'a': 1}\ndef f(x):\n    return (x, L, D)\n",
}


def script(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, "<script>", "exec", dont_inherit=True), namespace)  # noqa: S102
    return namespace


def per_call(step: Callable[[], object], calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        for _ in range(calls):
            step()
        best = min(best, time.thread_time() - start)
    return best / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    use_source()
    from corral.protocol import functiontemplates
    from corral.protocol.serialize import _thread_pickler, pack_apply_message, unpack_apply_message

    rows = []
    for name, source in SHAPES.items():
        f = script(source)["f"]
        for _ in range(3):  # noted, fingerprinted, kept
            pack_apply_message(f, (2.0,), {})
        pickler, templates = _thread_pickler(), functiontemplates.thread_templates()
        reused, used = pickler.reused, templates.used
        frames = pack_apply_message(f, (2.0,), {})
        g, args, kwargs = unpack_apply_message(frames)
        g, args, kwargs = unpack_apply_message(frames)
        assert g(*args, **kwargs) == f(2.0), name
        client = "kept" if pickler.reused > reused else "afresh"
        engine = "template" if templates.used > used else "whole"
        pack = per_call(
            lambda f=f: pack_apply_message(f, (2.0,), {}), options.calls, options.repeats
        )
        unpack = per_call(
            lambda frames=frames: unpack_apply_message(frames), options.calls, options.repeats
        )
        rows.append([name, pack, client, unpack, engine])
    print_table(
        f"thread CPU per call, us (best of {options.repeats} x {options.calls})",
        ["shape", "pack", "client", "unpack", "engine"],
        rows,
    )
    header = ("pack_us", "client", "unpack_us", "engine")
    write_results(
        "bench_function_shapes",
        {"shapes": {row[0]: dict(zip(header, row[1:], strict=True)) for row in rows}},
    )


if __name__ == "__main__":
    main()
