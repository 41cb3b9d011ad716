"""The dependency value carried by ``apply_request`` metadata (``after`` and ``follow``).

A dependency names earlier tasks by msg_id and says which of their outcomes satisfy it. The
client builds one (:meth:`Dependency.of`), sends :meth:`Dependency.as_dict` (or a plain list of
msg_ids), and the scheduler reads it back with :meth:`Dependency.from_wire`. Only outcomes are
judged here; where tasks ran (``follow``) is the scheduler's business.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast

from corral.errors import InvalidContent

_WIRE_KEYS = frozenset({"msg_ids", "all", "success", "failure"})


class HasMsgIds(Protocol):
    """Anything that stands for some tasks: an AsyncResult, or a Dependency itself."""

    @property
    def msg_ids(self) -> Iterable[str]: ...


@dataclass(frozen=True)
class Dependency:
    """A set of msg_ids and the rule for when their outcomes satisfy a waiting task.

    ``all``: every msg_id must be satisfied (else any one is enough). ``success`` / ``failure``:
    which outcomes satisfy a msg_id. At least one of them must be true, or nothing could ever
    satisfy the dependency. An empty dependency is always met.
    """

    msg_ids: frozenset[str] = frozenset()
    all: bool = True
    success: bool = True
    failure: bool = False

    EMPTY: ClassVar[Dependency]

    def __post_init__(self) -> None:
        if type(self.msg_ids) is not frozenset:
            if isinstance(self.msg_ids, str):
                raise TypeError("msg_ids must be a collection of msg_id strings, not one string")
            object.__setattr__(self, "msg_ids", frozenset(self.msg_ids))
        for msg_id in self.msg_ids:
            if not isinstance(msg_id, str):
                raise TypeError(f"a msg_id must be a str, not {type(msg_id).__name__}")
        if not (self.success or self.failure):
            raise ValueError(
                "a dependency with success=False and failure=False can never be met; "
                "allow success, failure, or both"
            )

    @classmethod
    def of(
        cls,
        items: str | HasMsgIds | Iterable[str | HasMsgIds],
        all: bool = True,
        success: bool = True,
        failure: bool = False,
    ) -> Dependency:
        """A dependency on msg_id strings and on anything with ``.msg_ids`` (an AsyncResult,
        another Dependency), flattened. A single string or a single such object is accepted
        too, so ``Dependency.of(async_result)`` means what it says."""
        single = isinstance(items, str) or hasattr(items, "msg_ids")
        group = (items,) if single else cast(Iterable[object], items)
        msg_ids: set[str] = set()
        for item in group:
            if isinstance(item, str):
                msg_ids.add(item)
            elif hasattr(item, "msg_ids"):
                inner = item.msg_ids
                if isinstance(inner, str):
                    raise TypeError(f"{type(item).__name__}.msg_ids is a str, not a collection")
                msg_ids.update(inner)
            else:
                raise TypeError(
                    f"cannot depend on a {type(item).__name__}: give msg_id strings or objects "
                    "with a .msg_ids attribute (such as AsyncResults)"
                )
        return cls(frozenset(msg_ids), all=all, success=success, failure=failure)

    @classmethod
    def from_wire(cls, value: object) -> Dependency:
        """Read ``after``/``follow`` from request metadata: None or [] (no dependency), a list
        of msg_ids (all must succeed), or the dict written by :meth:`as_dict`.

        Raises :class:`~corral.errors.InvalidContent` for anything else, so the scheduler can
        answer the request with an error instead of guessing.
        """
        if value is None:
            return cls.EMPTY
        if isinstance(value, list | tuple):
            if not value:
                return cls.EMPTY
            return cls(_msg_id_set(value))
        if isinstance(value, dict):
            unknown = sorted(str(key) for key in value.keys() - _WIRE_KEYS)
            if unknown:
                raise InvalidContent(
                    f"dependency dict has unknown keys {unknown}; "
                    f"expected only {sorted(_WIRE_KEYS)}"
                )
            if "msg_ids" not in value:
                raise InvalidContent("dependency dict has no 'msg_ids' list")
            msg_ids = value["msg_ids"]
            if not isinstance(msg_ids, list | tuple):
                raise InvalidContent(
                    f"dependency 'msg_ids' must be a list of strings, not {type(msg_ids).__name__}"
                )
            all_ = _flag(value, "all", True)
            success = _flag(value, "success", True)
            failure = _flag(value, "failure", False)
            if not (success or failure):
                raise InvalidContent(
                    "dependency has success=false and failure=false, so it could never be met"
                )
            return cls(_msg_id_set(msg_ids), all=all_, success=success, failure=failure)
        raise InvalidContent(
            "a dependency must be null, a list of msg_id strings, or a dict with 'msg_ids', "
            f"'all', 'success' and 'failure'; got {type(value).__name__}"
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON-able form for request metadata; msg_ids are sorted so equal dependencies
        serialize to equal bytes."""
        return {
            "msg_ids": sorted(self.msg_ids),
            "all": self.all,
            "success": self.success,
            "failure": self.failure,
        }

    def _satisfied(self, msg_id: str, succeeded: Collection[str], failed: Collection[str]) -> bool:
        return (self.success and msg_id in succeeded) or (self.failure and msg_id in failed)

    def _dead(self, msg_id: str, succeeded: Collection[str], failed: Collection[str]) -> bool:
        return (not self.success and msg_id in succeeded) or (not self.failure and msg_id in failed)

    def is_met(self, succeeded: Collection[str], failed: Collection[str]) -> bool:
        """Whether these outcomes satisfy the dependency (an empty one always is)."""
        if not self.msg_ids:
            return True
        satisfied = (self._satisfied(msg_id, succeeded, failed) for msg_id in self.msg_ids)
        return all(satisfied) if self.all else any(satisfied)

    def is_unreachable(self, succeeded: Collection[str], failed: Collection[str]) -> bool:
        """Whether no future outcome can satisfy it any more, given these outcomes: with
        ``all``, one msg_id ended the wrong way; otherwise every one did."""
        if not self.msg_ids:
            return False
        dead = (self._dead(msg_id, succeeded, failed) for msg_id in self.msg_ids)
        return any(dead) if self.all else all(dead)


Dependency.EMPTY = Dependency()


def _flag(value: dict[Any, Any], name: str, default: bool) -> bool:
    flag = value.get(name, default)
    if not isinstance(flag, bool):
        raise InvalidContent(f"dependency {name!r} must be true or false, not {flag!r}")
    return flag


def _msg_id_set(items: list[Any] | tuple[Any, ...]) -> frozenset[str]:
    for item in items:
        if not isinstance(item, str):
            raise InvalidContent(f"dependency msg_ids must be strings; got {item!r}")
    return frozenset(items)
