"""What a client keeps per held result, and what its cyclic collector costs per task.

A client keeps each task's result and metadata until they are purged (as ipyparallel does),
so a program holding a million AsyncResults holds a million of everything a task leaves
behind. This starts a corral cluster with 2 engines and, in the client (this process),
submits ``--tasks`` load-balanced no-ops one by one, holding every AsyncResult, then waits for
them all. Two runs, each on a fresh cluster:

- **memory**: ``tracemalloc`` from just before the first submission to after the last result
  (then a full collection): traced bytes per held result, the objects the collector tracks per
  held result (``gc.get_objects``), and with ``--top K`` the K allocation sites keeping the
  most bytes per held result (file and line). The session's replay protection (the signatures
  of the replies it checked, at most ``DIGEST_HISTORY_SIZE``) counts here too: it is bounded,
  not per result, but no smaller than these runs.
- **CPU**: without tracemalloc, the client's CPU per task (every thread) and the cyclic
  collector's, timed on each collecting thread through ``gc.callbacks``, by generation.

    PYTHONPATH=. .venv/bin/python bench/bench_held_results.py --tasks 50000 --top 10

Another tree (a baseline worktree) is measured with ``CORRAL_BENCH_SOURCE=DIR PYTHONPATH=DIR``
from an empty folder. Prints a table and writes ``bench/results/held_results.json``.
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
import tracemalloc
from typing import Any

from common import check, collect, corral_cluster, print_table, use_source, write_results

TASKS = 20_000
ENGINES = 2
TIMEOUT = 300.0


def one() -> int:
    return 1


def submit_and_hold(client: Any, tasks: int) -> list[Any]:
    """``tasks`` load-balanced no-ops, every AsyncResult held and awaited."""
    view = client.load_balanced_view()
    results = [view.apply_async(one) for _ in range(tasks)]
    check(collect(results, lambda r, t: r.get(timeout=t), TIMEOUT) == [1] * tasks, "no-op results")
    return results


def memory_run(tasks: int, top: int) -> dict[str, Any]:
    with corral_cluster(ENGINES) as running:
        client = running.client
        client.wait_for_engines(ENGINES, timeout=60)
        submit_and_hold(client, 200)  # warm: imports, caches, the first tables
        gc.collect()
        tracked = len(gc.get_objects())
        tracemalloc.start()
        first = tracemalloc.take_snapshot()
        held = submit_and_hold(client, tasks)
        gc.collect()
        last = tracemalloc.take_snapshot()
        tracemalloc.stop()
        objects = (len(gc.get_objects()) - tracked) / tasks
        changes = last.compare_to(first, "lineno")
        per_result = sum(change.size_diff for change in changes) / tasks
        sites = [
            (f"{c.traceback[0].filename.rsplit('/', 2)[-1]}:{c.traceback[0].lineno}", c)
            for c in sorted(changes, key=lambda c: -c.size_diff)[:top]
        ]
        del held
        return {
            "bytes_per_held_result": per_result,
            "tracked_objects_per_held_result": objects,
            "top": [
                {"site": site, "bytes": c.size_diff / tasks, "objects": c.count_diff / tasks}
                for site, c in sites
            ],
        }


def cpu_run(tasks: int) -> dict[str, Any]:
    spent = [0.0, 0.0, 0.0]
    counts = [0, 0, 0]
    started: dict[int, float] = {}

    def timing(phase: str, info: dict[str, Any]) -> None:
        thread = threading.get_ident()
        if phase == "start":
            started[thread] = time.thread_time()
            return
        generation = info["generation"]
        spent[generation] += time.thread_time() - started.pop(thread, time.thread_time())
        counts[generation] += 1

    with corral_cluster(ENGINES) as running:
        client = running.client
        client.wait_for_engines(ENGINES, timeout=60)
        submit_and_hold(client, 200)
        gc.collect()
        gc.callbacks.append(timing)
        try:
            before = time.process_time()
            held = submit_and_hold(client, tasks)
            cpu = time.process_time() - before
        finally:
            gc.callbacks.remove(timing)
        del held
    return {
        "client_cpu_us_per_task": 1e6 * cpu / tasks,
        "gc_us_per_task": 1e6 * sum(spent) / tasks,
        "gc_us_per_task_by_generation": [1e6 * s / tasks for s in spent],
        "collections_by_generation": counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=TASKS)
    parser.add_argument("--top", type=int, default=0, help="allocation sites to list")
    args = parser.parse_args()
    origin = use_source()
    memory = memory_run(args.tasks, args.top)
    cpu = cpu_run(args.tasks)
    by_generation = cpu["gc_us_per_task_by_generation"]
    print_table(
        f"{args.tasks:,} load-balanced no-ops held ({origin})",
        ["figure", "value"],
        [
            ("traced bytes per held result", memory["bytes_per_held_result"]),
            ("tracked objects per held result", memory["tracked_objects_per_held_result"]),
            ("client CPU us per task", cpu["client_cpu_us_per_task"]),
            ("of which the collector, us", cpu["gc_us_per_task"]),
            (
                "  full collections (count, us)",
                f"{cpu['collections_by_generation'][2]}, {by_generation[2]:.2f}",
            ),
        ],
    )
    if memory["top"]:
        print_table(
            "allocation sites, per held result",
            ["site", "bytes", "objects"],
            [(site["site"], site["bytes"], site["objects"]) for site in memory["top"]],
        )
    write_results("held_results", {"tasks": args.tasks, "memory": memory, "cpu": cpu})


if __name__ == "__main__":
    main()
