"""The Hub's result stores: what each costs the task path, what the Hub holds, how fast it
answers. corral only (ipyparallel's stores are a different design); 2 engines on 2 cores.

1. throughput: 10000 load-balanced no-ops submitted one by one, then awaited, with each store
   (memory, sqlite — the default —, mongodb on a real mongod started here from
   ``.mongod-venv``). The three clusters run side by side and the rounds alternate between
   them (median of ROUNDS), so that a change in machine load hits every store alike.
   Target: SQLite costs under 15% of the memory store's throughput.
2. the Hub's memory: RSS of the controller process (the Hub; the scheduler is its own
   process) after FILL tasks without purging, and, on a fresh cluster, after FILL tasks with
   ``purge_results("all")`` every PURGE_EVERY tasks (memory and sqlite).
3. query latency on a store holding FILL records: ``result_status([msg_id])`` and
   ``get_result(msg_id)`` from a second client (which has none of the results, so the Hub
   answers from its store), each the median of QUERIES distinct msg_ids.

Before every RSS reading and query the Hub must have recorded every task: the script checks
``hub_history()`` (no purge) and waits for the last task's record, and reports a shortfall.
Run: `.bench-venv/bin/python bench/bench_store.py` (about 4 minutes; `make mongod` first).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from contextlib import ExitStack
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
    latency,
    machine_load,
    mongod,
    print_table,
    verdict,
    write_results,
)

from corral.errors import QueryError

ENGINES = 2
THROUGHPUT_TASKS = 10_000
ROUNDS = 3
FILL = 100_000
PURGE_EVERY = 10_000
QUERIES = 200
TIMEOUT = 120.0  # seconds for a batch: beyond that results were lost
PURGE_STORES = ("memory", "sqlite")


def one() -> int:
    """The "no-op" task: returns 1, so that summing the results proves every task ran."""
    return 1


def run_tasks(running: Running, count: int) -> tuple[float, list[str]]:
    """``count`` no-ops one by one on a load-balanced view, all awaited: (seconds, msg_ids)."""
    view = running.client.load_balanced_view()
    start = time.perf_counter()
    results = [view.apply_async(one) for _ in range(count)]
    total = sum(collect(results, lambda result, left: result.get(left), TIMEOUT))
    seconds = time.perf_counter() - start
    check(total == count, f"{count} tasks summed to {total}")
    return seconds, [result.msg_ids[0] for result in results]


def hub_caught_up(running: Running, msg_id: str, timeout: float = 30.0) -> float | None:
    """Seconds until the Hub reports ``msg_id`` completed (it records off the data path, so
    it may lag the client and not even know the task yet); None if it never does."""
    client = running.client
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            if msg_id in client.result_status([msg_id])["completed"]:
                return time.perf_counter() - start
        except QueryError:
            pass  # "no such msg_id": the Hub has not seen the request (yet)
        time.sleep(0.05)  # the Hub offers no event to await for "recorded everything"
    print(f"WARNING: the Hub never recorded task {msg_id} as completed", file=sys.stderr)
    return None


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


def fill(running: Running, target: int, already: int, purge: bool) -> dict[str, Any]:
    """Run tasks in batches of PURGE_EVERY until ``target`` have run on this cluster (``already``
    did before); purge after each batch if asked. The msg_ids, and how far the Hub lagged."""
    msg_ids: list[str] = []
    lags = []
    unrecorded = 0
    done = already
    rss = []
    seconds = 0.0
    while done < target:
        batch_seconds, batch = run_tasks(running, min(PURGE_EVERY, target - done))
        seconds += batch_seconds
        done += len(batch)
        msg_ids += batch
        lag = hub_caught_up(running, batch[-1])
        if lag is None:
            unrecorded += 1
        else:
            lags.append(lag)
        if purge:
            running.client.purge_results("all")
        rss.append((done, round(rss_mb(running.cluster.controller.pid), 1)))
    return {
        "msg_ids": msg_ids,
        "seconds": seconds,
        "max_hub_lag_s": max(lags, default=None),
        "batches_whose_last_task_the_hub_never_recorded": unrecorded,
        "rss_MB": rss,
    }


def query_latency(running: Running, msg_ids: list[str]) -> dict[str, Any]:
    """result_status and get_result of single msg_ids, from a client that has no results."""
    sample = iter(random.Random(0).sample(msg_ids, 2 * QUERIES + 20))
    other = running.cluster.connect()
    try:

        def status() -> None:
            msg_id = next(sample)
            check(other.result_status([msg_id])["completed"] == [msg_id], "result_status")

        def fetch() -> None:
            check(other.get_result(next(sample)).get(TIMEOUT) == 1, "get_result value")

        return {
            "result_status": latency(status, QUERIES, warmup=10),
            "get_result": latency(fetch, QUERIES, warmup=10),
        }
    finally:
        other.close()


def main() -> None:
    diagnose_hangs()
    results: dict[str, Any] = {
        "engines": ENGINES,
        "throughput_tasks": THROUGHPUT_TASKS,
        "rounds": ROUNDS,
        "fill": FILL,
        "purge_every": PURGE_EVERY,
        "load_before": machine_load("before", wait=QUIET_WAIT),
    }
    stores: dict[str, dict[str, Any]] = {}
    leftovers: dict[str, list[str]] = {}
    with ExitStack() as stack:
        mongo_url = stack.enter_context(mongod())
        urls = {"memory": "memory", "sqlite": "sqlite", "mongodb": f"{mongo_url}/corral_bench"}
        clusters = {}
        for name, url in urls.items():
            clusters[name] = stack.enter_context(corral_cluster(ENGINES, db=url))
            stores[name] = {
                "url": url,
                "rounds_tasks_per_s": [],
                "hub_rss_start_MB": rss_mb(clusters[name].cluster.controller.pid),
            }
        # 1. throughput, rounds alternating between the stores
        ran = dict.fromkeys(urls, 0)
        for name, running in clusters.items():
            ran[name] += len(run_tasks(running, 500)[1])  # warm-up
        for round_index in range(ROUNDS):
            print(f"throughput round {round_index + 1} of {ROUNDS} ...", file=sys.stderr)
            for name, running in clusters.items():
                seconds, msg_ids = run_tasks(running, THROUGHPUT_TASKS)
                ran[name] += len(msg_ids)
                stores[name]["rounds_tasks_per_s"].append(THROUGHPUT_TASKS / seconds)
        # 2. and 3. fill each store to FILL records (no purge), then RSS and query latency
        for name, running in clusters.items():
            print(f"filling {name} to {FILL} tasks ...", file=sys.stderr)
            store = stores[name]
            store["tasks_per_s"] = statistics.median(store["rounds_tasks_per_s"])
            filled = fill(running, FILL, ran[name], purge=False)
            recorded = len(running.client.hub_history())
            store["hub_records"] = recorded
            store["fill_tasks_per_s"] = (FILL - ran[name]) / filled["seconds"]
            store["hub_rss_no_purge_MB"] = rss_mb(running.cluster.controller.pid)
            store["max_hub_lag_s"] = filled["max_hub_lag_s"]
            store["unrecorded_batches"] = filled["batches_whose_last_task_the_hub_never_recorded"]
            store["hub_rss_series_no_purge_MB"] = filled["rss_MB"]
            store["scheduler_rss_MB"] = corral_scheduler(running.cluster).memory_info().rss / 1e6
            if recorded != FILL:
                print(
                    f"WARNING: the {name} store holds {recorded} records after {FILL} tasks",
                    file=sys.stderr,
                )
            print(f"query latency on {name} ...", file=sys.stderr)
            store["queries"] = query_latency(running, filled["msg_ids"])
    for name, running in clusters.items():
        leftovers[name] = running.leftovers
    # 2. again, on fresh clusters: purge every PURGE_EVERY tasks
    for name in PURGE_STORES:
        print(f"{FILL} tasks on {name} with purge every {PURGE_EVERY} ...", file=sys.stderr)
        with corral_cluster(ENGINES, db=name) as running:
            filled = fill(running, FILL, 0, purge=True)
            stores[name]["hub_rss_purge_MB"] = rss_mb(running.cluster.controller.pid)
            stores[name]["hub_rss_series_purge_MB"] = filled["rss_MB"]
            stores[name]["purge_fill_tasks_per_s"] = FILL / filled["seconds"]
            stores[name]["purge_unrecorded_batches"] = filled[
                "batches_whose_last_task_the_hub_never_recorded"
            ]
            stores[name]["hub_records_after_purge"] = len(running.client.hub_history())
        leftovers[f"{name}-purge"] = running.leftovers
    results["load_after"] = machine_load("after")

    rows = []
    for name, store in stores.items():
        queries = store["queries"]
        rows.append(
            [
                name,
                store["tasks_per_s"],
                min(store["rounds_tasks_per_s"]),
                max(store["rounds_tasks_per_s"]),
                store["hub_records"],
                store["hub_rss_start_MB"],
                store["hub_rss_no_purge_MB"],
                store.get("hub_rss_purge_MB"),
                queries["result_status"]["median_us"],
                queries["get_result"]["median_us"],
            ]
        )
    print_table(
        f"result stores, {ENGINES} engines: {THROUGHPUT_TASKS} one-by-one tasks (median of "
        f"{ROUNDS} rounds, min, max); Hub RSS at start, after {FILL} tasks without purge and "
        f"with purge every {PURGE_EVERY}; query latency (median of {QUERIES}) on {FILL} records",
        [
            "store",
            "tasks/s",
            "min",
            "max",
            "records",
            "RSS start MB",
            "no purge MB",
            "purge MB",
            "result_status us",
            "get_result us",
        ],
        rows,
    )
    print("\nHub RSS (MB) after each batch of tasks:")
    for name, store in stores.items():
        for key, label in (
            ("hub_rss_series_no_purge_MB", "no purge"),
            ("hub_rss_series_purge_MB", "purge"),
        ):
            if key in store:
                series = " ".join(f"{mb:.0f}" for _, mb in store[key])
                print(f"  {name:<8} {label:<9} {series}")
    cost = 1 - stores["sqlite"]["tasks_per_s"] / stores["memory"]["tasks_per_s"]
    results["summary"] = {"sqlite_cost_vs_memory": cost, "target_met": cost < 0.15}
    print(
        f"\ntarget: SQLite costs {cost:.1%} of the memory store's throughput "
        f"(< 15%: {verdict(cost < 0.15)})"
    )
    print(f"machine: load {results['load_before']} before, {results['load_after']} after")
    results["stores"] = stores
    results["leftovers"] = leftovers
    results["left_behind_at_end"] = final_process_check()
    write_results("store", results)


if __name__ == "__main__":
    main()
