"""Where a direct apply round trip's time goes, stage by stage, across the client and the engine.

Starts a cluster of one engine and runs ``--rounds`` round trips of a no-op one after the other
(``view.apply_async(one).get()``), with time marks taken in both processes on the same clock
(``time.perf_counter_ns``, the system's monotonic clock on Linux, shared by all processes).
The request and its reply take the engine's lane (``corral/lane.py``, see docs/wire-flows.md,
"Direct requests"), or its direct ROUTER where it has none:

- client, user's thread: ``apply_async`` called; the request handed to the I/O thread
  (``Loop.call_soon_threadsafe`` of the gate's ``_take_handed``), or sent by this thread
  itself (``LaneSet.send``, or ``socket_gate.send_whole`` on the ROUTER: both marks at once,
  the hand-off stage is then 0, as in a round trip waited for one at a time); ``get()``
  returned;
- client, the I/O thread: the request sent, when it was handed over (``LaneSet.send``, or
  ``bundles.send_frames`` on the ROUTER); and whichever thread reads the reply (the user's
  thread waiting in ``get()``, which leads the gate, or the I/O thread): the reply read
  (``Lane.receive``, or the gate's ``receive_whole`` on the ROUTER), the result settled
  (``LightFuture.set_result``);
- engine, main thread: the request read (``Lane.receive``, or ``loop.recv_small_as_bytes`` /
  ``loop.recv_frames`` on a zmq socket), ``TaskRunner.run`` started and ended, the reply sent
  (``Lane.send_whole``, or ``bundles.send_frames`` on the ROUTER; the Hub's copies, on its
  lane or its PUSH, go before it and are not marked).

**Interpreted, not compiled.** Most of these functions are in modules compiled by mypyc
(``corral/native.py``), whose callers never see a patch of a module attribute, and whose
classes cannot be patched at all. So the client (this process) and the engine run corral's
``.py`` files: ``CORRAL_NATIVE=0`` is set for this process's import of corral and, by the
engine's ``sitecustomize`` (next paragraph), in the engine's process only (the controller and
the scheduler run as their tree is: compiled if it is built, which the output says). The
figures are the stages' shares of an interpreted round trip, not the compiled round trip's
timings: compare them with runs of this script, not with ``bench_targets.py``.

The engine's marks come from a ``sitecustomize`` this script writes to a temporary folder and
puts first on the cluster's ``PYTHONPATH``; it hooks the engine's process alone (by its command
line) and writes the marks to a file when the engine exits. Each mark is a Python wrapper
around the call it marks (its cost is inside the stages). Each stage's mark in a round trip is
the first one at or after the stage before it, none after ``get()`` returned (checked: a stage
whose function the path no longer calls fails the run rather than borrow the next round trip's
mark). Each stage's median, 90th and 99th percentile and mean are printed; the stages of one
round trip add up to it (their means to the round trip's mean, checked), so the table says
where a round trip's time goes (the kernel's socket and the wake-up of the thread that reads
are inside the two transport stages). Last comes the CPU of every process (the cluster's and
this one) per round trip: counted by the kernel, it holds under other load when the wall-clock
figures do not; then, on Linux, each thread's CPU, sleeps (a sleep is one wake-up) and
preemptions per round trip, from ``/proc`` (issue 13, round fourteen: which threads wake how
often, and which ones take a CPU from another of the round trip)::

    PYTHONPATH=. .bench-venv/bin/python bench/bench_trace.py --rounds 2000

Another corral tree (a baseline from ``git archive``) is measured with
``CORRAL_BENCH_SOURCE=DIR PYTHONPATH=DIR``, run from an empty folder; a tree from before the
lanes needs its own copy of this script.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import os
import shlex
import statistics
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import check, corral_cluster, cpu_seconds, print_table, restore_environment, use_source

WARMUP = 200
TIMEOUT = 60.0
NO_MARK = 2**63 - 1  # no mark at or after a stage's start
SOURCE_ROLES = "CORRAL_TRACE_SOURCE"  # the cluster's roles the sitecustomize runs from source

# First in every cluster process's sitecustomize: its role from its command line (``python -m
# corral engine ...``: "engine"; the controller's scheduler: "corral.controller.scheduler"),
# and corral from its .py files where the role is listed in CORRAL_TRACE_SOURCE.
HOOKS_PROLOGUE = textwrap.dedent(
    '''
    """Hooks of bench/bench_trace.py (and bench_tail.py) in the cluster's processes."""
    import json, os, sys, threading, time

    def _trace_role():
        argv = list(getattr(sys, "orig_argv", sys.argv))
        if "-m" not in argv:
            return ""
        rest = argv[argv.index("-m") + 1 :]
        if rest[:1] == ["corral"]:
            return rest[1] if len(rest) > 1 else ""
        return rest[0] if rest else ""

    _trace_out = os.environ.get("CORRAL_TRACE_DIR")
    _trace_role_name = _trace_role() if _trace_out else ""
    _trace_source = os.environ.get("CORRAL_TRACE_SOURCE", "").split(",")
    if _trace_role_name and _trace_role_name in _trace_source:
        # corral's .py files in this process (a patch never reaches a compiled caller): set
        # for the import that decides (corral.native.install), then taken back, so that what
        # this process starts (the controller's scheduler) runs as its tree is
        _trace_had = os.environ.get("CORRAL_NATIVE")
        os.environ["CORRAL_NATIVE"] = "0"
        import corral
        if _trace_had is None:
            del os.environ["CORRAL_NATIVE"]
        else:
            os.environ["CORRAL_NATIVE"] = _trace_had
    '''
)

ENGINE_HOOKS = HOOKS_PROLOGUE + textwrap.dedent(
    """
    if _trace_role_name == "engine":
        import corral.bundles, corral.loop, corral.native, zmq
        from corral.engine.runner import TaskRunner
        from corral.lane import Lane

        _marks = {"recv": [], "run_start": [], "run_end": [], "send": []}
        _calls = {"lane read": 0, "zmq read": 0, "lane reply": 0, "zmq send": 0}
        _unpatched = []
        _clock = time.perf_counter_ns
        _main = threading.main_thread()

        def _patch(owner, name, wrapper):
            try:
                setattr(owner, name, wrapper(getattr(owner, name)))
            except (AttributeError, TypeError) as err:  # gone, or a compiled class
                _unpatched.append(f"{getattr(owner, '__name__', owner)}.{name}: {err}")

        def _zmq_read(function):  # a zmq socket's message, on the main thread
            marks = _marks["recv"]

            def marked(*args, **kwargs):
                value = function(*args, **kwargs)  # zmq.Again when none: no mark
                if threading.current_thread() is _main:
                    marks.append(_clock())
                    _calls["zmq read"] += 1
                return value

            return marked

        def _lane_read(function):  # Lane.receive: (messages, still open)
            marks = _marks["recv"]

            def marked(self, limit):
                value = function(self, limit)
                if value[0] and threading.current_thread() is _main:
                    marks.append(_clock())
                    _calls["lane read"] += 1
                return value

            return marked

        def _before_send(function, path):  # a send: its peer may read it before it returns
            marks = _marks["send"]

            def marked(*args, **kwargs):
                # not the Hub's copies on its PUSH (its lane's go by Lane.send, not marked)
                if threading.current_thread() is _main and getattr(args[0], "type", 0) != zmq.PUSH:
                    marks.append(_clock())
                    _calls[path] += 1
                return function(*args, **kwargs)

            return marked

        _patch(Lane, "receive", _lane_read)
        _patch(corral.loop, "recv_frames", _zmq_read)
        _patch(corral.loop, "recv_small_as_bytes", _zmq_read)
        _patch(Lane, "send_whole", lambda f: _before_send(f, "lane reply"))  # on its lane
        _patch(corral.bundles, "send_frames", lambda f: _before_send(f, "zmq send"))  # ROUTER

        def _run_marked(run):
            starts, ends = _marks["run_start"], _marks["run_end"]

            def marked(self, item):
                starts.append(_clock())
                try:
                    return run(self, item)
                finally:
                    ends.append(_clock())

            return marked

        _patch(TaskRunner, "run", _run_marked)

        def _dump():
            path = os.path.join(_trace_out, f"engine-{os.getpid()}.json")
            with open(path, "w") as f:
                json.dump(
                    {
                        "marks": _marks,
                        "calls": _calls,
                        "native": corral.native.describe(),
                        "unpatched": _unpatched,
                    },
                    f,
                )

        _exit = os._exit

        def _exit_dumping(code):
            try:
                _dump()
            finally:
                _exit(code)

        os._exit = _exit_dumping
    """
)


def one() -> int:
    return 1


def client_from_source() -> None:
    """Import corral (:func:`common.use_source`) from its ``.py`` files in this process, the
    client (``CORRAL_NATIVE=0`` for that import only: the cluster's processes inherit the
    caller's environment; the engine's sitecustomize sets its own). Refuses a tree whose
    client would still run compiled modules."""
    before = {"CORRAL_NATIVE": os.environ.get("CORRAL_NATIVE")}
    os.environ["CORRAL_NATIVE"] = "0"
    try:
        use_source()
    finally:
        restore_environment(before)
    from corral import native

    check(bool(native.state), "the client runs corral's .py files (CORRAL_NATIVE=0)")


def cluster_native(roles: str) -> str:
    """What the output says of the cluster's processes: which run from source, and whether the
    others run compiled modules (their tree's build, with the caller's environment)."""
    from corral import native

    reason = native.why_pure()
    others = "compiled" if not reason else f"from source ({reason})"
    names = ["client", *roles.split(",")]
    listed = ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed} from source (CORRAL_NATIVE=0); the rest {others}"


def hooks_environment(folder: Path, hooks: str, roles: str) -> dict[str, str | None]:
    """Write ``hooks`` as the ``sitecustomize`` of the cluster's processes, put it first on
    their ``PYTHONPATH``, the marks' folder and the roles run from source in their
    environment; the environment before, for :func:`common.restore_environment`."""
    site = folder / "hooks"
    site.mkdir()
    (site / "sitecustomize.py").write_text(hooks)
    before = {key: os.environ.get(key) for key in ("PYTHONPATH", "CORRAL_TRACE_DIR", SOURCE_ROLES)}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [before["PYTHONPATH"]])])
    os.environ["CORRAL_TRACE_DIR"] = str(folder)
    os.environ[SOURCE_ROLES] = roles
    return before


def engine_marks(folder: Path, total: int) -> tuple[dict[str, list[int]], dict[str, int], str]:
    """The engine's marks (written at its exit), its hooks' calls by path and its native
    state; fails, saying which hooks did not take, if any stage has fewer marks than round
    trips."""
    dumped = list(folder.glob("engine-*.json"))
    check(len(dumped) == 1, f"one engine's marks in {folder} (found {len(dumped)})")
    found = json.loads(dumped[0].read_text())
    marks: dict[str, list[int]] = found["marks"]
    check(not found["unpatched"], f"the engine's hooks took: not {found['unpatched']}")
    check("off" in found["native"], f"the engine runs from source: {found['native']}")
    for name, stage in marks.items():
        check(len(stage) >= total, f"engine {name}: {len(stage)} marks for {total} round trips")
    return marks, found["calls"], found["native"]


class ClientMarks:
    """The client's marks, from hooks on the functions its threads call per round trip (this
    process runs corral's .py files: :func:`client_from_source`)."""

    def __init__(self) -> None:
        self.marks: dict[str, list[int]] = collections.defaultdict(list)
        self.calls: collections.Counter[str] = collections.Counter()  # by path
        self.user = threading.current_thread()
        self._undo: list[Callable[[], None]] = []

    def install(self) -> None:
        import corral.bundles
        import corral.client.socket_gate as gate
        from corral.client.lanes import LaneSet
        from corral.client.requestfuture import LightFuture
        from corral.lane import Lane
        from corral.loop import Loop

        clock, marks, calls, user = time.perf_counter_ns, self.marks, self.calls, self.user
        handoffs, sends, received, settled = (
            marks["handoff"],
            marks["send"],
            marks["recv"],
            marks["settled"],
        )

        def patch(owner: Any, name: str, wrapper: Callable[[Any], Any]) -> None:
            original = getattr(owner, name)
            try:
                setattr(owner, name, wrapper(original))
            except TypeError as err:  # a compiled class (mypyc): its methods stay as they are
                raise AssertionError(f"{owner.__name__}.{name} cannot be patched: {err}") from err
            self._undo.append(lambda: setattr(owner, name, original))

        def handoff(original: Any) -> Any:
            def marked(loop: Any, callback: Any, *args: Any) -> Any:
                # the gate's hand-off of a request (not a drain it asks for after a send)
                if getattr(callback, "__name__", "") == "_take_handed":
                    handoffs.append(clock())
                return original(loop, callback, *args)

            return marked

        def send(path: str) -> Callable[[Any], Any]:
            def wrapper(original: Any) -> Any:
                def marked(*args: Any, **kwargs: Any) -> Any:
                    now = clock()  # before: the engine may read it before this returns
                    value = original(*args, **kwargs)
                    if value is False:  # LaneSet.send: no lane, sent on the ROUTER (marked)
                        return value
                    if threading.current_thread() is user:  # no hand-off: it is the send
                        handoffs.append(now)
                        calls[f"{path}, the user's thread"] += 1
                    else:
                        calls[path] += 1
                    sends.append(now)
                    return value

                return marked

            return wrapper

        def lane_read(original: Any) -> Any:
            def marked(lane: Any, limit: int) -> Any:
                value = original(lane, limit)
                if value[0]:
                    received.append(clock())
                    calls["lane read"] += 1
                return value

            return marked

        def zmq_read(original: Any) -> Any:
            def marked(sock: Any, into: Any) -> Any:
                got = original(sock, into)
                if got:
                    received.append(clock())
                    calls["ROUTER read"] += 1
                return got

            return marked

        def settle(original: Any) -> Any:
            def marked(future: Any, result: Any) -> Any:
                value = original(future, result)
                settled.append(clock())
                return value

            return marked

        patch(Loop, "call_soon_threadsafe", handoff)
        patch(LaneSet, "send", send("lane send"))  # the user's thread, or the I/O thread
        patch(gate, "send_whole", send("ROUTER send"))  # the user's thread (no lane)
        patch(corral.bundles, "send_frames", send("zmq send"))  # the I/O thread's outbox
        patch(Lane, "receive", lane_read)
        patch(gate, "_receive", zmq_read)  # the gate's receive_whole, on the ROUTER
        patch(LightFuture, "set_result", settle)

    def uninstall(self) -> None:
        for undo in reversed(self._undo):
            undo()


STAGES = [
    ("client: apply_async until the hand-off", "start", "handoff"),
    ("client: hand-off until the I/O thread sent it", "handoff", "send"),
    ("transport (lane or ROUTER), engine reads it", "send", "e_recv"),
    ("engine: read until the task starts", "e_recv", "run_start"),
    ("engine: TaskRunner.run", "run_start", "run_end"),
    ("engine: run until the reply is sent", "run_end", "e_send"),
    ("transport (lane or ROUTER), client reads it", "e_send", "recv"),
    ("client: reply read until settled", "recv", "settled"),
    ("client: settled until get() returned", "settled", "end"),
]


ThreadKey = tuple[str, int]  # role, thread id


def thread_counts(processes: dict[str, int]) -> dict[ThreadKey, tuple[str, int, int, int]]:
    """Per thread of ``processes`` (role -> pid; Linux ``/proc``, nothing elsewhere): its name
    (``main`` for the process's first thread), CPU nanoseconds, and how often it went to sleep
    (voluntary switches: one per wake-up) and was preempted (involuntary ones)."""
    found: dict[ThreadKey, tuple[str, int, int, int]] = {}
    for role, pid in processes.items():
        tasks = Path(f"/proc/{pid}/task")
        if not tasks.is_dir():
            continue
        for task in tasks.iterdir():
            try:
                name = (task / "comm").read_text().strip()
                status = (task / "status").read_text()
                cpu_ns = int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue  # the thread ended meanwhile
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            name = "main" if task.name == str(pid) else name
            found[(role, int(task.name))] = (
                name,
                cpu_ns,
                int(fields.get("voluntary_ctxt_switches", "0")),
                int(fields.get("nonvoluntary_ctxt_switches", "0")),
            )
    return found


def thread_rows(
    before: dict[ThreadKey, tuple[str, int, int, int]],
    after: dict[ThreadKey, tuple[str, int, int, int]],
    rounds: int,
) -> list[list[Any]]:
    """Each thread's CPU (us), sleeps and preemptions per round trip, between two
    :func:`thread_counts`; threads that did next to nothing left out."""
    rows = []
    for key, (name, cpu_ns, sleeps, preempted) in sorted(after.items()):
        if key not in before:
            continue
        _, cpu_before, sleeps_before, preempted_before = before[key]
        cpu = (cpu_ns - cpu_before) / rounds / 1000
        if cpu < 0.5 and sleeps - sleeps_before < rounds / 100:
            continue
        rows.append(
            [
                f"{key[0]}:{name}",
                cpu,
                (sleeps - sleeps_before) / rounds,
                (preempted - preempted_before) / rounds,
            ]
        )
    return rows


def process_roles(processes: list[Any]) -> dict[str, int]:
    """The cluster's processes (and this one, the client) by role, from their command lines."""
    found = {"client": os.getpid()}
    for process in processes:
        try:
            cmdline = " ".join(process.cmdline())
        except Exception:  # noqa: BLE001 - gone: not counted
            continue
        if "corral.controller.scheduler" in cmdline:
            found["scheduler"] = process.pid
        elif "controller" in cmdline:
            found["hub"] = process.pid
        else:
            found["engine"] = process.pid
    return found


def trace(
    rounds: int, controller_args: list[str], engine_args: list[str]
) -> tuple[dict[str, list[int]], float, list[list[Any]], str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="corral-trace-") as folder:
        before = hooks_environment(Path(folder), ENGINE_HOOKS, "engine")
        client_marks = ClientMarks()
        try:
            with corral_cluster(
                1, controller_args=controller_args, engine_args=engine_args
            ) as running:
                view = running.client[running.client.ids[0]]
                check(view.apply_async(one).get(TIMEOUT) == 1, "a no-op on the engine")
                client_marks.install()
                try:
                    starts, ends = [], []
                    clock = time.perf_counter_ns
                    for round_number in range(WARMUP + rounds):
                        if round_number == WARMUP:
                            roles = process_roles(running.processes)
                            threads = thread_counts(roles)
                            cpu = cpu_seconds(running.processes) + time.process_time()
                        starts.append(clock())
                        result = view.apply_async(one)
                        result.get(TIMEOUT)
                        ends.append(clock())
                    cpu = cpu_seconds(running.processes) + time.process_time() - cpu
                    per_thread = thread_rows(threads, thread_counts(roles), rounds)
                finally:
                    client_marks.uninstall()
        finally:
            restore_environment(before)
        engine, engine_calls, engine_native = engine_marks(Path(folder), WARMUP + rounds)
    marks = align_marks(engine, starts, ends, client_marks, rounds)
    calls = {f"client {k}": v for k, v in client_marks.calls.items()}
    calls.update((f"engine {k}", v) for k, v in engine_calls.items())
    per_round = {k: round(v / (WARMUP + rounds), 2) for k, v in sorted(calls.items()) if v}
    return marks, cpu * 1e6 / rounds, per_thread, engine_native, per_round


def align_marks(
    engine: dict[str, list[int]],
    starts: list[int],
    ends: list[int],
    client_marks: ClientMarks,
    rounds: int,
) -> dict[str, list[int]]:
    """Every stage's marks, one per measured round trip (the warm-up left out): the user's
    thread's ``start`` and ``end``, and each stage's mark the first one at or after the stage
    before it, in the stages' order (a hook may fire more than once per round trip: a settled
    future may settle another, other sockets send and receive now and then). A stage's mark
    after the round trip's ``end`` means the path no longer calls its function: refused."""
    marks: dict[str, list[int]] = {"start": starts, "end": ends}
    found = {**{f"e_{key}" if key in ("recv", "send") else key: v for key, v in engine.items()}}
    found.update(client_marks.marks)
    for _, begin, stage in STAGES[:-1]:
        times = sorted(found[stage])
        marks[stage] = [next_mark(times, when) for when in marks[begin]]
        late = sum(mark > end for mark, end in zip(marks[stage], ends, strict=True))
        check(not late, f"{stage}: a mark inside the round trip ({late} of {len(ends)} not)")
    return {name: stage_marks[WARMUP:] for name, stage_marks in marks.items()}


def next_mark(found: list[int], when: int) -> int:
    """The first of the sorted marks ``found`` at or after ``when`` (:data:`NO_MARK` if none:
    the caller finds it outside the round trip)."""
    index = bisect.bisect_left(found, when)
    return found[index] if index < len(found) else NO_MARK


def figures(spans: list[float]) -> list[float]:
    """Median, 90th and 99th percentile."""
    return [
        statistics.median(spans),
        statistics.quantiles(spans, n=10)[-1],
        statistics.quantiles(spans, n=100)[-1],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument(
        "--controller-args", default="", help='flags for the controller: "--hub-nice 0"'
    )
    parser.add_argument(
        "--engine-args", default="", help='flags for the engine: "--no-lanes" (the ROUTER)'
    )
    args = parser.parse_args()
    client_from_source()
    marks, cpu, per_thread, engine_native, paths = trace(
        args.rounds, shlex.split(args.controller_args), shlex.split(args.engine_args)
    )
    print(f"INTERPRETED: {cluster_native('engine')}; the engine: {engine_native}")
    print(f"the path taken, calls per round trip: {paths}")
    rows = []
    for label, begin, end in STAGES:
        spans = [(b - a) / 1000 for a, b in zip(marks[begin], marks[end], strict=True)]
        check(min(spans) >= 0, f"{label}: marks in order")
        rows.append([label, *figures(spans), statistics.mean(spans)])
    whole = [(b - a) / 1000 for a, b in zip(marks["start"], marks["end"], strict=True)]
    rows.append(["round trip (apply_async to get)", *figures(whole), statistics.mean(whole)])
    stages_total = sum(row[-1] for row in rows[:-1])
    check(abs(stages_total - rows[-1][-1]) < 0.01, "the stages' means add up to the round trip's")
    print_table(
        f"one direct no-op round trip, {args.rounds} in a row, us, interpreted (the stages' "
        f"shares, not compiled timings) {args.controller_args} {args.engine_args}",
        ["stage", "median", "p90", "p99", "mean"],
        rows,
    )
    print(f"the stages' means add up to {stages_total:.1f} us (the round trip's mean)")
    print(f"CPU per round trip, every process (the client's marks included): {cpu:.0f} us")
    if per_thread:
        print_table(
            "per round trip, by thread (Linux /proc): CPU us, sleeps (one per wake-up), "
            "preemptions",
            ["thread", "CPU", "sleeps", "preempted"],
            per_thread,
        )


if __name__ == "__main__":
    main()
