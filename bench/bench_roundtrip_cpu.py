"""What one direct round trip costs every process, compiled: CPU per round trip and wake-ups.

``bench_trace.py`` splits a round trip into stages but runs the client and the engine from
their sources; this runs what users run (the compiled build, when there is one). One engine,
``--rounds`` no-op round trips one after the other (``view.apply_async(one).get()``), after a
warm-up; reported: the round trips' median, p90 and p99, and per process (client, engine,
controller) and per thread its CPU microseconds and voluntary context switches (its sleeps)
per round trip, from ``/proc``. A direct task's copies go from the engine to the Hub, off the
round trip's path, but on a 2-core machine the Hub's CPU is taken from the client and the
engine (bench/README.md, round thirty-four). With ``--perf DIR``, Linux perf samples every
process for the measured round trips and the report gives each role's compiled functions and
leaves per round trip (:mod:`perf_roles`).

    .venv/bin/python bench/bench_roundtrip_cpu.py --rounds 5000

Another tree (a baseline from ``git worktree``, its native build made) is measured with
``CORRAL_BENCH_SOURCE=DIR PYTHONPATH=DIR``, run from an empty folder.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import perf_roles
import psutil
from common import check, corral_cluster, use_source

ROUNDS = 5000
WARMUP = 500
TIMEOUT = 30.0


def one() -> int:
    return 1


def role_of(process: psutil.Process) -> str:
    """``engine`` or ``controller`` (with its scheduler, idle here) by command line."""
    command = " ".join(process.cmdline())
    return "engine" if "engine" in command else "controller"


def thread_counters(
    processes: dict[str, list[psutil.Process]],
) -> dict[tuple[str, int], tuple[str, float, int]]:
    """Per (role, thread id): the thread's name, its CPU seconds and voluntary switches."""
    found = {}
    for role, group in processes.items():
        for process in group:
            for thread in process.threads():
                task = Path(f"/proc/{process.pid}/task/{thread.id}")
                try:
                    name = (task / "comm").read_text().strip()
                    status = (task / "status").read_text()
                except OSError:
                    continue  # ended meanwhile
                switches = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
                found[(role, thread.id)] = (name, thread.user_time + thread.system_time, switches)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--perf", type=Path, help="perf record every process, perf.data here")
    args = parser.parse_args()
    use_source()  # says which tree, compiled or not
    with corral_cluster(1) as running:
        client = running.client
        view = client[client.ids[0]]
        for _ in range(WARMUP):
            check(view.apply_async(one).get(TIMEOUT) == 1, "warm-up")
        processes: dict[str, list[psutil.Process]] = {"client": [psutil.Process()]}
        for process in running.processes:
            processes.setdefault(role_of(process), []).append(process)
        recording = None
        if args.perf is not None:
            args.perf.mkdir(parents=True, exist_ok=True)
            roles = perf_roles.thread_roles({r: [p.pid for p in g] for r, g in processes.items()})
            pids = [p.pid for g in processes.values() for p in g]
            recording = perf_roles.PerfRecording(pids, args.perf / "perf.data")
            time.sleep(1.0)  # perf attaches before the measured round trips (not a sync point)
        before = thread_counters(processes)
        started = time.perf_counter()
        times = []
        for _ in range(args.rounds):
            sent = time.perf_counter()
            check(view.apply_async(one).get(TIMEOUT) == 1, "round trip")
            times.append(time.perf_counter() - sent)
        wall = time.perf_counter() - started
        after = thread_counters(processes)
        if recording is not None:
            recording.stop()
    times.sort()
    rounds = args.rounds
    print(
        f"{rounds} round trips: median {statistics.median(times) * 1e6:.0f} us, "
        f"p90 {times[int(0.9 * rounds)] * 1e6:.0f}, p99 {times[int(0.99 * rounds)] * 1e6:.0f}; "
        f"wall per round trip {wall / rounds * 1e6:.0f} us"
    )
    by_role: dict[str, float] = {}
    lines = []
    for key, (name, cpu, switches) in sorted(after.items()):
        if key not in before:
            continue
        _, cpu_before, switches_before = before[key]
        used, slept = cpu - cpu_before, switches - switches_before
        by_role[key[0]] = by_role.get(key[0], 0.0) + used
        if used > 0 or slept:
            lines.append(
                f"  {key[0]:<10} {name:<16} {used / rounds * 1e6:6.0f} us "
                f"{slept / rounds:5.2f} sleeps"
            )
    shares = ", ".join(f"{role} {cpu / rounds * 1e6:.0f}" for role, cpu in by_role.items())
    print(f"CPU us per round trip: {shares}; total {sum(by_role.values()) / rounds * 1e6:.0f}")
    print("by thread, per round trip:")
    print("\n".join(lines))
    if recording is not None:
        samples = perf_roles.read_samples(perf_roles.script_lines(recording.out), roles)
        print("\n".join(perf_roles.report(samples, recording.frequency, rounds, 30)))


if __name__ == "__main__":
    main()
