"""The cost of live output streaming on the load-balanced workloads, when nothing is printed.

The two workloads of ``bench_loadbalanced.py`` on 2 engines, each run ROUNDS times with
streaming off and ROUNDS times on, alternating, in one cluster:

1. one by one: ONE_BY_ONE no-op tasks, each ``lview.apply_async(one)``, then all awaited;
   "on": every AsyncResult streams (``ar.stream_output()`` entered as soon as it is submitted,
   left once all are done): the worst case, one streamer per task;
2. map: ``lview.map_async(double, range(MAP_ITEMS), chunksize=CHUNKSIZE)``; "on": the map's
   result streams while it is awaited (``with ar.stream_output(): ar.get()``), as ``%%px
   --stream`` does for a cell.

The figures are the median rate of each mode and the overhead of "on" (the median over rounds
of one "on" run against the "off" run just before it; target: under 5%), and,
since streaming is work of the client alone (engines publish output whether anyone listens or
not, and send nothing when nothing is printed), the client process's CPU seconds per task,
which the load of a shared machine disturbs far less than wall time. Every run checks its
results. Run: `.venv/bin/python bench/bench_streaming.py` (about 3 minutes on a quiet machine).
"""

from __future__ import annotations

import statistics
import sys
import time
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
ONE_BY_ONE = 3_000
MAP_ITEMS = 100_000
CHUNKSIZE = 1000
ROUNDS = 15
TIMEOUT = 180.0
TARGET = 0.05


def one() -> int:
    return 1


def double(x: int) -> int:
    return 2 * x


Figure = tuple[float, float]  # (items per second, client CPU seconds per item)


def measured(run: Any, items: int) -> tuple[Figure, Any]:
    cpu = time.process_time()
    seconds, value = timed(run)
    return (items / seconds, (time.process_time() - cpu) / items), value


def one_by_one(view: Any, streaming: bool) -> Figure:
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

        figure, total = measured(run, ONE_BY_ONE)
    check(total == ONE_BY_ONE, f"one-by-one sum {total} != {ONE_BY_ONE}")
    return figure


def mapped(view: Any, streaming: bool) -> Figure:
    """Items per second of a chunked map, streaming or not."""

    def run() -> list[int]:
        result = view.map_async(double, range(MAP_ITEMS), chunksize=CHUNKSIZE)
        if not streaming:
            return list(result.get(TIMEOUT))
        with result.stream_output():
            return list(result.get(TIMEOUT))

    figure, values = measured(run, MAP_ITEMS)
    check(sum(values) == MAP_ITEMS * (MAP_ITEMS - 1), "map sum")
    return figure


def main() -> int:
    load = machine_load("start", wait=QUIET_WAIT)
    figures: dict[str, dict[str, list[Figure]]] = {
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
        rate = {mode: statistics.median(f[0] for f in modes[mode]) for mode in ("off", "on")}
        cpu = {mode: statistics.median(f[1] for f in modes[mode]) for mode in ("off", "on")}
        # each "on" run against the "off" run just before it: slow drifts of a shared
        # machine's load cancel out of the pairs
        pairs = list(zip(modes["off"], modes["on"], strict=True))
        overhead = 1 - statistics.median(on[0] / off[0] for off, on in pairs)
        cpu_overhead = statistics.median(on[1] / off[1] for off, on in pairs) - 1
        ok = ok and overhead < TARGET
        unit = "tasks/s" if workload == "one_by_one" else "items/s"
        per = "task" if workload == "one_by_one" else "item"
        rows.append(
            [
                workload,
                f"{rate['off']:,.0f} {unit}",
                f"{rate['on']:,.0f} {unit}",
                f"{overhead:+.1%}",
                f"{cpu['off'] * 1e6:,.1f} / {cpu['on'] * 1e6:,.1f} us per {per}",
                f"{cpu_overhead:+.1%}",
            ]
        )
        summary[workload] = {
            "off": modes["off"],
            "on": modes["on"],
            "rate_overhead": overhead,
            "client_cpu_overhead": cpu_overhead,
        }
    print_table(
        f"Streaming overhead, nothing printed ({ENGINES} engines, median of {ROUNDS} rounds)",
        [
            "workload",
            "streaming off",
            "streaming on",
            "rate cost",
            "client CPU off / on",
            "CPU cost",
        ],
        rows,
    )
    print(f"target: rate overhead under {TARGET:.0%}: {verdict(ok)}")
    machine_load("end")
    leftovers = final_process_check()
    path = write_results(
        "streaming",
        {"figures": summary, "target": TARGET, "load": load, "leftovers": leftovers},
    )
    print(f"results: {path}")
    return 0 if ok and not leftovers else 1


if __name__ == "__main__":
    sys.exit(main())
