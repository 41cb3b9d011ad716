"""Task dependencies on the client side: pruning ``after``/``follow``, and ``depend``/``require``.

``after`` and ``follow`` (see :class:`~corral.protocol.dependency.Dependency`) are decided by
the scheduler from task outcomes, but this client already knows the outcome of much of what it
sent: :func:`prune_after` and :func:`prune_follow` leave those out of the request (or fail the
task at once when they make it impossible), so the scheduler only tracks what is pending.

The decorators express the other kind: conditions only the engine can judge. The decorated
function checks them on the engine before running and raises
:class:`~corral.errors.UnmetDependency` if they fail; with ``retries`` on a load-balanced view,
the scheduler then tries another engine.

    @depend(lambda: sys.platform == "linux")
    def f(x): ...

    @require("numpy", "scipy.linalg")
    def g(a): ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable
from types import ModuleType
from typing import Any, TypeVar

from corral.client.records import Records
from corral.client.remote import guarded
from corral.errors import ImpossibleDependency
from corral.protocol.dependency import Dependency as WireDependency

__all__ = [
    "Dependency",
    "as_dependency",
    "depend",
    "dependent",
    "known_outcomes",
    "prune_after",
    "prune_follow",
    "require",
]

F = TypeVar("F", bound=Callable[..., Any])


class Dependency(set[str]):
    """A set of msg_ids and the rule for when their outcomes let a task run (ipyparallel's
    ``Dependency``): give it as a view's ``after`` or ``follow`` flag.

    ``dependencies`` are msg_ids, AsyncResults or other Dependencies (flattened to their
    msg_ids). ``all``: every one must be satisfied (else any one); ``success`` / ``failure``:
    which outcomes satisfy one. It is a mutable set, like ipyparallel's, so the flags and the
    members can change until it is used; the request carries a frozen copy
    (:meth:`wire`, the scheduler's :class:`corral.protocol.dependency.Dependency`).
    """

    def __init__(
        self,
        dependencies: Any = (),
        all: bool = True,  # noqa: A002 - ipyparallel's keyword
        success: bool = True,
        failure: bool = False,
    ) -> None:
        if isinstance(dependencies, str) or hasattr(dependencies, "msg_ids"):
            dependencies = [dependencies]
        super().__init__(WireDependency.of(list(dependencies)).msg_ids)
        self.all = all
        self.success = success
        self.failure = failure

    @property
    def msg_ids(self) -> frozenset[str]:
        return frozenset(self)

    def wire(self) -> WireDependency:
        """The frozen form the scheduler reads; ValueError if neither outcome satisfies it."""
        return WireDependency(
            frozenset(self), all=self.all, success=self.success, failure=self.failure
        )

    def check(self, completed: Collection[str], failed: Collection[str] | None = None) -> bool:
        """Whether these outcomes satisfy it (an empty dependency always is)."""
        return self.wire().is_met(set(completed), set(failed or ()))

    def unreachable(
        self, completed: Collection[str], failed: Collection[str] | None = None
    ) -> bool:
        """Whether no future outcome can satisfy it any more, given these."""
        return self.wire().is_unreachable(set(completed), set(failed or ()))

    def as_dict(self) -> dict[str, Any]:
        """The JSON-able form requests carry (see :meth:`WireDependency.as_dict`)."""
        return self.wire().as_dict()

    def __repr__(self) -> str:
        return (
            f"Dependency({sorted(self)!r}, all={self.all}, success={self.success}, "
            f"failure={self.failure})"
        )


def depend(condition: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[F], F]:
    """Decorator: run the function only where ``condition(*args, **kwargs)`` is true.

    The condition is evaluated on the engine each time the function runs there; if it is
    false the task fails with UnmetDependency instead of running. Interactive conditions (and
    those defined in ``__main__``) see the engine's namespace.
    """
    if not callable(condition):
        raise TypeError(f"depend needs a callable condition, got {type(condition).__name__}")

    def decorate(function: F) -> F:
        wrapper = guarded(
            function, condition=condition, condition_args=args, condition_kwargs=kwargs
        )
        return wrapper  # type: ignore[return-value]

    return decorate


def dependent(
    function: Callable[..., Any], condition: Callable[..., Any], *args: Any, **kwargs: Any
) -> Callable[..., Any]:
    """``function`` that first requires ``condition(*args, **kwargs)`` to be true where it
    runs (ipyparallel's ``dependent``: what ``@depend(condition, *args)`` makes of it).
    UnmetDependency when it is false, so a load-balanced task moves to another engine."""
    return depend(condition, *args, **kwargs)(function)


def require(*items: str | ModuleType | Callable[..., Any], **objects: Any) -> Callable[[F], F]:
    """Decorator: import modules on the engine, and define objects there, before running.

    ``items`` are modules or module names (imported, and their top-level package bound in the
    engine's namespace, as ``import a.b`` binds ``a``) or functions and classes (defined in the
    namespace under their ``__name__``); ``objects`` are defined under their keyword. A module
    that fails to import makes the task fail with UnmetDependency.
    """
    modules: list[str] = []
    pushed: dict[str, Any] = {}
    for item in items:
        if isinstance(item, ModuleType):
            modules.append(item.__name__)
        elif isinstance(item, str):
            if not all(part.isidentifier() for part in item.split(".")):
                raise ValueError(f"{item!r} is not a module name")
            modules.append(item)
        elif hasattr(item, "__name__"):
            pushed[item.__name__] = item
        else:
            raise TypeError(
                f"require takes modules, module names, functions or classes; got a "
                f"{type(item).__name__} (pass other objects as keywords: require(name=value))"
            )
    pushed.update(objects)

    def decorate(function: F) -> F:
        wrapper = guarded(function, modules=modules, objects=pushed)
        return wrapper  # type: ignore[return-value]

    return decorate


# ---------------------------------------------------------------- after / follow pruning


def as_dependency(value: Any) -> WireDependency | None:
    """A view's ``after``/``follow`` flag as a Dependency (None when it names nothing): msg_ids,
    AsyncResults, a Dependency, or the dict of :meth:`Dependency.as_dict`."""
    if value is None:
        return None
    if isinstance(value, Dependency):
        value = value.wire()
    if isinstance(value, WireDependency):
        return value if value.msg_ids else None
    if isinstance(value, dict):
        dependency = WireDependency.from_wire(value)
        return dependency if dependency.msg_ids else None
    if isinstance(value, str) or hasattr(value, "msg_ids"):
        return WireDependency.of(value)
    items = list(value)
    return WireDependency.of(items) if items else None


def known_outcomes(records: Records, msg_ids: Iterable[str]) -> tuple[set[str], set[str]]:
    """Which of ``msg_ids`` this client knows to have succeeded, and to have failed."""
    succeeded: set[str] = set()
    failed: set[str] = set()
    for msg_id in msg_ids:
        future = records.futures.get(msg_id)
        if future is not None and future.done():
            (failed if future.exception() is not None else succeeded).add(msg_id)
    return succeeded, failed


def _impossible(kind: str, dependency: WireDependency, why: str) -> ImpossibleDependency:
    return ImpossibleDependency(
        "ImpossibleDependency",
        f"this task can never run: {why} ({kind} dependency with all={dependency.all}, "
        f"success={dependency.success}, failure={dependency.failure})",
    )


def prune_after(records: Records, dependency: WireDependency | None) -> WireDependency | None:
    """The part of ``after`` the scheduler must still wait for (None: nothing); raises
    ImpossibleDependency if known outcomes already make it unmeetable."""
    if dependency is None:
        return None
    succeeded, failed = known_outcomes(records, dependency.msg_ids)
    if dependency.is_unreachable(succeeded, failed):
        ended = sorted((succeeded | failed) & dependency.msg_ids)
        raise _impossible("after", dependency, f"{ended[:3]} already ended the wrong way")
    if dependency.is_met(succeeded, failed):
        return None
    return dataclasses.replace(dependency, msg_ids=dependency.msg_ids - succeeded - failed)


def prune_follow(
    records: Records,
    live_engines: Collection[str],
    dependency: WireDependency | None,
    targets: set[str] | None,
) -> tuple[WireDependency | None, set[str] | None]:
    """``follow`` as the scheduler must see it, and the task's targets (engine uuids).

    While a followed task is pending the dependency goes as it is. Once all have finished
    here, it becomes a restriction of ``targets`` to the live engines they ran on; raises
    ImpossibleDependency if there is none (or, with ``all=True``, they ran on several).
    """
    if dependency is None:
        return None, targets
    succeeded, failed = known_outcomes(records, dependency.msg_ids)
    if dependency.is_unreachable(succeeded, failed):
        ended = sorted((succeeded | failed) & dependency.msg_ids)
        raise _impossible("follow", dependency, f"{ended[:3]} already ended the wrong way")
    if dependency.msg_ids - succeeded - failed:
        return dependency, targets
    accepted = (succeeded if dependency.success else set()) | (
        failed if dependency.failure else set()
    )
    places: set[str | None] = set()
    for msg_id in accepted & dependency.msg_ids:
        places.add(records.metadata.value(msg_id, "engine_uuid", None))
    if dependency.all and (None in places or len(places) != 1):
        raise _impossible("follow", dependency, "the followed tasks did not all run on one engine")
    live = {place for place in places if place is not None and place in live_engines}
    if not live:
        raise _impossible("follow", dependency, "the engines the followed tasks ran on are gone")
    allowed = live if targets is None else live & targets
    if not allowed:
        raise _impossible("follow", dependency, "its targets exclude where the followed tasks ran")
    return None, allowed
