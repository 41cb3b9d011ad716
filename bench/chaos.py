"""Chaos: load-balanced tasks with retries=2 while engines and the controller are SIGKILLed.

A supervised cluster (``Cluster``'s default: dead processes are restarted, the controller with
``--restore``) runs ``--tasks`` load-balanced tasks (each returns twice its argument) submitted
with ``retries=2``. A seeded loop, driven by progress so that the kills fall inside the run at
any speed, SIGKILLs a random engine every ``--kill-every`` finished tasks and the controller
twice (at a third and at two thirds). At the end, checked: every task has exactly one final
result (a correct value, or an error naming why), the Hub holds exactly one finished record per
task, no call hung (every wait is bounded), and stopping the cluster leaves no process behind.

    .venv/bin/python bench/chaos.py --tasks 100000            # the full run (minutes)
    .venv/bin/python bench/chaos.py --tasks 2000 --json out.json   # what `make test` runs

Prints a summary and writes JSON (``--json``, default ``bench/results/chaos.json``). Exit
status 0 only if nothing was lost, duplicated or left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from corral import Cluster  # noqa: E402
from corral.cluster.supervisor import RestartPolicy  # noqa: E402
from corral.errors import CorralError  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "chaos.json"


def double(x: int, seconds: float = 0.0) -> int:
    if seconds:
        time.sleep(seconds)  # work that takes time, so the kills fall among running tasks
    return 2 * x


class Chaos(threading.Thread):
    """Kills as the run progresses; records what it did and how long recovery took."""

    def __init__(self, cluster: Cluster, children: list[Any], seed: int, kill_every: int):
        super().__init__(name="chaos", daemon=True)
        self.cluster = cluster
        self.children = children
        self.rng = random.Random(seed)
        self.kill_every = kill_every
        total = len(children)
        self.controller_at = [total // 3, 2 * total // 3]
        self.stop_event = threading.Event()
        self.engine_kills = 0
        self.controller_kills = 0
        self.recoveries: list[float] = []
        self.errors: list[str] = []

    def finished(self) -> int:
        return sum(1 for child in self.children if child.done())

    def run(self) -> None:
        next_engine_kill = self.kill_every
        try:
            while not self.stop_event.wait(0.05):
                done = self.finished()
                if done >= len(self.children):
                    return
                if self.controller_at and done >= self.controller_at[0]:
                    self.controller_at.pop(0)
                    self.kill_controller()
                elif done >= next_engine_kill:  # one kill per threshold, even after a burst
                    next_engine_kill += self.kill_every
                    self.kill_engine()
        except Exception as err:  # noqa: BLE001 - reported in the summary
            self.errors.append(repr(err))

    def kill_engine(self) -> None:
        alive = [p for p in self.cluster.engines if p.poll() is None]
        if alive:
            victim = self.rng.choice(alive)
            os.kill(victim.pid, signal.SIGKILL)
            self.engine_kills += 1

    def kill_controller(self) -> None:
        controller = self.cluster.controller
        if controller is None or controller.poll() is not None:
            return
        rc = self.cluster.client
        assert rc is not None
        os.kill(controller.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        self.controller_kills += 1
        deadline = killed_at + 120
        while time.monotonic() < deadline:  # back: the same client answers queries again
            if self.cluster.controller is not controller:
                try:
                    rc.queue_status()
                except CorralError:
                    pass
                else:
                    self.recoveries.append(time.monotonic() - killed_at)
                    return
            self.stop_event.wait(0.05)
        self.errors.append("the controller did not come back within 120 s")


def hub_records(rc: Any, msg_ids: list[str]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for start in range(0, len(msg_ids), 50_000):
        records += rc.db_query(
            {"msg_id": {"$in": msg_ids[start : start + 50_000]}}, ["msg_id", "status"]
        )
    return records


def supervised_cluster(engines: int, prefix: str, **options: Any) -> Cluster:
    """A temporary cluster whose dead processes are restarted at once (the controller with
    ``--restore``), with a short heartbeat so that dead engines are noticed soon; ``options``
    go to :class:`Cluster` too."""
    return Cluster(
        engines,
        cluster_dir=Path(tempfile.mkdtemp(prefix=prefix)),
        heartbeat_period=0.5,
        timeout=60,
        restart_policy=RestartPolicy(first_delay=0.1, max_delay=2.0),
        **options,
    )


def remove_base_dir(cluster: Cluster) -> None:
    """(After ``cluster.stop()``) The temporary folder :func:`supervised_cluster` made for it,
    if the stop left it empty (the cluster's own folder goes with the stop): each run left an
    empty ``corral-chaos-*`` folder in the temporary directory before."""
    with contextlib.suppress(OSError):
        cluster.base_dir.rmdir()


def kill_leftovers() -> list[int]:
    """The pids of this process's children still running 15 s after a stop, killed."""
    _, alive = psutil.wait_procs(psutil.Process().children(recursive=True), timeout=15)
    for process in alive:
        process.kill()
    return [process.pid for process in alive]


def run(
    tasks: int, engines: int, seed: int, kill_every: int, timeout: float, task_seconds: float
) -> dict[str, Any]:
    cluster = supervised_cluster(engines, "corral-chaos-")
    started = time.monotonic()
    rc = cluster.start()
    rc.outage_grace = 60.0  # a restart takes seconds; waits fail only if it takes longer
    try:
        view = rc.load_balanced_view(retries=2)
        results = view.map_async(double, range(tasks), [task_seconds] * tasks, chunksize=1)
        children = list(results._children)  # one future per task
        chaos = Chaos(cluster, children, seed, kill_every)
        chaos.start()
        hung = not rc.wait_for_futures(children, timeout, "chaos: waiting for every task")
        chaos.stop_event.set()
        chaos.join(150)
        elapsed = time.monotonic() - started
        outcomes: Counter[str] = Counter()
        why: Counter[str] = Counter()  # each distinct error, to tell kills from bugs
        wrong = 0
        for index, child in enumerate(children):
            if not child.done():
                outcomes["unsettled"] += 1
            elif child.exception() is not None:
                outcomes[type(child.exception()).__name__] += 1
                why[str(child.exception())[:200]] += 1
            elif child.result() != [2 * index]:
                wrong += 1
            else:
                outcomes["ok"] += 1
        # the Hub records replies from its monitor copies, a moment after the client has them
        settle_by = time.monotonic() + 60
        while True:
            records = hub_records(rc, results.msg_ids)
            pending = any(r.get("status") == "pending" for r in records)
            if not pending or time.monotonic() > settle_by:
                break
            time.sleep(0.2)
        per_task = Counter(r["msg_id"] for r in records)
        hub = {
            "records": len(records),
            "missing": sum(1 for m in results.msg_ids if m not in per_task),
            "duplicated": sum(1 for n in per_task.values() if n > 1),
            "pending": sum(1 for r in records if r.get("status") == "pending"),
        }
        restarts = dict(cluster.restarts)
    finally:
        cluster.stop()
        remove_base_dir(cluster)
    left_behind = kill_leftovers()
    return {
        "tasks": tasks,
        "engines": engines,
        "seed": seed,
        "elapsed_s": round(elapsed, 1),
        "hung": hung,
        "outcomes": dict(outcomes),
        "errors": dict(why.most_common(10)),
        "wrong_values": wrong,
        "lost": outcomes["unsettled"],
        "hub": hub,
        "engine_kills": chaos.engine_kills,
        "controller_kills": chaos.controller_kills,
        "controller_recovery_s": [round(r, 2) for r in chaos.recoveries],
        "restarts": restarts,
        "chaos_errors": chaos.errors,
        "left_behind": left_behind,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--engines", type=int, default=3)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--kill-every", type=int, default=0, help="default: tasks // 8")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--task-ms", type=float, default=0.0, help="how long each task works")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    kill_every = args.kill_every or max(1, args.tasks // 8)
    summary = run(
        args.tasks, args.engines, args.seed, kill_every, args.timeout, args.task_ms / 1000
    )
    print(json.dumps(summary, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    clean = (
        not summary["hung"]
        and summary["lost"] == 0
        and summary["wrong_values"] == 0
        and summary["hub"]["missing"] == 0
        and summary["hub"]["duplicated"] == 0
        and summary["hub"]["pending"] == 0
        and not summary["left_behind"]
        and not summary["chaos_errors"]
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
