"""The dashboard at scale: 64 engines and 100,000 stored tasks.

1. The Hub's answers the dashboard asks for, on a SQLite store of 100,000 task records (made
   by the Hub itself from monitor copies and replies, as in a real run) with 64 engines
   registered: ``status_request`` (the once-a-second poll) and history pages of
   ``db_request`` (first page, last page, a status filter, an engine filter, a msg_id search),
   each timed in the Hub (median of 20 calls), since a slow answer there delays every task.
   The dashboard itself reads a SQLite store directly, in its own process; the same pages
   read that way are timed too.
2. The page: a synthetic snapshot of 64 engines and 20,000 timeline entries (the most the
   model keeps) and one-second updates (64 engines, 200 completions) fed to a dashboard page in
   headless Chromium; the time to draw each, measured in the page (median of 10), and the size
   of the snapshot on the wire.

Run: `.bench-venv/bin/python bench/bench_dashboard_scale.py` (about 1 minute).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psutil
from common import (
    check,
    corral_cluster,
    cpu_seconds,
    final_process_check,
    print_table,
    write_results,
)

from corral.controller.hub import Hub, Send
from corral.controller.hub_actions import Action, Stop, apply_writes
from corral.controller.store import SQLiteStore
from corral.protocol.session import Session
from tools.chromium import chromium

ENGINES = 64
TASKS = 100_000
CALLS = 20
session = Session(b"bench-key")


def record(hub: Hub, actions: list[Action]) -> list[Send | Stop]:
    """Apply the Hub's store writes as its shell does; the messages it would send."""
    return apply_writes(hub.store, actions, hub.forget_purged)


def fill(hub: Hub) -> list[str]:
    """Register ENGINES engines and record TASKS load-balanced tasks with their replies."""
    uuids = [f"engine-{i}" for i in range(ENGINES)]
    for uuid in uuids:
        registration = session.msg("registration_request", {"uuid": uuid})
        record(hub, hub.handle_request([uuid.encode()], registration, time.time()))
    payload, actions = hub.tick(time.time())
    record(hub, actions)
    for uuid in uuids:
        record(hub, hub.handle_pong(uuid, payload, time.time()))
    msg_ids = []
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(TASKS):
        request = session.msg("apply_request", {})
        uuid = uuids[i % ENGINES]
        record(hub, hub.handle_monitor(b"task_in", [b"client"], request, time.time()))
        record(hub, hub.handle_destination(request.msg_id, uuid))
        began = start + timedelta(milliseconds=10 * i)
        metadata = {
            "started": began.isoformat(),
            "completed": (began + timedelta(milliseconds=8)).isoformat(),
            "call": f"work({i})",
        }
        status = "error" if i % 97 == 0 else "ok"
        reply = session.msg("apply_reply", {"status": status}, parent=request, metadata=metadata)
        record(hub, hub.handle_monitor(b"task_out", [b"client", uuid.encode()], reply, time.time()))
        msg_ids.append(request.msg_id)
    hub.store.flush()
    return msg_ids


def timed_request(hub: Hub, msg_type: str, content: dict[str, Any]) -> tuple[float, Any]:
    times = []
    reply: Any = None
    for _ in range(CALLS):
        msg = session.msg(msg_type, content)
        begin = time.perf_counter()
        (reply,) = record(hub, hub.handle_request([b"dashboard"], msg, time.time()))
        times.append(time.perf_counter() - begin)
    assert isinstance(reply, Send)
    check(reply.content["status"] == "ok", f"{msg_type} answered: {reply.content}")
    return statistics.median(times) * 1000, reply.content


def hub_figures(folder: Path) -> list[list[Any]]:
    store = SQLiteStore(folder / "tasks.db")
    hub = Hub(store, {}, {}, heartbeat_period=3.0)
    try:
        begin = time.perf_counter()
        msg_ids = fill(hub)
        print(f"recorded {TASKS} tasks in {time.perf_counter() - begin:.1f} s")
        keys = ["msg_id", "status", "queue", "engine_id", "client_uuid", "submitted", "started"]
        keys += ["completed", "header", "result_metadata"]
        rows = []
        ms, content = timed_request(hub, "status_request", {"since": hub.activity.seq - 100})
        check(len(content["engines"]) == ENGINES and len(content["recent"]) == 100, "status")
        name = "status_request (64 engines, 100 new completions)"
        rows.append([name, ms, len(orjson.dumps(content))])
        cases: list[tuple[str, dict[str, Any], int, int]] = [
            ("history, first page of 50", {"query": {}}, 0, TASKS),
            ("history, last page", {"query": {}}, TASKS - 50, TASKS),
            ("status = error, first page", {"query": {"status": "error"}}, 0, -(-TASKS // 97)),
            ("engine 7, page 10", {"query": {"engine_id": 7}}, 450, len(range(7, TASKS, ENGINES))),
            ("msg_id search", {"query": {"msg_id": msg_ids[TASKS // 2]}}, 0, 1),
        ]
        reader = SQLiteStore(folder / "tasks.db", read_only=True)  # as the dashboard reads it
        try:
            for name, query, skip, expected in cases:
                ms, content = timed_request(
                    hub, "db_request", {**query, "keys": keys, "limit": 50, "skip": skip}
                )
                total = content["total"]
                check(total == expected, f"{name}: total {total} != {expected}")
                check(len(content["records"]) == min(50, expected - skip), f"{name}: page size")
                rows.append([f"Hub db_request: {name}", ms, len(orjson.dumps(content))])
                times = []
                for _ in range(CALLS):
                    begin = time.perf_counter()
                    page, total = reader.find_page(query["query"], keys, limit=50, skip=skip)
                    times.append(time.perf_counter() - begin)
                check(total == expected and len(page) == min(50, expected - skip), name)
                rows.append(
                    [f"dashboard's own read: {name}", statistics.median(times) * 1000, None]
                )
        finally:
            reader.close()
        return rows
    finally:
        store.close()


def synthetic_snapshot() -> tuple[dict[str, Any], dict[str, Any]]:
    now = time.time()
    engines = [
        {
            "id": i,
            "uuid": f"u{i}",
            "state": "busy",
            "registered": "",
            "queue": 3,
            "tasks": 5,
            "completed": 1500 + i,
            "hostname": f"node{i // 8}",
            "pid": 10_000 + i,
            "cpu": float(i % 100),
            "memory": 40 << 20,
            "running": f"msg-{i:08d}",
            "running_for": 1.5,
            "replaced_by": None,
        }
        for i in range(ENGINES)
    ]

    def completion(i: int, end: float) -> list[Any]:
        stamp = datetime.fromtimestamp(end, UTC)
        return [
            f"m{i}",
            i % ENGINES,
            "ok",
            (stamp - timedelta(seconds=1.5)).isoformat(),
            stamp.isoformat(),
        ]

    timeline = [completion(i, now - 600 + i * 0.03) for i in range(20_000)]
    series = [[now - 900 + s, 30.0, 1.0, 5, 520] for s in range(900)]
    common = {
        "cluster_id": "scale",
        "connected": True,
        "engines": engines,
        "alive": ENGINES,
        "counts": {"ok": 99_000, "error": 1000},
        "submitted": 100_500,
        "unassigned": 5,
        "pending": 520,
    }
    snapshot = {"type": "snapshot", **common, "series": series, "timeline": timeline}
    update = {
        "type": "update",
        **common,
        "point": [now, 30.0, 1.0, 5, 520],
        "completions": [completion(i, now - 0.5) for i in range(200)],
        "sent": now,
    }
    return snapshot, update


def chromium_cpu(driver: Any) -> float:
    root = psutil.Process(driver.service.process.pid)
    return cpu_seconds([root, *root.children(recursive=True)])


RENDER = """
const message = arguments[0];
const begin = performance.now();
apply(message);
renderLive();
const took = performance.now() - begin;
return [took, document.querySelectorAll("#engines tbody tr[data-engine-id]").length];
"""


def page_figures() -> list[list[Any]]:
    snapshot, update = synthetic_snapshot()
    size = len(orjson.dumps(snapshot))
    with corral_cluster(1, dashboard=True) as running:
        with chromium() as driver:
            driver.get(running.cluster.dashboard_url)
            driver.execute_script("document.querySelector('#link-state')")  # page is up
            time.sleep(1.0)  # let the real first snapshot arrive before ours replaces it
            before = chromium_cpu(driver)
            snapshots = [driver.execute_script(RENDER, snapshot) for _ in range(10)]
            middle = chromium_cpu(driver)
            updates = [driver.execute_script(RENDER, update) for _ in range(10)]
            snapshot_cpu = (middle - before) / 10 * 1000
            update_cpu = (chromium_cpu(driver) - middle) / 10 * 1000
    for _, rows in snapshots + updates:
        check(rows == ENGINES, f"the page drew {ENGINES} engine rows ({rows})")
    snapshot_ms = [took for took, _ in snapshots]
    update_ms = [took for took, _ in updates]
    return [
        [
            "page: draw a snapshot (64 engines, 20,000 timeline entries)",
            statistics.median(snapshot_ms),
            size,
        ],
        ["  browser CPU per snapshot (ms)", snapshot_cpu, None],
        [
            "page: draw an update (64 engines, 200 completions)",
            statistics.median(update_ms),
            len(orjson.dumps(update)),
        ],
        ["  browser CPU per update (ms)", update_cpu, None],
    ]


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        rows = hub_figures(Path(folder))
    rows += page_figures()
    print_table(
        f"dashboard at scale: {ENGINES} engines, {TASKS:,} stored tasks (SQLite)",
        ["what", "median ms", "bytes"],
        rows,
    )
    strays = final_process_check()
    write_results(
        "dashboard_scale",
        {"engines": ENGINES, "tasks": TASKS, "rows": rows, "left_behind": strays},
    )


if __name__ == "__main__":
    main()
