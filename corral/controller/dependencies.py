"""The graph of tasks waiting on the outcomes of other tasks.

Each waiting task is a :class:`Waiter`. The graph indexes waiters by the msg_ids they still wait
for, so recording one outcome touches only the tasks that name it: O(waiters of that msg_id),
never O(all waiting tasks). A waiter keeps running counts instead of re-checking its whole
dependency on every wake-up, so a task with k dependencies costs O(k) in total, not O(k^2).

The graph cannot hold a cycle. The scheduler only adds a waiter whose dependencies are msg_ids
it already knows (submitted earlier, or finished and not forgotten), and a task is not known
until it has been added; so every edge points from a later submission to an earlier one, and a
cycle would need an edge pointing forward. That is why nothing here looks for cycles.

The graph judges outcomes only. Where a finished task ran is kept as an opaque ``location``
(the scheduler uses its engine objects), because the scheduler alone knows which engines are
still alive and which ones a task's targets allow.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Final, Generic, NamedTuple, TypeAlias, TypeVar

from corral.protocol.dependency import Dependency

L = TypeVar("L", bound=Hashable)


class Outcome(NamedTuple, Generic[L]):
    """How a task ended, and where (None: it never reached an engine, e.g. it was failed by
    the scheduler)."""

    success: bool
    location: L | None


class Waiter(Generic[L]):
    """A task waiting on ``after`` (when) and ``follow`` (when and where) dependencies.

    The scheduler reads ``ready``, ``reason`` and ``follow_locations`` after each wake-up;
    only the graph changes the counts.
    """

    __slots__ = (
        "msg_id",
        "after",
        "follow",
        "after_left",
        "follow_left",
        "after_met",
        "follow_met",
        "reason",
        "follow_locations",
    )

    def __init__(self, msg_id: str, after: Dependency, follow: Dependency) -> None:
        self.msg_id = msg_id
        self.after = after
        self.follow = follow
        self.after_left = len(after.msg_ids)
        self.follow_left = len(follow.msg_ids)
        self.after_met = not after.msg_ids
        self.follow_met = not follow.msg_ids
        self.reason: str | None = None
        """Why the dependencies can never be met; None while they still can."""
        self.follow_locations: list[tuple[str, L | None]] = []
        """The follow msg_ids that ended in an accepted way, with where they ran, in the
        order their outcomes arrived."""

    @property
    def ready(self) -> bool:
        """Both dependencies are met as far as outcomes go (follow's place is still open)."""
        return self.after_met and self.follow_met and self.reason is None

    @property
    def unreachable(self) -> bool:
        return self.reason is not None

    def __repr__(self) -> str:
        state = "ready" if self.ready else "unreachable" if self.reason else "waiting"
        return f"<Waiter {self.msg_id} {state}>"


class DependencyGraph(Generic[L]):
    """Outcomes of finished tasks and the tasks waiting for more of them."""

    def __init__(self) -> None:
        self._outcomes: dict[str, Outcome[L]] = {}
        self._waiters: dict[str, Waiter[L]] = {}
        self._waiting_on: dict[str, list[Waiter[L]]] = {}
        # location -> waiters with an accepted follow outcome there (dict as ordered set),
        # so that losing an engine re-checks exactly the tasks that were to follow it
        self._at_location: dict[L, dict[str, None]] = {}

    def __len__(self) -> int:
        """The number of waiting tasks."""
        return len(self._waiters)

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._waiters

    def waiter(self, msg_id: str) -> Waiter[L]:
        """The waiter for ``msg_id`` (KeyError if it is not waiting)."""
        return self._waiters[msg_id]

    def outcome(self, msg_id: str) -> Outcome[L] | None:
        """How ``msg_id`` ended, or None if it has not (or was forgotten)."""
        return self._outcomes.get(msg_id)

    def add(self, msg_id: str, after: Dependency, follow: Dependency) -> Waiter[L]:
        """Start waiting; outcomes already known are applied at once, so the returned waiter
        may already be ready or unreachable. The caller guarantees that every msg_id named
        is either finished or will be resolved later."""
        if msg_id in self._waiters:
            raise ValueError(f"task {msg_id} is already waiting")
        waiter: Waiter[L] = Waiter(msg_id, after, follow)
        self._waiters[msg_id] = waiter
        for dep_id in sorted(after.msg_ids | follow.msg_ids):
            outcome = self._outcomes.get(dep_id)
            if outcome is None:
                self._waiting_on.setdefault(dep_id, []).append(waiter)
            else:
                self._judge(waiter, dep_id, outcome.success, outcome.location)
        return waiter

    def remove(self, msg_id: str) -> None:
        """Stop tracking a waiter (it is being scheduled, or failed). Its entries in the
        per-msg_id index are dropped lazily, when that msg_id resolves."""
        waiter = self._waiters.pop(msg_id)
        for _, location in waiter.follow_locations:
            if location is None:
                continue
            waiting_here = self._at_location.get(location)
            if waiting_here is not None:
                waiting_here.pop(msg_id, None)
                if not waiting_here:
                    del self._at_location[location]

    def resolve(self, msg_id: str, success: bool, location: L | None) -> Sequence[Waiter[L]]:
        """Record a final outcome and return the waiters that named it, already updated.

        A waiter comes back on every outcome it names, not only when it becomes ready: a
        follow dependency with ``all=False`` may gain a usable engine with each one.
        """
        if msg_id in self._outcomes:
            raise ValueError(f"task {msg_id} already has an outcome")
        # made as the tuple it is: a NamedTuple's own __new__ is interpreted Python, called
        # for every finished task (resolve runs for each)
        self._outcomes[msg_id] = tuple.__new__(Outcome, (success, location))
        waiters = self._waiting_on.pop(msg_id, None)
        if waiters is None:
            return ()
        woken: list[Waiter[L]] = []
        for waiter in waiters:
            if self._waiters.get(waiter.msg_id) is waiter:
                self._judge(waiter, msg_id, success, location)
                woken.append(waiter)
        return woken

    def waiters_at(self, location: L) -> list[Waiter[L]]:
        """Waiters with an accepted follow outcome at ``location``: the ones to re-check when
        that location (an engine) goes away."""
        return [self._waiters[msg_id] for msg_id in self._at_location.get(location, ())]

    def pending(self, waiter: Waiter[L]) -> list[str]:
        """The msg_ids a waiter names that have no outcome yet, sorted."""
        named = waiter.after.msg_ids | waiter.follow.msg_ids
        return sorted(dep_id for dep_id in named if dep_id not in self._outcomes)

    def forget(self, msg_ids: Iterable[str]) -> None:
        """Drop the outcomes of purged tasks. Tasks already waiting have used them; a task
        submitted later that names one is refused by the scheduler as unknown."""
        for msg_id in msg_ids:
            self._outcomes.pop(msg_id, None)

    def _judge(self, waiter: Waiter[L], msg_id: str, success: bool, location: L | None) -> None:
        if waiter.reason is not None:
            return
        after = waiter.after
        if msg_id in after.msg_ids:
            waiter.after_left -= 1
            if not waiter.after_met:
                accepted = after.success if success else after.failure
                if accepted:
                    waiter.after_met = not after.all or waiter.after_left == 0
                elif after.all or waiter.after_left == 0:
                    waiter.reason = _unreachable_reason("after", after, msg_id, success)
                    return
        follow = waiter.follow
        if msg_id in follow.msg_ids:
            waiter.follow_left -= 1
            accepted = follow.success if success else follow.failure
            if accepted:
                waiter.follow_locations.append((msg_id, location))
                if location is not None:
                    self._at_location.setdefault(location, {})[waiter.msg_id] = None
                waiter.follow_met = waiter.follow_met or not follow.all or waiter.follow_left == 0
            elif follow.all or (waiter.follow_left == 0 and not waiter.follow_met):
                waiter.reason = _unreachable_reason("follow", follow, msg_id, success)


def _unreachable_reason(kind: str, dependency: Dependency, msg_id: str, success: bool) -> str:
    accepts = "successes" if dependency.success else "failures"
    if dependency.all:
        ended = "succeeded" if success else "failed"
        return f"{kind} dependency {msg_id} {ended}, and this dependency accepts only {accepts}"
    return (
        f"none of the {len(dependency.msg_ids)} {kind} dependencies ended as required "
        f"(accepts only {accepts}; the last, {msg_id}, {'succeeded' if success else 'failed'})"
    )


class Wait:
    """The verdict 'keep waiting': a sentinel type, distinct from every set of locations."""

    def __repr__(self) -> str:
        return "WAIT"


WAIT: Final = Wait()
Placement: TypeAlias = "str | Wait | frozenset[L] | None"


def follow_placement(waiter: Waiter[L], unusable: Callable[[L], str | None]) -> Placement[L]:
    """Where a waiter may run, judged after its outcomes changed.

    Returns a reason it can never run, :data:`WAIT`, or, once it is ready, the locations its
    follow dependency allows (None: anywhere). ``unusable(location)`` says why a location
    cannot take the task ("which is gone"), or None if it can.

    ``follow`` is met where it was met: with ``all=True`` every follow task ended as accepted
    in one place, and the task goes there; with ``all=False`` any usable place of an accepted
    one will do, and while there is none but some follow tasks are pending it waits for them.
    A follow task that never reached a location (the scheduler failed it) offers no place.
    """
    if waiter.reason is not None:
        return waiter.reason
    follow = waiter.follow
    if not follow.msg_ids:
        return None if waiter.ready else WAIT
    if follow.all:
        place: tuple[str, L] | None = None
        for dep_id, location in waiter.follow_locations:
            if location is None:
                return f"follow dependency {dep_id} ended without running anywhere"
            problem = unusable(location)
            if problem is not None:
                return f"follow dependency {dep_id} ran on {location}, {problem}"
            if place is not None and location != place[1]:
                return (
                    f"follow dependencies {place[0]} and {dep_id} ran on {place[1]} and "
                    f"{location}, and all=True needs them in one place"
                )
            place = (dep_id, location)
        if place is None or not waiter.ready:
            return WAIT
        return frozenset((place[1],))
    usable = frozenset(
        location
        for _, location in waiter.follow_locations
        if location is not None and unusable(location) is None
    )
    if usable:
        return usable if waiter.ready else WAIT
    if waiter.follow_left:
        return WAIT
    return "no place where one of its follow dependencies ran can still take it"
