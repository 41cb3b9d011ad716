"""What every benchmark script shares: timing, tables, JSON results, and the clusters.

Each cluster (corral, ipyparallel, dask.distributed, and a mongod for the MongoDB store) is a
context manager that starts it, yields a :class:`Running` handle, and on exit stops it and
checks that every process it started is gone: ``Running.leftovers`` lists any that were not
(they are then killed, by pid, so that one bad run does not spoil the next).

The peers are imported inside their functions: they are benchmark peers, never dependencies.
The tasks themselves are defined in each script: functions of ``__main__`` travel by value,
while functions of this module would be pickled by reference and engines cannot import it.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # scripts run as bench/x.py: make tools/ importable

from tools.mongod import MONGOD_VENV, find_mongod, running_mongod  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
STOP_TIMEOUT = 15.0
QUIET_CORES = 0.2  # other processes' CPU above which figures are flagged as disturbed
QUIET_WAIT = 120.0  # seconds a script waits at its start for other work to quiet down
# Helpers multiprocessing keeps until the interpreter exits (dask starts them); not a cluster's.
_INTERPRETER_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


# ---------------------------------------------------------------- timing


def restore_environment(before: dict[str, str | None]) -> None:
    """Put back the environment variables a bench set for its cluster (``None``: it had none),
    so that what runs next starts from the caller's environment."""
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def latency(step: Callable[[], object], rounds: int, warmup: int = 50) -> dict[str, float]:
    """Per-call times of ``step`` in microseconds: median, 10th, 90th and 99th percentile."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    deciles = statistics.quantiles(times, n=10)
    return {
        "median_us": statistics.median(times) * 1e6,
        "p10_us": deciles[0] * 1e6,
        "p90_us": deciles[-1] * 1e6,
        "p99_us": statistics.quantiles(times, n=100)[-1] * 1e6,
        "rounds": rounds,
    }


def timed(step: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, value) of one call."""
    start = time.perf_counter()
    value = step()
    return time.perf_counter() - start, value


def foreign_cpu(interval: float = 1.0) -> float:
    """Cores busy outside this process tree over ``interval`` seconds: other people's work on
    the machine, which every figure here competes with (recorded, and warned about)."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    before: dict[int, tuple[psutil.Process, float]] = {}
    for process in psutil.process_iter():
        if process.pid in mine:
            continue
        try:
            before[process.pid] = (process, sum(process.cpu_times()[:2]))
        except psutil.Error:
            continue
    time.sleep(interval)  # sampling other processes' CPU needs an interval; nothing to await
    busy = 0.0
    for process, start in before.values():
        try:
            busy += sum(process.cpu_times()[:2]) - start
        except psutil.Error:
            continue
    return busy / interval


def machine_load(when: str, wait: float = 0.0) -> dict[str, Any]:
    """Load average and foreign CPU now; prints a warning when others are busy. With ``wait``,
    first give other work up to that many seconds to quiet down (the machine is shared)."""
    deadline = time.monotonic() + wait
    cores = foreign_cpu()
    while cores > QUIET_CORES and time.monotonic() < deadline:
        print(f"waiting for a quiet machine: others use {cores:.2f} cores", file=sys.stderr)
        cores = foreign_cpu(5.0)
    if cores > QUIET_CORES:
        print(
            f"WARNING ({when}): other processes use {cores:.2f} cores of {os.cpu_count()}; "
            "figures are disturbed",
            file=sys.stderr,
        )
    return {"loadavg_1min": os.getloadavg()[0], "foreign_cores": round(cores, 2)}


def diagnose_hangs() -> None:
    """``kill -USR1 <pid>`` prints every thread's stack (to find where a run hangs)."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)


class LostResults(AssertionError):
    """Some submitted tasks never came back within the deadline (a lost message)."""


def collect(results: Sequence[Any], get: Callable[[Any, float], Any], timeout: float) -> list[Any]:
    """The value of every result (``get(result, seconds_left)``), all within ``timeout``.
    Raises LostResults, saying how many had not arrived, when and why the wait ended; works with
    the futures of corral, ipyparallel and dask (each has ``done()``)."""
    start = time.monotonic()
    deadline = start + timeout
    values = []
    for result in results:
        try:
            values.append(get(result, max(0.01, deadline - time.monotonic())))
        except Exception as err:
            if result.done():
                raise
            missing = sum(not r.done() for r in results)
            # what get raised, and when: a timeout is not the only way a wait ends early
            raise LostResults(
                f"{missing} of {len(results)} results had not arrived "
                f"{time.monotonic() - start:.1f} s in (limit {timeout:.0f} s): "
                f"{type(err).__name__}: {err}"
            ) from err
    return values


def hub_completed(client: Any) -> int:
    """How many tasks the Hub (corral's, or ipyparallel's) counts as completed, all engines."""
    status = client.queue_status()
    return sum(int(value["completed"]) for value in status.values() if isinstance(value, dict))


class HubBarrier:
    """Counts a batch of tasks as done only once the Hub has recorded them.

    The Hub records copies of each task off the task's path, so it may still be at work when
    the client holds every result (the more so at a lower CPU priority, ``--hub-nice``): CPU
    times read then leave part of its share out. :meth:`settle` waits until the Hub has
    recorded everything submitted so far (its completed count stops moving, and the given
    results are completed), :meth:`wait` until it has recorded ``count`` more than at the last
    settle; both end with a result query, which reads the store after the writes queued before
    it. Call :meth:`settle` before the measured batch and :meth:`wait` after it."""

    def __init__(self, client: Any, timeout: float = 120.0) -> None:
        self.client = client
        self.timeout = timeout
        self.completed = 0

    def settle(self, results: Sequence[Any]) -> None:
        msg_ids = [msg_id for result in results for msg_id in result.msg_ids]
        deadline = time.monotonic() + self.timeout
        seen = -1
        while True:
            try:
                done = not self.client.result_status(msg_ids)["pending"]
            except Exception:  # a copy not read yet: the Hub does not know the msg_id
                done = False
            count = hub_completed(self.client)
            if done and count == seen:
                self.completed = count
                return
            seen = count
            if time.monotonic() > deadline:
                raise LostResults(f"the Hub did not settle within {self.timeout} s")
            time.sleep(0.02)  # the Hub answers after the copies queued before the query

    def wait(self, count: int, last: Any) -> None:
        deadline = time.monotonic() + self.timeout
        while hub_completed(self.client) < self.completed + count:
            if time.monotonic() > deadline:
                raise LostResults(f"the Hub did not record {count} tasks in {self.timeout} s")
            time.sleep(0.01)
        self.client.result_status(last.msg_ids)  # a store read: the queued writes first
        self.completed += count


def use_source(*, show: bool = True) -> Path:
    """The corral tree a run measures, imported: ``CORRAL_BENCH_SOURCE`` (another tree, such as
    a baseline from ``git archive``; on PYTHONPATH too, for the cluster's processes) goes before
    this worktree, which this module put first on the path. Printed unless ``show`` is False."""
    baseline = os.environ.get("CORRAL_BENCH_SOURCE")
    if baseline:
        sys.path.insert(0, baseline)
    import corral

    origin = Path(corral.__file__).resolve().parent
    if show:
        print(f"corral from {origin} ({native_state()})")
    return origin


def native_state() -> str:
    """Whether the measured tree runs its compiled modules (``make native``), or why not."""
    try:
        from corral import native
    except ImportError:  # a tree from before the compiled build
        return "native: none in this tree"
    return native.describe()


def check(condition: bool, what: str) -> None:
    """Refuse to report a figure measured on a broken path."""
    if not condition:
        raise AssertionError(f"wrong result: {what}")


# ---------------------------------------------------------------- reporting


def versions() -> dict[str, str]:
    found = {}
    for name in ("corral", "ipyparallel", "distributed", "pyzmq", "numpy", "pymongo"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def source_state() -> dict[str, Any]:
    """The commit measured, and the corral files changed since it (the tree is shared)."""

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        return run.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "modified": git("status", "--porcelain", "corral").splitlines(),
    }


def machine() -> dict[str, Any]:
    return {
        "source": source_state(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "versions": versions(),
    }


def write_results(name: str, data: dict[str, Any]) -> Path:
    """``bench/results/<name>.json`` with the machine description added."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **data}, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(REPO_ROOT)}")
    return path


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain text table; floats get thousands separators and sensible precision."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if value == 0 or abs(value) >= 100:
                return f"{value:,.0f}"
            return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return "" if value is None else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    print(f"\n{title}\n{line}\n{'-' * len(line)}")
    for row in cells:
        print(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# ---------------------------------------------------------------- processes


@dataclass
class Running:
    """A started cluster: ``client`` to drive it, ``cluster`` (the framework's own object),
    the processes it started, and after the ``with`` block any that outlived the stop."""

    name: str
    cluster: Any
    client: Any
    processes: list[psutil.Process] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    stop_seconds: float | None = None
    # corral only: what the stopped controller wrote to its stats file (message counts)
    stats: dict[str, Any] | None = None


def descendants() -> list[psutil.Process]:
    """Every live process below this one, except the multiprocessing helpers the interpreter
    keeps until it exits."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if not any(helper in cmdline for helper in _INTERPRETER_HELPERS):
            found.append(process)
    return found


def started_since(before: set[int]) -> list[psutil.Process]:
    """The descendants that are not in ``before`` (pids): what one cluster start added."""
    return [process for process in descendants() if process.pid not in before]


def reap(processes: Sequence[psutil.Process], label: str) -> list[str]:
    """Wait for ``processes`` to exit; describe and kill (by pid) any still alive."""
    _, alive = psutil.wait_procs(list(processes), timeout=STOP_TIMEOUT)
    leftovers = []
    for process in alive:
        try:
            description = f"{process.pid} {' '.join(process.cmdline())[:120]}"
            process.kill()
        except psutil.Error:
            continue
        leftovers.append(description)
        print(f"LEFTOVER after stopping {label}: {description}", file=sys.stderr)
    return leftovers


def stray_processes() -> list[str]:
    """What is still running below this process (the final ``ps`` check of every script)."""
    strays = []
    for process in descendants():
        try:
            strays.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
        except psutil.Error:
            continue
    return strays


def final_process_check() -> list[str]:
    strays = stray_processes()
    print(
        "\nprocess check: " + ("no process left behind" if not strays else f"LEFT BEHIND: {strays}")
    )
    return strays


# ---------------------------------------------------------------- clusters


@contextmanager
def corral_cluster(n: int, **options: Any) -> Iterator[Running]:
    """A corral ``Cluster(n)`` in a temporary cluster folder; ``options`` go to Cluster."""
    import corral

    with tempfile.TemporaryDirectory(prefix="corral-bench-") as folder:
        before = {process.pid for process in descendants()}
        cluster = corral.Cluster(n=n, cluster_dir=folder, **options)
        client = cluster.start()
        running = Running("corral", cluster, client, started_since(before))
        try:
            yield running
        finally:
            running.stop_seconds, _ = timed(cluster.stop)
            running.leftovers = reap(running.processes, "corral")
            running.stats = controller_stats(Path(folder))


def controller_stats(folder: Path) -> dict[str, Any] | None:
    """The stats file a stopped corral controller left in its cluster folder (None if none:
    an older tree, or a controller that could not write it)."""
    for path in folder.rglob("controller-stats.json"):
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None
    return None


def corral_scheduler(cluster: Any) -> psutil.Process:
    """The task scheduler process: the child of the controller running
    ``-m corral.controller.scheduler``."""
    for child in psutil.Process(cluster.controller.pid).children():
        if "corral.controller.scheduler" in child.cmdline():
            return child
    raise RuntimeError("no corral.controller.scheduler child under the controller")


@contextmanager
def ipyparallel_cluster(n: int) -> Iterator[Running]:
    """``ipyparallel.Cluster(n).start_and_connect_sync()`` with every engine registered,
    in a temporary profile folder."""
    import ipyparallel

    with tempfile.TemporaryDirectory(prefix="ipp-bench-") as folder:
        cluster = ipyparallel.Cluster(n=n, profile_dir=folder, log_level=logging.WARNING)
        running = Running("ipyparallel", cluster, None)
        before = {process.pid for process in descendants()}
        try:
            running.client = cluster.start_and_connect_sync()
            running.client.wait_for_engines(n, timeout=120)
            running.processes = started_since(before)
            yield running
        finally:
            start = time.perf_counter()
            if running.client is not None:
                running.client.close()
            cluster.stop_cluster_sync()
            running.stop_seconds = time.perf_counter() - start
            running.leftovers = reap(running.processes or started_since(before), "ipyparallel")


@contextmanager
def dask_cluster(n: int) -> Iterator[Running]:
    """A dask ``LocalCluster(n_workers=n, threads_per_worker=1, processes=True)`` and a
    Client that sees every worker. The dask scheduler runs in this process (LocalCluster's
    default), the workers in their own."""
    from distributed import Client, LocalCluster

    before = {process.pid for process in descendants()}
    cluster = LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
    )
    running = Running("dask", cluster, None)
    try:
        running.client = Client(cluster)
        running.client.wait_for_workers(n)
        running.processes = started_since(before)
        yield running
    finally:
        start = time.perf_counter()
        if running.client is not None:
            running.client.close()
        cluster.close()
        running.stop_seconds = time.perf_counter() - start
        running.leftovers = reap(running.processes or started_since(before), "dask")


def dask_workers(client: Any) -> list[str]:
    return sorted(client.scheduler_info()["workers"])


@contextmanager
def mongod() -> Iterator[str]:
    """``mongodb://127.0.0.1:PORT`` of a fresh mongod (from ``.mongod-venv``, as the store
    tests use; ``make mongod`` installs it) in a temporary folder, always shut down."""
    binary = find_mongod()
    if binary is None:
        raise RuntimeError(f"no mongod under {MONGOD_VENV}: run `make mongod` first")
    with tempfile.TemporaryDirectory(prefix="mongod-bench-") as folder:
        with running_mongod(binary, Path(folder)) as url:
            yield url


def cpu_seconds(processes: Iterable[psutil.Process], *, children: bool = False) -> float:
    """User and system CPU seconds of ``processes`` (those gone meanwhile count 0);
    ``children``: with their waited-for children's too."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
        if children:
            total += times.children_user + times.children_system
    return total
