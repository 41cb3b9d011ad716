"""What the slow round trips of a direct apply wait for: every thread on the machine, around each.

``bench_trace.py`` says which stage of a round trip is slow at the 99th percentile (the two
transport stages: the wake-up of the thread that receives); this script says why. It runs the
same round trips (one engine, ``view.apply_async(one).get()`` one after the other, the same
marks in the client and the engine) and records, on the clock every process shares:

- the kernel's scheduler events of the whole machine (``perf record -k CLOCK_MONOTONIC -e
  sched:sched_switch,sched:sched_wakeup,sched:sched_migrate_task -a``; needs ``perf`` and
  the rights to trace), so for any moment it knows which thread ran on each CPU, and for
  each wake-up how long the woken thread waited for a CPU and who had the CPUs meanwhile;
- in every process of the cluster and in this one (a ``sitecustomize``): garbage collections
  (``gc.callbacks``: generation, duration), the Hub's handlers (the engines' copies, from
  their lanes or the copies PULL; the MUX device's and the scheduler's; its queries; its
  timer: pings), the store writer's batches; each Python thread's name is given to the
  kernel (``prctl(PR_SET_NAME)``), so the scheduler's events name it.

**Interpreted client and engine.** The marks are bench_trace's, taken by patching functions
that mypyc compiles (``corral/native.py``): as there, this process and the engine run
corral's ``.py`` files (``CORRAL_NATIVE=0``), so the round trips are the interpreted path's
(what they wait for, not the compiled timings). The Hub's handlers and the store writer are
compiled too where the tree is built: their events are then not recorded (the output says
so) unless ``--hub-from-source`` runs the controller from its ``.py`` files as well (the
scheduler it starts runs as its tree is), which adds to the Hub's CPU.

Then, for the round trips above ``--slow`` (a percentile, 99 by default) against all of them:
the CPU time each thread (by process and name; other processes as ``other``) got during the
round trip, how often a collection, a Hub handler or a store batch fell inside one, and the
longest waits for a CPU of the threads on the round trip's path, with who ran meanwhile. One
line per slow round trip (``--show N``) gives the detail::

    PYTHONPATH=$PWD .venv/bin/python bench/bench_tail.py --rounds 4000 --show 6 --runs

Another corral tree is measured with ``CORRAL_BENCH_SOURCE=DIR PYTHONPATH=DIR``, run from an
empty folder. Without ``perf`` on the ``PATH`` (Debian: ``apt-get install linux-perf``) the
script stops and says so; ``--no-perf`` leaves out the scheduler's events (and their cost: perf
takes some CPU of its own, counted as ``other:perf``); perf that cannot record (no rights to
trace the whole machine) stops the run, after perf's own message. Round trips during which
another process ran for more than 20 us are left out of the slow/median comparison (their tail
is that process's, not corral's); on a machine others share, ``nice -n -10`` before the command
(as root) keeps most of them clean, and the Hub still runs its 10 nice steps below the rest of
the cluster. Last, the time the client's and the engine's threads waited for a CPU while a Hub
thread ran, per round trip: the Hub's share of the tail, which holds under other load better
than wall-clock figures do.
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import collections
import gc
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from bench_trace import (
    ENGINE_HOOKS,
    STAGES,
    WARMUP,
    ClientMarks,
    align_marks,
    check,
    client_from_source,
    cluster_native,
    engine_marks,
    hooks_environment,
)
from common import corral_cluster, print_table, restore_environment

TIMEOUT = 60.0
FOREIGN_NS = 20_000  # other processes' CPU inside a round trip above which it is not counted


def one() -> int:
    return 1


PROCESS_HOOKS = r'''
"""Events of every process for bench/bench_tail.py: collections, the Hub's work, thread names."""
import atexit, ctypes, gc, json, os, sys, threading, time

_tail_out = os.environ.get("CORRAL_TRACE_DIR")
if _tail_out:
    _tail_clock = time.perf_counter_ns
    _tail_events = []  # [kind, start ns, end ns, detail]
    _tail_libc = ctypes.CDLL(None)

    def _tail_name(name):
        _tail_libc.prctl(15, name.replace(" ", "-").encode()[:15], 0, 0, 0)

    _tail_set_native_id = threading.Thread._set_native_id

    def _tail_named(self):
        _tail_set_native_id(self)
        _tail_name(self.name)

    threading.Thread._set_native_id = _tail_named
    _tail_name("main")
    _tail_gc_started = {}

    def _tail_on_gc(phase, info):
        tid = threading.get_native_id()
        if phase == "start":
            _tail_gc_started[tid] = _tail_clock()
        else:
            start = _tail_gc_started.pop(tid, None)
            if start is not None:
                _tail_events.append(
                    ["gc", start, _tail_clock(), f"gen{info['generation']} tid {tid}"]
                )

    gc.callbacks.append(_tail_on_gc)

    def _tail_wrap(owner, name, kind):
        function = getattr(owner, name, None)
        if function is None:
            return

        def wrapped(*args, **kwargs):
            start = _tail_clock()
            try:
                return function(*args, **kwargs)
            finally:
                _tail_events.append([kind, start, _tail_clock(), name])

        try:
            setattr(owner, name, wrapped)
        except TypeError:  # a compiled class (mypyc): not recorded (bench_tail says so)
            pass

    # the controller's process alone (python -m corral controller): the Hub's handlers, as
    # HubShell binds them when it starts (after this), and its store writer's batches
    _tail_argv = list(getattr(sys, "orig_argv", sys.argv))
    _tail_at = _tail_argv.index("-m") + 1 if "-m" in _tail_argv else len(_tail_argv)
    if _tail_argv[_tail_at : _tail_at + 2] == ["corral", "controller"]:
        from corral.controller.hub_shell import HubShell
        from corral.controller.store.writer import BatchWriter

        for _name in (
            "_on_device_message",  # the MUX device's copies
            "_on_engine_message",  # the engines' copies: from their lanes, or the PULL
            "_on_scheduler_message",
            "_on_request",
            "_wake",
        ):
            _tail_wrap(HubShell, _name, "hub")
        _tail_wrap(BatchWriter, "_apply_batch", "store")

    def _tail_dump():
        path = os.path.join(_tail_out, f"events-{os.getpid()}.json")
        if not os.path.exists(path):
            with open(path, "w") as f:
                json.dump(_tail_events, f)

    atexit.register(_tail_dump)
    _tail_exit = os._exit

    def _tail_exit_dumping(code):
        try:
            _tail_dump()
        finally:
            _tail_exit(code)

    os._exit = _tail_exit_dumping
'''

SWITCH = re.compile(
    r"^\s*\[(?P<cpu>\d+)\]\s+(?P<time>[\d.]+):\s+sched:sched_switch: prev_comm=(?P<prev_comm>.*?) "
    r"prev_pid=(?P<prev>\d+) .*?==> next_comm=(?P<next_comm>.*?) next_pid=(?P<next>\d+)"
)
WAKEUP = re.compile(
    r"^\s*\[(?P<cpu>\d+)\]\s+(?P<time>[\d.]+):\s+sched:sched_wakeup: comm=(?P<comm>.*?) "
    r"pid=(?P<pid>\d+) .*?target_cpu=(?P<target>\d+)"
)
MIGRATE = re.compile(r"sched:sched_migrate_task: comm=(?P<comm>.*?) pid=(?P<pid>\d+) ")


@dataclass
class Timeline:
    """Which thread ran on each CPU when, and each thread's wake-ups, from the perf record."""

    runs: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)  # cpu: (a, b, tid)
    starts: dict[int, list[int]] = field(default_factory=dict)  # cpu: sorted starts of runs
    wakeups: list[tuple[int, int, int]] = field(default_factory=list)  # (time, tid, cpu)
    migrations: list[tuple[int, int]] = field(default_factory=list)  # (time, tid)
    comms: dict[int, str] = field(default_factory=dict)

    lost: int = 0  # events perf could not keep (its buffer was full): runs may span them

    @classmethod
    def read(cls, data: Path) -> Timeline:
        stats = subprocess.run(
            ["perf", "report", "-i", str(data), "--stats"], capture_output=True, text=True
        ).stdout
        lost = re.search(r"LOST events:\s*(\d+)", stats)
        script = subprocess.run(
            ["perf", "script", "-i", str(data), "-F", "cpu,time,event,trace", "--ns"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        timeline = cls(lost=int(lost[1]) if lost else 0)
        current: dict[int, tuple[int, int]] = {}  # cpu: (since, tid)
        for line in script.splitlines():
            if found := SWITCH.match(line):
                cpu, when = int(found["cpu"]), round(float(found["time"]) * 1e9)
                prev, nxt = int(found["prev"]), int(found["next"])
                since = current.get(cpu, (None, prev))[0]
                if since is not None:
                    timeline.runs.setdefault(cpu, []).append((since, when, prev))
                current[cpu] = (when, nxt)
                timeline.comms.setdefault(prev, found["prev_comm"])
                timeline.comms.setdefault(nxt, found["next_comm"])
            elif found := WAKEUP.match(line):
                when = round(float(found["time"]) * 1e9)
                timeline.wakeups.append((when, int(found["pid"]), int(found["target"])))
                timeline.comms.setdefault(int(found["pid"]), found["comm"])
            elif found := MIGRATE.search(line):
                when = round(float(line.split()[1].rstrip(":")) * 1e9)
                timeline.migrations.append((when, int(found["pid"])))
        for cpu, runs in timeline.runs.items():
            runs.sort()
            timeline.starts[cpu] = [a for a, _, _ in runs]
        timeline.wakeups.sort()
        timeline.migrations.sort()
        return timeline

    def running(self, begin: int, end: int) -> Iterator[tuple[int, int, int]]:
        """(cpu, tid, ns) for each run that overlaps [begin, end), clipped to it."""
        for cpu, runs in self.runs.items():
            index = max(0, bisect.bisect_right(self.starts[cpu], begin) - 1)
            while index < len(runs) and runs[index][0] < end:
                a, b, tid = runs[index]
                overlap = min(b, end) - max(a, begin)
                if overlap > 0:
                    yield cpu, tid, overlap
                index += 1

    def waits(self, begin: int, end: int, tids: set[int]) -> Iterator[tuple[int, int, int]]:
        """(wake-up time, tid, ns until it ran) for the wake-ups of ``tids`` in [begin, end)."""
        index = bisect.bisect_left(self.wakeups, (begin, 0, 0))
        while index < len(self.wakeups) and self.wakeups[index][0] < end:
            when, tid, _ = self.wakeups[index]
            index += 1
            if tid not in tids or any(t == tid for _, t, _ in self.running(when, when + 1)):
                continue  # not one of them, or woken while still on a CPU (about to sleep)
            ran = min(
                (
                    a
                    for cpu, runs in self.runs.items()
                    for a, _, t in runs[
                        bisect.bisect_left(self.starts[cpu], when) : bisect.bisect_left(
                            self.starts[cpu], when + 20_000_000
                        )
                    ]
                    if t == tid
                ),
                default=None,
            )
            if ran is not None:
                yield when, tid, ran - when


def thread_roles(client_pid: int, processes: list[psutil.Process]) -> dict[int, str]:
    """tid -> "process:thread name", for the cluster's processes and this one (still running)."""
    roles = {}
    for process in [psutil.Process(client_pid), *processes]:
        try:
            cmdline = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if process.pid == client_pid:
            kind = "client"
        elif "scheduler" in cmdline:
            kind = "scheduler"
        elif "controller" in cmdline:
            kind = "hub"
        elif "engine" in cmdline:
            kind = "engine"
        else:
            kind = process.name()
        for task in Path(f"/proc/{process.pid}/task").iterdir():
            try:
                comm = (task / "comm").read_text().strip()
            except OSError:
                continue
            roles[int(task.name)] = f"{kind}:{comm}"
    return roles


def run(rounds: int, use_perf: bool, folder: Path, roles: str) -> dict[str, Any]:
    before = hooks_environment(folder, ENGINE_HOOKS + "\n" + PROCESS_HOOKS, roles)
    # this process: the same hooks (thread names, collections), before the client's threads start
    namespace: dict[str, Any] = {}
    exec(compile(PROCESS_HOOKS, "process-hooks", "exec"), namespace)
    client_marks = ClientMarks()
    perf_data = folder / "perf.data"
    try:
        with corral_cluster(1) as running:
            view = running.client[running.client.ids[0]]
            check(view.apply_async(one).get(TIMEOUT) == 1, "a no-op on the engine")
            roles = thread_roles(os.getpid(), running.processes)
            client_marks.install()
            recorder = None
            try:
                starts, ends = [], []
                clock = time.perf_counter_ns
                for round_number in range(WARMUP + rounds):
                    if round_number == WARMUP and use_perf:
                        recorder = subprocess.Popen(
                            ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-m", "8M", "-a"]
                            + ["-e", "sched:sched_switch,sched:sched_wakeup"]
                            + ["-e", "sched:sched_migrate_task", "-o", str(perf_data)],
                            stdin=subprocess.DEVNULL,
                        )
                        time.sleep(1.0)  # perf's own start-up off the measured rounds
                        if recorder.poll() is not None:
                            raise SystemExit(
                                f"perf record stopped at once (exit {recorder.returncode}, its "
                                "message above): no rights to trace? --no-perf runs without"
                            )
                    starts.append(clock())
                    result = view.apply_async(one)
                    result.get(TIMEOUT)
                    ends.append(clock())
            finally:
                client_marks.uninstall()
                if recorder is not None:
                    recorder.send_signal(signal.SIGINT)
                    recorder.wait(TIMEOUT)
            roles.update(thread_roles(os.getpid(), running.processes))
    finally:
        restore_environment(before)
        gc.callbacks.remove(namespace["_tail_on_gc"])
        atexit.unregister(namespace["_tail_dump"])
        os._exit = namespace["_tail_exit"]
    engine, _, _ = engine_marks(folder, WARMUP + rounds)
    events = [[f"client {kind}", a, b, detail] for kind, a, b, detail in namespace["_tail_events"]]
    for path in folder.glob("events-*.json"):
        pid = int(path.stem.split("-")[1])
        role = roles.get(pid, f"pid {pid}").split(":")[0]
        events.extend(
            [f"{role} {kind}", a, b, detail] for kind, a, b, detail in json.loads(path.read_text())
        )
    return {
        "marks": align_marks(engine, starts, ends, client_marks, rounds),
        "events": events,
        "roles": roles,
        "timeline": Timeline.read(perf_data) if use_perf else None,
    }


def summary(spans: list[int]) -> str:
    """Median, p90 and p99 of round trips given in ns, in us."""
    cuts = statistics.quantiles(spans, n=100)
    return (
        f"median {statistics.median(spans) / 1000:.0f}, p90 {cuts[89] / 1000:.0f}, "
        f"p99 {cuts[98] / 1000:.0f} us"
    )


def role_of(tid: int, roles: dict[int, str], timeline: Timeline | None) -> str:
    if tid == 0:
        return "idle"
    if tid in roles:
        return roles[tid]
    comm = timeline.comms.get(tid, "?") if timeline else "?"
    return f"other:{re.sub(r'[/:]?[0-9]+$', '', comm)}"


def analyse(result: dict[str, Any], slow_percentile: float, show: int, runs: bool) -> None:
    marks, events, roles = result["marks"], result["events"], result["roles"]
    timeline: Timeline | None = result["timeline"]
    whole = [b - a for a, b in zip(marks["start"], marks["end"], strict=True)]
    considered = list(range(len(whole)))
    print(f"{len(whole)} round trips: {summary(whole)}")
    if timeline is not None:
        print(f"perf lost {timeline.lost} events")
        # the round trips no other process took a CPU from (other sessions' tests, perf):
        # their tail is corral's own
        traced_from = min(starts[0] for starts in timeline.starts.values() if starts)
        considered = [
            i
            for i in considered
            if marks["start"][i] >= traced_from
            and sum(
                ns
                for _, tid, ns in timeline.running(marks["start"][i], marks["end"][i])
                if role_of(tid, roles, timeline).startswith("other:")
            )
            <= FOREIGN_NS
        ]
        print(
            f"{len(considered)} of them with at most {FOREIGN_NS // 1000} us of other processes'"
            f" CPU inside: {summary([whole[i] for i in considered])}"
        )
    spans_considered = sorted(whole[i] for i in considered)
    cut = spans_considered[min(len(considered) - 1, int(len(considered) * slow_percentile / 100))]
    median = statistics.median(spans_considered)
    slow = [i for i in considered if whole[i] >= cut]
    normal = [i for i in considered if whole[i] <= median]
    print(f"slow: the {len(slow)} of those at or above p{slow_percentile:g} ({cut / 1000:.0f} us)")
    # which stage is slow in the slow ones
    stage_rows = []
    for label, begin, end in STAGES:
        spans = [(marks[end][i] - marks[begin][i]) / 1000 for i in range(len(whole))]
        stage_rows.append(
            [
                label,
                statistics.median(spans),
                statistics.mean(spans[i] for i in slow),
                statistics.mean(spans[i] for i in normal),
            ]
        )
    print_table(
        "stages, us (interpreted: the client and the engine from source)",
        ["stage", "median, all", f"mean, >p{slow_percentile:g}", "mean, <=median"],
        stage_rows,
    )
    event_starts = sorted(events, key=lambda e: e[1])
    starts_only = [e[1] for e in event_starts]

    def overlapping(i: int) -> list[list[Any]]:
        a, b = marks["start"][i], marks["end"][i]
        lo = bisect.bisect_left(starts_only, a - 50_000_000)
        return [e for e in event_starts[lo : bisect.bisect_left(starts_only, b)] if e[2] > a]

    def event_share(group: list[int]) -> dict[str, tuple[float, float]]:
        counts: dict[str, int] = collections.Counter()
        spent: dict[str, float] = collections.Counter()
        for i in group:
            seen = set()
            for kind, a, b, detail in overlapping(i):
                key = f"{kind} {detail.split(' tid')[0]}" if "gc" in kind else kind
                seen.add(key)
                spent[key] += (min(b, marks["end"][i]) - max(a, marks["start"][i])) / 1000
            counts.update(seen)
        return {k: (100 * counts[k] / len(group), spent[k] / len(group)) for k in counts}

    slow_events, normal_events = event_share(slow), event_share(normal)
    first, last = marks["start"][0], marks["end"][-1]
    batches = sorted(
        (b - a) / 1000 for kind, a, b, _ in events if kind == "hub store" and first <= a < last
    )
    if batches:
        print(
            f"store batches during the round trips: {len(batches)} (one per "
            f"{len(whole) / len(batches):.0f} round trips), median {statistics.median(batches):.0f}"
            f" us, {sum(b > 1000 for b in batches)} over 1 ms (the longest {batches[-1]:,.0f} us)"
        )
    rows = []
    for key in sorted(set(slow_events) | set(normal_events)):
        s, n = slow_events.get(key, (0.0, 0.0)), normal_events.get(key, (0.0, 0.0))
        rows.append([key, s[0], s[1], n[0], n[1]])
    print_table(
        "events inside a round trip: % of round trips with one, us of it inside per round trip",
        ["event", "% slow", "us slow", "% <=median", "us <=median"],
        rows,
    )
    if timeline is None:
        return

    def cpu_by_role(group: list[int]) -> dict[str, float]:
        spent: dict[str, float] = collections.Counter()
        for i in group:
            for _, tid, ns in timeline.running(marks["start"][i], marks["end"][i]):
                spent[role_of(tid, roles, timeline)] += ns / 1000
        return {k: v / len(group) for k, v in spent.items()}

    path = {t for t, r in roles.items() if r.split(":")[0] in ("client", "engine")}
    hub = {t for t, r in roles.items() if r.startswith("hub:")}
    traced = [i for i in range(len(whole)) if marks["start"][i] >= traced_from]
    behind_hub = []
    by_hub_thread: dict[str, list[float]] = collections.defaultdict(lambda: [0.0] * len(traced))
    for number, i in enumerate(traced):
        total = 0
        for when, _, ns in timeline.waits(marks["start"][i], marks["end"][i], path):
            held_by: dict[str, int] = collections.Counter()
            for _, t, n in timeline.running(when, when + ns):
                if t in hub:
                    held_by[roles[t]] += n
            held = sum(held_by.values())
            total += min(ns, held)
            for role, n in held_by.items():  # a wait shared by the Hub's threads, pro rata
                by_hub_thread[role][number] += min(ns, held) * n / held / 1000
        behind_hub.append(total / 1000)
    cuts = statistics.quantiles(behind_hub, n=100)
    print(
        f"the client's and the engine's threads waiting for a CPU while a Hub thread ran, "
        f"per round trip (all {len(traced)} traced): mean {statistics.mean(behind_hub):.1f}, "
        f"p90 {cuts[89]:.0f}, p99 {cuts[98]:.0f}, max {max(behind_hub):.0f} us; "
        f"over 100 us in {sum(b > 100 for b in behind_hub)}"
    )
    for role, waits in sorted(by_hub_thread.items()):
        role_cuts = statistics.quantiles(waits, n=100)
        print(
            f"  of it while {role} ran: mean {statistics.mean(waits):.1f}, "
            f"p99 {role_cuts[98]:.0f}, over 100 us in {sum(w > 100 for w in waits)}"
        )
    slow_cpu, normal_cpu = cpu_by_role(slow), cpu_by_role(normal)
    all_cpu = cpu_by_role(traced)
    rows = [
        [key, slow_cpu.get(key, 0.0), normal_cpu.get(key, 0.0), all_cpu.get(key, 0.0)]
        for key in sorted(set(slow_cpu) | set(normal_cpu), key=lambda k: -slow_cpu.get(k, 0.0))
    ]
    own = sum(v for k, v in all_cpu.items() if k.split(":")[0] in ("client", "engine", "hub"))
    rows.append(["the cluster's and this process's threads", None, None, own])
    print_table(
        f"CPU time during a round trip, by thread (us per round trip; {len(slow)} slow, "
        f"{len(normal)} at most the median, all {len(traced)} traced)",
        ["thread", "slow", "<=median", "all"],
        rows,
    )
    watched = {t for t, r in roles.items() if r.split(":")[0] in ("client", "engine", "hub")}

    def wait_by_role(group: list[int]) -> dict[str, float]:
        waited: dict[str, float] = collections.Counter()
        for i in group:
            for _, tid, ns in timeline.waits(marks["start"][i], marks["end"][i], watched):
                waited[role_of(tid, roles, timeline)] += ns / 1000
        return {k: v / len(group) for k, v in waited.items()}

    slow_wait, normal_wait = wait_by_role(slow), wait_by_role(normal)
    rows = [
        [key, slow_wait.get(key, 0.0), normal_wait.get(key, 0.0)]
        for key in sorted(set(slow_wait) | set(normal_wait), key=lambda k: -slow_wait.get(k, 0.0))
    ]
    print_table(
        "waiting for a CPU after a wake-up, by thread (us per round trip)",
        ["thread", "slow", "<=median"],
        rows,
    )
    migrations = collections.Counter()
    for i in slow:
        lo = bisect.bisect_left(timeline.migrations, (marks["start"][i], 0))
        hi = bisect.bisect_left(timeline.migrations, (marks["end"][i], 0))
        migrations.update(role_of(t, roles, timeline) for _, t in timeline.migrations[lo:hi])
    print("migrations inside the slow round trips:", dict(migrations.most_common(8)))
    for i in sorted(slow, key=lambda i: -whole[i])[:show]:
        a, b = marks["start"][i], marks["end"][i]
        spans = ", ".join(
            f"{label.split(',')[0][:24]} {(marks[end][i] - marks[begin][i]) / 1000:.0f}"
            for label, begin, end in STAGES
            if marks[end][i] - marks[begin][i] > 40_000
        )
        print(f"\n#{i}: {whole[i] / 1000:.0f} us; stages over 40 us: {spans}")
        for when, tid, ns in timeline.waits(a, b, watched):
            if ns > 30_000:
                others = collections.Counter()
                for _, t, n in timeline.running(when, when + ns):
                    others[role_of(t, roles, timeline)] += n / 1000
                print(
                    f"  +{(when - a) / 1000:.0f} us {role_of(tid, roles, timeline)} waited "
                    f"{ns / 1000:.0f} us for a CPU; ran meanwhile: "
                    + ", ".join(f"{k} {v:.0f}" for k, v in others.most_common(4))
                )
        for kind, ea, eb, detail in overlapping(i):
            print(f"  +{(ea - a) / 1000:.0f} us {kind} {detail} for {(eb - ea) / 1000:.0f} us")
        for label, _, end in STAGES:
            print(f"  +{(marks[end][i] - a) / 1000:.0f} us end of {label}")
        if runs:
            for cpu, cpu_runs in sorted(timeline.runs.items()):
                shown = [
                    f"{(max(ra, a) - a) / 1000:.0f}-{(min(rb, b) - a) / 1000:.0f} "
                    + role_of(tid, roles, timeline)
                    for ra, rb, tid in cpu_runs
                    if rb > a and ra < b and min(rb, b) - max(ra, a) > 15_000
                ]
                print(f"  cpu {cpu}: " + "; ".join(shown))


def why_pure_controller() -> str:
    """Why the controller runs corral's .py files ("" when it runs the compiled build)."""
    from corral import native

    return native.why_pure()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--slow", type=float, default=99.0, help="percentile of 'slow'")
    parser.add_argument("--show", type=int, default=8, help="slow round trips shown in detail")
    parser.add_argument("--no-perf", action="store_true")
    parser.add_argument(
        "--runs", action="store_true", help="each shown round trip: what ran on each CPU"
    )
    parser.add_argument(
        "--hub-from-source",
        action="store_true",
        help="the controller from its .py files too (CORRAL_NATIVE=0): its handlers recorded",
    )
    args = parser.parse_args()
    use_perf = not args.no_perf
    if use_perf and shutil.which("perf") is None:
        raise SystemExit(
            "bench_tail.py: perf is not on the PATH (Debian: apt-get install linux-perf; "
            "the package for the running kernel elsewhere); --no-perf runs without the "
            "scheduler's events"
        )
    client_from_source()
    roles = "engine,controller" if args.hub_from_source else "engine"
    print(f"INTERPRETED: {cluster_native(roles)}")
    if not args.hub_from_source and not why_pure_controller():
        print(
            "the Hub's handlers and store batches: not recorded (the controller runs compiled; "
            "--hub-from-source records them)"
        )
    with tempfile.TemporaryDirectory(prefix="corral-tail-") as folder:
        result = run(args.rounds, use_perf, Path(folder), roles)
    print(f"load average before analysis: {os.getloadavg()[0]:.1f}")
    analyse(result, args.slow, args.show, args.runs)


if __name__ == "__main__":
    main()
