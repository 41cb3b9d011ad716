"""Memory over a long run: 1,000,000 load-balanced tasks with purging, RSS sampled throughout.

A cluster of ``--engines`` engines runs ``--tasks`` no-op load-balanced tasks (one request
each, ``chunksize=1``) in batches of ``--batch``; after each batch the client purges the Hub's
records (``purge_results("all")``) and its own (``purge_local_results("all")``), or, with
``--result-ttl S``, only its own while the controller purges results older than S seconds by
itself (``corral controller --result-ttl``). The resident
memory of the client (this process), the controller (Hub), the task scheduler and the engines
is sampled after every ``--sample`` tasks. Flat means: the last sample is within a small margin
of the one after the first batch (warm caches).

    .venv/bin/python bench/memory.py                      # 1,000,000 tasks
    .venv/bin/python bench/memory.py --tasks 200000       # a shorter run
    .venv/bin/python bench/memory.py --result-ttl 30      # the Hub purges by age
    .venv/bin/python bench/memory.py --tasks 100000 --sample 10000 --no-purge

``--no-purge`` leaves every record in the Hub's store (the client still forgets its own): the
Hub's growth per stored task, which only the store's size limit bounds; each sample is taken
once the Hub has recorded and written every task so far.

Prints a table and writes ``bench/results/memory.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from corral import Cluster  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "memory.json"
MB = 1024 * 1024


def noop(x: int) -> int:
    return x


def rss(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / MB
    except psutil.NoSuchProcess:
        return float("nan")


def sample(cluster: Cluster, done: int, started: float) -> dict[str, Any]:
    assert cluster.controller is not None
    controller = psutil.Process(cluster.controller.pid)
    scheduler = [p.pid for p in controller.children() if "scheduler" in " ".join(p.cmdline())]
    return {
        "tasks": done,
        "seconds": round(time.monotonic() - started, 1),
        "client_mb": round(rss(psutil.Process().pid), 1),
        "hub_mb": round(rss(controller.pid), 1),
        "scheduler_mb": round(rss(scheduler[0]), 1) if scheduler else None,
        "engines_mb": [round(rss(e.pid), 1) for e in cluster.engines],
    }


def settle(rc: Any, done: int, timeout: float = 600.0) -> None:
    """Until the Hub has recorded all ``done`` tasks as completed and written them (a store
    read waits for the writes before it): its memory then holds what it keeps, not a burst
    in transit. Counted by the Hub's activity counts (the dashboard's ``status_request``),
    which the store's size limit, purging the oldest records, does not lower."""
    deadline = time.monotonic() + timeout
    while True:
        counts = rc._query("status_request", {"since": 0}).content["counts"]
        recorded = sum(counts.values())
        if recorded >= done:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Hub recorded {recorded} of {done} tasks")
        time.sleep(0.5)  # a query the Hub answers between copies: not too often
    rc.db_query({"msg_id": ""}, ["msg_id"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=100_000)
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--db", default="sqlite")
    parser.add_argument("--result-ttl", type=float, default=None, help="seconds; see above")
    parser.add_argument(
        "--no-purge",
        action="store_true",
        help="the Hub keeps every record (the client still forgets its own): its growth per task",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=0.0,
        help="with --no-purge: seconds to wait once the Hub has settled, before each sample",
    )
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="corral-memory-"))
    samples: list[dict[str, Any]] = []
    cluster = Cluster(
        args.engines, cluster_dir=base, db=args.db, timeout=120, result_ttl=args.result_ttl
    )
    rc = cluster.start()
    try:
        view = rc.load_balanced_view()
        started = time.monotonic()
        done = 0
        checksum = 0
        while done < args.tasks:
            count = min(args.batch, args.tasks - done)
            result = view.map_async(noop, range(done, done + count), chunksize=1)
            checksum += sum(result.get(timeout=600))
            done += count
            if args.result_ttl is None and not args.no_purge:
                rc.purge_results("all")
            rc.purge_local_results("all")
            del result
            if done == args.batch or done % args.sample == 0 or done == args.tasks:
                if args.no_purge:
                    settle(rc, done)
                    time.sleep(args.pause)
                samples.append(sample(cluster, done, started))
                print(json.dumps(samples[-1]), flush=True)
        expected = args.tasks * (args.tasks - 1) // 2
        assert checksum == expected, f"wrong results: {checksum} != {expected}"
        stored = len(rc.hub_history())  # what purging (or the time to live) left in the store
    finally:
        cluster.stop()
    first, last = samples[0], samples[-1]
    summary = {
        "tasks": args.tasks,
        "batch": args.batch,
        "db": args.db,
        "result_ttl": args.result_ttl,
        "no_purge": args.no_purge,
        "pause": args.pause,
        "engines": args.engines,
        "samples": samples,
        "growth_mb": {
            key: round(last[key] - first[key], 1)
            for key in ("client_mb", "hub_mb", "scheduler_mb")
            if first[key] is not None and last[key] is not None
        },
        "tasks_per_s": round(args.tasks / last["seconds"], 1),
        "stored_at_end": stored,
    }
    print(f"{'tasks':>9} {'s':>7} {'client':>8} {'hub':>8} {'scheduler':>10}  (MB RSS)")
    for row in samples:
        print(
            f"{row['tasks']:>9} {row['seconds']:>7} {row['client_mb']:>8} {row['hub_mb']:>8} "
            f"{row['scheduler_mb']!s:>10}"
        )
    print("growth after the first batch:", summary["growth_mb"])
    if args.no_purge and last["tasks"] > first["tasks"]:  # every task stored
        per_task = (last["hub_mb"] - first["hub_mb"]) * MB / (last["tasks"] - first["tasks"])
        summary["hub_bytes_per_task"] = round(per_task)
        print(f"the Hub's RSS after the first batch: {per_task:.0f} bytes per stored task")
    print("records left in the Hub's store:", stored)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
