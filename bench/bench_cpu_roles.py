"""CPU per load-balanced no-op task, by process role, and where each role spends it.

Starts a corral cluster with 2 engines, submits ROUNDS batches of TASKS no-ops one by one
(load-balanced, or with ``--direct`` round-robin over the engines' direct views, through the
MUX; each batch then awaited), and reports the CPU microseconds per task of the client (this
process), the controller (Hub and devices), the task scheduler and the engines (summed),
counted until the Hub has recorded every task (it works off the tasks' path and may finish
after the client holds every result; tasks/s is the client's view, until then), and how
many messages the scheduler sent per zmq message to each peer (its bundles, from the stopped
controller's stats file: the whole run, warm-up included), and the Hub's file I/O per task
(write and read calls and bytes: its store's WAL frames and checkpoints, counts that the
machine's load does not move).
With ``--profile DIR`` it also attaches ``py-spy record`` (idle threads not sampled) to
every process of the cluster for the whole run and prints, per role, the functions with the
most samples (self time, so the rows of one role add up to its share):

    .venv/bin/python bench/bench_cpu_roles.py --profile /tmp/profiles

With ``--native-frames`` py-spy reads native stacks too (``--native``: it pauses each process
to sample it, and then samples idle threads as well, in ``poll``), the only way to see inside
the modules ``make native`` compiled (their functions show as ``CPyDef_<module>___<name>``).
With ``--perf DIR`` Linux perf samples every process of the cluster for the measured rounds
instead, without pausing them, and the report gives each role's compiled functions in CPU us
per task, inclusive, and its leaves (:mod:`perf_roles`):

    .venv/bin/python bench/bench_cpu_roles.py --tasks 5000 --rounds 10 --perf /tmp/perf

py-spy is a tool, never a dependency: ``pip install py-spy`` in the environment that runs this.
Another corral tree (a baseline from ``git archive``) is measured with ``CORRAL_BENCH_SOURCE=DIR
PYTHONPATH=DIR``, run from an empty folder.
"""

from __future__ import annotations

import argparse
import collections
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import perf_roles
import psutil
from common import (
    HubBarrier,
    Running,
    check,
    collect,
    corral_cluster,
    cpu_seconds,
    native_state,
    use_source,
)

ENGINES = 2
TASKS = 5000
ROUNDS = 3
TIMEOUT = 300.0
TOP = 25


def one() -> int:
    return 1


def roles(running: Running) -> dict[str, list[psutil.Process]]:
    """The cluster's processes by role, from their command lines (client: this process)."""
    found: dict[str, list[psutil.Process]] = collections.defaultdict(list)
    for process in running.processes:
        cmdline = " ".join(process.cmdline())
        if "corral.controller.scheduler" in cmdline:
            found["scheduler"].append(process)
        elif "controller" in cmdline:
            found["hub"].append(process)
        else:
            found["engines"].append(process)
    found["client"].append(psutil.Process())
    return found


def system_seconds(processes: list[psutil.Process]) -> float:
    """The kernel's share of ``processes``' CPU seconds (system calls, wake-ups, loopback TCP)."""
    total = 0.0
    for process in processes:
        try:
            total += process.cpu_times().system
        except psutil.Error:
            continue
    return total


def file_io(processes: list[psutil.Process]) -> tuple[int, int, int, int]:
    """Write calls, bytes written, read calls and bytes read by ``processes`` (``/proc/<pid>/io``:
    ``syscw``, ``wchar``, ``syscr``, ``rchar``; zmq's sends on TCP are not among them, its
    wake-up writes are). In the Hub nearly all are the SQLite store's: its WAL's frames (two
    writes each: the frame's header, its page), and each checkpoint's copy of those pages to
    the file (a read and a write each). Counts, so the other sessions' load leaves them be."""
    found = [0, 0, 0, 0]
    for process in processes:
        try:
            counters = process.io_counters()
        except (psutil.Error, AttributeError):
            continue
        found[0] += counters.write_count
        found[1] += getattr(counters, "write_chars", counters.write_bytes)
        found[2] += counters.read_count
        found[3] += getattr(counters, "read_chars", counters.read_bytes)
    return found[0], found[1], found[2], found[3]


def minor_faults(processes: list[psutil.Process]) -> int:
    """Minor page faults of ``processes`` (``/proc/<pid>/stat``'s tenth field, threads
    included): each is a page touched for the first time since it was mapped or given back
    (``malloc_trim``, a freed arena, zmq's large receive buffers), and costs a fault and the
    kernel clearing the page (``clear_page_erms`` in a perf profile)."""
    total = 0
    for process in processes:
        try:
            text = Path(f"/proc/{process.pid}/stat").read_text()
        except OSError:
            continue
        total += int(text.rpartition(")")[2].split()[7])  # field 10, after "pid (comm)"
    return total


def thread_times(processes: list[psutil.Process]) -> collections.Counter[str]:
    """CPU seconds (user + system) by thread name (``/proc/<pid>/task/<tid>/comm``: zmq's
    I/O threads are ``ZMQbg/IO/0``, Python threads carry their name from Python 3.11 on
    Linux only if set, else the process's) summed over ``processes``. A thread named as its
    process that is not its main thread is counted apart, as ``<name> (other)``: in the Hub,
    the result store's writer thread."""
    found: collections.Counter[str] = collections.Counter()
    for process in processes:
        try:
            threads = process.threads()
        except psutil.Error:
            continue
        for thread in threads:
            try:
                name = Path(f"/proc/{process.pid}/task/{thread.id}/comm").read_text().strip()
            except OSError:
                continue
            if thread.id != process.pid and name == process.name():
                name += " (other)"
            found[name] += thread.user_time + thread.system_time
    return found


def summarise(collapsed: Path, top: int) -> list[tuple[int, int, str]]:
    """Self and inclusive samples per function from py-spy's collapsed stacks (``--format
    raw``; idle threads are not sampled), most inclusive first."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
        total += int(count)
    rows = [(total, total, "(all samples)")]
    rows += [(n, own[frame], frame) for frame, n in inclusive.most_common(top)]
    return rows


def lapse_reasons(packing: dict[str, Any]) -> str:
    """What the lapses' last looks found (corral.controller.packing.LAPSE_REASONS), those
    counted; "reasons not counted" for a tree older than the counts."""
    try:
        from corral.controller.packing import LAPSE_REASONS
    except ImportError:  # the measured tree (CORRAL_BENCH_SOURCE) is older
        return "reasons not counted"
    if not any(reason in packing for reason in LAPSE_REASONS):
        return "reasons not counted"
    found = [f"{reason} {packing[reason]}" for reason in LAPSE_REASONS if packing.get(reason)]
    return "by reason: " + (", ".join(found) or "none")


def scheduler_sends(stats: dict[str, Any] | None) -> str:
    """The scheduler's sends by peer from the controller's stats file, as messages per zmq
    message (how large its bundles were: :mod:`corral.bundles`); "" if the file has none."""
    sends = ((stats or {}).get("scheduler") or {}).get("sends")
    if not isinstance(sends, dict):
        return ""
    shown = []
    for peer, counts in sends.items():
        messages, zmq_messages = counts.get("messages", 0), counts.get("zmq_messages", 0)
        if zmq_messages:
            shown.append(f"to {peer} {messages / zmq_messages:.1f} ({messages} in {zmq_messages})")
    return ", ".join(shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=TASKS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--engines", type=int, default=ENGINES)
    parser.add_argument("--profile", type=Path, help="py-spy every process, output here")
    parser.add_argument(
        "--native-frames",
        action="store_true",
        help="with --profile: py-spy's --native, so compiled (make native) functions show",
    )
    parser.add_argument(
        "--perf", type=Path, help="perf record every process (call graphs), perf.data here"
    )
    parser.add_argument("--top", type=int, default=TOP)
    parser.add_argument("--db", default="sqlite", help="the controller's store (Cluster's db)")
    parser.add_argument(
        "--controller-args",
        default="",
        help='extra flags for the controller, one string (e.g. "--burst-packing 1")',
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="direct tasks through the MUX, round-robin over the engines, instead of load-balanced",
    )
    args = parser.parse_args()
    origin = use_source(show=False)  # printed with the figures
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    # keep: the cluster folder (in a temporary one) outlives the stop, with the stats file
    controller_args = shlex.split(args.controller_args)
    with corral_cluster(
        args.engines, db=args.db, keep=True, controller_args=controller_args
    ) as running:
        client = running.client
        view = client.load_balanced_view()
        engines = [client[engine_id] for engine_id in client.ids]
        by_role = roles(running)

        def run(count: int) -> list[Any]:
            if args.direct:
                results = [engines[i % len(engines)].apply_async(one) for i in range(count)]
            else:
                results = [view.apply_async(one) for _ in range(count)]
            values = collect(results, lambda result, left: result.get(left), TIMEOUT)
            check(sum(values) == count, "sum")
            return results

        barrier = HubBarrier(client)
        barrier.settle(run(200))  # the warm-up, recorded by the Hub
        spies: list[tuple[str, int, subprocess.Popen[bytes], Path]] = []
        if args.profile is not None:
            check(spy is not None, "py-spy is not installed")
            args.profile.mkdir(parents=True, exist_ok=True)
            for role, processes in by_role.items():
                for process in processes:
                    out = args.profile / f"{role}-{process.pid}.txt"
                    command = [str(spy), "record", "--format", "raw", "-r", "100"]
                    # py-spy reads native stacks only from a paused process
                    command.append("--native" if args.native_frames else "--nonblocking")
                    command += ["-p", str(process.pid), "-o", str(out)]
                    spies.append((role, process.pid, subprocess.Popen(command), out))
            time.sleep(1.0)  # py-spy attaches before the measured batches (not a sync point)
        pids = {role: [process.pid for process in found] for role, found in by_role.items()}
        recording, role_of = None, {}
        if args.perf is not None:
            args.perf.mkdir(parents=True, exist_ok=True)
            role_of = perf_roles.thread_roles(pids)
            every = [pid for found in pids.values() for pid in found]
            recording = perf_roles.PerfRecording(every, args.perf / "perf.data")
            time.sleep(1.0)  # perf attaches before the measured batches (not a sync point)
        before = {role: cpu_seconds(processes) for role, processes in by_role.items()}
        threads_before = {role: thread_times(processes) for role, processes in by_role.items()}
        system_before = {role: system_seconds(processes) for role, processes in by_role.items()}
        hub_io_before = file_io(by_role["hub"])
        faults_before = {role: minor_faults(processes) for role, processes in by_role.items()}
        started = time.perf_counter()
        for _ in range(args.rounds):
            last = run(args.tasks)[-1]
        seconds = time.perf_counter() - started
        tasks = args.tasks * args.rounds
        # CPU counted until the Hub has recorded them all: it works off the tasks' path
        barrier.wait(tasks, last)
        if recording is not None:
            recording.stop()
        per_task: dict[str, Any] = {
            role: (cpu_seconds(processes) - before[role]) / tasks * 1e6
            for role, processes in by_role.items()
        }
        system = {
            role: (system_seconds(processes) - system_before[role]) / tasks * 1e6
            for role, processes in by_role.items()
        }
        per_thread = {
            role: {
                name: (seconds - threads_before[role][name]) / tasks * 1e6
                for name, seconds in thread_times(processes).items()
            }
            for role, processes in by_role.items()
        }
        hub_io_after = file_io(by_role["hub"])
        faults = {
            role: (minor_faults(processes) - faults_before[role]) / tasks
            for role, processes in by_role.items()
        }
        hub_io = [
            (now - then) / tasks for now, then in zip(hub_io_after, hub_io_before, strict=True)
        ]
        for _, _, popen, _ in spies:
            popen.send_signal(2)
        for _, _, popen, _ in spies:
            popen.wait(60)
    print(f"corral from {origin} ({native_state()})")
    kind = "direct (round-robin)" if args.direct else "load-balanced"
    print(f"{tasks} {kind} no-ops, {args.engines} engines, {args.db} store: ", end="")
    print(f"{tasks / seconds:,.0f} tasks/s")
    print("CPU us per task: " + ", ".join(f"{r} {v:.0f}" for r, v in per_task.items()))
    print(f"  total {sum(per_task.values()):.0f}")
    print("  of which in the kernel: " + ", ".join(f"{r} {v:.0f}" for r, v in system.items()))
    print("  minor page faults per task: " + ", ".join(f"{r} {v:.2f}" for r, v in faults.items()))
    for role, threads in per_thread.items():
        shown = sorted(threads.items(), key=lambda item: -item[1])
        print(f"  {role} by thread: " + ", ".join(f"{n} {v:.0f}" for n, v in shown if v >= 1))
    print(
        f"  hub's file I/O per task (its store): {hub_io[0]:.2f} writes"
        f" ({hub_io[1] / 1024:.1f} KiB), {hub_io[2]:.2f} reads ({hub_io[3] / 1024:.1f} KiB)"
    )
    sends = scheduler_sends(running.stats)
    if sends:
        print("  scheduler's messages per zmq message (whole run, warm-up too): " + sends)
    packing = ((running.stats or {}).get("scheduler") or {}).get("packing")
    if isinstance(packing, dict):  # corral.controller.packing: bursts kept on a few engines
        print(
            f"  bursts packed: started {packing.get('started')}, lapsed {packing.get('lapsed')}"
            f" (of which early, its packing engines silent: {packing.get('stalled')};"
            f" {lapse_reasons(packing)}), kept {packing.get('kept')},"
            f" put off starved {packing.get('starved')}"
        )
    if recording is not None:
        samples = perf_roles.read_samples(perf_roles.script_lines(recording.out), role_of)
        print("\n".join(perf_roles.report(samples, recording.frequency, tasks, args.top)))
    for role, pid, _, out in spies:
        if not out.exists():
            print(f"\n{role} {pid}: no profile written")
            continue
        print(f"\n{role} (pid {pid}), samples: inclusive, self, function")
        for count, self_count, frame in summarise(out, args.top):
            print(f"{count:8d} {self_count:8d}  {frame[:140]}")


if __name__ == "__main__":
    main()
