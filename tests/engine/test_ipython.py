"""IPython syntax on engines without IPython: a clear error naming the extra. (Engines with
IPython are tested through real engine processes in tests/client/test_outputs.py: the shell is
a process-wide singleton, which must not be created inside the test process.)"""

from __future__ import annotations

import pytest

from corral.engine.ipython import jsonable_bundle, looks_like_ipython
from corral.engine.namespace import Namespace


@pytest.mark.parametrize("code", ["%time 1", "!ls", "x = 1\nx?", "  %%timeit\n1"])
def test_ipython_syntax_without_ipython_names_the_extra(code: str) -> None:
    namespace = Namespace()
    with pytest.raises(SyntaxError) as raised:
        namespace.execute(code)
    assert "corral[ipython]" in str(raised.value)


def test_plain_syntax_errors_are_left_alone() -> None:
    with pytest.raises(SyntaxError) as raised:
        Namespace().execute("x = (1 +")
    assert "corral[ipython]" not in str(raised.value)


def test_a_transform_runs_translated_cells() -> None:
    namespace = Namespace()
    namespace.transform = lambda code: code.replace("%double ", "2 * ")
    namespace.formatter = lambda value: (
        {"text/plain": repr(value), "text/html": f"<b>{value}</b>"},
        {"text/html": {"isolated": True}},
    )
    assert namespace.execute_bundle("%double 21") == {"text/plain": "42", "text/html": "<b>42</b>"}
    with pytest.raises(SyntaxError):
        namespace.execute("1 +")  # the transform changed nothing: the original error


def test_looks_like_ipython_and_bundles() -> None:
    assert looks_like_ipython("a = 1\n%timeit a")
    assert not looks_like_ipython("a = (1 +")
    assert not looks_like_ipython("x = 1  # why?")
    assert jsonable_bundle({"image/png": b"\x89PNG", "text/plain": "img"}) == {
        "image/png": "iVBORw==",
        "text/plain": "img",
    }
