"""What the dashboard costs the cluster, and how fresh its page is.

1. Throughput: rounds of ROUND_TASKS load-balanced no-op tasks submitted one by one on 2
   engines (``lview.apply_async(one)`` in a loop, then every result awaited), alternating
   rounds without any dashboard and rounds with ``corral dashboard`` running and its page open
   in headless Chromium, updating once a second. One cluster serves every round; the dashboard
   process and the browser are started before and stopped after each "open" round, so the
   "none" rounds carry nothing of them. Reported: median tasks/s of each, the cost (target:
   under 3%), and the CPU the dashboard process and the browser used per second of the run.
2. Update latency: one task at a time; from the moment its result reaches the client to the
   moment the page has drawn a completed count that includes it (the page's own clock, which is
   this machine's clock). A tick is once a second, so the mean is about half a second plus the
   pipeline; the pipeline alone (the update leaving the server to its drawing) is reported too.

The machine has 2 cores shared with other work: rounds alternate so that drift in the
background load falls on both sides alike. Run: `.bench-venv/bin/python bench/bench_dashboard.py`
(about 3 minutes).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psutil
from common import (
    QUIET_WAIT,
    check,
    collect,
    corral_cluster,
    cpu_seconds,
    diagnose_hangs,
    final_process_check,
    machine_load,
    print_table,
    verdict,
    write_results,
)

from tools.chromium import chromium

ENGINES = 2
ROUND_TASKS = 10_000
PAIRS = 5
LATENCY_SAMPLES = 30
TARGET_COST = 0.03
TIMEOUT = 180.0


def one() -> int:
    return 1


def throughput(client: Any) -> float:
    view = client.load_balanced_view()
    start = time.perf_counter()
    results = [view.apply_async(one) for _ in range(ROUND_TASKS)]
    values = collect(results, lambda r, left: r.get(timeout=left), TIMEOUT)
    elapsed = time.perf_counter() - start
    check(sum(values) == ROUND_TASKS, "every task returned 1")
    return ROUND_TASKS / elapsed


def browser_processes(driver: Any) -> list[psutil.Process]:
    """chromedriver and every Chromium process below it."""
    root = psutil.Process(driver.service.process.pid)
    return [root, *root.children(recursive=True)]


def open_round(cluster: Any) -> tuple[float, float, float]:
    """One round with the dashboard open: tasks/s, and CPU (cores) of dashboard and browser."""
    cluster.start_dashboard()
    dashboard = psutil.Process(cluster.dashboard_process.pid)
    try:
        with chromium() as driver:
            driver.get(cluster.dashboard_url)
            deadline = time.monotonic() + 20
            while driver.execute_script("return window.corralDashboard.updates") < 2:
                check(time.monotonic() < deadline, "the page receives updates")
                time.sleep(0.1)  # waiting for the page's first ticks
            processes = browser_processes(driver)
            before = (
                time.perf_counter(),
                cpu_seconds([dashboard], children=True),
                cpu_seconds(processes, children=True),
            )
            rate = throughput(cluster.client)
            seconds = time.perf_counter() - before[0]
            dashboard_cores = (cpu_seconds([dashboard], children=True) - before[1]) / seconds
            browser_cores = (cpu_seconds(processes, children=True) - before[2]) / seconds
            updates = driver.execute_script("return window.corralDashboard.updates")
            check(updates >= 2, "the page kept updating")
    finally:
        stop_dashboard(cluster)
    return rate, dashboard_cores, browser_cores


def stop_dashboard(cluster: Any) -> None:
    process = cluster.dashboard_process
    if process is not None:
        process.terminate()
        process.wait(15)
    cluster.dashboard_process = None


WAIT_FOR_COUNT = """
const [wanted, done] = [arguments[0], arguments[arguments.length - 1]];
const read = () => Number(document.getElementById("done-count").textContent.replace(/,/g, ""));
if (read() >= wanted) { done([Date.now() / 1000, null]); return; }
const observer = new MutationObserver(() => {
  if (read() >= wanted) {
    observer.disconnect();
    done([Date.now() / 1000, window.corralDashboard.lastUpdate]);
  }
});
const options = { childList: true, characterData: true, subtree: true };
observer.observe(document.getElementById("done-count"), options);
"""


def latencies(cluster: Any) -> dict[str, Any]:
    """Result at the client -> completed count on the page, one task at a time."""
    cluster.start_dashboard()
    view = cluster.client.load_balanced_view()
    end_to_end, pipeline = [], []
    try:
        with chromium() as driver:
            driver.set_script_timeout(10)
            driver.get(cluster.dashboard_url)
            read = (
                "return Number(document.getElementById('done-count').textContent.replace(/,/g, ''))"
            )
            deadline = time.monotonic() + 20
            while not driver.execute_script(read + " >= 0 && window.corralDashboard.updates > 1"):
                check(time.monotonic() < deadline, "the page receives updates")
                time.sleep(0.1)  # waiting for the page's first ticks
            for _ in range(LATENCY_SAMPLES):
                shown = driver.execute_script(read)
                view.apply_async(one).get(timeout=30)
                returned = time.time()
                drawn, update = driver.execute_async_script(WAIT_FOR_COUNT, shown + 1)
                end_to_end.append(drawn - returned)
                if update and update.get("sent"):
                    pipeline.append(update["rendered"] - update["sent"])
                time.sleep(0.137)  # spread the samples over the tick's phase
    finally:
        stop_dashboard(cluster)
    check(len(end_to_end) == LATENCY_SAMPLES, "every sample measured")

    def summary(values: list[float]) -> dict[str, float]:
        deciles = statistics.quantiles(values, n=10)
        return {
            "median_ms": statistics.median(values) * 1000,
            "p90_ms": deciles[-1] * 1000,
            "max_ms": max(values) * 1000,
        }

    return {"end_to_end": summary(end_to_end), "pipeline": summary(pipeline or [0.0, 0.0])}


def main() -> None:
    diagnose_hangs()
    load_before = machine_load("before", wait=QUIET_WAIT)
    rounds: dict[str, list[float]] = {"none": [], "open": []}
    dashboard_cores, browser_cores = [], []
    with corral_cluster(ENGINES) as running:
        cluster = running.cluster
        throughput(cluster.client)  # warm-up
        for _ in range(PAIRS):
            rounds["none"].append(throughput(cluster.client))
            rate, dashboard_cpu, browser_cpu = open_round(cluster)
            rounds["open"].append(rate)
            dashboard_cores.append(dashboard_cpu)
            browser_cores.append(browser_cpu)
        latency = latencies(cluster)
    load_after = machine_load("after")
    none, opened = statistics.median(rounds["none"]), statistics.median(rounds["open"])
    cost = 1 - opened / none
    print_table(
        f"load-balanced throughput, {ENGINES} engines, {ROUND_TASKS} one-by-one no-ops per round "
        f"({PAIRS} rounds each, alternating)",
        ["dashboard", "median tasks/s", "min", "max"],
        [
            ["none", none, min(rounds["none"]), max(rounds["none"])],
            ["open, updating 1/s", opened, min(rounds["open"]), max(rounds["open"])],
        ],
    )
    print(
        f"cost: {cost * 100:.1f}% "
        f"(target < {TARGET_COST * 100:.0f}%: {verdict(cost < TARGET_COST)}); "
        f"dashboard process {statistics.median(dashboard_cores):.3f} cores, "
        f"browser {statistics.median(browser_cores):.3f} cores while open"
    )
    print_table(
        "page update latency (30 samples, one task at a time)",
        ["what", "median ms", "p90 ms", "max ms"],
        [
            ["task result at client -> count drawn on the page", *latency["end_to_end"].values()],
            ["update sent by the server -> drawn", *latency["pipeline"].values()],
        ],
    )
    strays = final_process_check()
    write_results(
        "dashboard",
        {
            "engines": ENGINES,
            "round_tasks": ROUND_TASKS,
            "rounds": rounds,
            "median_tasks_per_second": {"none": none, "open": opened},
            "cost": cost,
            "target_met": cost < TARGET_COST,
            "dashboard_cores": dashboard_cores,
            "browser_cores": browser_cores,
            "latency": latency,
            "load": {"before": load_before, "after": load_after},
            "left_behind": strays,
        },
    )


if __name__ == "__main__":
    main()
