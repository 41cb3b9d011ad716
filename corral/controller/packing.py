"""Bursts of tiny tasks packed on a few engines of a host with far fewer cores than engines.

With 64 engines on 2 cores, every engine that holds tasks in a burst of sub-millisecond ones
waits its turn for a core and resumes with its caches cold after the 63 others ran: at 64
engines the engines cost about a quarter more CPU per task than at 4, and 64 engines ran
fewer tasks per second than 4 (bench/README.md, rounds eight, nine and eleven). Spreading such
a burst buys nothing there (the cores are the limit, not the engines), so while it lasts the
scheduler keeps it on a few engines of that host, which stay warm, and lets the others sleep.

Which engines share CPUs, and how many: each engine reports the machine it runs on (its
kernel's boot id: containers of one kernel share its CPUs) and the CPU ids it may run on
(``cpus`` in its registration, docs/wire-flows.md). The engines of one machine form a
:class:`HostGroup`; its cores are the union of their CPU ids (engines pinned to one core each
count as many cores as engines: they are not oversubscribed). A group with more than
``per_core`` times its cores engines is *oversubscribed*; its first ``per_core`` x cores
engines, in registration order, are its *packing* engines (:attr:`EngineState.packs`).

The rule (the scheduler core applies it, :mod:`corral.controller.scheduling`): a reply of a
packing engine within ``BURST_GAP`` of its previous one (a burst reply: it ran a task far
shorter than a millisecond, the burst rule's test) starts or renews the *packing* of its group,
and the group's other engines are *held* (:attr:`EngineState.held`): they take no task that any
engine may run. They still take tasks with targets, ``follow`` or engines that refused them
(those go where they must), and finish what they hold. The packing lapses ``BURST_HOLD``
(0.1 s) after the last such burst reply, as a raised burst cap does (tasks submitted after a pause
may be long ones, and a burst whose packing engines all got stuck in long tasks must not keep
the other engines idle): then the held engines are released and take queued tasks at once
(:meth:`Hosts.due`, on the core's tick).

A pause does not end a packing. When ``BURST_HOLD`` passes with the packing engines holding
nothing and no task waiting, the burst is done and nothing can be stuck: the host is *kept*
packing (``packing_until`` is :data:`IDLE`) until its next task. And whenever the host's work
resumes (a packing engine gets a task while none of them holds one, :meth:`Hosts.woke`), the
clocks start from then: the packing lapses ``BURST_HOLD`` later at the earliest unless a
packing engine replies in a burst, and ``DRAIN_GAP`` (below) counts from then. Without this a
burst after a pause of 0.1 s or more was spread over every engine until a packing engine
replied in a burst (5% of 5,000 no-ops ran on 60 cold engines), and so, sometimes, was one a
few tens of milliseconds after the previous burst: it lapsed when the rest of the previous
one's ``BURST_HOLD`` ran out, before its own first replies (bench/README.md, round
twenty-one). What it costs: a batch of longer tasks after a burst, more of them than the held
engines, waits up to ``BURST_HOLD`` after the first of them (one task on each packing engine
meanwhile) before it is spread.

The test is each reply's, not the burst rule's average over recent replies: that average needs
a few replies to rise after a pause, during which leastload spreads a thousand tasks over 64
engines (bench/README.md, round eleven), and a packing engine's reply after a long task, not a
burst, must not renew the packing.

While a group packs, a packing engine given a task while it held none takes no more until it
has replied (:func:`unanswered`): a task given to an idle engine may be a long one, and a
client's next tasks right after a burst look exactly like the next piece of a burst the client
feeds more slowly than the engines run it; the next task waits in the scheduler's queue until
that engine replies, or goes to another packing engine that has. A task sent is never taken
back, so this is what keeps long tasks submitted right after a burst (within ``BURST_HOLD`` of
its last burst reply) from queueing behind each other on the few packing engines while the
held ones sit idle: each idle packing engine takes one, and the rest wait in the scheduler.
Those wait ``DRAIN_GAP`` at most when they are few: a group whose packing engines all got
their work while idle and none has replied since, for ``DRAIN_GAP`` after the later of their
last reply and the work resuming, while tasks any engine may run wait in the scheduler's
queue, no more of them than its held engines, lapses then
(:meth:`Hosts.lapses_at`): the held engines are released and the queued tasks spread over
them and the packing engines, one each in turn (bench/README.md, round twelve). Tiny tasks
reply within ``DRAIN_GAP`` (an engine sends what it has done at least every ~2 ms). More tasks
waiting are a burst's backlog, most likely (its packing engines starved of CPU on a busy host:
measured, 2-4 such lapses in a 64-engine run at load 30-40, each spreading the backlog over
cold engines), and packing engines that did answer since they last were idle and then fall
silent (stuck in a long task, or starved: the two look alike by their replies; the next
paragraph tells them apart) keep the packing until ``BURST_HOLD`` after the last burst reply;
then the queue is spread over every engine of the group, one task each in turn. (Capping such
an engine at its load after ``DRAIN_GAP`` without a reply was tried: on a busy host it capped
starved engines of a burst, and the engines cost a few microseconds more per task at 64
engines; bench/README.md.)

A lapse is put off while the packing engines are *starved* rather than stuck. On a busy host
(more runnable threads than cores: the client, the Hub and the scheduler in a burst, or other
programs) a packing engine that holds a burst's tasks may wait that long for a core without
running at all, and releasing the held engines then spreads the backlog over cold engines that
wait for the same cores (bench/README.md, round twenty-two: a fifth of a 5,000-task burst on
60 cold engines in half the runs on a host three to five times slower than usual, each time
after a lapse whose four packing engines held 64 tasks each and had not replied for 0.1-0.2
s). Where the scheduler can read an engine's CPU time (``read_cpu``: its process on the
scheduler's own machine and in its pid namespace; Linux's ``schedstat`` of all its threads,
as the I/O thread that receives the tasks may be the one starved while the main thread sleeps),
a due lapse first looks at how the packing engines that hold tasks spend the next
``PROBE_WINDOW``: if each ran less than ``LONG_RUN`` (one running tiny tasks replies within ~2
ms) or replied meanwhile (its replies too slow to count as a burst's: seen on a busy host) and
together they waited for a CPU longer than they ran, they are starved and the packing is
renewed for ``BURST_HOLD``, to be looked at again then. An engine that ran longer without
replying is in a long task, and engines that neither ran nor waited are blocked in one (a
sleep, I/O): the packing lapses as before, ``PROBE_WINDOW`` later; unless the scheduler's own
process (``own_pid``) waited for a CPU longer than it ran meanwhile: then the engines' silence
says nothing (their tasks, or their replies, may still be in the scheduler's I/O thread), and
the lapse is put off as for starved engines. A starved packing lapses
anyway ``STARVED_LIMIT`` after the first look, so no task waits on it without bound.

``--burst-packing 0`` turns packing off.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from corral.controller.scheduling_state import BURST_HOLD, EngineState, check_setting

IDLE: Final = float("inf")
"""``HostGroup.packing_until`` of a host kept packing through a pause: its burst is done, and
the packing lapses only once its next task has had ``BURST_HOLD`` without a burst reply."""

DRAIN_GAP: Final = 0.01
"""Seconds without a reply from its packing engines, all given their work while idle, after
which a packing group with a few tasks queued for any engine lapses (:meth:`Hosts.lapses_at`).
An engine running tiny tasks sends its replies at least every ~2 ms (docs/wire-flows.md,
"Bundles"); 10 ms leaves room for a turn lost to the other processes on a busy host, and is
what a long task submitted right after a burst may wait for an engine."""

PROBE_WINDOW: Final = 0.02
"""Seconds over which a due lapse looks at the CPU time of its packing engines that hold tasks
before it is taken or put off (see the module docstring): what a lapse of engines stuck in
long tasks is delayed by."""

LONG_RUN: Final = 5_000_000
"""Nanoseconds of CPU a packing engine may run in a look without replying and still count as
starved: one running tiny tasks sends its replies at least every ~2 ms (``HOLD_REPLIES``)."""

STARVED_LIMIT: Final = 1.0
"""Seconds after its first look a packing lapses even if its engines still look starved."""

CpuReader: TypeAlias = Callable[[int], "tuple[int, int] | None"]
"""``read_cpu(pid)``: nanoseconds the process's threads have run and have waited for a CPU,
summed (None: unknown or gone). The scheduler shell reads Linux's
``/proc/<pid>/task/*/schedstat`` (:mod:`corral.controller.cpu_wait`)."""

UNREAD: Final = "unread"
LONG: Final = "long"
BLOCKED: Final = "blocked"
AT_LIMIT: Final = "at_limit"
LAPSE_REASONS: Final = (UNREAD, LONG, BLOCKED, AT_LIMIT)
"""Why a due lapse was taken, each an exit count (:attr:`Hosts.counts`): ``unread``, its
packing engines' CPU time was not read (no ``read_cpu``, an engine elsewhere or gone, or none
of them holds a task); ``long``, one ran ``LONG_RUN`` or more in a look without replying;
``blocked``, together they waited for a CPU no longer than they ran (engines asleep in their
tasks, or running freely without a burst reply) while the scheduler was not kept from one;
``at_limit``, ``STARVED_LIMIT`` after the first look."""

BURST_PACKING: Final = 2
"""The scheduler's default ``burst_packing``: engines per core that run a burst of tiny tasks
on an oversubscribed host (bench/README.md, round eleven: 64 engines on 2 cores, every no-op
on the first 2, 4 or 8: 4 ran them fastest; 2 ran fewer per second, 8 cost more CPU per
task). 0: never pack."""
MAX_BURST_PACKING: Final = 64
"""The largest ``burst_packing`` a controller takes: beyond, no host has so many engines per
core that packing would apply."""


def check_burst_packing(value: object) -> int:
    """``value`` if it is a whole number from 0 to :data:`MAX_BURST_PACKING`; ValueError
    saying so otherwise (the controller's check of its setting, before any process starts)."""
    return check_setting("burst_packing", value, 0, MAX_BURST_PACKING, "never pack")


@dataclass(eq=False, slots=True)
class HostGroup:
    """The registered engines of one machine, in registration order, and its CPU ids."""

    machine: str
    engines: list[EngineState] = field(default_factory=list)
    cpus: Counter[int] = field(default_factory=Counter)  # CPU id -> engines that may use it
    packing: bool = False
    packing_until: float = float("-inf")  # the packing lapses then, without a burst reply
    # (IDLE: kept through a pause, until its next task; Hosts.woke)
    progress: float = float("-inf")  # the latest reply of one of its packing engines, or
    # the task that ended a pause (Hosts.woke)
    # a due lapse put off (Hosts._starved_until): looked at again then; what its engines that
    # hold tasks had run and waited (ns) at the last look, and when the first look was
    recheck_at: float = float("-inf")
    probe: dict[EngineState, tuple[int, int]] | None = None
    own: tuple[int, int] | None = None  # the scheduler's own at that look (Hosts.own_pid)
    looked_at: float = float("-inf")
    starved_since: float = float("-inf")


def unanswered(engine: EngineState) -> bool:
    """Whether ``engine``, a packing engine of a group that packs, may take no more tasks now:
    it got its tasks while it held none and has not replied since (they may be long). The
    scheduler core caps it at its load meanwhile (``SchedulerCore._cap``); an idle engine may
    always take one task."""
    group = engine.group
    return (
        group is not None
        and group.packing
        and engine.load > 0
        and engine.last_reply < engine.busy_since
    )


def idle(group: HostGroup) -> bool:
    """Whether none of ``group``'s packing engines holds a task (they come first in it, in
    registration order)."""
    for engine in group.engines:
        if not engine.packs:
            return True
        if engine.load:
            return False
    return True


def _unprobe(group: HostGroup) -> None:
    """Forget ``group``'s looks at its engines' CPU time and any lapse put off."""
    group.recheck_at = float("-inf")
    group.probe = None
    group.own = None
    group.looked_at = float("-inf")
    group.starved_since = float("-inf")


def _kept_from_cpu(before: tuple[int, int] | None, after: tuple[int, int] | None) -> bool:
    """Whether the scheduler's own process waited for a CPU longer than it ran between two
    looks (False if either is unknown). Then packing engines that were not kept from a CPU
    and did not reply may hold tasks that have not reached them yet, or have replied into
    it: the scheduler's I/O thread carries both, and on a busy host it too waits its turn
    (bench/README.md, round twenty-three: a 64-engine burst beside two busy loops spread over
    60 cold engines after a look that found its four packing engines, 64 tasks each, neither
    running nor waiting)."""
    if before is None or after is None:
        return False
    return after[1] - before[1] > after[0] - before[0]


class Hosts:
    """Engines grouped by machine, and which of them a burst may use; see the module
    docstring. ``per_core`` 0 turns packing off (no engine ever packs or is held).
    ``read_cpu``: the CPU time of an engine's process by pid (None: never looked at; a due
    lapse is then taken at once); ``own_pid``: the scheduler's own process, read the same way
    (None: not read)."""

    def __init__(
        self, per_core: int, read_cpu: CpuReader | None = None, own_pid: int | None = None
    ) -> None:
        if per_core < 0:
            raise ValueError(f"burst_packing must be >= 0, not {per_core}")
        self.per_core = per_core
        self._read_cpu = read_cpu
        self._own_pid = own_pid
        self._groups: dict[str, HostGroup] = {}
        self._grouped = 0  # engines in the groups
        # the packing groups, in the order they started (a dict: the core's actions must
        # not depend on the ids of objects, as a set's order would)
        self._packing: dict[HostGroup, None] = {}
        self.next_check: float | None = None
        """When :meth:`due` may release held engines (None: no group is packing). The core
        reports it in its next deadline; it may find the packing renewed since."""
        # packings, for the scheduler's exit counts: started, lapsed, and of those lapsed how
        # many DRAIN_GAP after the last reply (their engines all given work while idle); and
        # how many times a packing was kept through a pause (Hosts.woke), and a due lapse put
        # off because its engines were starved (Hosts._starved_until); each lapse is also
        # counted under what its last look found (LAPSE_REASONS)
        self.counts = {"started": 0, "lapsed": 0, "stalled": 0, "kept": 0, "starved": 0}
        self.counts.update(dict.fromkeys(LAPSE_REASONS, 0))

    def add(self, engine: EngineState, machine: str, cpus: Iterable[int]) -> list[EngineState]:
        """``engine`` registered on ``machine`` and may run on ``cpus``: it joins that group
        (held if the group packs and it is not one of its packing engines). The engines no
        longer held (more cores may let more engines pack), for the core to fill."""
        group = self._groups.get(machine)
        if group is None:
            group = self._groups[machine] = HostGroup(machine)
        engine.group = group
        engine.cpus = frozenset(cpus)
        self._grouped += 1
        group.engines.append(engine)
        group.cpus.update(engine.cpus)
        return self._regroup(group)

    def remove(self, engine: EngineState) -> list[EngineState]:
        """``engine`` left: the engines no longer held (the next one in line packs in its
        place), for the core to fill."""
        group = engine.group
        if group is None:
            return []
        engine.group = None
        engine.packs = engine.held = False
        self._grouped -= 1
        group.engines.remove(engine)
        group.cpus.subtract(engine.cpus)
        group.cpus = +group.cpus  # without the CPU ids no engine of it may use any more
        if not group.engines:
            del self._groups[group.machine]
            self._packing.pop(group, None)
            return []
        return self._regroup(group)

    def replied(self, engine: EngineState, now: float, burst: bool) -> None:
        """A packing engine (``engine.packs``) replied at ``now`` (``burst``: within
        ``BURST_GAP`` of its previous reply): its group made progress, and a burst reply
        starts or renews its packing (:meth:`burst`)."""
        group = engine.group
        assert group is not None
        group.progress = now
        if burst:
            self.burst(engine, now)

    def burst(self, engine: EngineState, now: float) -> None:
        """A packing engine (``engine.packs``) replied in a burst at ``now``: its group packs
        until ``BURST_HOLD`` later, holding its other engines."""
        group = engine.group
        assert group is not None
        kept = group.packing_until == IDLE  # (only if no task woke it first: a safety net)
        group.packing_until = now + BURST_HOLD
        group.progress = now
        if group.probe is not None or group.recheck_at > now:
            _unprobe(group)  # it made progress: a lapse put off is due by its rule again
        if not group.packing:
            group.packing = True
            self._packing[group] = None
            self.counts["started"] += 1
            for other in group.engines:
                if not other.packs:
                    other.held = True
        elif not kept:
            return  # renewed: its next check stays before packing_until
        if self.next_check is None or group.packing_until < self.next_check:
            self.next_check = group.packing_until

    def woke(self, engine: EngineState, now: float) -> None:
        """A packing engine (``engine.packs``) gets a task at ``now`` while it holds none. If
        none of its group's packing engines holds one, the host's work paused and resumes now:
        the packing lapses ``BURST_HOLD`` from now at the earliest unless a packing engine
        replies in a burst (from :data:`IDLE` too, a packing kept through the pause), and
        ``DRAIN_GAP`` counts from now (:meth:`lapses_at`). Without it, a burst that came
        within ``BURST_HOLD`` of the previous one's last reply lapsed after the rest of that
        time, or at once by ``DRAIN_GAP``, before its engines could reply in a burst. A packing
        engine refilled as it replies is not idle for its group: a stream of longer tasks
        keeps its packing engines busy and lapses as before."""
        group = engine.group
        if group is None or not group.packing or not idle(group):  # (engine's load is 0 yet)
            return
        if now > group.progress:
            group.progress = now
        _unprobe(group)
        until = now + BURST_HOLD
        if group.packing_until == IDLE or group.packing_until < until:
            group.packing_until = until
            self.next_check = self._earliest_lapse()

    def _earliest_lapse(self) -> float | None:
        """The earliest ``packing_until`` of the packing groups not kept through a pause."""
        earliest = None
        for group in self._packing:
            until = group.packing_until
            if until != IDLE:
                until = max(until, group.recheck_at)
                if earliest is None or until < earliest:
                    earliest = until
        return earliest

    def lapses_at(self, group: HostGroup, waiting: int) -> float:
        """When ``group``'s packing lapses unless a packing engine replies (in a burst) before:
        ``BURST_HOLD`` after its last burst reply; or, while tasks any engine may run wait in
        the scheduler's queue (``waiting`` of them, at least one and no more than its held
        engines: each may take one) and every packing engine that holds tasks got them while
        idle and has not replied since (they may all be long), ``DRAIN_GAP`` after the last
        reply of its packing engines; not before a lapse put off is looked at again."""
        return max(self._lapse_rule(group, waiting), group.recheck_at)

    def _lapse_rule(self, group: HostGroup, waiting: int) -> float:
        """When ``group``'s packing lapses by its rule (:meth:`lapses_at`), starved or not."""
        until = group.packing_until
        held = len(group.engines) - self.per_core * len(group.cpus)
        if not 0 < waiting <= held or group.progress + DRAIN_GAP >= until:
            return until
        busy = False
        for engine in group.engines:  # its packing engines first (registration order)
            if not engine.packs:
                break
            if engine.load:
                if engine.last_reply >= engine.busy_since:
                    return until  # one answered: in a burst, mostly the first looked at
                busy = True
        return group.progress + DRAIN_GAP if busy else until

    def next_lapse(self, waiting: int) -> float | None:
        """When :meth:`due` may release engines (None: no group packs): :attr:`next_check`, or
        an earlier :meth:`lapses_at`. Asked after every event while a burst is packed, when
        the queue is most often longer than every group: then at once."""
        check = self.next_check
        if check is None or not 0 < waiting <= self._grouped:
            return check
        for group in self._packing:
            lapse = self.lapses_at(group, waiting)
            if lapse < check:
                check = lapse
        return check

    def due(self, now: float, waiting: int = 0) -> list[EngineState]:
        """The engines of every group whose packing lapsed at ``now`` (:meth:`lapses_at`). Its
        held engines are released, and its packing engines, capped while unanswered
        (:func:`unanswered`), take tasks as any engine again: the core fills them all. A group
        whose burst is simply done (its packing engines hold nothing, no task waits) is kept
        packing instead, until its next task (:data:`IDLE`, :meth:`woke`)."""
        released: list[EngineState] = []
        for group in list(self._packing):
            lapse = self._lapse_rule(group, waiting)
            if max(lapse, group.recheck_at) > now:
                continue
            if not waiting and lapse == group.packing_until and idle(group):
                group.packing_until = IDLE
                self.counts["kept"] += 1
                _unprobe(group)
                continue
            put_off = self._starved_until(group, now)
            if not isinstance(put_off, str):
                group.recheck_at = put_off
                continue
            _unprobe(group)
            del self._packing[group]
            group.packing = False
            self.counts["lapsed"] += 1
            self.counts[put_off] += 1
            self.counts["stalled"] += lapse < group.packing_until
            for engine in group.engines:
                engine.held = False
                released.append(engine)
        self.next_check = self._earliest_lapse()
        return released

    def _starved_until(self, group: HostGroup, now: float) -> float | str:
        """When to look again at ``group``, whose lapse is due at ``now``, if it is put off;
        to lapse now, why (one of :data:`LAPSE_REASONS`). The first look reads the CPU time
        of its packing engines that hold tasks and puts the lapse off ``PROBE_WINDOW``; a
        later one puts it off ``BURST_HOLD`` more if they were starved since the previous
        look (each ran less than ``LONG_RUN`` or replied meanwhile, and together they waited
        for a CPU longer than they ran: their replies slowed by the busy host, not by long
        tasks), up to ``STARVED_LIMIT`` after the first look. Not looked at (``UNREAD``): no
        ``read_cpu``, an engine that holds tasks and runs elsewhere, or none holds any (see
        the module docstring)."""
        read = self._read_cpu
        if read is None:
            return UNREAD
        if group.probe is not None and now - group.starved_since >= STARVED_LIMIT:
            return AT_LIMIT
        readings: dict[EngineState, tuple[int, int]] = {}
        for engine in group.engines:  # its packing engines first (registration order)
            if not engine.packs:
                break
            if engine.load:
                pid = engine.pid
                reading = read(pid) if pid is not None else None
                if reading is None:
                    return UNREAD
                readings[engine] = reading
        if not readings:
            return UNREAD
        own = read(self._own_pid) if self._own_pid is not None else None
        before, group.probe = group.probe, readings
        own_before, group.own = group.own, own
        since, group.looked_at = group.looked_at, now
        if before is None:
            group.starved_since = now
            return now + PROBE_WINDOW
        ran = waited = 0
        for engine, (run, wait) in readings.items():
            previous = before.get(engine)
            if previous is None:  # it got its tasks since: measure it over the next window
                return now + PROBE_WINDOW
            if run - previous[0] >= LONG_RUN and engine.last_reply < since:
                return LONG  # running without replying: a long task
            ran += run - previous[0]
            waited += wait - previous[1]
        if waited <= ran and not _kept_from_cpu(own_before, own):
            return BLOCKED  # not kept from a CPU: blocked in a task (or ran freely)
        self.counts["starved"] += 1
        return now + BURST_HOLD

    def _regroup(self, group: HostGroup) -> list[EngineState]:
        """Which engines of ``group`` pack and which are held, after it changed; the engines
        no longer held."""
        size = self.per_core * len(group.cpus)
        oversubscribed = self.per_core > 0 and len(group.engines) > size
        if not oversubscribed and group.packing:
            group.packing = False
            group.packing_until = float("-inf")  # not IDLE: woke must not start its clock
            _unprobe(group)
            self._packing.pop(group, None)
        released = []
        for index, engine in enumerate(group.engines):
            packs = oversubscribed and index < size
            held = group.packing and not packs
            # no longer held, or no longer packing (its cap may have been its load: unanswered)
            if (engine.held and not held) or (engine.packs and not packs):
                released.append(engine)
            engine.packs = packs
            engine.held = held
        return released
