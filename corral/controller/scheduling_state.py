"""The values of the scheduler core (:mod:`corral.controller.scheduling`): the tasks it takes,
the actions it returns to its shell (:mod:`corral.controller.scheduler_shell`), the records it
keeps per engine and per task, and two small tables of its own (recently finished tasks, and
Dispatches to send again). No sockets and no clock: time comes in as ``now``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from corral.protocol.dependency import Dependency

if TYPE_CHECKING:
    from corral.controller.packing import HostGroup

FINISHED_MEMORY: Final = 100_000  # recent tasks whose late replies are recognised
BURST_GAP: Final = 0.0005  # seconds: a reply this soon after the engine's previous one is a burst
BURST_WEIGHT: Final = 0.125  # of the newest reply in an engine's burstiness (an average)
BURSTY: Final = 0.5  # burstiness from which an engine may hold burst_prefetch times more
BURST_HOLD: Final = 0.1  # seconds after its last reply an engine still counts as bursting
UNREACHABLE_GRACE: Final = 5.0  # seconds to keep sending to an engine not yet connected
UNREACHABLE_RETRY: Final = 0.01  # seconds between those attempts
BURST_PREFETCH: Final = 4
"""The controller's default ``burst_prefetch`` (``--burst-prefetch``): an engine that answers in
bursts (tasks far shorter than a millisecond) may hold this many times ``max_outstanding``
(:class:`~corral.controller.scheduling.SchedulerCore`): with many engines on few cores each
wake of an engine then finds a long run of tasks (bench/README.md, round eight). 1: always
``max_outstanding``."""
LONG_TASK: Final = 0.1
"""The controller's default ``long_task`` (``--long-task``), seconds: an engine whose last task
ran at least this long, or whose pace is unknown (it has not answered yet, or not for
``BURST_HOLD``), holds one task at a time, as ipyparallel's scheduler holds every engine
(its ``hwm`` of 1): a task never waits behind a long one while another engine is idle. Shorter
tasks keep the prefetch of ``max_outstanding``, which hides the round trip to the engine. 0:
always ``max_outstanding``."""
MAX_BURST_PREFETCH: Final = 64
"""The largest ``burst_prefetch`` a controller takes: more would only let one engine hoard a
burst of tasks other engines could run."""


def check_long_task(value: object) -> float:
    """``value`` as seconds if it is a number from 0 to an hour; ValueError saying so otherwise
    (0 turns the one-at-a-time rule for long tasks off)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        raise ValueError(
            f"long_task must be a number of seconds from 0 (off) to 3600, not {value!r}"
        )
    return float(value)


def check_burst_prefetch(value: object) -> int:
    """``value`` if it is a whole number from 1 to :data:`MAX_BURST_PREFETCH`; ValueError
    saying so otherwise (the controller's check of its setting, before any process starts)."""
    return check_setting(
        "burst_prefetch", value, 1, MAX_BURST_PREFETCH, "never more than max_outstanding"
    )


def check_setting(name: str, value: object, low: int, high: int, low_means: str) -> int:
    """``value`` if it is a whole number from ``low`` (which ``low_means``) to ``high``;
    ValueError naming the setting ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} ({low_means}) to {high}, not {value}")
    return value


@dataclass(frozen=True, init=False)
class Task:
    """What the scheduler needs to know of an ``apply_request``: its metadata, decoded.

    Its ``__init__`` is written out (as a dataclass's would be, with its checks): compiled
    (``make native``), a dataclass's generated ``__init__`` stays interpreted Python, called
    through the type for every request; this one is C (for three fields, 0.44 -> 0.04 us)."""

    msg_id: str
    after: Dependency = Dependency.EMPTY
    follow: Dependency = Dependency.EMPTY
    targets: frozenset[str] | None = None
    timeout: float | None = None
    retries: int = 0
    priority: int = 0

    def __init__(
        self,
        msg_id: str,
        after: Dependency = Dependency.EMPTY,
        follow: Dependency = Dependency.EMPTY,
        targets: frozenset[str] | None = None,
        timeout: float | None = None,
        retries: int = 0,
        priority: int = 0,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries}")
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be None or >= 0 seconds, not {timeout}")
        object.__setattr__(self, "msg_id", msg_id)
        object.__setattr__(self, "after", after)
        object.__setattr__(self, "follow", follow)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "retries", retries)
        object.__setattr__(self, "priority", priority)

    @classmethod
    def plain(cls, msg_id: str) -> Task:
        """``Task(msg_id)``, equal to it and as frozen, for a request that names no scheduling
        field (nearly every one): its fields are set in one step instead of the frozen
        ``__init__``'s ``object.__setattr__`` per field (the defaults need no check), about
        0.16 us instead of 0.6 per request. Compiled (``make native``) a Task has no
        ``__dict__`` and is built by its own ``__init__``, called as ``Task`` (C), not
        through ``cls`` (the type's generic call)."""
        if _PLAIN_FIELDS is None:
            return Task(msg_id)
        task = object.__new__(cls)
        fields = task.__dict__
        fields.update(_PLAIN_FIELDS)
        fields["msg_id"] = msg_id
        return task


_PLAIN_FIELDS: Final[dict[str, Any] | None] = getattr(Task(""), "__dict__", None)
"""The fields of a task with every default (:meth:`Task.plain`; None when compiled)."""


_NO_ENGINES: Final[frozenset[str]] = frozenset()


@dataclass(frozen=True, slots=True, init=False)
class Dispatch:
    """Send the task to this engine. ``attempt`` is 0 at first and counts retries, so the
    shell knows when it must re-sign the request. (Its ``__init__`` written out, as
    :class:`Task`'s: one per dispatch.)"""

    msg_id: str
    engine_uuid: str
    attempt: int

    def __init__(self, msg_id: str, engine_uuid: str, attempt: int) -> None:
        object.__setattr__(self, "msg_id", msg_id)
        object.__setattr__(self, "engine_uuid", engine_uuid)
        object.__setattr__(self, "attempt", attempt)


@dataclass(frozen=True, slots=True)
class Fail:
    """Answer the client with an error reply of this class; the task is finished."""

    msg_id: str
    error: type[Exception]  # a RemoteError, or the ProtocolError/TypeError of a bad request
    reason: str


@dataclass(frozen=True, slots=True, init=False)
class Complete:
    """Forward the engine's reply to the client; the task is finished. (Its ``__init__``
    written out, as :class:`Task`'s: one per task.)"""

    msg_id: str

    def __init__(self, msg_id: str) -> None:
        object.__setattr__(self, "msg_id", msg_id)


Action: TypeAlias = Dispatch | Fail | Complete

WAITING, QUEUED, RUNNING, DONE = range(4)
STATE_NAMES: Final = ("waiting", "queued", "running")
NEVER_USED: Final = -(2**62)  # below every dispatch clock value: new engines count as LRU


@dataclass(eq=False, slots=True)
class EngineState:
    """One registered engine; a re-registered uuid gets a new one (identity matters)."""

    uuid: str
    last_used: int  # the dispatch clock when it last got a task
    load: int = 0
    cap: int = 1  # tasks it may hold now (the core sets it: SchedulerCore._observe)
    alive: bool = True
    running: dict[str, TaskRecord] = field(default_factory=dict)
    last_reply: float = float("-inf")  # when its previous reply came
    busy_since: float = float("-inf")  # when it last got a task while it held none
    burstiness: float = 0.0  # the recent share of its replies that came in bursts
    runs_long: bool = True  # its last task ran long_task or more (or none answered yet)
    # where it runs, and its part in a burst there (corral.controller.packing): its bursts
    # keep its group packing (packs), or it takes no task any engine may run (held)
    group: HostGroup | None = None
    cpus: frozenset[int] = frozenset()
    pid: int | None = None  # its process on the scheduler's machine, whose CPU time it reads
    packs: bool = False
    held: bool = False

    def __str__(self) -> str:
        return f"engine {self.uuid}"

    def working_since(self) -> float:
        """When it began the task it runs now (or answered last): its previous reply, or
        when it got a task while holding none if that came later."""
        return self.last_reply if self.last_reply > self.busy_since else self.busy_since


@dataclass(eq=False, slots=True, init=False)
class TaskRecord:
    """One unfinished task and where it stands. (Its ``__init__`` written out, as
    :class:`Task`'s: one per task.)"""

    task: Task
    deadline: float | None
    retries_left: int
    state: int
    engine: EngineState | None
    attempts: int  # dispatches so far
    avoid: frozenset[str]  # engine uuids it failed on or was lost on
    refused: frozenset[str]  # engine uuids that cannot meet its depend/require
    pinned: frozenset[EngineState] | None  # where follow allows it to run
    seq: int  # of its current queue entries; older entries are stale

    def __init__(
        self, task: Task, deadline: float | None, retries_left: int, state: int = WAITING
    ) -> None:
        self.task = task
        self.deadline = deadline
        self.retries_left = retries_left
        self.state = state
        self.engine = None
        self.attempts = 0
        self.avoid = _NO_ENGINES
        self.refused = _NO_ENGINES
        self.pinned = None
        self.seq = 0

    def unusable(self, engine: EngineState) -> str | None:
        """Why follow may not send this task to ``engine`` (None: it may)."""
        if not engine.alive:
            return "which is gone"
        targets = self.task.targets
        if targets is not None and engine.uuid not in targets:
            return "which the task's targets exclude"
        return None

    def allows(self, engine: EngineState) -> bool:
        targets = self.task.targets
        pinned = self.pinned
        return (
            (targets is None or engine.uuid in targets)
            and (pinned is None or engine in pinned)
            and engine.uuid not in self.refused
        )


# tasks whose outcome is final, with their success and where they ran, for their dependents
Finished: TypeAlias = "deque[tuple[TaskRecord, bool, EngineState | None]]"
QueueEntry: TypeAlias = tuple[int, int, TaskRecord]  # (-priority, seq, record): a heap key


def is_current(entry: QueueEntry) -> bool:
    _, seq, record = entry
    return record.state == QUEUED and record.seq == seq


class FinishedMemory:
    """The newest ``capacity`` finished msg_ids, oldest first.

    A set for the lookups and a deque for the order, not one dict used as a queue: a dict's
    first key is found by walking its entries from the start, over every key deleted from the
    front since the dict last resized, so once full (every task past the first ``capacity``)
    each add walked tens of thousands of deleted entries: 15 us a task at the default
    100,000, more than the rest of the scheduler's decisions for it."""

    def __init__(self, capacity: int = FINISHED_MEMORY) -> None:
        self.capacity = capacity
        self._msg_ids: set[str] = set()
        self._order: deque[str] = deque()

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._msg_ids

    def __len__(self) -> int:
        return len(self._order)

    def add(self, msg_id: str) -> str | None:
        """Remember ``msg_id`` (one remembered already keeps its place); the oldest one it
        pushed out (to be forgotten), if any."""
        msg_ids = self._msg_ids
        if msg_id in msg_ids:
            return None
        msg_ids.add(msg_id)
        order = self._order
        order.append(msg_id)
        if len(order) <= self.capacity:
            return None
        oldest = order.popleft()
        msg_ids.discard(oldest)
        return oldest


@dataclass(slots=True)
class _Undelivered:
    engine_uuid: str
    since: float  # the first failure
    retry_at: float | None  # None: sent again, waiting to hear whether that failed too
    expired: bool = False  # the grace ran out: take the task back from that engine


class Redelivery:
    """Dispatches the shell could not send: each is due again ``UNREACHABLE_RETRY`` after it
    failed, until ``UNREACHABLE_GRACE`` after its first failure; then it is due once more,
    marked expired, for the core to take the task back from that engine."""

    def __init__(self) -> None:
        # read by the core (never changed there) before each call: truthy while a Dispatch
        # awaits its redelivery, which is rare; a dict tested as it is, not a method called
        # on every dispatch and decision (four times per task)
        self.entries: dict[str, _Undelivered] = {}

    def failed(self, msg_id: str, engine_uuid: str, now: float) -> None:
        entry = self.entries.get(msg_id)
        since = now if entry is None or entry.engine_uuid != engine_uuid else entry.since
        expired = now - since > UNREACHABLE_GRACE
        retry_at = now if expired else now + UNREACHABLE_RETRY
        self.entries[msg_id] = _Undelivered(engine_uuid, since, retry_at, expired)

    def discard(self, msg_id: str) -> None:
        self.entries.pop(msg_id, None)

    def due(
        self, now: float, running_on: Callable[[str], str | None]
    ) -> Iterator[tuple[str, str, bool]]:
        """(msg_id, engine uuid, expired) of each Dispatch to send again now, or (expired) to
        take back; entries whose task no longer runs on that engine (``running_on``) are
        dropped."""
        for msg_id, entry in list(self.entries.items()):
            if entry.retry_at is None or entry.retry_at > now:
                continue
            if running_on(msg_id) != entry.engine_uuid:
                del self.entries[msg_id]  # finished, or sent elsewhere since
                continue
            if entry.expired:
                del self.entries[msg_id]
            else:
                entry.retry_at = None
            yield msg_id, entry.engine_uuid, entry.expired

    def next_deadline(self) -> float | None:
        due = [e.retry_at for e in self.entries.values() if e.retry_at is not None]
        return min(due) if due else None


_load_then_lru = attrgetter("load", "last_used")
_last_used = attrgetter("last_used")


def choose_engine(
    policy: str, rng: random.Random, candidates: Sequence[EngineState]
) -> EngineState:
    """One of the free ``candidates`` (never empty), by the scheduler's policy."""
    if policy == "leastload":
        return min(candidates, key=_load_then_lru)
    if policy == "lru":
        return min(candidates, key=_last_used)
    if policy == "random":
        return rng.choice(candidates)
    if policy == "twobin":  # ipyparallel's: two drawn at random (maybe twice the same), the LRU
        return min(rng.choice(candidates), rng.choice(candidates), key=_last_used)
    weights = [1.0 / (1 + engine.load) for engine in candidates]
    return rng.choices(candidates, weights)[0]


def some(msg_ids: Sequence[str], limit: int = 5) -> str:
    """The first few msg_ids, for an error message."""
    shown = ", ".join(msg_ids[:limit])
    return shown if len(msg_ids) <= limit else f"{shown} and {len(msg_ids) - limit} more"
