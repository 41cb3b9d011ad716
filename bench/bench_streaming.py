"""The cost of live output streaming on the load-balanced workloads, when nothing is printed.

The two workloads of ``bench_loadbalanced.py`` on 2 engines, each run ROUNDS times with
streaming off and ROUNDS times on, alternating, in one cluster:

1. one by one: ONE_BY_ONE no-op tasks, each ``lview.apply_async(one)``, then all awaited;
   "on": every AsyncResult streams (``ar.stream_output()`` entered as soon as it is submitted,
   left once all are done): the worst case, one streamer per task;
2. map: ``lview.map_async(double, range(MAP_ITEMS), chunksize=CHUNKSIZE)``; "on": the map's
   result streams while it is awaited (``with ar.stream_output(): ar.get()``), as ``%%px
   --stream`` does for a cell.

The figure is the median rate of each mode and the overhead of "on" (target: under 5%). Every
run checks its results. Run: `.venv/bin/python bench/bench_streaming.py` (about 2 minutes).
"""

from __future__ import annotations

import statistics
import sys
from contextlib import ExitStack
from typing import Any

from common import (
    QUIET_WAIT,
    check,
    collect,
    corral_cluster,
    final_process_check,
    machine_load,
    print_table,
    timed,
    verdict,
    write_results,
)

ENGINES = 2
ONE_BY_ONE = 20_000
MAP_ITEMS = 100_000
CHUNKSIZE = 1000
ROUNDS = 5
TIMEOUT = 180.0
TARGET = 0.05


def one() -> int:
    return 1


def double(x: int) -> int:
    return 2 * x


def one_by_one(view: Any, streaming: bool) -> float:
    """Tasks per second of ONE_BY_ONE no-ops, streaming or not."""
    with ExitStack() as streams:

        def run() -> int:
            results = []
            for _ in range(ONE_BY_ONE):
                result = view.apply_async(one)
                if streaming:
                    streams.enter_context(result.stream_output())
                results.append(result)
            return sum(collect(results, lambda r, left: r.get(left), TIMEOUT))

        seconds, total = timed(run)
    check(total == ONE_BY_ONE, f"one-by-one sum {total} != {ONE_BY_ONE}")
    return ONE_BY_ONE / seconds


def mapped(view: Any, streaming: bool) -> float:
    """Items per second of a chunked map, streaming or not."""

    def run() -> list[int]:
        result = view.map_async(double, range(MAP_ITEMS), chunksize=CHUNKSIZE)
        if not streaming:
            return list(result.get(TIMEOUT))
        with result.stream_output():
            return list(result.get(TIMEOUT))

    seconds, values = timed(run)
    check(sum(values) == MAP_ITEMS * (MAP_ITEMS - 1), "map sum")
    return MAP_ITEMS / seconds


def main() -> int:
    load = machine_load("start", wait=QUIET_WAIT)
    figures: dict[str, dict[str, list[float]]] = {
        "one_by_one": {"off": [], "on": []},
        "map": {"off": [], "on": []},
    }
    with corral_cluster(ENGINES) as running:
        view = running.client.load_balanced_view()
        one_by_one(view, False)  # warm-up: engines, sockets, caches
        mapped(view, False)
        for _ in range(ROUNDS):
            for streaming in (False, True):
                mode = "on" if streaming else "off"
                figures["one_by_one"][mode].append(one_by_one(view, streaming))
                figures["map"][mode].append(mapped(view, streaming))
    rows = []
    summary: dict[str, Any] = {}
    ok = True
    for workload, modes in figures.items():
        off = statistics.median(modes["off"])
        on = statistics.median(modes["on"])
        overhead = 1 - on / off
        ok = ok and overhead < TARGET
        unit = "tasks/s" if workload == "one_by_one" else "items/s"
        rows.append([workload, f"{off:,.0f} {unit}", f"{on:,.0f} {unit}", f"{overhead:+.1%}"])
        summary[workload] = {"off": modes["off"], "on": modes["on"], "overhead": overhead}
    print_table(
        f"Streaming overhead, nothing printed ({ENGINES} engines, median of {ROUNDS} rounds)",
        ["workload", "streaming off", "streaming on", "overhead"],
        rows,
    )
    print(f"target: overhead under {TARGET:.0%}: {verdict(ok)}")
    leftovers = final_process_check()
    path = write_results(
        "streaming",
        {"figures": summary, "target": TARGET, "load": load, "leftovers": leftovers},
    )
    print(f"results: {path}")
    return 0 if ok and not leftovers else 1


if __name__ == "__main__":
    sys.exit(main())
