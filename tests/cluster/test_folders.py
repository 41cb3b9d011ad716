"""Nothing left behind on disk: temporary clusters remove their folder however they end, kept
ones keep their results, and `corral clean` never touches a running cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from corral.cluster.cluster import Cluster
from corral.cluster.folders import clean, inspect, inventory
from tests.conftest import HEARTBEAT
from tests.polling import until


def corral(*args: str, base: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CORRAL_DIR=str(base))
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def temporary(base: Path, n: int = 1) -> Cluster:
    return Cluster(n=n, cluster_dir=base, heartbeat_period=HEARTBEAT, timeout=30)


def test_a_temporary_cluster_leaves_nothing_after_a_clean_exit(tmp_path: Path) -> None:
    with temporary(tmp_path) as rc:
        assert rc[:].apply_sync(lambda: 6 * 7) == [42]
        (folder,) = tmp_path.iterdir()
        assert (folder / "tasks.db").exists() and (folder / "controller.log").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_cluster_leaves_nothing_after_an_exception(tmp_path: Path) -> None:
    cluster = temporary(tmp_path)
    with pytest.raises(ZeroDivisionError), cluster as rc:
        rc[:].apply_sync(lambda: "ran")
        1 / 0  # noqa: B018
    assert all(p.poll() is not None for p in [cluster.controller, *cluster.engines])
    assert list(tmp_path.iterdir()) == []


OWNER = """
import json, sys, threading
from corral.cluster.cluster import Cluster
cluster = Cluster(n=1, cluster_dir=sys.argv[1], heartbeat_period=float(sys.argv[2]))
rc = cluster.start()
rc[:].apply_sync(lambda: "a result in the store")
print(json.dumps({"path": str(cluster.path), "pids": [cluster.controller.pid,
      *[engine.pid for engine in cluster.engines]]}), flush=True)
threading.Event().wait()
"""


def start_and_kill_owner(base: Path) -> Path:
    """A script starts a temporary cluster and is killed (SIGKILL): its processes end, its
    folder stays, stale. Returns the folder."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(base), str(HEARTBEAT)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        started = json.loads(owner.stdout.readline())
        children = [psutil.Process(pid) for pid in started["pids"]]
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        _, alive = psutil.wait_procs(children, timeout=20)
        assert not alive
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    path = Path(started["path"])
    until(lambda: inspect(path).state != "running", 20, "the folder lock to be released")
    folder = inspect(path)
    assert folder.state == "stale" and folder.temporary and folder.size > 0
    return path


def test_a_killed_owners_temporary_folder_is_reclaimed_by_clean(tmp_path: Path) -> None:
    path = start_and_kill_owner(tmp_path)
    listing = corral("list", "--all", base=tmp_path)
    assert path.name in listing.stdout and "stale" in listing.stdout, listing.stdout
    young = corral("clean", "--older-than", "1h", base=tmp_path)
    assert young.returncode == 0 and path.exists(), young.stdout
    cleaned = corral("clean", base=tmp_path)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"removed {path.name} (stale" in cleaned.stdout and "freed" in cleaned.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_killed_owners_temporary_folder_is_reclaimed_by_the_next_start(tmp_path: Path) -> None:
    path = start_and_kill_owner(tmp_path)
    kept = Cluster(n=1, cluster_dir=tmp_path, cluster_id="kept", heartbeat_period=HEARTBEAT)
    with kept:
        assert not path.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]
    assert inspect(tmp_path / "kept").state == "stopped"


def test_a_kept_cluster_keeps_its_results_across_a_restart(tmp_path: Path) -> None:
    first = Cluster(n=1, cluster_dir=tmp_path, keep=True, heartbeat_period=HEARTBEAT)
    with first as rc:
        ar = rc[:].apply_async(lambda: "kept result")
        assert ar.get(timeout=30) == ["kept result"]
        msg_id = ar.msg_ids[0]
        until(lambda: not rc.result_status([msg_id])["pending"], 10, "the Hub to record it")
    (folder,) = inventory(tmp_path)
    assert folder.cluster_id == first.cluster_id and folder.state == "stopped"
    assert not folder.temporary
    again = Cluster(
        n=1,
        cluster_dir=tmp_path,
        cluster_id=first.cluster_id,
        heartbeat_period=HEARTBEAT,
        controller_args=["--restore"],
    )
    with again as rc:
        assert rc.get_result(msg_id).get(timeout=30) == "kept result"
    assert (tmp_path / first.cluster_id / "tasks.db").exists()


def test_clean_never_touches_a_running_cluster(tmp_path: Path) -> None:
    stopped = tmp_path / "old"
    stopped.mkdir()
    (stopped / "tasks.db").write_bytes(bytes(100_000))
    hand = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corral",
            "controller",
            "--cluster-id",
            "by-hand",
            "--cluster-dir",
            str(tmp_path),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with Cluster(n=1, cluster_dir=tmp_path, heartbeat_period=HEARTBEAT) as rc:
            until(
                lambda: (tmp_path / "by-hand" / "corral-client.json").exists(),
                30,
                "the controller started by hand",
            )
            running = {p.name for p in tmp_path.iterdir()} - {"old"}
            assert len(running) == 2
            for cluster_id in sorted(running):
                named = corral("clean", "--cluster-id", cluster_id, base=tmp_path)
                assert f"left {cluster_id} alone" in named.stdout, named.stdout
            everything = corral("clean", base=tmp_path)
            assert everything.returncode == 0, everything.stderr
            assert "removed old (stopped" in everything.stdout
            assert everything.stdout.count("alone: it is running") == 2
            removed, left = clean(tmp_path)
            assert removed == [] and {f.cluster_id for f in left} == running
            assert {p.name for p in tmp_path.iterdir()} == running
            assert rc[:].apply_sync(lambda: "still running") == ["still running"]
    finally:
        hand.send_signal(signal.SIGTERM)
        hand.wait(30)
    assert {p.name for p in tmp_path.iterdir()} == {"by-hand"}
    assert inspect(tmp_path / "by-hand").state == "stopped"


def test_stop_clean_removes_a_daemon_clusters_folder(tmp_path: Path) -> None:
    started = corral(
        "start", "-n", "1", "--daemon", "--cluster-id", "d", "--heartbeat-period", str(HEARTBEAT),
        base=tmp_path,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    state = json.loads((tmp_path / "d" / "cluster.json").read_text())
    try:
        listing = corral("list", base=tmp_path)
        assert "buffers 64 MiB, size 2 GiB, ttl 7d" in listing.stdout, listing.stdout
    finally:
        stopped = corral("stop", "--cluster-id", "d", "--clean", base=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert "removed" in stopped.stdout and "freed" in stopped.stdout
    assert not (tmp_path / "d").exists()
    pids = [state["manager_pid"], state["controller_pid"], *state["engine_pids"]]
    _, alive = psutil.wait_procs(
        [psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=15
    )
    assert not alive


def test_states_from_files_and_pid_reuse(tmp_path: Path) -> None:
    """No process involved: what the files and the lock say about a folder."""
    stale = tmp_path / "stale"
    stale.mkdir()
    state = stale / "cluster.json"
    state.write_text(json.dumps({"manager_pid": os.getpid(), "temporary": True}))
    assert inspect(stale).state == "running"  # this process is its (live) manager
    created = psutil.Process().create_time()
    os.utime(state, (created - 100, created - 100))
    # the file predates this process: the pid it names was reused, its owner is gone
    assert inspect(stale).state == "stale" and inspect(stale).temporary
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "tasks.db").write_bytes(bytes(8192))
    folder = inspect(stopped)
    assert folder.state == "stopped" and not folder.temporary and folder.size >= 8192
    assert not (stopped / "cluster.lock").exists()  # inspecting changes nothing
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    assert {f.cluster_id for f in inventory(tmp_path)} == {"stale", "stopped"}
    removed, running = clean(tmp_path, cluster_id="stopped")
    assert [f.cluster_id for f in removed] == ["stopped"] and running == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "stale"]


def test_a_bad_store_setting_fails_the_start_with_the_reason_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    from corral.errors import CorralError

    cluster = Cluster(n=1, cluster_dir=tmp_path, result_ttl="soon", timeout=30)
    with pytest.raises(CorralError, match="--result-ttl: bad duration 'soon'"):
        cluster.start()
    assert list(tmp_path.iterdir()) == []
