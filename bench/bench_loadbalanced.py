"""Load-balanced work, beside ipyparallel 9.2 and dask.distributed, with 2 and 4 engines:

1. one by one: 20000 no-op tasks, each submitted alone (``lview.apply_async(one)`` in a loop;
   dask ``client.submit(one, pure=False)``), then every result awaited; tasks/s;
2. map over 100000 items: ``lview.map_sync(double, range(100000), chunksize=CHUNKSIZE)`` for
   corral and ipyparallel; for dask the same chunking (one task per chunk of CHUNKSIZE items),
   and ``client.map(double, items)`` + ``gather`` with one task per item (on MAP_ITEMS_DASK
   items only: at dask's per-task rate the full 100000 would take minutes; items/s is the
   figure);
3. CPU per task of each process during the one-by-one run: corral's task scheduler (the
   ``corral.controller.scheduler`` child of the controller), its Hub (the controller process),
   the engines and this client; ipyparallel's controller processes; dask's scheduler runs in
   this process (LocalCluster's default), so it is in the client's figure;
4. profiles under the one-by-one load (2 engines): py-spy attached for PROFILE_SECONDS to
   corral's task scheduler, then to the controller process (Hub thread and C queue threads),
   summarised to ``results/scheduler_profile.txt`` and ``results/hub_profile.txt`` (the
   scheduler's falls back to cProfile of ``bench_scheduler_core.py`` when py-spy cannot
   attach).

Every run checks the sum of the results. The machine has 2 cores: 4 engines oversubscribe it.
Run: `.bench-venv/bin/python bench/bench_loadbalanced.py` (about 4 minutes).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from math import inf
from pathlib import Path
from typing import Any

import psutil
from common import (
    QUIET_WAIT,
    RESULTS_DIR,
    LostResults,
    Running,
    check,
    collect,
    corral_cluster,
    corral_scheduler,
    cpu_seconds,
    dask_cluster,
    diagnose_hangs,
    final_process_check,
    ipyparallel_cluster,
    machine_load,
    print_table,
    timed,
    verdict,
    write_results,
)

ENGINE_COUNTS = (2, 4)
ONE_BY_ONE = 20_000
MAP_ITEMS = 100_000
MAP_ITEMS_DASK = 20_000
CHUNKSIZE = 1000
PROFILE_SECONDS = 10
PROFILE_RATE = 200
SCHEDULER_PROFILE = RESULTS_DIR / "scheduler_profile.txt"
HUB_PROFILE = RESULTS_DIR / "hub_profile.txt"
TIMEOUT = 180.0  # seconds for a whole batch: beyond that results were lost

ClusterFactory = Callable[[int], AbstractContextManager[Running]]
FRAMEWORKS: dict[str, ClusterFactory] = {
    "corral": corral_cluster,
    "ipyparallel": ipyparallel_cluster,
    "dask": dask_cluster,
}


def one() -> int:
    """The "no-op" task: returns 1, so that summing the results proves every task ran."""
    return 1


def double(x: int) -> int:
    return 2 * x


def double_chunk(items: range) -> list[int]:
    """One dask task per chunk: the chunking corral and ipyparallel's map use."""
    return [2 * x for x in items]


# ---------------------------------------------------------------- CPU accounting


def roles(running: Running) -> dict[str, list[psutil.Process]]:
    """The processes of a cluster by role, from their command lines."""
    found: dict[str, list[psutil.Process]] = collections.defaultdict(list)
    for process in running.processes:
        try:
            cmdline = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "corral.controller.scheduler" in cmdline:
            found["scheduler"].append(process)
        elif "corral controller" in cmdline:
            found["hub"].append(process)
        elif "ipyparallel.controller" in cmdline:
            found["controller"].append(process)
        else:
            found["engines"].append(process)
    found["client"].append(psutil.Process())
    return found


class CpuMeter:
    """CPU seconds used per role between ``start`` and ``stop``."""

    def __init__(self, running: Running) -> None:
        self.roles = roles(running)
        self.before = {role: cpu_seconds(procs) for role, procs in self.roles.items()}

    def per_task_us(self, tasks: int) -> dict[str, float]:
        return {
            role: (cpu_seconds(procs) - self.before[role]) / tasks * 1e6
            for role, procs in self.roles.items()
        }


# ---------------------------------------------------------------- workloads


def one_by_one(running: Running, tasks: int) -> dict[str, Any]:
    """Submit ``tasks`` no-ops one at a time, then await all; tasks/s, checked by the sum.
    200 tasks go first, unmeasured, as a warm-up."""
    client = running.client
    if running.name == "dask":

        def submit(count: int) -> list[Any]:
            return [client.submit(one, pure=False) for _ in range(count)]

        def total(futures: list[Any]) -> int:
            return sum(collect(futures, lambda future, left: future.result(left), TIMEOUT))
    else:
        view = client.load_balanced_view()

        def submit(count: int) -> list[Any]:
            return [view.apply_async(one) for _ in range(count)]

        def total(results: list[Any]) -> int:
            return sum(collect(results, lambda result, left: result.get(left), TIMEOUT))

    check(total(submit(200)) == 200, f"{running.name} warm-up")
    meter = CpuMeter(running)
    submit_seconds, pending = timed(lambda: submit(tasks))
    wait_seconds, summed = timed(lambda: total(pending))
    check(summed == tasks, f"{running.name} one-by-one sum {summed} != {tasks}")
    seconds = submit_seconds + wait_seconds
    return {
        "tasks": tasks,
        "seconds": seconds,
        "submit_seconds": submit_seconds,
        "tasks_per_s": tasks / seconds,
        "cpu_us_per_task": meter.per_task_us(tasks),
    }


def mapped(running: Running) -> dict[str, Any]:
    """map over MAP_ITEMS items in chunks of CHUNKSIZE (and for dask, per item too)."""
    client = running.client
    expected = sum(2 * x for x in range(MAP_ITEMS))
    result: dict[str, Any] = {"items": MAP_ITEMS, "chunksize": CHUNKSIZE}
    if running.name == "dask":
        chunks = [range(i, min(i + CHUNKSIZE, MAP_ITEMS)) for i in range(0, MAP_ITEMS, CHUNKSIZE)]

        def chunked() -> int:
            futures = client.map(double_chunk, chunks, pure=False)
            return sum(sum(part) for part in dask_gather(futures))

        def per_item() -> int:
            return sum(dask_gather(client.map(double, range(MAP_ITEMS_DASK), pure=False)))

        def dask_gather(futures: list[Any]) -> list[Any]:
            """``client.gather`` (it takes no timeout), after every future is done."""
            collect(futures, lambda future, left: future.result(left), TIMEOUT)
            return list(client.gather(futures))

        seconds, total = timed(chunked)
        check(total == expected, f"dask chunked map sum {total} != {expected}")
        per_item_seconds, per_item_total = timed(per_item)
        check(per_item_total == sum(2 * x for x in range(MAP_ITEMS_DASK)), "dask per-item map")
        result["per_item"] = {
            "items": MAP_ITEMS_DASK,
            "seconds": per_item_seconds,
            "items_per_s": MAP_ITEMS_DASK / per_item_seconds,
        }
    else:
        view = client.load_balanced_view()
        seconds, values = timed(
            lambda: collect(
                [view.map_async(double, range(MAP_ITEMS), chunksize=CHUNKSIZE)],
                lambda result, left: result.get(left),
                TIMEOUT,
            )[0]
        )
        check(
            len(values) == MAP_ITEMS and sum(values) == expected,
            f"{running.name} map: {len(values)} values, sum {sum(values)} != {expected}",
        )
    result["seconds"] = seconds
    result["items_per_s"] = MAP_ITEMS / seconds
    return result


# ---------------------------------------------------------------- the scheduler's profile


def profile(running: Running, process: psutil.Process, role: str, out: Path) -> dict[str, Any]:
    """py-spy on ``process`` while batches of one-by-one tasks run; its summary to ``out``."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        return profile_core_fallback("py-spy is not installed (pip install py-spy)", out)
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "stacks.txt"
        command = [
            spy,
            "record",
            "--pid",
            str(process.pid),
            "--duration",
            str(PROFILE_SECONDS),
            "--rate",
            str(PROFILE_RATE),
            "--format",
            "raw",
            "--nonblocking",
            "--threads",
            "-o",
            str(raw),
        ]
        recorder = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        batches = [0.0]
        while recorder.poll() is None:
            try:
                batches.append(one_by_one(running, 5000)["tasks_per_s"])
            except LostResults as lost:
                print(f"while profiling: {lost}", file=sys.stderr)
                recorder.wait()
        batches = batches[1:] or [0.0]
        output = recorder.communicate()[0].decode(errors="replace")
        if recorder.returncode != 0 or not raw.exists():
            return profile_core_fallback(f"py-spy could not record: {output.strip()[-300:]}", out)
        stacks = raw.read_text()
    header = (
        f"corral {role} (pid {process.pid}), py-spy {PROFILE_RATE} Hz for {PROFILE_SECONDS} s, "
        f"--nonblocking, idle (blocked in poll) samples excluded, while batches of 5000 "
        f"one-by-one no-ops ran on {len(running.client.ids)} engines "
        f"({min(batches):,.0f}-{max(batches):,.0f} tasks/s while profiled)\n"
    )
    out.write_text(header + summarise_stacks(stacks))
    return {
        "tool": "py-spy",
        "file": out.name,
        "stacks": stacks,
        "throughput_while_profiled": batches,
    }


def summarise_stacks(stacks: str, top: int = 25) -> str:
    """Self and inclusive sample counts by function from py-spy's raw (collapsed) stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        if frames[0].startswith("thread ("):
            threads[frames.pop(0).partition(": ")[2]] += samples
        frames = frames or ["(no Python frame)"]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{total} samples with the thread running (not blocked)", "\nby thread:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in threads.most_common()]
    lines.append(f"\ntop {top} by own time:")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append(f"\ntop {top} by inclusive time (the function and what it calls):")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def profile_core_fallback(reason: str, out: Path) -> dict[str, Any]:
    """cProfile of the sans-I/O core alone (bench_scheduler_core.py), when py-spy fails."""
    script = Path(__file__).with_name("bench_scheduler_core.py")
    run = subprocess.run(
        [sys.executable, "-m", "cProfile", "-s", "tottime", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = f"py-spy unavailable ({reason}); cProfile of {script.name} instead:\n\n"
    text += "\n".join(run.stdout.splitlines()[:60]) + "\n"
    out.write_text(text)
    return {"tool": "cProfile (fallback)", "reason": reason, "file": out.name}


# ---------------------------------------------------------------- main


def measure(running: Running) -> dict[str, Any]:
    """Both workloads; one that loses results is recorded as an error, not a figure."""
    result: dict[str, Any] = {}
    workloads = {
        "one_by_one": lambda: one_by_one(running, ONE_BY_ONE),
        "map": lambda: mapped(running),
    }
    for key, workload in workloads.items():
        try:
            result[key] = workload()
        except LostResults as lost:
            print(f"{running.name} {key} FAILED: {lost}", file=sys.stderr)
            result[key] = {"error": str(lost), "cpu_us_per_task": {}}
    if running.name == "corral":
        result["scheduler_pid"] = corral_scheduler(running.cluster).pid
    return result


def rows_for(results: dict[str, Any]) -> Iterator[list[Any]]:
    for engines in ENGINE_COUNTS:
        for name in FRAMEWORKS:
            r = results[str(engines)][name]
            cpu = r["one_by_one"]["cpu_us_per_task"]
            yield [
                name,
                engines,
                r["one_by_one"].get("tasks_per_s", "LOST"),
                r["one_by_one"].get("submit_seconds"),
                r["map"].get("items_per_s", "LOST"),
                r["map"].get("per_item", {}).get("items_per_s"),
                cpu.get("scheduler"),
                cpu.get("hub", cpu.get("controller")),
                cpu.get("engines"),
                cpu.get("client"),
            ]


def main() -> None:
    diagnose_hangs()
    RESULTS_DIR.mkdir(exist_ok=True)
    load_before = machine_load("before", wait=QUIET_WAIT)
    results: dict[str, Any] = {
        "one_by_one_tasks": ONE_BY_ONE,
        "map_items": MAP_ITEMS,
        "chunksize": CHUNKSIZE,
        "load_before": load_before,
    }
    leftovers: dict[str, list[str]] = {}
    for engines in ENGINE_COUNTS:
        results[str(engines)] = {}
        for name, factory in FRAMEWORKS.items():
            print(f"{name} with {engines} engines ...", file=sys.stderr)
            with factory(engines) as running:
                results[str(engines)][name] = measure(running)
                if name == "corral" and engines == ENGINE_COUNTS[0]:
                    print("profiling the corral scheduler and Hub ...", file=sys.stderr)
                    results["profiles"] = {
                        "scheduler": profile(
                            running,
                            corral_scheduler(running.cluster),
                            "task scheduler",
                            SCHEDULER_PROFILE,
                        ),
                        "hub": profile(
                            running,
                            psutil.Process(running.cluster.controller.pid),
                            "controller (Hub and queue threads)",
                            HUB_PROFILE,
                        ),
                    }
            leftovers[f"{name}-{engines}"] = running.leftovers
    results["load_after"] = machine_load("after")

    print_table(
        f"load-balanced, {os.cpu_count()} cores: {ONE_BY_ONE} no-ops submitted one by one; map "
        f"of {MAP_ITEMS} items in chunks of {CHUNKSIZE}; CPU us per task during the one-by-one "
        "run",
        [
            "",
            "engines",
            "1-by-1 tasks/s",
            "submit s",
            "map items/s",
            "per-item map/s",
            "sched us",
            "hub/ctrl us",
            "engines us",
            "client us",
        ],
        list(rows_for(results)),
    )
    print(
        f"'per-item map/s': dask client.map with one task per item ({MAP_ITEMS_DASK} items). "
        "ipyparallel's 'hub/ctrl' is all its controller processes (scheduler included); "
        "dask's scheduler runs in the client process."
    )

    summary: dict[str, Any] = {}
    for engines in ENGINE_COUNTS:
        r = results[str(engines)]
        rates = {name: r[name]["one_by_one"].get("tasks_per_s", 0.0) for name in FRAMEWORKS}
        maps = {name: r[name]["map"].get("items_per_s", 0.0) for name in FRAMEWORKS}
        summary[str(engines)] = {
            "one_by_one_vs_ipyparallel": rates["corral"] / (rates["ipyparallel"] or inf),
            "one_by_one_vs_dask": rates["corral"] / (rates["dask"] or inf),
            "map_vs_ipyparallel": maps["corral"] / (maps["ipyparallel"] or inf),
            "map_vs_dask_chunked": maps["corral"] / (maps["dask"] or inf),
            "scheduler_cpu_us_per_task": r["corral"]["one_by_one"]["cpu_us_per_task"].get(
                "scheduler", 0.0
            ),
        }
        s = summary[str(engines)]
        print(
            f"\n{engines} engines: one by one {s['one_by_one_vs_ipyparallel']:.2f}x "
            f"ipyparallel (>= 5x: {verdict(s['one_by_one_vs_ipyparallel'] >= 5)}), "
            f"{s['one_by_one_vs_dask']:.2f}x dask (> 1x: "
            f"{verdict(s['one_by_one_vs_dask'] > 1)}); map {s['map_vs_ipyparallel']:.2f}x "
            f"ipyparallel, {s['map_vs_dask_chunked']:.2f}x dask (same chunks); scheduler "
            f"{s['scheduler_cpu_us_per_task']:.0f} us CPU per task"
        )
    for role, found in results.get("profiles", {}).items():
        print(f"\n{role} profile ({found['tool']}): {RESULTS_DIR / found['file']}")
    print(f"machine: load {results['load_before']} before, {results['load_after']} after")
    results["summary"] = summary
    results["leftovers"] = leftovers
    results["left_behind_at_end"] = final_process_check()
    write_results("loadbalanced", results)


if __name__ == "__main__":
    main()
