"""The Hub's query language: a small, well-defined subset of MongoDB's.

A query is a dict ``{field: condition}``; all fields must match. A condition is a plain
value (equality) or a dict of operators, all of which must hold: ``$eq $ne $lt $lte $gt
$gte $in $nin``, and ipyparallel's ``$glob`` (a shell-style pattern, :func:`fnmatch.fnmatchcase`:
``{'label': {'$glob': 'fit_*'}}``; only strings match it). A dict without ``$`` keys is an
equality with that dict. ``$in``/``$nin`` take a list; any other value counts as a list of
that one value (``{'label': {'$nin': ''}}``, as ipyparallel's SQLite backend reads it).

Semantics, identical in every backend (the tests check this with random queries):

- Values fall in categories: null, bool, number (int or float), string, bytes, array,
  object. Values of different categories are never equal and never ordered, so no
  comparison raises ``TypeError``: ``{'engine_id': {'$lt': 'x'}}`` simply matches nothing,
  and ``True`` does not equal ``1``.
- A missing field behaves as None: it matches ``None`` equality, ``$in`` lists holding
  None, ``$lte``/``$gte`` None, ``$ne`` anything but None, and ``$nin`` lists without None.
  ``$lt``/``$gt`` with None match nothing.
- Arrays and objects compare by whole value (objects ignore key order; no MongoDB-style
  matching of one array element). Ordering operators take null, bool, number, string or
  bytes operands only.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from corral.errors import QueryError

OPERATORS = ("$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$in", "$nin", "$glob")
_ORDERED = frozenset({"null", "bool", "number", "string", "bytes"})
_MISSING: Any = None
_MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``field operator value`` test of a validated query (``$in``/``$nin`` lists also
    as :class:`Members`, so that a list of 10000 msg_ids is not scanned per record)."""

    field: str
    operator: str
    value: Any
    members: Members | None = dataclasses.field(default=None, compare=False)


def _hash_key(value: Any) -> tuple[Any, ...] | None:
    """A hashable key equal exactly when :func:`equal` holds, for scalars; else None."""
    kind = category(value)
    if kind in ("bool", "number", "string"):
        return (kind, value)
    if kind == "null":
        return (kind,)
    if kind == "bytes":
        return (kind, bytes(value))
    return None


class Members:
    """An ``$in`` list: scalars in a set (keyed by category), arrays and objects apart."""

    __slots__ = ("compounds", "scalars")

    def __init__(self, items: tuple[Any, ...]) -> None:
        keys = [(_hash_key(item), item) for item in items]
        self.scalars = frozenset(key for key, _ in keys if key is not None)
        self.compounds = tuple(item for key, item in keys if key is None)

    def __contains__(self, value: Any) -> bool:
        key = _hash_key(value)
        if key is not None:
            return key in self.scalars
        return any(equal(value, item) for item in self.compounds)


def category(value: Any) -> str:
    """The comparison category of a value (``other`` for types queries cannot hold)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytes"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "other"


def _check_value(value: Any, where: str, depth: int = 0) -> None:
    kind = category(value)
    if depth > _MAX_DEPTH:
        raise QueryError(f"{where}: value nested more than {_MAX_DEPTH} levels deep")
    if kind == "other":
        raise QueryError(f"{where}: a query cannot hold a {type(value).__name__} value")
    if kind == "number":
        if isinstance(value, float) and math.isnan(value):
            raise QueryError(f"{where}: NaN equals nothing; it cannot be a query value")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise QueryError(f"{where}: {value} does not fit in 64 bits")
    elif kind == "array":
        for item in value:
            _check_value(item, where, depth + 1)
    elif kind == "object":
        for key, item in value.items():
            if not isinstance(key, str):
                raise QueryError(f"{where}: object keys must be strings, not {key!r}")
            _check_value(item, where, depth + 1)


def parse_query(query: Any) -> list[Condition]:
    """Validate ``query`` and return its conditions; QueryError names what is wrong."""
    if not isinstance(query, Mapping):
        raise QueryError(f"a query must be a dict, not {type(query).__name__}")
    conditions: list[Condition] = []
    for field, spec in query.items():
        if not isinstance(field, str) or not field:
            raise QueryError(f"query field names must be non-empty strings, not {field!r}")
        if field.startswith("$"):
            raise QueryError(f"unsupported query operator {field!r} (only per-field operators)")
        if field.startswith("_") or "." in field or "\0" in field:
            raise QueryError(
                f"invalid query field {field!r}: records have no such field "
                "(no leading '_', no '.' paths, no NUL)"
            )
        is_operators = isinstance(spec, Mapping) and any(
            isinstance(key, str) and key.startswith("$") for key in spec
        )
        if not is_operators:
            _check_value(spec, f"field {field!r}")
            conditions.append(Condition(field, "$eq", spec))
            continue
        for operator, value in spec.items():
            conditions.append(_parse_operator(field, operator, value))
    return conditions


def _parse_operator(field: str, operator: Any, value: Any) -> Condition:
    where = f"field {field!r}, operator {operator!r}"
    if operator not in OPERATORS:
        if isinstance(operator, str) and operator.startswith("$"):
            raise QueryError(
                f"unknown query operator {operator!r} on field {field!r}; "
                f"supported: {', '.join(OPERATORS)}"
            )
        raise QueryError(
            f"field {field!r}: {operator!r} mixed with operators; an equality "
            "with a dict holding '$' keys is not supported"
        )
    if operator in ("$in", "$nin"):
        if not isinstance(value, list | tuple):
            value = [value]  # ipyparallel's SQLite backend: one value, not a list of them
        _check_value(value, where)
        return Condition(field, operator, tuple(value), Members(tuple(value)))
    if operator == "$glob":
        if not isinstance(value, str):
            raise QueryError(f"{where} needs a string pattern, not {type(value).__name__}")
        return Condition(field, operator, value)
    _check_value(value, where)
    if operator not in ("$eq", "$ne") and category(value) not in _ORDERED:
        raise QueryError(
            f"{where}: cannot order by a {category(value)}; use null, bool, number, string or bytes"
        )
    return Condition(field, operator, value)


def validate_query(query: Any) -> None:
    """Raise QueryError unless ``query`` is a well-formed query."""
    parse_query(query)


def match(record: Mapping[str, Any], query: Any) -> bool:
    """Whether ``record`` matches ``query`` (validated first)."""
    return matches(record, parse_query(query))


def matches(record: Mapping[str, Any], conditions: list[Condition]) -> bool:
    """Whether ``record`` satisfies every one of the (already validated) conditions."""
    return all(_test(record.get(c.field, _MISSING), c) for c in conditions)


def equal(left: Any, right: Any) -> bool:
    """Equality within a category, recursively (so ``[True] != [1]``); never raises."""
    kind = category(left)
    if kind != category(right):
        return False
    if kind == "array":
        return len(left) == len(right) and all(map(equal, left, right))
    if kind == "object":
        return left.keys() == right.keys() and all(equal(v, right[k]) for k, v in left.items())
    if kind == "bytes":
        return bytes(left) == bytes(right)
    if kind == "other":
        return left is right
    return bool(left == right)


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
}


def _test(value: Any, condition: Condition) -> bool:
    operator, operand = condition.operator, condition.value
    if operator == "$eq":
        return equal(value, operand)
    if operator == "$ne":
        return not equal(value, operand)
    if condition.members is not None:
        return (value in condition.members) == (operator == "$in")
    if operator == "$glob":
        return isinstance(value, str) and fnmatch.fnmatchcase(value, operand)
    kind = category(operand)
    if kind == "null":
        return value is None and operator in ("$lte", "$gte")
    if category(value) != kind:
        return False
    if kind == "bytes":
        value, operand = bytes(value), bytes(operand)
    return _ORDER[operator](value, operand)


# ---------------------------------------------------------------- native translation

AtomKind = Literal["always", "never", "null", "not_null", "compare", "in", "not_in"]


@dataclass(frozen=True, slots=True)
class Atom:
    """A condition on a single-type field, in a form SQL and MongoDB express exactly.

    - ``null`` / ``not_null``: the field is (not) None or missing.
    - ``compare`` with ``operator`` in ``$eq $lt $lte $gt $gte``: false when None;
      ``$ne``: true when None. ``value`` is of the field's category.
    - ``in`` / ``not_in``: membership in ``values`` (of the field's category), plus
      "is None" when ``with_null``; ``not_in`` is the exact negation of ``in``.
    """

    kind: AtomKind
    field: str = ""
    operator: str = ""
    value: Any = None
    values: tuple[Any, ...] = ()
    with_null: bool = False


ALWAYS = Atom("always")
NEVER = Atom("never")


def translate(condition: Condition, field_category: str) -> Atom:
    """The condition as an :class:`Atom`, for a field whose non-None values are all of
    ``field_category``; values of other categories then decide the outcome statically."""
    field, operator, value = condition.field, condition.operator, condition.value
    if operator in ("$in", "$nin"):
        with_null = any(item is None for item in value)
        same = tuple(dict.fromkeys(v for v in value if category(v) == field_category))
        negate = operator == "$nin"
        if not same:
            if with_null:
                return Atom("not_null" if negate else "null", field)
            return ALWAYS if negate else NEVER
        return Atom("not_in" if negate else "in", field, values=same, with_null=with_null)
    kind = category(value)
    if kind == "null":
        if operator in ("$eq", "$lte", "$gte"):
            return Atom("null", field)
        return Atom("not_null", field) if operator == "$ne" else NEVER
    if kind != field_category:
        return ALWAYS if operator == "$ne" else NEVER
    return Atom("compare", field, operator=operator, value=value)


def split_query(
    conditions: list[Condition], scalar_fields: Mapping[str, str]
) -> tuple[list[Atom], list[Condition]]:
    """Split conditions into atoms a backend can run natively and a residue for
    :func:`matches`: conditions on ``scalar_fields`` (name -> category) are native, but for
    ``$glob`` (SQL's GLOB and MongoDB's regular expressions read patterns differently)."""
    atoms: list[Atom] = []
    residue: list[Condition] = []
    for condition in conditions:
        field_category = scalar_fields.get(condition.field)
        if field_category is None or condition.operator == "$glob":
            residue.append(condition)
        else:
            atom = translate(condition, field_category)
            if atom is not ALWAYS:
                atoms.append(atom)
    return atoms, residue


def msg_ids_wanted(conditions: list[Condition]) -> set[str] | None:
    """The msg_ids a query restricts itself to (through ``msg_id`` equality or ``$in``),
    or None when it does not; lets a store look records up instead of scanning."""
    wanted: set[str] | None = None
    for condition in conditions:
        if condition.field != "msg_id":
            continue
        if condition.operator == "$eq":
            ids = {condition.value} if isinstance(condition.value, str) else set()
        elif condition.operator == "$in":
            ids = {v for v in condition.value if isinstance(v, str)}
        else:
            continue
        wanted = ids if wanted is None else wanted & ids
    return wanted
