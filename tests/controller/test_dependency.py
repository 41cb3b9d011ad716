"""The Dependency wire value: reading it from metadata, writing it back, judging outcomes."""

from __future__ import annotations

import json
from itertools import product
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.errors import InvalidContent
from corral.protocol.dependency import Dependency

msg_ids = st.frozensets(st.text(min_size=1, max_size=8), max_size=6)
flags = st.sampled_from([(True, False), (False, True), (True, True)])


@st.composite
def dependencies(draw: st.DrawFn) -> Dependency:
    success, failure = draw(flags)
    return Dependency(draw(msg_ids), all=draw(st.booleans()), success=success, failure=failure)


class HasMsgIds:
    """Stands in for an AsyncResult: anything with ``.msg_ids``."""

    def __init__(self, *ids: str) -> None:
        self.msg_ids = list(ids)


# ---------------------------------------------------------------- from_wire / as_dict


@pytest.mark.parametrize("value", [None, [], ()])
def test_nothing_is_the_empty_dependency(value: object) -> None:
    dep = Dependency.from_wire(value)
    assert dep == Dependency.EMPTY
    assert dep.msg_ids == frozenset()
    assert dep.is_met((), ())


def test_a_list_means_all_must_succeed() -> None:
    dep = Dependency.from_wire(["a", "b", "a"])
    assert dep == Dependency(frozenset({"a", "b"}), all=True, success=True, failure=False)


def test_a_dict_carries_the_flags() -> None:
    wire = {"msg_ids": ["x"], "all": False, "success": False, "failure": True}
    assert Dependency.from_wire(wire) == Dependency(frozenset({"x"}), False, False, True)


def test_dict_flags_default_like_the_dataclass() -> None:
    assert Dependency.from_wire({"msg_ids": ["x"]}) == Dependency(frozenset({"x"}))


def test_as_dict_is_sorted_json() -> None:
    dep = Dependency(frozenset({"b", "a"}), all=False, failure=True)
    assert dep.as_dict() == {"msg_ids": ["a", "b"], "all": False, "success": True, "failure": True}
    assert json.loads(json.dumps(dep.as_dict())) == dep.as_dict()


@given(dependencies())
def test_round_trip_through_json(dep: Dependency) -> None:
    assert Dependency.from_wire(json.loads(json.dumps(dep.as_dict()))) == dep


@given(msg_ids)
def test_a_plain_list_round_trips_as_all_success(ids: frozenset[str]) -> None:
    assert Dependency.from_wire(sorted(ids)) == Dependency(ids)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("abc", "got str"),
        (42, "got int"),
        (3.5, "got float"),
        (True, "got bool"),
        ([1, 2], "must be strings"),
        (["a", None], "must be strings"),
        ({"all": True}, "no 'msg_ids'"),
        ({"msg_ids": "abc"}, "must be a list"),
        ({"msg_ids": [1]}, "must be strings"),
        ({"msg_ids": ["a"], "all": 1}, "'all' must be true or false"),
        ({"msg_ids": ["a"], "success": "yes"}, "'success' must be true or false"),
        ({"msg_ids": ["a"], "failure": None}, "'failure' must be true or false"),
        ({"msg_ids": ["a"], "success": False}, "could never be met"),
        ({"msg_ids": ["a"], "dependencies": []}, "unknown keys ['dependencies']"),
    ],
)
def test_garbage_is_invalid_content_with_a_reason(value: object, fragment: str) -> None:
    with pytest.raises(InvalidContent) as info:
        Dependency.from_wire(value)
    assert fragment in str(info.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["msg_ids", "all", "success", "failure", "other"]), children, max_size=4
        )
    ),
    max_leaves=12,
)


@given(json_values)
def test_any_json_gives_a_dependency_or_invalid_content(value: Any) -> None:
    try:
        dep = Dependency.from_wire(value)
    except InvalidContent:
        return
    assert Dependency.from_wire(dep.as_dict()) == dep


# ---------------------------------------------------------------- construction


def test_of_flattens_strings_and_objects_with_msg_ids() -> None:
    dep = Dependency.of(["a", HasMsgIds("b", "c"), Dependency.of(["d"])], all=False)
    assert dep == Dependency(frozenset("abcd"), all=False)


def test_of_accepts_one_string_or_one_result() -> None:
    assert Dependency.of("abc").msg_ids == frozenset({"abc"})
    assert Dependency.of(HasMsgIds("x", "y")).msg_ids == frozenset({"x", "y"})


def test_of_passes_the_flags() -> None:
    dep = Dependency.of(["a"], all=False, success=False, failure=True)
    assert (dep.all, dep.success, dep.failure) == (False, False, True)


@pytest.mark.parametrize("items", [[1], [None], [b"a"], [HasMsgIds("a"), 3.0]])
def test_of_refuses_what_is_not_a_msg_id(items: list[Any]) -> None:
    with pytest.raises(TypeError, match="cannot depend on"):
        Dependency.of(items)


def test_of_refuses_msg_ids_that_is_a_string() -> None:
    result = HasMsgIds()
    result.msg_ids = "abc"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="not a collection"):
        Dependency.of([result])


def test_neither_success_nor_failure_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="can never be met"):
        Dependency.of(["a"], success=False, failure=False)
    with pytest.raises(ValueError, match="can never be met"):
        Dependency(frozenset(), success=False, failure=False)


def test_constructor_coerces_collections_and_checks_items() -> None:
    assert Dependency(["a", "b"]).msg_ids == frozenset({"a", "b"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not one string"):
        Dependency("ab")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a str"):
        Dependency(frozenset({1}))  # type: ignore[arg-type]


def test_dependencies_are_frozen_and_hashable() -> None:
    dep = Dependency.of(["a"])
    assert {dep: 1}[Dependency(frozenset({"a"}))] == 1
    with pytest.raises(AttributeError):
        dep.all = False  # type: ignore[misc]


# ---------------------------------------------------------------- judging outcomes

# (all, success, failure, outcome of a, outcome of b) -> (met, unreachable); "-" is pending
JUDGED = {
    (True, True, False, "ok", "ok"): (True, False),
    (True, True, False, "ok", "-"): (False, False),
    (True, True, False, "ok", "err"): (False, True),
    (True, True, False, "err", "-"): (False, True),
    (False, True, False, "ok", "-"): (True, False),
    (False, True, False, "err", "-"): (False, False),
    (False, True, False, "err", "err"): (False, True),
    (True, False, True, "err", "err"): (True, False),
    (True, False, True, "ok", "-"): (False, True),
    (False, False, True, "ok", "err"): (True, False),
    (False, False, True, "ok", "ok"): (False, True),
    (True, True, True, "ok", "err"): (True, False),
    (True, True, True, "ok", "-"): (False, False),
    (False, True, True, "-", "-"): (False, False),
}


@pytest.mark.parametrize(("case", "expected"), list(JUDGED.items()))
def test_met_and_unreachable_table(
    case: tuple[bool, bool, bool, str, str], expected: tuple[bool, bool]
) -> None:
    all_, success, failure, a, b = case
    dep = Dependency(frozenset({"a", "b"}), all=all_, success=success, failure=failure)
    succeeded = {name for name, outcome in (("a", a), ("b", b)) if outcome == "ok"}
    failed = {name for name, outcome in (("a", a), ("b", b)) if outcome == "err"}
    assert (dep.is_met(succeeded, failed), dep.is_unreachable(succeeded, failed)) == expected


def test_empty_dependency_is_met_and_never_unreachable() -> None:
    for success, failure in ((True, False), (False, True), (True, True)):
        dep = Dependency(frozenset(), success=success, failure=failure)
        assert dep.is_met((), ())
        assert not dep.is_unreachable({"x"}, {"y"})


@given(dependencies(), st.data())
def test_met_and_unreachable_agree_with_their_definitions(
    dep: Dependency, data: st.DataObject
) -> None:
    outcomes = {
        msg_id: data.draw(st.sampled_from(["ok", "err", "-"]), label=msg_id)
        for msg_id in sorted(dep.msg_ids)
    }
    succeeded = {m for m, o in outcomes.items() if o == "ok"}
    failed = {m for m, o in outcomes.items() if o == "err"}
    good = [(o == "ok" and dep.success) or (o == "err" and dep.failure) for o in outcomes.values()]
    bad = [
        (o == "ok" and not dep.success) or (o == "err" and not dep.failure)
        for o in outcomes.values()
    ]
    quantifier = all if dep.all else any
    assert dep.is_met(succeeded, failed) == (not dep.msg_ids or quantifier(good))
    unreachable = bool(dep.msg_ids) and (any(bad) if dep.all else all(bad))
    assert dep.is_unreachable(succeeded, failed) == unreachable
    assert not (dep.is_met(succeeded, failed) and dep.is_unreachable(succeeded, failed))
    if dep.msg_ids and "-" not in outcomes.values():
        assert dep.is_met(succeeded, failed) != dep.is_unreachable(succeeded, failed)


def test_every_finished_combination_is_met_or_unreachable() -> None:
    for all_, (success, failure), outcomes in product(
        (True, False), ((True, False), (False, True), (True, True)), product("sf", repeat=3)
    ):
        dep = Dependency(frozenset("abc"), all=all_, success=success, failure=failure)
        succeeded = {m for m, o in zip("abc", outcomes, strict=True) if o == "s"}
        failed = set("abc") - succeeded
        assert dep.is_met(succeeded, failed) != dep.is_unreachable(succeeded, failed)
