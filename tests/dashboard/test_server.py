"""The dashboard server over HTTP, with a real cluster: the token, actions, history pages."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from corral.dashboard.auth import COOKIE, CSRF_HEADER, csrf_value
from corral.errors import RemoteError
from tests.conftest import running_cluster

from .conftest import base_url, http, token, wait_until

pytestmark = pytest.mark.timeout(120)


def cookie(cluster: Any) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={token(cluster)}"}


def action_headers(cluster: Any) -> dict[str, str]:
    return {
        **cookie(cluster),
        CSRF_HEADER: csrf_value(token(cluster)),
        "Origin": base_url(cluster),
    }


def get_json(cluster: Any, path: str) -> Any:
    status, _, body = http(base_url(cluster) + path, headers=cookie(cluster))
    assert status == 200, body
    return json.loads(body)


def test_without_the_token_every_path_is_403_and_says_nothing(dashboard_cluster: Any) -> None:
    base = base_url(dashboard_cluster)
    answers = set()
    for path in (
        "/",
        "/?token=wrong",
        "/api/snapshot",
        "/api/tasks",
        "/ws",
        "/static/app.js",
        "/api/task/x",
        "/no/such/page",
    ):
        status, headers, body = http(base + path)
        assert status == 403, path
        assert "Set-Cookie" not in headers
        answers.add(body)
    assert answers == {b"403: Forbidden"}
    status, _, body = http(base + "/api/engine/0/shutdown", method="POST")
    assert (status, body) == (403, b"403: Forbidden")


def test_the_url_token_becomes_a_strict_http_only_cookie(dashboard_cluster: Any) -> None:
    status, headers, _ = http(str(dashboard_cluster.dashboard_url))
    assert status == 302 and headers["Location"] == "/"
    set_cookie = headers["Set-Cookie"]
    assert f"{COOKIE}={token(dashboard_cluster)}" in set_cookie
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    status, headers, body = http(
        base_url(dashboard_cluster) + "/", headers=cookie(dashboard_cluster)
    )
    assert status == 200 and b"corral dashboard" in body
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_the_url_is_advertised_in_private_files_and_bound_to_loopback(
    dashboard_cluster: Any,
) -> None:
    path = dashboard_cluster.path
    client_file = json.loads((path / "corral-client.json").read_text())
    assert client_file["dashboard"] == dashboard_cluster.dashboard_url
    for name in ("corral-client.json", "dashboard.json"):
        assert stat.S_IMODE(os.stat(path / name).st_mode) == 0o600
    process = psutil.Process(dashboard_cluster.dashboard_process.pid)
    listening = [c for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert [c.laddr.ip for c in listening] == ["127.0.0.1"]


def test_snapshot_shows_every_engine_with_its_process(dashboard_cluster: Any) -> None:
    rc = dashboard_cluster.client
    pids = {engine.pid for engine in dashboard_cluster.engines if engine.poll() is None}

    def shown() -> bool:
        engines = get_json(dashboard_cluster, "/api/snapshot")["engines"]
        alive = {e["pid"] for e in engines if e["state"] in ("idle", "busy")}
        return alive == pids and all(e["memory"] for e in engines if e["state"] != "dead")

    wait_until(shown, 15, "every engine with its pid and memory")
    assert len(rc.ids) == len(pids)


def test_history_pages_and_msg_id_search(dashboard_cluster: Any) -> None:
    rc = dashboard_cluster.client
    ar = rc.load_balanced_view().map_async(lambda x: x * 3, range(30), chunksize=1)
    assert ar.get(timeout=30) == [x * 3 for x in range(30)]
    target = ar.msg_ids[7]

    def recorded() -> Any:
        # the Hub records a reply from its copy, a moment after the client has the reply
        found = get_json(dashboard_cluster, f"/api/tasks?msg_id={target}")
        return found if found["rows"] and found["rows"][0]["status"] != "pending" else None

    found = wait_until(recorded, 30, "the Hub to record the task's reply")
    assert found["total"] == 1 and found["rows"][0]["msg_id"] == target
    assert found["rows"][0]["status"] == "ok" and found["rows"][0]["call"].startswith("map_chunk(")

    def paged() -> Any:
        # the dashboard reads the store's file, which the Hub's writer thread fills in
        # batches, and may take a later write of a record with its batch (look-ahead): the
        # other tasks' rows may land a moment after the one found above
        page = get_json(dashboard_cluster, "/api/tasks?limit=10&skip=5")
        return page if page["total"] >= 30 else None

    page = wait_until(paged, 30, "the Hub to record every task")
    assert len(page["rows"]) == 10
    task = get_json(dashboard_cluster, f"/api/task/{target}")
    assert task["result"] == "[21]" and task["status"] == "ok"
    status, _, body = http(
        base_url(dashboard_cluster) + "/api/tasks?q=%7B%22status%22%3A%7B%22%24bad%22%3A1%7D%7D",
        headers=cookie(dashboard_cluster),
    )
    assert status == 400 and b"$bad" in body


def test_cross_site_or_header_less_actions_are_refused(dashboard_cluster: Any) -> None:
    url = base_url(dashboard_cluster) + "/api/engine/0/shutdown"
    headers = action_headers(dashboard_cluster)
    for refused in (
        {**headers, "Origin": "http://evil.example"},
        {**headers, "Origin": "http://127.0.0.1:1"},
        {k: v for k, v in headers.items() if k != CSRF_HEADER},
        {k: v for k, v in headers.items() if k != "Cookie"},
    ):
        status, _, _ = http(url, method="POST", headers=refused)
        assert status == 403
    assert 0 in dashboard_cluster.client.ids


def test_abort_a_running_task(dashboard_cluster: Any) -> None:
    rc = dashboard_cluster.client
    ar = rc.load_balanced_view().apply_async(time.sleep, 60)

    def running() -> bool:
        engines = get_json(dashboard_cluster, "/api/snapshot")["engines"]
        return any(e["running"] == ar.msg_id for e in engines)

    wait_until(running, 15, "the task running on an engine")
    url = f"{base_url(dashboard_cluster)}/api/task/{ar.msg_id}/abort"
    status, _, body = http(url, method="POST", headers=action_headers(dashboard_cluster))
    assert status == 200, body
    with pytest.raises(RemoteError, match="TaskAborted"):
        ar.get(timeout=20)


def test_restart_an_engine(dashboard_cluster: Any) -> None:
    rc = dashboard_cluster.client
    before = set(rc.ids)
    victim = max(before)
    url = f"{base_url(dashboard_cluster)}/api/engine/{victim}/restart"
    status, _, body = http(url, method="POST", headers=action_headers(dashboard_cluster))
    assert status == 200, body
    wait_until(lambda: victim not in rc.ids and len(rc.ids) == len(before), 30, "a successor")
    (successor,) = set(rc.ids) - before
    assert rc[successor].apply_sync(os.getpid) != 0

    def replaced() -> bool:
        engines = {e["id"]: e for e in get_json(dashboard_cluster, "/api/snapshot")["engines"]}
        return bool(
            engines[victim]["state"] == "dead" and engines[victim]["replaced_by"] == successor
        )

    wait_until(replaced, 10, "the old engine shown as replaced")


def test_shut_an_engine_down(dashboard_cluster: Any) -> None:
    rc = dashboard_cluster.client
    victim = min(rc.ids)
    url = f"{base_url(dashboard_cluster)}/api/engine/{victim}/shutdown"
    status, _, body = http(url, method="POST", headers=action_headers(dashboard_cluster))
    assert status == 200, body
    wait_until(lambda: victim not in rc.ids, 15, "the engine gone")

    def dead() -> bool:
        engines = get_json(dashboard_cluster, "/api/snapshot")["engines"]
        return bool({e["id"]: e["state"] for e in engines}[victim] == "dead")

    wait_until(dead, 10, "the engine shown dead")
    status, _, _ = http(url, method="POST", headers=action_headers(dashboard_cluster))
    assert status == 409


def test_history_through_the_hub_with_a_memory_store(tmp_path: Path) -> None:
    """No SQLite file to read: searches and task pages are the Hub's db_request."""
    with running_cluster(tmp_path, 1, dashboard=True, db="memory") as cluster:
        client_file = json.loads((cluster.path / "corral-client.json").read_text())
        assert "sqlite_store" not in client_file
        ar = cluster.client[0].apply_async(pow, 3, 4)
        assert ar.get(timeout=30) == 81
        found = get_json(cluster, f"/api/tasks?msg_id={ar.msg_id}")
        assert found["total"] == 1 and found["rows"][0]["call"] == "pow(3, 4)"
        assert get_json(cluster, f"/api/task/{ar.msg_id}")["result"] == "81"
        status, _, _ = http(base_url(cluster) + "/api/task/nope", headers=cookie(cluster))
        assert status == 404
