"""The load-balancing task scheduler's decisions, without sockets (sans-I/O).

:class:`SchedulerCore` is fed events (an engine joined or left, a task was submitted, an engine
replied, time passed) and returns the actions the socket shell must carry out: send a task to an
engine (:class:`Dispatch`), answer the client with an error reply (:class:`Fail`), or forward
the engine's reply (:class:`Complete`). Being plain method calls, thousands of schedules can be
tested and profiled in milliseconds.

A task moves through: waiting (dependencies unmet, in the :class:`DependencyGraph`) -> queued
(ready, but no eligible engine has a free slot, or none is registered) -> running (dispatched)
-> finished (one Complete or one Fail, never both, never twice). Retries send a running task
back to queued. Queues are ordered by ``priority`` (higher first), then FIFO, and no queued task
ever has a registered, eligible engine with a free slot (a held engine, below, is not eligible
for a task any engine may run), so a freed slot is refilled from the queue heads alone:
priorities order the queue, they never hold back a task an engine could take.

Rules decided here (the shell and clients rely on them):

- A dependency on a msg_id the scheduler does not know (never submitted, or forgotten) fails the
  task with InvalidDependency (an ImpossibleDependency) at submission: the client drops
  dependencies it knows finished, and waiting on a msg_id that may never come could hang
  forever.
- ``follow`` is met where it was met (see :func:`follow_placement`): the task runs on the live
  engine(s), allowed by its targets, where its follow tasks ran; engines of the same uuid that
  register later do not count. Once a task is queued its allowed engines are fixed.
- ``targets`` naming no registered engine: the task waits, since an engine with that uuid may
  still register; only its ``timeout`` (if any) ends the wait. Empty targets can never be met:
  ImpossibleDependency at submission.
- ``timeout`` runs from submission until the task is dispatched for the first time. At the
  deadline, a task still waiting for dependencies, or queued with no registered engine that may
  run it, fails with DependencyTimeout; a task merely waiting for a free slot keeps its place.
  Retries are not timed, except as below.
- A failure reply with retries left, and an engine lost mid-task with retries left, dispatch the
  task again preferring an engine it has not failed on (if only such engines are busy, one it
  failed on is used rather than waiting). A task pinned by ``follow`` to a lost engine cannot be
  retried and fails with EngineError.
- With a ``timeout``, a failure reply's retry never goes back to an engine the task failed on
  (ipyparallel's rule): once it has failed on every registered engine that may run it, it waits
  for a new engine, and fails with TaskTimeout when the timeout (from submission) has passed.
  Without a timeout that wait could last for ever, so the rule above applies instead.
- An engine that cannot satisfy a task's ``depend`` condition or ``require`` import (its reply
  is an UnmetDependency error) is not a failure and costs no retry: the task goes to an engine
  that has not refused it, and fails with ImpossibleDependency only once every registered
  engine that may run it has (:meth:`SchedulerCore.task_unmet`).
- Every Fail counts as a failure for dependents, as does a Complete of a failed reply.
- A Dispatch the shell could not send (the engine registered but its task connection is not up
  yet) is reported with :meth:`SchedulerCore.engine_unreachable` and sent again every
  ``UNREACHABLE_RETRY`` seconds until ``UNREACHABLE_GRACE`` after the first failure; then the
  task is taken back from that engine (it never reached it, so no retry is spent) and goes to
  another one, or waits in the queue, preferring engines other than that one. It is never left
  with an engine it was not delivered to: an engine the Hub still counts alive (its heart
  beats) but that this scheduler cannot reach would hold it for ever.
- An engine holds at most ``max_outstanding`` tasks (running and queued there), or, with
  ``burst_prefetch`` above 1, up to ``burst_prefetch`` times that while most of its recent
  replies came within ``BURST_GAP`` (half a millisecond) of the one before: it runs tasks far
  shorter than a millisecond, and its last reply is at most ``BURST_HOLD`` (0.1 s) old (tasks
  submitted after a pause may be long ones). Engines of longer tasks keep ``max_outstanding``.
  The cap only bounds prefetch: the policy still chooses among the engines below their cap, so under
  ``leastload`` an engine holds more than ``max_outstanding`` only while every other engine
  that may run the task is at its cap or at least as loaded.
- With ``long_task`` above 0 an engine holds one task at a time while its last task ran at
  least ``long_task`` seconds (from when it got it, or answered the one before, to its
  reply), while its pace is unknown (it has not answered yet, or has held nothing for
  ``BURST_HOLD``), and it holds what it has while it has been silent that long with tasks
  (it runs a long one now): so a task never waits behind a long one on an engine while
  another could run it, as under ipyparallel's scheduler. Engines of shorter tasks prefetch
  as above. A first reply shorter than that lifts the engine to its cap at once.
- With ``burst_packing`` above 0, a burst of such tasks on a host with more than
  ``burst_packing`` engines per core (engines say where they run: ``add_engine``) is kept on
  the first ``burst_packing`` x cores engines of that host while they answer in bursts (a
  reply within ``BURST_GAP`` of the engine's previous one): the host's other engines are
  *held*, and take no task any engine may run (tasks with targets, ``follow`` or refusals
  still go to them), until ``BURST_HOLD`` after the last such burst reply (:mod:`.packing`).
  The policy chooses among the engines not held. Meanwhile a packing engine given a task while
  it held none takes no more until it replies (the task may be long: the next ones wait for
  its reply), and the packing lapses once packing engines that all got their tasks so have not
  replied for ``DRAIN_GAP`` while a few tasks wait in the queue: long tasks submitted right
  after a burst run side by side, not one after another on the packing engines. A host whose
  burst is done (its packing engines hold nothing, no task waits) stays packed through the
  pause that follows, and its next task restarts the clock: the next burst runs where the last
  one did from its first task, and longer tasks are spread ``DRAIN_GAP`` or ``BURST_HOLD``
  after the first of them.
- The last ``finished_memory`` finished msg_ids are remembered (:meth:`SchedulerCore.answered`):
  a reply for one of them is late (its task was failed or resubmitted) and must not reach the
  client; the outcome of a task that falls out of that memory is forgotten.
- Choosing an engine for a task free to run anywhere costs O(log engines) under ``leastload``
  and ``lru`` (:mod:`.free_engines`), O(free engines) under the random policies, and
  O(free eligible engines) for a task with targets, follow or engines to avoid; everything else
  per task is O(1) plus O(its dependencies). Nothing scans all tasks.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from typing import Final

from corral.controller.dependencies import DependencyGraph, Wait, Waiter, follow_placement
from corral.controller.free_engines import FreeEngines
from corral.controller.packing import CpuReader, Hosts, unanswered
from corral.controller.scheduling_placement import Placement
from corral.controller.scheduling_state import (
    BURST_GAP,
    BURST_HOLD,
    BURST_WEIGHT,
    BURSTY,
    DONE,
    FINISHED_MEMORY,
    NEVER_USED,
    STATE_NAMES,
    WAITING,
    Action,
    Complete,
    Dispatch,
    EngineState,
    Fail,
    Finished,
    FinishedMemory,
    Redelivery,
    Task,
    TaskRecord,
    check_long_task,
    some,
)
from corral.controller.task_queues import Deadlines, TaskQueues
from corral.errors import (
    DependencyTimeout,
    EngineError,
    ImpossibleDependency,
    InvalidDependency,
    RemoteError,
    TaskTimeout,
)

POLICIES: Final = ("leastload", "lru", "random", "weighted", "twobin")
#: ipyparallel's names for policies corral has under another name (its ``--scheme``)
POLICY_ALIASES: Final = {"plainrandom": "random"}


class SchedulerCore(Placement):
    """Engine choice, prefetch limits, dependencies, retries and timeouts for task requests.

    Events go in as method calls; each returns the actions to take, in order. Deterministic:
    the same calls (and ``seed``, for the random policies) give the same actions.
    """

    def __init__(
        self,
        policy: str = "leastload",
        max_outstanding: int = 16,
        seed: int | None = None,
        finished_memory: int = FINISHED_MEMORY,
        burst_prefetch: int = 1,
        burst_packing: int = 0,
        read_cpu: CpuReader | None = None,
        own_pid: int | None = None,
        long_task: float = 0.0,
    ) -> None:
        policy = POLICY_ALIASES.get(policy, policy)
        if policy not in POLICIES:
            raise ValueError(f"unknown scheduler policy {policy!r}; choose one of {POLICIES}")
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding must be >= 1, not {max_outstanding}")
        if burst_prefetch < 1:
            raise ValueError(f"burst_prefetch must be >= 1, not {burst_prefetch}")
        self.policy = policy
        self.max_outstanding = max_outstanding
        # an engine answering in bursts may hold this many (see _observe); 1: never more
        self.burst_cap = max_outstanding * burst_prefetch
        # engines grouped by host, for bursts packed on a few of them (0 engines per core: off)
        self._hosts = Hosts(burst_packing, read_cpu, own_pid)
        # seconds from which a task counts as long: its engine then holds one (0: never)
        self.long_task = check_long_task(long_task)
        # replies are watched for bursts, packing or long tasks (_observe); else not at all
        self._observe_replies = (
            self.burst_cap > max_outstanding or burst_packing > 0 or long_task > 0
        )
        self._now = 0.0  # the latest time an event brought (add and remove bring none)
        self._rng = random.Random(seed)
        self._engines: dict[str, EngineState] = {}
        self._free = FreeEngines(policy)  # registered engines below their cap
        self._records: dict[str, TaskRecord] = {}  # every unfinished task
        self._graph: DependencyGraph[EngineState] = DependencyGraph()
        self._queued = TaskQueues()  # tasks ready to run, waiting for a free slot
        self._deadlines = Deadlines()
        self._running = 0
        self._seq = 0
        self._clock = 0
        self._registrations = 0
        self._finished = FinishedMemory(finished_memory)
        self._unreachable = Redelivery()

    # ------------------------------------------------------------------ events

    def add_engine(
        self,
        engine_uuid: str,
        machine: str | None = None,
        cpus: Iterable[int] = (),
        pid: int | None = None,
    ) -> list[Action]:
        """Register an engine and give it queued work at once. A uuid seen before registers a
        new engine: ``follow`` never sends work to a restarted one. ``machine`` and ``cpus``:
        where it runs and the CPU ids it may use, for packing bursts (None or no ids: unknown,
        never packing nor held); ``pid``: its process, when it runs beside the scheduler (a
        packing is not lapsed while its engines wait for a CPU: ``read_cpu``, :mod:`.packing`)."""
        if engine_uuid in self._engines:
            raise ValueError(f"engine {engine_uuid} is already registered")
        self._registrations += 1
        engine = EngineState(engine_uuid, NEVER_USED + self._registrations)
        engine.cap = self.max_outstanding
        engine.pid = pid
        self._engines[engine_uuid] = engine
        cpu_ids = frozenset(cpus)
        released = self._hosts.add(engine, machine, cpu_ids) if machine and cpu_ids else []
        self._free.put(engine)
        actions: list[Action] = []
        exhausted = self._deadlines.exhausted
        for msg_id, record in list(exhausted.items()):
            if engine.load >= engine.cap:  # max_outstanding: a new engine
                break
            if record.allows(engine) and engine_uuid not in record.avoid:
                del exhausted[msg_id]
                self._dispatch(record, engine, actions)
        self._fill(engine, actions)
        self._release_held(released, actions)
        return actions

    def remove_engine(self, engine_uuid: str) -> list[Action]:
        """An engine died or unregistered: retry or fail what it was running, and fail tasks
        that ``follow`` ties to it. An unknown uuid is ignored."""
        engine = self._engines.pop(engine_uuid, None)
        if engine is None:
            return []
        engine.alive = False
        self._free.remove(engine_uuid)
        actions: list[Action] = []
        self._release_held(self._hosts.remove(engine), actions)  # before the retries: they
        # may go to an engine that packs in its place
        finished: Finished = deque()
        lost = list(engine.running.values())
        engine.running.clear()
        engine.load = 0
        self._running -= len(lost)
        for record in lost:
            record.engine = None
            lost_msg = f"engine {engine_uuid} was lost while running task {record.task.msg_id}"
            if record.pinned is not None:
                record.pinned = frozenset(e for e in record.pinned if e.alive)
            if record.pinned is not None and not record.pinned:
                reason = f"{lost_msg}, and follow ties the task to that engine"
                self._fail(record, EngineError, reason, actions, finished)
            elif record.retries_left > 0:
                self._retry(record, engine_uuid, actions)
            else:
                reason = f"{lost_msg}, and it has no retries left"
                self._fail(record, EngineError, reason, actions, finished)
        self._drop_pinned_to(engine, actions, finished)
        for waiter in self._graph.waiters_at(engine):
            self._evaluate(waiter, None, actions, finished)
        self._settle(finished, None, actions)
        return actions

    def submit(self, task: Task, now: float) -> list[Action]:
        """Accept a task; dispatch it now if its dependencies allow and an engine has room.
        A msg_id that is unfinished, or finished and not forgotten, is a ValueError."""
        self._now = now
        msg_id = task.msg_id
        records, graph = self._records, self._graph
        if msg_id in records or graph.outcome(msg_id) is not None:
            raise ValueError(f"task {msg_id} was already submitted")
        named = task.after.msg_ids | task.follow.msg_ids
        unknown = (  # before this task's own record: a task naming itself is refused
            sorted(m for m in named if m not in records and graph.outcome(m) is None)
            if named
            else []
        )
        deadline = None if task.timeout is None else now + task.timeout
        record = records[msg_id] = TaskRecord(task, deadline, task.retries)
        if deadline is not None:
            self._seq += 1
            self._deadlines.add(deadline, self._seq, record)
        actions: list[Action] = []
        if not named and (task.targets is None or task.targets):
            self._enqueue_or_dispatch(record, actions)
            return actions
        finished: Finished = deque()
        if unknown:
            reason = (
                f"task {msg_id} depends on {some(unknown)}, unknown to the scheduler (never "
                "submitted, or forgotten); leave out dependencies that already finished"
            )
            self._fail(record, InvalidDependency, reason, actions, finished)
        elif task.targets is not None and not task.targets:
            reason = f"task {msg_id} has empty targets: no engine may ever run it"
            self._fail(record, ImpossibleDependency, reason, actions, finished)
        else:
            self._evaluate(graph.add(msg_id, task.after, task.follow), now, actions, finished)
        self._settle(finished, now, actions)
        return actions

    def task_finished(
        self, msg_id: str, engine_uuid: str, success: bool, now: float, *, retry: bool = True
    ) -> list[Action]:
        """The engine replied. A failure with retries left is dispatched again (no Complete)
        unless ``retry`` is False (the task was aborted); otherwise the reply is final:
        Complete, then the freed slot goes to the oldest queued task, then dependents are
        woken. A reply for a task not running on that engine (it was retried elsewhere once
        the engine was declared lost) is stale: no actions, drop it."""
        record = self._records.get(msg_id)
        engine = None if record is None else record.engine
        self._now = now
        if record is None or engine is None or engine.uuid != engine_uuid:
            return []
        if self._observe_replies:
            self._observe(engine, now)
        final = success or not retry or record.retries_left <= 0
        # a final reply's freed slot is refilled at once (_fill), which sets the engine's
        # place among the free ones: marking it free first would only be undone
        self._release(record, engine, mark_free=not final)
        actions: list[Action] = []
        if not final:
            deadline = record.deadline
            if deadline is not None and not self._untried_engine(record, engine_uuid):
                self._wait_for_new_engine(record, engine_uuid, deadline, now, actions)
            else:
                self._retry(record, engine_uuid, actions)
            self._fill(engine, actions)
            return actions
        del self._records[msg_id]
        record.state = DONE
        self._remember(msg_id)
        actions.append(Complete(msg_id))
        if not self._fill(engine, actions):
            self._mark_free(engine)
        woken = self._graph.resolve(msg_id, success, engine)
        if woken:  # most tasks have no dependents: no cascade to run (_settle)
            finished: Finished = deque()
            for waiter in woken:
                self._evaluate(waiter, now, actions, finished)
            self._settle(finished, now, actions)
        return actions

    def task_unmet(self, msg_id: str, engine_uuid: str, now: float, why: str = "") -> list[Action]:
        """The engine replied that it cannot meet the task's ``depend``/``require``: send the
        task to an engine that has not refused it (no retry is spent), or fail it with
        ImpossibleDependency if every registered engine that may run it has. A stale reply
        (the task is not running there) gives no actions. ``why``: the engine's reason, quoted
        in the final error."""
        self._now = now
        record = self._records.get(msg_id)
        engine = None if record is None else record.engine
        if record is None or engine is None or engine.uuid != engine_uuid:
            return []
        self._release(record, engine)
        record.refused = record.refused | {engine_uuid}
        record.avoid = record.avoid | {engine_uuid}
        actions: list[Action] = []
        if any(record.allows(other) for other in self._engines.values()):
            self._enqueue_or_dispatch(record, actions)
            self._fill(engine, actions)
            return actions
        finished: Finished = deque()
        reason = (
            f"no engine can run task {msg_id}: each of the {len(record.refused)} engine(s) it "
            "was tried on could not meet its depend condition or require imports"
            + (f" (last: {why})" if why else "")
        )
        self._fail(record, ImpossibleDependency, reason, actions, finished)
        self._fill(engine, actions)
        self._settle(finished, now, actions)
        return actions

    def _take_back(self, record: TaskRecord, actions: list[Action]) -> None:
        """The task never reached its engine within the grace (see the module's rules): it
        goes to another engine, or back to the queue, avoiding that one; no retry is spent."""
        engine = record.engine
        assert engine is not None
        self._release(record, engine)
        record.avoid = record.avoid | {engine.uuid}
        self._enqueue_or_dispatch(record, actions)
        self._fill(engine, actions)

    def _release(self, record: TaskRecord, engine: EngineState, *, mark_free: bool = True) -> None:
        """The task no longer runs on ``engine``: its slot is free again (marked so unless
        ``mark_free`` is False: then the caller does, with :meth:`_mark_free`, before any
        engine is picked)."""
        del engine.running[record.task.msg_id]
        engine.load -= 1
        self._running -= 1
        if mark_free:
            self._mark_free(engine)
        record.engine = None

    def _mark_free(self, engine: EngineState) -> None:
        """A live engine's load changed: below its cap, it is free with its new load."""
        if engine.alive:
            if engine.load < engine.cap:
                self._free.put(engine)
            else:  # its cap went down (see _observe)
                self._free.remove(engine.uuid)

    def _observe(self, engine: EngineState, now: float) -> None:
        """An engine replied at ``now``: how much it may hold (see the module's rules). A reply
        within ``BURST_GAP`` of its previous one means it finished tasks far shorter than a
        millisecond in a row (an engine runs one task at a time, and sends the replies of a
        short run together); while most of its recent replies came so, it may hold
        ``burst_prefetch`` times ``max_outstanding``, so that each time it gets a core it
        finds a long run queued: an engine woken for a few tasks costs more per task than the
        tasks, most of all with many engines on few cores. Engines of longer tasks (replies
        apart) keep ``max_outstanding``, so such tasks are spread as before."""
        burst = now - engine.last_reply < BURST_GAP
        if self.long_task:
            engine.runs_long = now - engine.working_since() >= self.long_task
        engine.last_reply = now
        engine.burstiness += ((1.0 if burst else 0.0) - engine.burstiness) * BURST_WEIGHT
        engine.cap = self.burst_cap if engine.burstiness >= BURSTY else self.max_outstanding
        if engine.packs:  # its host packs while burst replies come (.packing)
            self._hosts.replied(engine, now, burst)

    def _cap(self, engine: EngineState) -> int:
        """How many tasks ``engine`` may hold now: its cap, but ``max_outstanding`` once its
        last reply is ``BURST_HOLD`` old (tasks submitted after a pause may be long ones), and
        no more than it holds while it packs a burst and got those while idle and has not
        answered since (:mod:`.packing`)."""
        cap = engine.cap
        now = self._now
        if cap > self.max_outstanding and now - engine.last_reply > BURST_HOLD:
            cap = self.max_outstanding
        if engine.packs and unanswered(engine):
            return min(cap, engine.load)
        if self.long_task and cap > 1:
            return self._long_task_cap(engine, cap, now)
        return cap

    def _long_task_cap(self, engine: EngineState, cap: int, now: float) -> int:
        """``cap``, or less under the long-task rule (see the module's rules): what it holds
        while it has been silent ``long_task`` with tasks, one while its last task ran long
        or its pace is unknown (:meth:`_dispatch` forgets it after a pause)."""
        load = engine.load
        if load and now - engine.working_since() >= self.long_task:
            return min(cap, load)
        return 1 if engine.runs_long else cap

    def reject(self, msg_id: str, error: type[Exception], reason: str) -> list[Action]:
        """A request the shell could not turn into a task (wrong type, bad metadata, a msg_id
        already submitted): its Fail, and it counts as answered (see :meth:`answered`). None
        for a msg_id this scheduler holds: that task keeps its one outcome."""
        if msg_id in self._records:
            return []
        self._remember(msg_id)
        return [Fail(msg_id, error, reason)]

    def answered(self, msg_id: str) -> bool:
        """Whether this scheduler finished ``msg_id`` lately: a reply for it now is late (the
        task was failed or resubmitted) and must be dropped. A reply for a msg_id neither
        running nor answered is for a task sent before a controller restart."""
        return msg_id in self._finished

    def engine_unreachable(self, msg_id: str, engine_uuid: str, now: float) -> None:
        """The shell could not send the Dispatch of ``msg_id`` to ``engine_uuid`` (its task
        connection is not up yet, or it just died): :meth:`tick` sends it again (see the
        module's rules). Ignored if the task is no longer running there."""
        if self._running_on(msg_id) == engine_uuid:
            self._unreachable.failed(msg_id, engine_uuid, now)

    def _running_on(self, msg_id: str) -> str | None:
        record = self._records.get(msg_id)
        engine = None if record is None else record.engine
        return None if engine is None else engine.uuid

    def _remember(self, msg_id: str) -> None:
        """Remember the newest finished tasks; forget the outcome of the one that falls out,
        so neither grows with every task ever run (a task that names it later is refused)."""
        if self._unreachable.entries:
            self._unreachable.discard(msg_id)
        forgotten = self._finished.add(msg_id)
        if forgotten is not None:
            self.forget([forgotten])

    def tick(self, now: float) -> list[Action]:
        """Send again the Dispatches due (see :meth:`engine_unreachable`) and fail the tasks
        whose timeout ran out by ``now`` (see the module's rules)."""
        self._now = now
        actions: list[Action] = []
        if self._hosts.next_check is not None:
            waiting = self._queued.waiting_for_any()
            lapse = self._hosts.next_lapse(waiting)
            if lapse is not None and lapse <= now:  # (due also sets the next check)
                self._release_held(self._hosts.due(now, waiting), actions)
        if self._unreachable.entries:
            for msg_id, engine_uuid, expired in self._unreachable.due(now, self._running_on):
                record = self._records[msg_id]
                if expired:
                    self._take_back(record, actions)
                else:
                    actions.append(Dispatch(msg_id, engine_uuid, record.attempts - 1))
        finished: Finished = deque()
        for record in self._deadlines.due(now):
            msg_id = record.task.msg_id
            if self._deadlines.exhausted.pop(msg_id, None) is not None:
                self._fail(record, TaskTimeout, self._exhausted_reason(record), actions, finished)
                continue
            if record.state == WAITING:
                unmet = self._graph.pending(self._graph.waiter(msg_id))
                self._graph.remove(msg_id)
                detail = f"still waiting for {some(unmet)}"
            elif not self._has_eligible_engine(record):
                detail = "no registered engine may run it"
            else:
                continue
            reason = f"task {msg_id} timed out after {record.task.timeout} s: {detail}"
            self._fail(record, DependencyTimeout, reason, actions, finished)
        self._settle(finished, now, actions)
        return actions

    def next_deadline(self) -> float | None:
        """The earliest time ``tick`` may have work. It may then find none (the task went on
        to wait only for a free slot), but never has work earlier."""
        when = self._deadlines.earliest()
        retry = self._unreachable.next_deadline() if self._unreachable.entries else None
        if retry is not None and (when is None or retry < when):
            when = retry
        check = self._hosts.next_check  # a packing may lapse then (held engines released)
        if check is not None:
            check = self._hosts.next_lapse(self._queued.waiting_for_any())
        if check is not None and (when is None or check < when):
            return check
        return when

    def forget(self, msg_ids: Iterable[str]) -> None:
        """Drop the outcomes of purged tasks, so bookkeeping does not grow without bound.
        Unfinished msg_ids are left alone; later tasks naming a forgotten one are refused."""
        self._graph.forget([m for m in msg_ids if m not in self._records])

    # ------------------------------------------------------------------ introspection

    def outstanding(self, engine_uuid: str) -> int:
        """Tasks in flight on this engine (0 for an engine not registered)."""
        engine = self._engines.get(engine_uuid)
        return 0 if engine is None else engine.load

    def capacity(self, engine_uuid: str) -> int:
        """Tasks this engine may hold now: ``max_outstanding``, more while it answers in
        bursts (see the module's rules); 0 for an engine not registered."""
        engine = self._engines.get(engine_uuid)
        return 0 if engine is None else self._cap(engine)

    def held(self, engine_uuid: str) -> bool:
        """Whether this engine takes no task that any engine may run now (a burst is packed
        on other engines of its host; see the module's rules)."""
        engine = self._engines.get(engine_uuid)
        return engine is not None and engine.held

    def packed_until(self, engine_uuid: str) -> float | None:
        """When the packing of this engine's host lapses unless a packing engine answers (in a
        burst) before (:meth:`.packing.Hosts.lapses_at`; None: its host is not packing, or the
        engine is not registered)."""
        engine = self._engines.get(engine_uuid)
        group = None if engine is None else engine.group
        if group is None or not group.packing:
            return None
        return self._hosts.lapses_at(group, self._queued.waiting_for_any())

    def packing_counts(self) -> dict[str, int]:
        """How many times a host started packing a burst, and how many times a packing lapsed
        (:mod:`.packing`): the scheduler's exit counts."""
        return dict(self._hosts.counts)

    def waiting_count(self) -> int:
        """Tasks submitted and not dispatched: waiting for dependencies, an engine or a slot."""
        return len(self._records) - self._running

    def task_state(self, msg_id: str) -> str | None:
        """'waiting' (dependencies), 'queued' (an engine or a slot) or 'running'; None once
        finished, or never seen."""
        record = self._records.get(msg_id)
        return None if record is None else STATE_NAMES[record.state]

    # ------------------------------------------------------------------ dependencies

    def _evaluate(
        self,
        waiter: Waiter[EngineState],
        now: float | None,
        actions: list[Action],
        finished: Finished,
    ) -> None:
        """Act on a waiter whose dependencies changed: keep it, fail it, or queue it. ``now``
        None (an engine left) skips the late-timeout check; tick catches those."""
        record = self._records[waiter.msg_id]
        verdict = follow_placement(waiter, record.unusable)
        if isinstance(verdict, Wait):
            return
        self._graph.remove(waiter.msg_id)
        if isinstance(verdict, str):
            self._fail(record, ImpossibleDependency, verdict, actions, finished)
        elif now is not None and record.deadline is not None and now > record.deadline:
            reason = f"task {waiter.msg_id}: dependencies met after its {record.task.timeout} s"
            self._fail(record, DependencyTimeout, f"{reason} timeout", actions, finished)
        else:
            record.pinned = verdict
            self._enqueue_or_dispatch(record, actions)

    def _settle(self, finished: Finished, now: float | None, actions: list[Action]) -> None:
        """Record final outcomes and act on the dependents they wake, until nothing changes.
        A loop, not recursion: failure cascades down a long chain stay flat."""
        graph = self._graph
        while finished:
            record, success, location = finished.popleft()
            for waiter in graph.resolve(record.task.msg_id, success, location):
                self._evaluate(waiter, now, actions, finished)

    def _fail(
        self,
        record: TaskRecord,
        error: type[RemoteError],
        reason: str,
        actions: list[Action],
        finished: Finished,
    ) -> None:
        del self._records[record.task.msg_id]
        record.state = DONE
        self._remember(record.task.msg_id)
        actions.append(Fail(record.task.msg_id, error, reason))
        finished.append((record, False, None))

    def _drop_pinned_to(
        self, engine: EngineState, actions: list[Action], finished: Finished
    ) -> None:
        """After ``engine`` left, fail queued tasks that follow allowed only there."""
        for record in self._queued.drop_pinned_to(engine):
            msg_id = record.task.msg_id
            reason = f"follow ties task {msg_id} to engine {engine.uuid}, which is gone"
            self._fail(record, ImpossibleDependency, reason, actions, finished)
