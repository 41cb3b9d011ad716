"""Issue #13's table in one command: corral beside raw pyzmq, ipyparallel, dask and a plain
ProcessPoolExecutor, each started with its defaults, with ratios against the issue's targets.

Per system (2 engines / workers, all with default arguments):

- apply round trip of a no-op on one engine, median and p99 of LATENCY_ROUNDS calls (raw
  pyzmq: a REQ -> REP echo process, the floor);
- load-balanced no-op tasks/s: LB_TASKS submitted one by one, then all awaited, and the CPU
  of every process of the system (client included) per task during that run;
- direct round-robin no-op tasks/s (corral and ipyparallel views, dask pinned to workers);
- map with default chunking over MAP_ITEMS items, items/s (what a user gets with no
  ``chunksize``);
- push and pull of a 100 MB numpy array to and from one engine, GB/s (raw pyzmq: one hop from
  this process to an echo process);
- corral's load-balanced tasks/s at SCALE_ENGINES engines (2 cores: 4 and 64 oversubscribe),
  over SCALE_TASKS tasks (``--scale-tasks``).

Each system is measured in a child process of its own (``--measure``), so that one system's
threads never run beside another's, and REPEATS times in rotation; the table shows medians.
``--baseline REV`` adds ``corral@REV``: the corral package of commit REV (``git archive``),
its modules compiled as ``make native`` compiles them when REV has that build, measured in the
same run, so that a before/after table comes from one command on one machine:

    .bench-venv/bin/python bench/bench_targets.py --baseline c519d28

Every figure is checked (sums, arrays compared); a broken path fails the run. The load average
before and after goes into the table's title and ``results/targets.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from common import (
    REPO_ROOT,
    HubBarrier,
    Running,
    check,
    collect,
    corral_cluster,
    cpu_seconds,
    dask_cluster,
    dask_workers,
    diagnose_hangs,
    final_process_check,
    ipyparallel_cluster,
    latency,
    machine_load,
    print_table,
    timed,
    use_source,
    write_results,
)

ENGINES = 2
LATENCY_ROUNDS = 1000
LB_TASKS = 5000
DIRECT_TASKS = 5000
MAP_ITEMS = 10_000
ARRAY_MB = 100
BIG_ROUNDS = 3
SCALE_ENGINES = (4, 64)
SCALE_TASKS = 20_000  # 1-1.5 s: 5,000 (0.3 s) let the machine's phases decide 64 against 4
TIMEOUT = 300.0  # seconds for a whole batch: beyond that results were lost
CHILD_TIMEOUT = 1200.0
SMALL_REQUEST = [b"<IDS|MSG>", b"0" * 64, b"{" + b"h" * 200 + b"}", b"{}", b"{}", b"{}", b"p" * 300]
PEERS = ("raw", "ppe", "ipyparallel", "dask")

_kept: list[Any] = []  # a ProcessPoolExecutor worker's pushed array


def one() -> int:
    """The no-op: returns 1, so that summing the results proves every task ran."""
    return 1


def double(x: int) -> int:
    return 2 * x


def keep(array: Any) -> int:
    """ProcessPoolExecutor "push": the worker keeps the array (as an engine's namespace does)."""
    _kept[:] = [array]
    return int(array.nbytes)


def give() -> Any:
    """ProcessPoolExecutor "pull": the array the worker kept."""
    return _kept[0]


def make_array() -> np.ndarray:
    return np.random.default_rng(0).random(ARRAY_MB * 1_000_000 // 8)


def gbps(step: Callable[[], object]) -> float:
    """GB/s of one ARRAY_MB transfer: median of BIG_ROUNDS after one warm-up."""
    step()
    return ARRAY_MB / 1000 / statistics.median(timed(step)[0] for _ in range(BIG_ROUNDS))


def lb_run(
    submit: Callable[[int], list[Any]],
    total: Callable[[list[Any]], int],
    tasks: int,
    processes: list[psutil.Process],
    hub: HubBarrier | None = None,
) -> dict[str, float]:
    """``tasks`` no-ops submitted one by one, then all awaited (after 200 unmeasured):
    tasks/s and CPU microseconds per task summed over ``processes``. With ``hub``, the CPU is
    counted until the Hub has recorded every task (it works off the tasks' path, and may
    still be at it when the client holds every result); tasks/s is the client's view."""
    warm = submit(200)
    check(total(warm) == 200, "warm-up")
    if hub is not None:
        hub.settle(warm)
    cpu_before = cpu_seconds(processes)
    started = time.perf_counter()
    results = submit(tasks)
    summed = total(results)
    seconds = time.perf_counter() - started
    if hub is not None:
        hub.wait(tasks, results[-1])
    cpu = cpu_seconds(processes) - cpu_before
    check(summed == tasks, f"load-balanced sum {summed} != {tasks}")
    return {"lb_tasks_per_s": tasks / seconds, "cpu_us_per_task": cpu / tasks * 1e6}


def measure_raw(array: np.ndarray) -> dict[str, Any]:
    from bench_cluster import raw_peer

    result: dict[str, Any] = {}
    with raw_peer(via_proxy=False) as req:

        def round_trip() -> object:
            req.send_multipart(SMALL_REQUEST, copy=False)
            return req.recv_multipart(copy=False)

        def push() -> object:
            req.send(array.data, copy=False)
            return req.recv()

        def pull() -> np.ndarray:
            req.send(b"pull")
            return np.frombuffer(req.recv(copy=False).buffer, dtype=array.dtype)

        result["latency"] = latency(round_trip, LATENCY_ROUNDS)
        push()
        check(np.array_equal(pull(), array), "raw one-hop pull")
        result["push_GBps"] = gbps(push)
        result["pull_GBps"] = gbps(pull)
    return result


def measure_ppe(array: np.ndarray) -> dict[str, Any]:
    """A ProcessPoolExecutor with ENGINES workers (the default start method); "push" and "pull"
    send the array to one worker and back, which is only meaningful with one worker busy."""
    result: dict[str, Any] = {}
    with ProcessPoolExecutor(ENGINES) as pool:
        check(pool.submit(one).result(TIMEOUT) == 1, "ppe no-op")
        processes = [psutil.Process(), *psutil.Process().children(recursive=True)]
        result["latency"] = latency(lambda: pool.submit(one).result(TIMEOUT), LATENCY_ROUNDS)
        result.update(
            lb_run(
                lambda n: [pool.submit(one) for _ in range(n)],
                lambda futures: sum(collect(futures, lambda f, left: f.result(left), TIMEOUT)),
                LB_TASKS,
                processes,
            )
        )
        seconds, values = timed(lambda: list(pool.map(double, range(MAP_ITEMS), timeout=TIMEOUT)))
        check(values == [2 * x for x in range(MAP_ITEMS)], "ppe map")
        result["map_items_per_s"] = MAP_ITEMS / seconds
    with ProcessPoolExecutor(1) as single:
        check(single.submit(keep, array).result(TIMEOUT) == array.nbytes, "ppe push")
        check(np.array_equal(single.submit(give).result(TIMEOUT), array), "ppe pull")
        result["push_GBps"] = gbps(lambda: single.submit(keep, array).result(TIMEOUT))
        result["pull_GBps"] = gbps(lambda: single.submit(give).result(TIMEOUT))
    return result


def system_processes(running: Running) -> list[psutil.Process]:
    return [psutil.Process(), *running.processes]


def measure_cluster(name: str, running: Running, array: np.ndarray) -> dict[str, Any]:
    """Every figure of the table on a running corral, ipyparallel or dask cluster."""
    client = running.client
    result: dict[str, Any] = {}
    if name == "dask":
        workers = dask_workers(client)

        def apply_one() -> object:
            return client.submit(one, pure=False, workers=[workers[0]]).result(TIMEOUT)

        def lb_submit(n: int) -> list[Any]:
            return [client.submit(one, pure=False) for _ in range(n)]

        def direct_submit(n: int) -> list[Any]:
            return [
                client.submit(one, pure=False, workers=[workers[i % len(workers)]])
                for i in range(n)
            ]

        def total(futures: list[Any]) -> int:
            return sum(collect(futures, lambda future, left: future.result(left), TIMEOUT))

        def mapped() -> list[int]:
            futures = client.map(double, range(MAP_ITEMS), pure=False)
            collect(futures, lambda future, left: future.result(left), TIMEOUT)
            return list(client.gather(futures))

        held: list[Any] = []

        def push() -> object:
            held[:] = [client.scatter(array, workers=[workers[0]], hash=False, direct=True)]
            return held[0]

        def pull() -> Any:
            return client.gather(held[0], direct=True)
    else:
        view = client[client.ids[0]]
        views = [client[engine_id] for engine_id in client.ids]
        balanced = client.load_balanced_view()

        def apply_one() -> object:
            return view.apply_async(one).get(TIMEOUT)

        def lb_submit(n: int) -> list[Any]:
            return [balanced.apply_async(one) for _ in range(n)]

        def direct_submit(n: int) -> list[Any]:
            return [views[i % len(views)].apply_async(one) for i in range(n)]

        def total(futures: list[Any]) -> int:
            return sum(collect(futures, lambda result, left: result.get(left), TIMEOUT))

        def mapped() -> list[int]:
            return list(balanced.map_async(double, range(MAP_ITEMS)).get(TIMEOUT))

        def push() -> object:
            return view.push({"a": array}, block=False).get(TIMEOUT)

        def pull() -> Any:
            return view.pull("a", block=False).get(TIMEOUT)

    check(apply_one() == 1, f"{name} no-op")
    result["latency"] = latency(apply_one, LATENCY_ROUNDS)
    hub = HubBarrier(client) if name != "dask" else None
    result.update(lb_run(lb_submit, total, LB_TASKS, system_processes(running), hub))
    check(total(direct_submit(200)) == 200, f"{name} direct warm-up")
    seconds, summed = timed(lambda: total(direct_submit(DIRECT_TASKS)))
    check(summed == DIRECT_TASKS, f"{name} direct sum {summed}")
    result["direct_tasks_per_s"] = DIRECT_TASKS / seconds
    seconds, values = timed(mapped)
    check(values == [2 * x for x in range(MAP_ITEMS)], f"{name} map values")
    result["map_items_per_s"] = MAP_ITEMS / seconds
    push()
    pulled = pull()
    check(isinstance(pulled, np.ndarray) and np.array_equal(pulled, array), f"{name} pull")
    del pulled
    result["push_GBps"] = gbps(push)
    result["pull_GBps"] = gbps(pull)
    return result


def measure_scaling(engines: int, tasks: int = SCALE_TASKS) -> dict[str, Any]:
    """corral's load-balanced no-op tasks/s with ``engines`` engines over ``tasks`` tasks."""
    with corral_cluster(engines, keep=True) as running:  # keep: its stats file, read at stop
        client = running.client
        check(len(client.ids) == engines, f"{len(client.ids)} engines of {engines}")
        balanced = client.load_balanced_view()
        figures = lb_run(
            lambda n: [balanced.apply_async(one) for _ in range(n)],
            lambda results: sum(collect(results, lambda r, left: r.get(left), TIMEOUT)),
            tasks,
            system_processes(running),
            HubBarrier(client),
        )
    check(not running.leftovers, f"corral left {running.leftovers}")
    scheduler = (running.stats or {}).get("scheduler") or {}
    if "packing" in scheduler:  # bursts packed on a few engines, and lapsed (under load)
        return {**figures, "packing": scheduler["packing"]}
    return figures


def corral_origin(client: Any) -> dict[str, str]:
    """Where this process and an engine imported corral from (proves which tree ran)."""
    import corral

    def engine_corral() -> str:
        import corral as engine_side

        return str(engine_side.__file__)

    return {
        "client": str(corral.__file__),
        "engine": str(client[client.ids[0]].apply_async(engine_corral).get(TIMEOUT)),
    }


def measure(system: str, scale_tasks: int = SCALE_TASKS) -> dict[str, Any]:
    """One system's figures (run in a child process: ``--measure SYSTEM``)."""
    array = make_array()
    if system == "raw":
        return measure_raw(array)
    if system == "ppe":
        return measure_ppe(array)
    if system.startswith("scale:"):
        return measure_scaling(int(system.partition(":")[2].partition("@")[0]), scale_tasks)
    factory = {"ipyparallel": ipyparallel_cluster, "dask": dask_cluster}.get(system, corral_cluster)
    name = system if system in ("ipyparallel", "dask") else "corral"
    with factory(ENGINES) as running:
        if name == "corral":  # a relative PYTHONPATH can give the cluster another corral
            origin = corral_origin(running.client)
            check(origin["client"] == origin["engine"], f"one corral everywhere: {origin}")
        result = measure_cluster(name, running, array)
        if name == "corral":
            result["corral_origin"] = origin
    check(not running.leftovers, f"{system} left {running.leftovers}")
    return result


# ---------------------------------------------------------------- the parent: rotation, table


@contextmanager
def baseline_tree(revision: str | None) -> Iterator[Path | None]:
    """The corral package of ``revision`` in a temporary folder (None: no baseline)."""
    if revision is None:
        yield None
        return
    builder = "tools/build_native.py"
    has_builder = (
        subprocess.run(
            ["git", "cat-file", "-e", f"{revision}:{builder}"], cwd=REPO_ROOT, capture_output=True
        ).returncode
        == 0
    )
    with tempfile.TemporaryDirectory(prefix="corral-baseline-") as folder:
        # the build reads mypy's settings (pyproject.toml) as `make native` does
        paths = ["corral", *([builder, "pyproject.toml"] if has_builder else [])]
        archive = subprocess.run(
            ["git", "archive", revision, *paths], cwd=REPO_ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        if has_builder and os.environ.get("CORRAL_NATIVE") != "0":
            # the baseline as `make native` left it, so that both sides run compiled (or, with
            # CORRAL_NATIVE=0, both from source); a failed build fails the run
            print(f"building corral@{revision}'s compiled modules ...", file=sys.stderr)
            subprocess.run([sys.executable, str(Path(folder, builder)), "--require"], check=True)
        yield Path(folder)


def run_child(
    system: str, source: Path | None, workdir: Path, scale_tasks: int = SCALE_TASKS
) -> dict[str, Any]:
    """``--measure system`` in a fresh interpreter; with ``source``, that corral tree first on
    the path of the child and of every process it starts (they inherit PYTHONPATH; the working
    directory is an empty folder so that ``python -m`` finds nothing else first)."""
    out = workdir / f"{system.replace(':', '-').replace('@', '-')}.json"
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
        env["CORRAL_BENCH_SOURCE"] = str(source)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure",
        system,
        "--out",
        str(out),
        "--scale-tasks",
        str(scale_tasks),
    ]
    print(f"  {system} ...", file=sys.stderr, flush=True)
    subprocess.run(command, cwd=workdir, env=env, check=True, timeout=CHILD_TIMEOUT)
    measured: dict[str, Any] = json.loads(out.read_text())
    return measured


def median_of(runs: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            values.append(float(value))
    return statistics.median(values) if values else None


METRICS: list[tuple[str, tuple[str, ...], float]] = [
    ("apply round trip median, ms", ("latency", "median_us"), 1e-3),
    ("apply round trip p99, ms", ("latency", "p99_us"), 1e-3),
    ("load-balanced no-op tasks/s", ("lb_tasks_per_s",), 1.0),
    ("direct round-robin tasks/s", ("direct_tasks_per_s",), 1.0),
    ("map, default chunking, items/s", ("map_items_per_s",), 1.0),
    ("push 100 MB, GB/s", ("push_GBps",), 1.0),
    ("pull 100 MB, GB/s", ("pull_GBps",), 1.0),
    ("CPU per LB no-op task, all processes, us", ("cpu_us_per_task",), 1.0),
]


def targets(
    table: dict[str, dict[str, float | None]], corral: str, scale_engines: tuple[int, ...]
) -> list[list[Any]]:
    """The issue's targets as ratios (value, target, met) for the corral column ``corral``."""
    ours, ppe, raw = table[corral], table.get("ppe", {}), table.get("raw", {})

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    rows = [
        (
            "apply median / PPE's",
            ratio(ours["latency.median"], ppe.get("latency.median")),
            2.0,
            "<=",
        ),
        ("apply p99 / PPE's", ratio(ours["latency.p99"], ppe.get("latency.p99")), 3.0, "<="),
        ("LB tasks/s / PPE's", ratio(ours["lb"], ppe.get("lb")), 1.0, ">="),
        ("direct tasks/s / PPE's LB", ratio(ours["direct"], ppe.get("lb")), 1.0, ">="),
        ("map items/s / PPE's", ratio(ours["map"], ppe.get("map")), 1.0, ">="),
        ("push / raw one-hop", ratio(ours["push"], raw.get("push")), 0.8, ">="),
        ("pull / raw one-hop", ratio(ours["pull"], raw.get("pull")), 0.8, ">="),
        ("CPU us per no-op task", ours["cpu"], 150.0, "<="),
    ]
    scale = {key: ours.get(f"scale:{key}") for key in ("2", *map(str, scale_engines))}
    scale["2"] = ours["lb"]
    for low, high in zip(("2", *map(str, scale_engines)), map(str, scale_engines), strict=False):
        rows.append(
            (f"LB tasks/s {high} engines / {low}", ratio(scale[high], scale[low]), 1.0, ">=")
        )
    out = []
    for label, value, target, sense in rows:
        met = None if value is None else (value <= target if sense == "<=" else value >= target)
        out.append(
            [label, value, f"{sense} {target:g}", {None: "n/a", True: "met"}.get(met, "NOT met")]
        )
    return out


def scale_lines(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Each scale run's tasks/s and what its scheduler's packing did (its non-zero exit
    counts: a lapse mid-run, and what its last look found, explains a slow run at 64
    engines; docs/wire-flows.md, ``packing``)."""
    lines = []
    for system, measured in runs.items():
        if not system.startswith("scale:"):
            continue
        shown = []
        for run in measured:
            packing = run.get("packing") or {}
            counts = ", ".join(f"{key} {value}" for key, value in packing.items() if value)
            shown.append(f"{run['lb_tasks_per_s']:,.0f}" + (f" ({counts})" if counts else ""))
        lines.append(f"{system} tasks/s by run: " + "; ".join(shown))
    return lines


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    keys = {
        "latency.median": ("latency", "median_us"),
        "latency.p99": ("latency", "p99_us"),
        "lb": ("lb_tasks_per_s",),
        "direct": ("direct_tasks_per_s",),
        "map": ("map_items_per_s",),
        "push": ("push_GBps",),
        "pull": ("pull_GBps",),
        "cpu": ("cpu_us_per_task",),
    }
    table: dict[str, dict[str, float | None]] = {}
    for system, measured in runs.items():
        base, _, _ = system.partition("@")
        if base.startswith("scale:"):
            continue
        table[system] = {key: median_of(measured, *path) for key, path in keys.items()}
    for system, measured in runs.items():
        if system.startswith("scale:"):
            engines, _, variant = system.partition(":")[2].partition("@")
            owner = "corral" + (f"@{variant}" if variant else "")
            table[owner][f"scale:{engines}"] = median_of(measured, "lb_tasks_per_s")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", help="also measure corral at this git revision")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma list, '' for none")
    parser.add_argument(
        "--scale",
        default=",".join(map(str, SCALE_ENGINES)),
        help="corral LB engine counts beside 2 ('' for none)",
    )
    parser.add_argument(
        "--scale-tasks",
        type=int,
        default=SCALE_TASKS,
        help="load-balanced tasks per scale figure (default %(default)s)",
    )
    parser.add_argument(
        "--measure", help="only this system's figures, as JSON (ppe, raw, corral, scale:N)"
    )
    parser.add_argument("--out", help="with --measure: the file for them (default: stdout)")
    args = parser.parse_args()
    diagnose_hangs()
    if args.measure:
        use_source(show=False)
        figures = json.dumps(measure(args.measure, args.scale_tasks))
        if args.out:
            Path(args.out).write_text(figures)
        else:
            print(figures)
        return

    scale = tuple(int(n) for n in args.scale.split(",") if n)
    load_before = machine_load("before")
    peers = [p for p in args.peers.split(",") if p]
    with baseline_tree(args.baseline) as source, tempfile.TemporaryDirectory() as folder:
        variants: dict[str, Path | None] = {"corral": None}
        if source is not None:
            variants[f"corral@{args.baseline}"] = source
        systems: list[tuple[str, Path | None]] = [(p, None) for p in peers]
        for label, tree in variants.items():
            systems.append((label, tree))
            suffix = label.partition("@")[2]
            systems += [(f"scale:{n}" + (f"@{suffix}" if suffix else ""), tree) for n in scale]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in systems}
        for repeat in range(args.repeats):
            print(f"repetition {repeat + 1} of {args.repeats}", file=sys.stderr)
            # each system starts the rotation in turn: with three systems, reversing every
            # other repetition kept the second one always second, right after another
            # system's teardown (its processes ending, its store written back), which cost
            # it the p99 and the 100 MB pull in every run of issue 13's round twelve
            shift = repeat % len(systems)
            order = systems[shift:] + systems[:shift]
            for name, tree in order:
                runs[name].append(run_child(name, tree, Path(folder), args.scale_tasks))
    load_after = machine_load("after")
    table = summarise(runs)
    columns = [name for name in table]
    rows = []
    for label, path, factor in METRICS:
        key = {
            ("latency", "median_us"): "latency.median",
            ("latency", "p99_us"): "latency.p99",
            ("lb_tasks_per_s",): "lb",
            ("direct_tasks_per_s",): "direct",
            ("map_items_per_s",): "map",
            ("push_GBps",): "push",
            ("pull_GBps",): "pull",
            ("cpu_us_per_task",): "cpu",
        }[path]
        rows.append(
            [label, *[None if (v := table[c][key]) is None else v * factor for c in columns]]
        )
    for n in scale:
        rows.append(
            [f"LB no-op tasks/s, {n} engines", *[table[c].get(f"scale:{n}") for c in columns]]
        )
    print_table(
        f"{ENGINES} engines, {os.cpu_count()} cores, medians of {args.repeats} runs; load average "
        f"{load_before['loadavg_1min']:.1f} before, {load_after['loadavg_1min']:.1f} after "
        "('raw' = pyzmq REQ/REP echo and one hop to another process; 'ppe' = "
        "ProcessPoolExecutor)",
        ["", *columns],
        rows,
    )
    for line in scale_lines(runs):
        print(line)
    verdicts = {}
    for corral in variants:
        verdicts[corral] = targets(table, corral, scale)
        print_table(
            f"targets of issue #13: {corral}", ["", "value", "target", ""], verdicts[corral]
        )
    write_results(
        "targets",
        {
            "engines": ENGINES,
            "repeats": args.repeats,
            "baseline": args.baseline,
            "load_before": load_before,
            "load_after": load_after,
            "table": table,
            "targets": verdicts,
            "runs": runs,
            "left_behind_at_end": final_process_check(),
        },
    )


if __name__ == "__main__":
    main()
