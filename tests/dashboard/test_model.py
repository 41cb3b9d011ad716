"""The dashboard's picture of the cluster, driven by Hub replies, notifications and stats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from corral.dashboard.model import STATS_STALE, TIMELINE_WINDOW, ClusterModel


def status(engines: dict[int, dict[str, int]], **extra: Any) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "status": "ok",
        "engines": {
            str(i): {"uuid": f"u{i}", "registered": "r", "queue": 0, "tasks": 0, "completed": 0}
            | info
            for i, info in engines.items()
        },
        "unassigned": 0,
        "pending": 0,
        "submitted": 0,
        "counts": {},
        "seq": 0,
        "recent": [],
    }
    reply.update(extra)
    return reply


def states(model: ClusterModel) -> dict[int, str]:
    return {row["id"]: row["state"] for row in model.engine_rows(now=0.0)}


def test_engines_are_idle_or_busy_from_their_queues() -> None:
    model = ClusterModel("c")
    model.on_status(status({0: {}, 1: {"tasks": 3}, 2: {"queue": 1}}), now=0.0, wall=100.0)
    assert states(model) == {0: "idle", 1: "busy", 2: "busy"}
    assert model.snapshot(0.0, 100.0)["alive"] == 3


def test_a_running_task_in_fresh_stats_makes_an_engine_busy() -> None:
    model = ClusterModel("c")
    model.on_status(status({0: {}}), now=0.0, wall=100.0)
    stats = {"pid": 42, "hostname": "h", "cpu": 97.5, "memory": 1 << 20, "running": "m1"}
    model.on_stats(0, {**stats, "running_for": 2.0}, now=1.0)
    (row,) = model.engine_rows(now=2.0)
    assert row["state"] == "busy" and row["pid"] == 42 and row["cpu"] == 97.5
    assert row["running"] == "m1" and row["running_for"] == 3.0
    # stats that stopped coming are not shown as current
    (stale,) = model.engine_rows(now=1.0 + STATS_STALE + 1)
    assert stale["cpu"] is None and stale["running"] is None


def test_unregistration_and_disappearance_make_an_engine_dead() -> None:
    model = ClusterModel("c")
    model.on_status(status({0: {}, 1: {}, 2: {}}), now=0.0, wall=100.0)
    model.on_unregistration(0, now=1.0)
    model.on_status(status({1: {}}), now=2.0, wall=102.0)  # 2 vanished unannounced
    assert states(model) == {0: "dead", 1: "idle", 2: "dead"}
    model.on_stats(0, {"pid": 1, "hostname": "h", "cpu": 1.0, "memory": 1}, now=3.0)
    assert states(model)[0] == "dead"  # late stats do not revive it


def test_a_restarted_engine_is_replaced_by_the_next_registration() -> None:
    model = ClusterModel("c")
    model.on_status(status({0: {}}), now=0.0, wall=100.0)
    model.mark_restarting(0, now=1.0)
    model.on_unregistration(0, now=1.5)
    assert states(model) == {0: "restarting"}
    model.on_registration(1, "u1", now=2.0)
    rows = {row["id"]: row for row in model.engine_rows(now=2.0)}
    assert rows[0]["state"] == "dead" and rows[0]["replaced_by"] == 1
    assert rows[1]["state"] == "idle"


def test_rates_come_from_count_differences_and_updates_carry_new_completions() -> None:
    model = ClusterModel("c")
    model.on_status(status({0: {}}, counts={"ok": 10}), now=0.0, wall=100.0)
    recent = [[11, "m11", 0, "ok", "s", "c"], [12, "m12", 0, "error", "s", "c"]]
    reply = status({0: {}}, counts={"ok": 30, "error": 4}, seq=12, recent=recent)
    model.on_status(reply, now=2.0, wall=102.0)
    update = model.update(now=2.0)
    assert update["point"][1:3] == [12.0, 2.0]  # 24 done, 4 failed in 2 s
    assert [c[0] for c in update["completions"]] == ["m11", "m12"]
    assert model.seq == 12
    assert model.update(now=3.0)["completions"] == []  # each completion is sent once


def test_the_timeline_keeps_the_last_window_of_completions() -> None:
    model = ClusterModel("c")
    wall = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
    old = (wall - timedelta(seconds=TIMELINE_WINDOW + 1)).isoformat()
    new = (wall - timedelta(seconds=5)).isoformat()
    recent = [[1, "old", 0, "ok", old, old], [2, "new", 0, "ok", new, new]]
    model.on_status(status({0: {}}, seq=2, recent=recent), now=0.0, wall=wall.timestamp())
    assert [c[0] for c in model.snapshot(0.0, wall.timestamp())["timeline"]] == ["new"]


def test_old_dead_engines_are_forgotten() -> None:
    model = ClusterModel("c")
    model.on_status(status({i: {} for i in range(100)}), now=0.0, wall=100.0)
    for i in range(100):
        model.on_unregistration(i, now=float(i))
    assert len(model.engines) == 64 and min(model.engines) == 36


def test_a_restarted_controller_is_read_from_its_first_completion() -> None:
    model = ClusterModel("c")
    recent = [[i, f"m{i}", 0, "ok", "s", "c"] for i in range(1, 6)]
    model.on_status(status({0: {}}, instance="a", seq=5, recent=recent), now=0.0, wall=100.0)
    assert model.seq == 5
    model.on_status(status({0: {}}, instance="b", seq=2, recent=[]), now=1.0, wall=101.0)
    assert model.seq == 0  # the next request asks for everything of the new run
    again = [[1, "n1", 0, "ok", "s", "c"], [2, "n2", 0, "ok", "s", "c"]]
    model.on_status(status({0: {}}, instance="b", seq=2, recent=again), now=2.0, wall=102.0)
    assert model.seq == 2
    assert [c[0] for c in model.update(now=2.0)["completions"]][-2:] == ["n1", "n2"]


def test_a_restart_whose_successor_never_comes_ends_dead() -> None:
    model = ClusterModel("c")
    model.on_status(status({0: {}}), now=0.0, wall=100.0)
    model.mark_restarting(0, now=1.0)
    model.on_status(status({}), now=30.0, wall=130.0)
    assert states(model) == {0: "restarting"}
    model.on_status(status({}), now=62.0, wall=162.0)
    assert states(model) == {0: "dead"}
    model.on_registration(1, "u1", now=63.0)  # a later engine is no one's successor
    assert model.engine_rows(now=63.0)[0]["replaced_by"] is None
