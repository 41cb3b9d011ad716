"""Whole-system behaviour with real processes: registration, engine death, ids, big arrays,
files and permissions, and the `corral` command."""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from corral.errors import EngineError
from corral.protocol.references import interactive
from tests.conftest import HEARTBEAT, kill_and_restore_controller, running_cluster, start_cluster
from tests.polling import until


def test_late_engine_death_and_id_reuse_seen_by_a_second_client(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 1)
    rc = cluster.start()
    try:
        observer = cluster.connect()
        try:
            assert observer.ids == [0]
            cluster.start_engines(1)  # a late engine
            observer.wait_for_engines(2, timeout=30)
            assert observer.ids == [0, 1]
            rc.wait_for_engines(2, timeout=30)

            # a direct task in flight on an engine killed with SIGKILL fails with EngineError
            running = rc[1].apply_async(time.sleep, 60)
            until(lambda: rc.queue_status()[1]["queue"] == 1, 10, "the task to be queued")
            killed_at = time.monotonic()
            cluster.engines[1].send_signal(signal.SIGKILL)
            cluster.engines[1].wait()
            until(lambda: observer.ids == [0], 10 * HEARTBEAT + 5, "unregistration")
            noticed = time.monotonic() - killed_at
            assert noticed < 8 * HEARTBEAT + 1, f"took {noticed:.2f}s to notice a dead engine"
            with pytest.raises(EngineError):
                running.get(timeout=10)
            assert rc[0].apply_sync(lambda: "still working") == "still working"

            # a new engine gets a new id: ids are never reused
            cluster.start_engines(1)
            observer.wait_for_engines(2, timeout=30)
            assert observer.ids == [0, 2]
        finally:
            observer.close()
    finally:
        cluster.stop()
    assert all(p.poll() is not None for p in [cluster.controller, *cluster.engines])


def test_200_megabyte_array_round_trip_is_bit_exact(rc) -> None:  # type: ignore[no-untyped-def]
    array = np.random.default_rng(7).random(25_000_000)  # 200 MB
    view = rc[0]
    view.push({"big": array}, block=True)
    back = view.pull("big", block=True)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array)
    read_back = interactive(lambda: float(big[12345]))  # noqa: F821 (the engine's 'big')
    assert view.apply_sync(read_back) == float(array[12345])


def test_connection_files_are_private(cluster) -> None:  # type: ignore[no-untyped-def]
    folder = Path(cluster.path)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("corral-client.json", "corral-engine.json"):
        info = json.loads((folder / name).read_text())
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
        assert info["ip"] == "127.0.0.1"
        assert len(info["key"]) == 64 and info["signature_scheme"] == "hmac-sha256"


def corral(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CORRAL_DIR=str(cwd))
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_start_daemon_list_stop(tmp_path: Path) -> None:
    started = corral(
        "start",
        "-n",
        "2",
        "--daemon",
        "--cluster-id",
        "cli",
        "--heartbeat-period",
        str(HEARTBEAT),
        cwd=tmp_path,
    )
    pids: list[int] = []
    try:  # stopped whatever fails below: a daemon left running would outlive the test
        assert started.returncode == 0, started.stderr
        state = json.loads((tmp_path / "cli" / "cluster.json").read_text())
        pids = [state["manager_pid"], state["controller_pid"], *state["engine_pids"]]
        listing = corral("list", cwd=tmp_path)
        assert "cli" in listing.stdout and " 2 " in listing.stdout, listing.stdout

        from corral.client.client import Client

        with Client(cluster_id="cli", cluster_dir=tmp_path) as rc:
            rc.wait_for_engines(2, timeout=30)
            assert sorted(rc[:].apply_sync(os.getpid)) == sorted(state["engine_pids"])
    finally:
        stopped = corral("stop", "--cluster-id", "cli", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    _, alive = psutil.wait_procs(
        [psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=15
    )
    assert not alive
    assert "no running clusters" in corral("list", cwd=tmp_path).stdout


def test_cli_start_foreground_stops_on_sigint(tmp_path: Path) -> None:
    env = dict(os.environ, CORRAL_DIR=str(tmp_path))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corral",
            "start",
            "-n",
            "1",
            "--cluster-id",
            "fg",
            "--heartbeat-period",
            str(HEARTBEAT),
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "running" in line, line
        state = json.loads((tmp_path / "fg" / "cluster.json").read_text())
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        for pid in [state["controller_pid"], *state["engine_pids"]]:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_cluster_processes_exit_when_their_owner_is_killed(tmp_path: Path) -> None:
    """A script that started a cluster dies by SIGKILL: nothing it started outlives it."""
    script = (
        "import json, sys, threading\n"
        "from corral.cluster.cluster import Cluster\n"
        f"cluster = Cluster(n=2, cluster_dir={str(tmp_path)!r}, heartbeat_period={HEARTBEAT})\n"
        "cluster.start()\n"
        "print(json.dumps([cluster.controller.pid, *[e.pid for e in cluster.engines]]),"
        " flush=True)\n"
        "threading.Event().wait()\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pids = json.loads(owner.stdout.readline())
        children = [psutil.Process(p) for p in pids]
        children += [c for p in children for c in p.children()]  # the scheduler
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"outlived their owner: {[p.pid for p in alive]}"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()


@pytest.mark.parametrize("outside", [False, True], ids=["Cluster.stop", "corral-stop"])
def test_a_stop_ends_at_once_an_engine_still_registering_again(
    tmp_path: Path, outside: bool
) -> None:
    """Stopped right after its controller was killed and started again, while the engine
    registers again: the shutdown request cannot reach an engine the Hub has not registered,
    so the stop ends it by SIGTERM (its own clean stop) at once. Before (on d06be63) the stop
    waited while the engine waited 10 s for connections to the controller that had left,
    then gave up on them (its log said so): 12 s in all. ``outside``: stopped as ``corral
    stop`` does (:func:`stop_cluster`, which asks the Hub when no manager process runs: here
    the manager is this process), which ends the engines the state file names that the Hub
    had not registered (waited for until ffe8498)."""
    from corral.cluster.shutdown import stop_cluster

    cluster = start_cluster(tmp_path, 1, keep=True)  # the engine's log is read after the stop
    cluster.start()
    try:
        cluster.client.wait_for_engines(1, timeout=30)
        kill_and_restore_controller(cluster)
        engine_log = Path(cluster.path) / "engine-0.log"
        until(lambda: "re-registering" in engine_log.read_text(), 30, "the engine to notice")
        started = time.monotonic()
        if outside:
            assert stop_cluster(Path(cluster.path), timeout=30)
    finally:
        cluster.stop(timeout=30)
    took = time.monotonic() - started
    assert "not established" not in engine_log.read_text()
    assert took < 10  # the engine's own 10 s wait, had it been waited for
    assert all(engine.poll() is not None for engine in cluster.engines)


def test_local_engines_outnumbering_the_cores_run_under_sched_batch(tmp_path: Path) -> None:
    """(corral.engine.cpu_policy) Decided when they are asked for: here one more than the
    cores, so every thread of every engine has it; the engines still serve tasks."""
    from corral.cluster.launchers.local import usable_cores

    cores = usable_cores()
    assert cores is not None
    with running_cluster(tmp_path, cores + 1) as cluster:
        rc = cluster.client
        assert rc.load_balanced_view().map_sync(abs, [-1, -2, -3]) == [1, 2, 3]
        for engine in cluster.engines:
            tasks = os.listdir(f"/proc/{engine.pid}/task")
            policies = {os.sched_getscheduler(int(tid)) for tid in tasks}
            assert policies == {os.SCHED_BATCH}, (engine.pid, policies)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")
def test_local_engines_within_the_cores_keep_the_default_policy(cluster) -> None:  # type: ignore[no-untyped-def]
    from corral.cluster.launchers.local import usable_cores

    cores = usable_cores()
    expected = (
        os.SCHED_BATCH if cores is not None and len(cluster.engines) > cores else os.SCHED_OTHER
    )
    for engine in cluster.engines:
        assert os.sched_getscheduler(engine.pid) == expected


@pytest.mark.timeout(120)
def test_controller_ip_and_location_as_ipyparallels_cluster_takes_them(tmp_path: Path) -> None:
    """``Cluster(controller_ip="*")`` (ipyparallel's doc: listen on every interface) with
    ``controller_location``, the address written for engines and clients. Before, both were
    unknown arguments."""
    from corral.cluster.cluster import Cluster

    cluster = Cluster(
        n=1, cluster_dir=tmp_path, controller_ip="*", controller_location="127.0.0.1",
        heartbeat_period=HEARTBEAT,
    )  # fmt: skip
    with cluster as rc:
        assert rc[:].apply_sync(lambda: "up") == ["up"]
        controller = psutil.Process(cluster.controller.pid if cluster.controller else 0)
        listening = {c.laddr.ip for c in controller.net_connections("tcp") if not c.raddr}
        assert listening == {"0.0.0.0"}
        info = json.loads((cluster.path / "corral-client.json").read_text())
        assert info["ip"] == "127.0.0.1" and "curve" in info  # beyond loopback: CurveZMQ


@pytest.mark.timeout(120)
def test_engines_start_in_a_work_dir_with_a_startup_script_and_command(tmp_path: Path) -> None:
    """ipyparallel's ``IPEngine.work_dir``, ``startup_script`` and ``startup_command`` as
    ``corral engine`` flags (here through ``engine_args``): the engine runs in the folder and
    its namespace has what both ran; a failing line is logged and the engine still serves."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    script = tmp_path / "startup.py"
    script.write_text("import math\nfrom_script = math.tau\n")
    startup = [
        "--work-dir", str(scratch), "--startup-script", str(script),
        "--startup-command", "from_command = from_script / 2",
    ]  # fmt: skip
    with running_cluster(tmp_path, 1, engine_args=startup) as cluster:
        rc = cluster.client
        assert rc[:].apply_sync(os.getcwd) == [str(scratch)]
        names = rc[:].pull(["from_script", "from_command"], block=True)
        assert names == [[math.tau, math.pi]]
    broken = ["--startup-command", "1 / 0"]
    with running_cluster(tmp_path, 1, engine_args=broken) as cluster:
        assert cluster.client[:].apply_sync(lambda: "serving") == ["serving"]
        assert "ZeroDivisionError" in (cluster.path / "engine-0.log").read_text()


def test_without_n_a_cluster_starts_one_engine_per_usable_cpu(tmp_path: Path) -> None:
    """As ipyparallel's Cluster (cpu_count) and ``corral start``; it used to be 4."""
    from corral import Cluster

    assert Cluster(cluster_dir=tmp_path).n == len(os.sched_getaffinity(0))
    assert Cluster(3, cluster_dir=tmp_path).n == 3
    assert not any(tmp_path.iterdir())  # nothing started, nothing written
