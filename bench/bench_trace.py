"""Where a direct apply round trip's time goes, stage by stage, across the client and the engine.

Starts a cluster of one engine and runs ``--rounds`` round trips of a no-op one after the other
(``view.apply_async(one).get()``), with time marks taken in both processes on the same clock
(``time.perf_counter_ns``, the system's monotonic clock on Linux, shared by all processes):

- client, user's thread: ``apply_async`` called; the request handed to the I/O thread
  (``Loop.call_soon_threadsafe``), or sent by this thread itself (``socket_gate.send_frames``:
  both marks at once, the hand-off stage is then 0); ``apply_async`` returned; ``get()``
  returned;
- client, I/O thread: the request sent (``bundles.send_frames`` called), the reply received
  (``loop.recv_frames`` or ``socket_gate.recv_frames``, or their ``recv_small_as_bytes``, on
  the mux socket; ``socket_gate._receive`` in a tree where the thread waiting in ``get()``
  reads its reply itself, which it then marks), the result settled
  (``LightFuture.set_result``);
- engine, main thread: the request received (``loop.recv_frames`` or
  ``loop.recv_small_as_bytes``), ``TaskRunner.run``
  started and ended, the reply sent (``bundles.send_frames`` called).

The engine's marks come from a ``sitecustomize`` this script writes to a temporary folder and
puts first on the engine's ``PYTHONPATH``; it writes them to a file when the engine exits. The
marks cost a few hundred nanoseconds each. Each stage's median, 90th and 99th percentile
are printed; the stages of one round trip add up to it, so the table says where a round trip's
time goes (the MUX device, a C thread in the controller, is inside the two transport
stages, with the wake-up of the thread that receives). Last comes the CPU of every process
(the cluster's and this one) per round trip: counted by the kernel, it holds under other load
when the wall-clock figures do not; then, on Linux, each thread's CPU, sleeps (a sleep is one
wake-up) and preemptions per round trip, from ``/proc`` (issue 13, round fourteen: which
threads wake how often, and which ones take a CPU from another of the round trip)::

    PYTHONPATH=. .bench-venv/bin/python bench/bench_trace.py --rounds 2000

Another corral tree (a baseline from ``git archive``) is measured with
``CORRAL_BENCH_SOURCE=DIR PYTHONPATH=DIR``, run from an empty folder.
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

ENGINE_HOOKS = textwrap.dedent(
    '''
    """Time marks of the engine's main thread (bench/bench_trace.py): written at exit."""
    import json, os, threading, time

    _out = os.environ.get("CORRAL_TRACE_DIR")
    if _out:
        import corral.bundles, corral.loop
        from corral.engine.runner import TaskRunner

        _marks = {"recv": [], "run_start": [], "run_end": [], "send": []}
        _clock = time.perf_counter_ns
        _main = threading.main_thread()

        def _after(name, function):
            marks = _marks[name]

            def marked(*args, **kwargs):
                value = function(*args, **kwargs)
                if threading.current_thread() is _main:
                    marks.append(_clock())
                return value

            return marked

        def _before(name, function):  # a send: its peer may read it before it returns
            marks = _marks[name]
            import zmq

            def marked(*args, **kwargs):
                # not the Hub's copies of a direct request (a PUSH, after the reply)
                if threading.current_thread() is _main and getattr(args[0], "type", 0) != zmq.PUSH:
                    marks.append(_clock())
                return function(*args, **kwargs)

            return marked

        corral.loop.recv_frames = _after("recv", corral.loop.recv_frames)
        if hasattr(corral.loop, "recv_small_as_bytes"):  # a tree whose task sockets read bytes
            corral.loop.recv_small_as_bytes = _after("recv", corral.loop.recv_small_as_bytes)
        corral.bundles.send_frames = _before("send", corral.bundles.send_frames)
        _run = TaskRunner.run

        def _run_marked(self, item):
            _marks["run_start"].append(_clock())
            try:
                return _run(self, item)
            finally:
                _marks["run_end"].append(_clock())

        TaskRunner.run = _run_marked

        def _dump():
            path = os.path.join(_out, f"engine-{os.getpid()}.json")
            with open(path, "w") as f:
                json.dump(_marks, f)

        _exit = os._exit

        def _exit_dumping(code):
            try:
                _dump()
            finally:
                _exit(code)

        os._exit = _exit_dumping
    '''
)


def one() -> int:
    return 1


class ClientMarks:
    """The client's marks, from hooks on the functions its two threads call per round trip."""

    def __init__(self) -> None:
        self.marks: dict[str, list[int]] = collections.defaultdict(list)
        self.received: dict[int, list[int]] = collections.defaultdict(list)  # per socket
        self.user = threading.current_thread()
        self._undo: list[Callable[[], None]] = []

    def install(self) -> None:
        import corral.bundles
        import corral.loop
        from corral.client.requestfuture import LightFuture

        clock, marks, received, user = time.perf_counter_ns, self.marks, self.received, self.user

        def patch(owner: Any, name: str, wrapper: Callable[[Any], Any]) -> None:
            original = getattr(owner, name)
            setattr(owner, name, wrapper(original))
            self._undo.append(lambda: setattr(owner, name, original))

        def handoff(original: Any) -> Any:
            def marked(loop: Any, *args: Any) -> Any:
                if threading.current_thread() is user:
                    marks["handoff"].append(clock())
                return original(loop, *args)

            return marked

        def send(original: Any) -> Any:
            def marked(sock: Any, *args: Any, **kwargs: Any) -> Any:
                marks["send"].append(clock())  # before: the engine may read it before it returns
                return original(sock, *args, **kwargs)

            return marked

        def recv(original: Any) -> Any:
            def marked(sock: Any, *args: Any, **kwargs: Any) -> Any:
                value = original(sock, *args, **kwargs)
                received[id(sock)].append(clock())
                return value

            return marked

        def received_one(original: Any) -> Any:
            def marked(sock: Any, into: Any) -> Any:
                got = original(sock, into)
                if got:
                    received[id(sock)].append(clock())
                return got

            return marked

        def settle(original: Any) -> Any:
            def marked(future: Any, result: Any) -> Any:
                value = original(future, result)
                marks["settled"].append(clock())
                return value

            return marked

        def direct(original: Any) -> Any:
            def marked(sock: Any, *args: Any, **kwargs: Any) -> Any:
                if threading.current_thread() is user:  # no hand-off: it is the send
                    now = clock()
                    marks["handoff"].append(now)
                    marks["send"].append(now)
                return original(sock, *args, **kwargs)

            return marked

        patch(corral.loop.Loop, "call_soon_threadsafe", handoff)
        patch(corral.bundles, "send_frames", send)
        patch(corral.loop, "recv_frames", recv)
        patch(LightFuture, "set_result", settle)
        try:  # a tree whose submitting thread may send itself (corral/client/socket_gate.py)
            import corral.client.socket_gate as gate
        except ImportError:
            pass
        else:
            patch(gate, "send_frames", direct)
            if hasattr(gate, "_receive"):  # a tree where the waiting thread may read too
                patch(gate, "_receive", received_one)
            else:  # the receive it uses: small frames as bytes in a tree that has that function
                small = hasattr(gate, "recv_small_as_bytes")
                patch(gate, "recv_small_as_bytes" if small else "recv_frames", recv)

    def uninstall(self) -> None:
        for undo in reversed(self._undo):
            undo()


STAGES = [
    ("client: apply_async until the hand-off", "start", "handoff"),
    ("client: hand-off until the I/O thread sent it", "handoff", "send"),
    ("transport (MUX or direct), engine reads it", "send", "e_recv"),
    ("engine: read until the task starts", "e_recv", "run_start"),
    ("engine: TaskRunner.run", "run_start", "run_end"),
    ("engine: run until the reply is sent", "run_end", "e_send"),
    ("transport (MUX or direct), client reads it", "e_send", "recv"),
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
    rounds: int, controller_args: list[str]
) -> tuple[dict[str, list[int]], float, list[list[Any]]]:
    with tempfile.TemporaryDirectory(prefix="corral-trace-") as folder:
        hooks = Path(folder) / "hooks"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(ENGINE_HOOKS)
        before = {key: os.environ.get(key) for key in ("PYTHONPATH", "CORRAL_TRACE_DIR")}
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(hooks), *filter(None, [before["PYTHONPATH"]])]
        )
        os.environ["CORRAL_TRACE_DIR"] = folder
        client_marks = ClientMarks()
        try:
            with corral_cluster(1, controller_args=controller_args) as running:
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
        (dumped,) = Path(folder).glob("engine-*.json")
        engine = json.loads(dumped.read_text())
    total = WARMUP + rounds
    for name, found in engine.items():
        check(len(found) >= total, f"engine {name}: {len(found)} marks for {total} round trips")
    marks = align_marks(engine, starts, ends, client_marks, rounds)
    return marks, cpu * 1e6 / rounds, per_thread


def align_marks(
    engine: dict[str, list[int]],
    starts: list[int],
    ends: list[int],
    client_marks: ClientMarks,
    rounds: int,
) -> dict[str, list[int]]:
    """Every stage's marks, one per measured round trip (the warm-up left out): the engine's
    (one per round trip, its last ``WARMUP + rounds``), the user's thread's ``start`` and
    ``end``, and the client's I/O marks. The client's hooks may fire more than once per round
    trip (a settled future may settle another; other sockets receive now and then): each
    stage's mark is the first one at or after the stage before it."""
    total = WARMUP + rounds
    marks = {
        f"e_{key}" if key in ("recv", "send") else key: v[-total:] for key, v in engine.items()
    }
    marks.update(start=starts, end=ends)
    client = {
        **client_marks.marks,
        "recv": sorted(t for ts in client_marks.received.values() for t in ts),
    }
    for name, after in (
        ("handoff", "start"),
        ("send", "handoff"),
        ("recv", "e_send"),
        ("settled", "recv"),
    ):
        marks[name] = [next_mark(client[name], when) for when in marks[after]]
    return {name: found[WARMUP:] for name, found in marks.items()}


def next_mark(found: list[int], when: int) -> int:
    """The first of the sorted marks ``found`` at or after ``when``."""
    index = bisect.bisect_left(found, when)
    check(index < len(found), "a mark for every stage of every round trip")
    return found[index]


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
    args = parser.parse_args()
    use_source()
    marks, cpu, per_thread = trace(args.rounds, shlex.split(args.controller_args))
    rows = []
    for label, begin, end in STAGES:
        spans = [(b - a) / 1000 for a, b in zip(marks[begin], marks[end], strict=True)]
        check(min(spans) >= 0, f"{label}: marks in order")
        rows.append([label, *figures(spans)])
    whole = [(b - a) / 1000 for a, b in zip(marks["start"], marks["end"], strict=True)]
    rows.append(["round trip (apply_async to get)", *figures(whole)])
    print_table(
        f"one direct no-op round trip, {args.rounds} in a row, us {args.controller_args}",
        ["stage", "median", "p90", "p99"],
        rows,
    )
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
