"""Call descriptions in apply replies: short, bounded, and never the arguments' __repr__."""

from __future__ import annotations

from typing import Any

import numpy as np

from corral.engine.summary import MAX_CALL, describe, describe_call


class Loud:
    def __repr__(self) -> str:
        raise AssertionError("__repr__ of user objects must not run")


def test_simple_calls_read_like_code() -> None:
    assert describe_call(pow, (2, 10), {}) == "pow(2, 10)"
    assert describe_call(sorted, ([3, 1],), {"reverse": True}) == "sorted([3, 1], reverse=True)"
    assert describe_call(len, (str, range(3)), {}) == "len(str, range(0, 3))"


def test_large_values_are_cut() -> None:
    assert describe(list(range(1000))) == "[0, 1, 2, 3, ... 1000 items]"
    assert describe("x" * 100) == repr("x" * 40) + "…"
    assert describe(b"y" * 100) == "<bytes of 100>"
    assert describe(10**100) == "<int of 333 bits>"
    assert describe([[[[1]]]]) == "[[<list of 1>]]"
    text = describe_call(max, tuple(range(100)), {f"k{i}": "v" * 40 for i in range(20)})
    assert len(text) <= MAX_CALL


def test_other_objects_are_named_by_type_only() -> None:
    assert describe(Loud()) == f"<{__name__}.Loud>"
    assert describe(np.zeros((3, 4))) == "ndarray(shape=(3, 4), dtype=float64)"
    assert describe({"a": Loud()}) == f"{{'a': <{__name__}.Loud>}}"


def test_containers() -> None:
    values: list[Any] = [(1,), (), {1}, set(), frozenset(), {}]
    assert [describe(v) for v in values] == ["(1,)", "()", "set({1})", "set()", "frozenset()", "{}"]
