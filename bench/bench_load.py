"""Load: many engines at once, many tasks, and what the controller holds. corral only.

1. registration: REGISTER engine processes started at once (a controller already running);
   seconds until a client sees them all, checked to be REGISTER distinct ids 0..REGISTER-1,
   each answering an apply.
2. TASKS load-balanced tasks on ENGINES engines, submitted one by one: each returns its index
   and appends it to a list in its engine's namespace; every index must come back once, every
   index must have run exactly once (the engines' lists), and the Hub must record every task.
3. the controller's memory over those TASKS (RSS of the controller process, which runs the
   Hub, and of the scheduler process, after every PURGE_EVERY tasks), without purging, and on
   a fresh cluster with ``purge_results("all")`` after every PURGE_EVERY tasks.

Run: `.bench-venv/bin/python bench/bench_load.py` (about 3 minutes; plain `.venv` works too).
bench_store.py measures the Hub's memory per result store; this one checks nothing is lost.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

import psutil
from common import (
    QUIET_WAIT,
    Running,
    check,
    collect,
    corral_cluster,
    corral_scheduler,
    diagnose_hangs,
    final_process_check,
    machine_load,
    print_table,
    timed,
    write_results,
)

REGISTER = 64
ENGINES = 4
TASKS = 100_000
PURGE_EVERY = 10_000
TIMEOUT = 300.0  # seconds for one batch of results: beyond that, some were lost
HEARTBEAT = 1.0  # 64 engines starting on 2 cores: a beat that survives their start-up


def record(index: int) -> int:
    """The task: return ``index`` and keep it in the engine's namespace (``executed``)."""
    global executed
    try:
        executed.append(index)  # type: ignore[name-defined]  # noqa: F821
    except NameError:
        executed = [index]
    return index


def register() -> dict[str, Any]:
    """Start REGISTER engines at once under a running controller; time until all are seen."""
    import corral

    with tempfile.TemporaryDirectory(prefix="corral-bench-") as folder:
        cluster = corral.Cluster(
            n=REGISTER, cluster_dir=folder, heartbeat_period=HEARTBEAT, timeout=TIMEOUT
        )
        try:
            cluster.start_controller()
            client = cluster.client = cluster.connect()
            start = time.perf_counter()
            cluster.start_engines(REGISTER)
            spawned = time.perf_counter() - start
            client.wait_for_engines(REGISTER, timeout=TIMEOUT)
            seen = time.perf_counter() - start
            check(client.ids == list(range(REGISTER)), f"ids {client.ids}")
            check(len(set(client._engines.values())) == REGISTER, "distinct uuids")  # noqa: SLF001
            apply_seconds, pids = timed(lambda: client[:].apply_async(os.getpid).get(TIMEOUT))
            check(sorted(pids) == sorted(e.pid for e in cluster.engines), "one pid per engine")
        finally:
            stop_seconds, _ = timed(cluster.stop)
    return {
        "engines": REGISTER,
        "spawn_s": spawned,
        "all_seen_s": seen,
        "apply_to_all_s": apply_seconds,
        "stop_s": stop_seconds,
    }


def hub_recorded(running: Running, msg_ids: list[str]) -> float:
    """Seconds until the Hub has the results of every one of ``msg_ids`` (it may lag)."""
    from corral.errors import QueryError

    start = time.perf_counter()
    while True:
        try:
            if not running.client.result_status(msg_ids)["pending"]:
                return time.perf_counter() - start
        except QueryError:  # some not seen by the Hub yet
            pass
        if time.perf_counter() - start > TIMEOUT:
            raise AssertionError(f"the Hub never recorded all of {len(msg_ids)} tasks")
        time.sleep(0.05)  # the Hub offers no event to await for "recorded everything"


def rss_mb(process: psutil.Process) -> float:
    return round(process.memory_info().rss / 1e6, 1)


def many_tasks(purge: bool) -> dict[str, Any]:
    """TASKS tasks in batches of PURGE_EVERY on a fresh cluster; purge after each if asked."""
    with corral_cluster(ENGINES, heartbeat_period=HEARTBEAT, timeout=TIMEOUT) as running:
        client = running.client
        controller = psutil.Process(running.cluster.controller.pid)
        scheduler = corral_scheduler(running.cluster)
        view = client.load_balanced_view()
        series = [(0, rss_mb(controller), rss_mb(scheduler))]
        seconds = lag = 0.0
        for first in range(0, TASKS, PURGE_EVERY):
            indices = range(first, min(first + PURGE_EVERY, TASKS))
            start = time.perf_counter()
            results = [view.apply_async(record, index) for index in indices]
            values = collect(results, lambda result, left: result.get(left), TIMEOUT)
            seconds += time.perf_counter() - start
            check(values == list(indices), f"values of tasks {indices}")
            lag = max(lag, hub_recorded(running, [r.msg_ids[0] for r in results]))
            if purge:
                client.purge_results("all")
            series.append((indices[-1] + 1, rss_mb(controller), rss_mb(scheduler)))
        records = len(client.hub_history())
        check(records == (0 if purge else TASKS), f"the Hub holds {records} records")
        executed = [i for part in client[:].pull("executed", block=True) for i in part]
        check(
            len(executed) == TASKS and set(executed) == set(range(TASKS)),
            f"{len(executed)} executions of {len(set(executed))} distinct indices",
        )
    check(not running.leftovers, f"processes left behind: {running.leftovers}")
    return {
        "purge": purge,
        "tasks_per_s": TASKS / seconds,
        "max_hub_lag_s": lag,
        "hub_records_at_end": records,
        "rss_series_MB": series,
    }


def main() -> None:
    diagnose_hangs()
    results: dict[str, Any] = {
        "register": REGISTER,
        "engines": ENGINES,
        "tasks": TASKS,
        "purge_every": PURGE_EVERY,
        "load_before": machine_load("before", wait=QUIET_WAIT),
    }
    print(f"{REGISTER} engines registering at once ...", file=sys.stderr)
    results["registration"] = registration = register()
    runs = []
    for purge in (False, True):
        print(f"{TASKS} tasks, purge={purge} ...", file=sys.stderr)
        runs.append(many_tasks(purge))
    results["runs"] = runs
    results["load_after"] = machine_load("after")

    print_table(
        f"{REGISTER} engine processes started at once under a running controller (2 cores)",
        ["engines", "spawn s", "all seen s", "apply to all s", "stop s"],
        [
            [
                registration["engines"],
                registration["spawn_s"],
                registration["all_seen_s"],
                registration["apply_to_all_s"],
                registration["stop_s"],
            ]
        ],
    )
    print_table(
        f"{TASKS} load-balanced tasks one by one on {ENGINES} engines: none lost, each run "
        "once, all recorded by the Hub",
        ["purge every 10000", "tasks/s", "max Hub lag s", "Hub records at end"],
        [
            [
                "yes" if run["purge"] else "no",
                run["tasks_per_s"],
                run["max_hub_lag_s"],
                run["hub_records_at_end"],
            ]
            for run in runs
        ],
    )
    plain, purged = runs
    print_table(
        "RSS (MB) of the controller (Hub) and the scheduler after each batch",
        ["tasks", "controller", "controller, purged", "scheduler", "scheduler, purged"],
        [
            [a[0], a[1], b[1], a[2], b[2]]
            for a, b in zip(plain["rss_series_MB"], purged["rss_series_MB"], strict=True)
        ],
    )
    results["strays"] = final_process_check()
    write_results("load", results)


if __name__ == "__main__":
    main()
