"""Scheduler decisions alone: submit + task_finished per second through SchedulerCore.

No sockets, no messages: this is the Python cost the task scheduler adds per task on top of
the transport, and it must stay far above the rate the sockets can deliver (20000+ tasks/s).
4 engines, 100000 tasks without dependencies, prefetch cap 16 per engine:

- steady: engines kept full; each new task is submitted as the oldest one in flight replies.
- backlog: all tasks submitted first (all but 64 queue), then engines reply in turn, each
  reply taking the next queued task.

Task objects are built before the clock starts (decoding metadata is the shell's job).
Run: `.venv/bin/python bench/bench_scheduler_core.py` (or `make bench`).
"""

from __future__ import annotations

import json
import platform
import time
from collections import deque
from pathlib import Path

from corral.controller.scheduling import POLICIES, Action, Dispatch, SchedulerCore, Task

TASKS = 100_000
ENGINES = 4
CAP = 16
REPEATS = 3


def _sent(actions: list[Action], in_flight: deque[Dispatch]) -> None:
    for action in actions:
        if isinstance(action, Dispatch):
            in_flight.append(action)


def steady(policy: str, tasks: list[Task]) -> float:
    core = SchedulerCore(policy, max_outstanding=CAP, seed=0)
    in_flight: deque[Dispatch] = deque()
    for index in range(ENGINES):
        core.add_engine(f"engine-{index}")
    start = time.perf_counter()
    for task in tasks:
        _sent(core.submit(task, 0.0), in_flight)
        if len(in_flight) >= ENGINES * CAP:
            done = in_flight.popleft()
            _sent(core.task_finished(done.msg_id, done.engine_uuid, True, 0.0), in_flight)
    while in_flight:
        done = in_flight.popleft()
        _sent(core.task_finished(done.msg_id, done.engine_uuid, True, 0.0), in_flight)
    elapsed = time.perf_counter() - start
    assert core.waiting_count() == 0
    return elapsed


def backlog(policy: str, tasks: list[Task]) -> float:
    core = SchedulerCore(policy, max_outstanding=CAP, seed=0)
    in_flight: deque[Dispatch] = deque()
    for index in range(ENGINES):
        core.add_engine(f"engine-{index}")
    start = time.perf_counter()
    for task in tasks:
        _sent(core.submit(task, 0.0), in_flight)
    while in_flight:
        done = in_flight.popleft()
        _sent(core.task_finished(done.msg_id, done.engine_uuid, True, 0.0), in_flight)
    elapsed = time.perf_counter() - start
    assert core.waiting_count() == 0
    return elapsed


def main() -> None:
    rows = []
    for scenario in (steady, backlog):
        for policy in POLICIES:
            best = min(
                scenario(policy, [Task(f"{policy}-{run}-{i}") for i in range(TASKS)])
                for run in range(REPEATS)
            )
            rows.append(
                {
                    "scenario": scenario.__name__,
                    "policy": policy,
                    "tasks": TASKS,
                    "seconds": round(best, 4),
                    "tasks_per_second": round(TASKS / best),
                    "us_per_task": round(best / TASKS * 1e6, 2),
                }
            )
    header = (
        f"{'scenario':<9} {'policy':<10} {'tasks':>7} {'seconds':>8} {'tasks/s':>9} {'us/task':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['scenario']:<9} {row['policy']:<10} {row['tasks']:>7} {row['seconds']:>8.3f} "
            f"{row['tasks_per_second']:>9,} {row['us_per_task']:>8.2f}"
        )
    result = {
        "benchmark": "scheduler_core",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "engines": ENGINES,
        "max_outstanding": CAP,
        "best_of": REPEATS,
        "results": rows,
    }
    out = Path(__file__).parent / "results" / "scheduler_core.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
