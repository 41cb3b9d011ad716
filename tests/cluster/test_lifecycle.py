"""ipyparallel's Cluster calls (corral/cluster/lifecycle.py) on real processes: start and
connect in steps, stop engines and controller apart, the coroutines and ``async with``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from corral.cluster.cluster import Cluster
from corral.errors import ConnectionError, CorralError
from corral.protocol.connection_files import DEFAULT_CLUSTER_ID
from tests.conftest import HEARTBEAT, start_cluster
from tests.polling import until


def test_start_connect_and_stop_in_steps(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 2, log_level=logging.DEBUG, controller="local", restart=True)
    assert cluster.log_level == "DEBUG" and cluster.controller_launcher == "local"
    shown = f"<Cluster(cluster_id={cluster.cluster_id!r}, cluster_dir={str(tmp_path)!r}, n=2"
    assert repr(cluster) == shown + ")>"  # not started: no controller to speak of
    try:
        assert cluster.start_cluster_sync() is cluster
        assert repr(cluster) == shown + ", controller=<running>)>"  # the notebook's Out[]
        assert cluster.supervisor is not None  # restart=True: supervised, as start() does
        rc = cluster.connect_client_sync()
        assert rc.cluster is cluster
        with cluster.connect() as other:
            assert other.cluster is cluster
        rc.wait_for_engines(2, timeout=60)
        assert rc[:].apply_sync(abs, -1) == [1, 1]
        first = list(cluster.engines)
        cluster.stop_engines_sync()
        assert cluster.supervisor is None  # what was stopped on purpose stays stopped
        assert all(engine.poll() is not None for engine in first) and cluster.engines == []
        until(lambda: rc.ids == [], 30, "the client to see the engines go")
        cluster.start_engines_sync(1)  # the controller went on
        rc.wait_for_engines(1, timeout=60)
        assert rc[:].apply_sync(abs, -2) == [2]
        cluster.stop_controller_sync()
        assert cluster.controller is not None and cluster.controller.poll() is not None
        assert repr(cluster) == shown + ", controller=<stopped>)>"
        assert rc.closed  # connected through the cluster: closed with its controller
        with pytest.raises(ConnectionError):
            rc[:].apply_sync(abs, -3)
    finally:
        cluster.stop_cluster_sync()
    assert not cluster.path.exists()  # temporary: removed, engines and all


def test_wait_for_engines_without_n_waits_for_the_clusters_n(tmp_path: Path) -> None:
    """ipyparallel's ``rc.wait_for_engines()`` on a client its Cluster connected waits for
    that cluster's ``n`` engines; corral's waited for one."""
    from corral.errors import TimeoutError

    cluster = start_cluster(tmp_path, 2)
    try:
        cluster.start_cluster_sync(n=1)  # one of the two, for now
        rc = cluster.connect_client_sync()
        rc.wait_for_engines(1, timeout=60)
        with pytest.raises(TimeoutError):
            rc.wait_for_engines(timeout=0.5)
        cluster.start_engines_sync(1)
        rc.wait_for_engines(timeout=60, interactive=False, widget=False)
        assert len(rc.ids) == 2
    finally:
        cluster.stop_cluster_sync()


def test_coroutines_and_async_with(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = start_cluster(tmp_path, 1)
        try:
            rc = await cluster.start_and_connect()
            assert rc.ids == [0]
            assert (await cluster.connect_client()).ids == [0]
            await cluster.stop_engines()
            until(lambda: rc.ids == [], 30, "the client to see the engine go")
        finally:
            await cluster.stop_cluster()
        assert rc.closed and not cluster.path.exists()
        async with Cluster(n=1, cluster_dir=tmp_path, heartbeat_period=HEARTBEAT) as second:
            assert second.ids == [0] and await asyncio.to_thread(second[0].apply_sync, abs, -4) == 4
        assert second.closed

    asyncio.run(main())


def test_what_ipyparallel_passes_that_corral_cannot_take(tmp_path: Path) -> None:
    class LauncherClass:
        controller_args = ["--dictdb"]

    with pytest.raises(TypeError, match="launcher name"):
        Cluster(n=1, cluster_dir=tmp_path, controller=LauncherClass)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not both"):
        Cluster(n=1, cluster_dir=tmp_path, controller="ssh", controller_launcher="slurm")
    cluster = Cluster(n=1, cluster_dir=tmp_path)
    with pytest.raises(ValueError, match="one set of engines"):
        cluster.stop_engines_sync("1234-1")  # type: ignore[arg-type]


def test_launcher_names_in_any_case(tmp_path: Path) -> None:
    """ipyparallel's launcher names are case-insensitive (its Cluster API example writes
    ``engines="MPI"``)."""
    cluster = Cluster(n=1, cluster_dir=tmp_path, engines="MPI", controller="SSH")
    assert (cluster.engine_launcher, cluster.controller_launcher) == ("mpi", "ssh")
    upper = start_cluster(tmp_path, 1, engines="Local", controller_launcher="LOCAL")
    with upper.start_and_connect_sync() as rc:
        assert rc[0].apply_sync(abs, -3) == 3
    upper.stop_cluster_sync()


def test_the_start_calls_may_be_awaited_as_ipyparallels(tmp_path: Path) -> None:
    """ipyparallel's Cluster API example awaits ``start_controller()`` and ``start_engines()``,
    coroutines there; corral's are synchronous, and what they return is awaitable too (to
    None: every engine, as an engine set id)."""

    async def main() -> None:
        cluster = start_cluster(tmp_path, 0)
        try:
            assert await cluster.start_controller() is None
            engine_set = await cluster.start_engines(n=1)
            assert engine_set is None
            rc = await cluster.connect_client()
            rc.wait_for_engines(1, timeout=60)
            await cluster.stop_engines(engine_set)
            until(lambda: rc.ids == [], 30, "the client to see the engine go")
        finally:
            await cluster.stop_cluster()

    asyncio.run(main())
    cluster = start_cluster(tmp_path, 0)
    try:
        cluster.start_controller()
        started = cluster.start_engines(2)  # used as corral's: the processes started
        assert len(started) == 2 and all(engine.poll() is None for engine in started)
    finally:
        cluster.stop()


def test_restart_engines_starts_as_many_again(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 2, restart=True)
    try:
        rc = cluster.start_and_connect_sync()
        before = rc[:].apply_sync(os.getpid)
        cluster.restart_engines_sync()
        assert cluster.supervisor is not None  # supervised again
        until(lambda: set(before).isdisjoint(cluster_pids(cluster)), 30, "new processes")
        rc.wait_for_engines(2, timeout=60)
        until(lambda: rc.ids == [0, 1], 30, "the same ids again")
        after = rc[:].apply_sync(os.getpid)
        assert sorted(after) == sorted(cluster_pids(cluster)) and set(after).isdisjoint(before)
    finally:
        cluster.stop_cluster_sync()


def cluster_pids(cluster: Cluster) -> list[int]:
    return [engine.pid for engine in cluster.engines if engine.poll() is None]


def test_empty_cluster_id_is_the_default_cluster(tmp_path: Path) -> None:
    """ipyparallel's ``Cluster(n=4, cluster_id="")`` is ``ipcluster start``'s cluster, the one
    ``Cluster.from_file()`` finds: here ``corral start``'s, kept, not a temporary one."""
    cluster = start_cluster(tmp_path, 1, cluster_id="")
    assert cluster.cluster_id == DEFAULT_CLUSTER_ID and not cluster.temporary
    try:
        cluster.start_cluster_sync()
        found = Cluster.from_file(profile_dir=tmp_path)
        assert found.path == cluster.path == tmp_path / DEFAULT_CLUSTER_ID
        with found.connect() as rc:
            rc.wait_for_engines(1, timeout=30)
            assert rc[:].apply_sync(abs, -1) == [1]
    finally:
        cluster.stop_cluster_sync()


def test_from_file_loads_a_cluster_started_elsewhere(tmp_path: Path) -> None:
    """ipyparallel's ``Cluster.from_file``: a cluster started by another process (here ``corral
    start --daemon``) found by its folder or its id, connected to, its engines restarted (by
    this process) and the whole cluster stopped as ``corral stop`` does."""
    with pytest.raises(CorralError, match="no cluster runs"):
        Cluster.from_file(profile="nowhere", profile_dir=tmp_path)
    started = subprocess.run(
        [sys.executable, "-m", "corral", "start", "-n", "1", "--daemon",
         "--cluster-id", "elsewhere", "--heartbeat-period", str(HEARTBEAT)],
        env=dict(os.environ, CORRAL_DIR=str(tmp_path)), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    state_file = tmp_path / "elsewhere" / "cluster.json"
    pids: list[int] = []
    try:
        assert started.returncode == 0, started.stderr
        state = json.loads(state_file.read_text())
        pids = [state["manager_pid"], state["controller_pid"], *state["engine_pids"]]
        by_file = Cluster.from_file(tmp_path / "elsewhere" / "corral-client.json")
        loaded = Cluster.from_file(profile="elsewhere", profile_dir=tmp_path)
        assert by_file.path == loaded.path == tmp_path / "elsewhere" and loaded.attached
        with loaded.connect() as rc:
            rc.wait_for_engines(1, timeout=30)
            assert rc[:].apply_sync(os.getpid) == state["engine_pids"]
            loaded.restart_engines_sync()  # the daemon's engine stopped, one started here
            assert [engine.pid for engine in loaded.engines] != state["engine_pids"]

            def only_the_engine_started_here() -> bool:
                try:  # the daemon's engine may still be listed, shutting down
                    return bool(rc.ids) and rc[:].apply_sync(os.getpid) == cluster_pids(loaded)
                except CorralError:
                    return False

            until(only_the_engine_started_here, 60, "the engine started here to register")
        loaded.stop()
        _, alive = psutil.wait_procs(
            [psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=15
        )
        assert not alive and cluster_pids(loaded) == []
    finally:  # whatever failed above: no daemon outlives the test
        for process in psutil.process_iter(["cmdline"]):
            if str(tmp_path) in " ".join(process.info["cmdline"] or []):
                process.kill()


def test_engines_added_from_file_take_ids_the_running_engines_do_not_hold(tmp_path: Path) -> None:
    """ipyparallel's ``ipcluster engines``: more engines for a running cluster, here through
    ``Cluster.from_file(...).start_engines_sync(n)``. They used to ask for ids 0, 1, ... as
    the first engines of a cluster do; the daemon's engines held those, so each waited for
    its id and was refused, and none registered."""
    started = subprocess.run(
        [sys.executable, "-m", "corral", "start", "-n", "2", "--daemon", "--no-dashboard",
         "--cluster-id", "more", "--heartbeat-period", str(HEARTBEAT)],
        env=dict(os.environ, CORRAL_DIR=str(tmp_path)), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        loaded = Cluster.from_file(profile="more", profile_dir=tmp_path, timeout=30)
        loaded.start_engines_sync(n=2)
        with loaded.connect() as rc:
            rc.wait_for_engines(4, timeout=8)  # a refused engine waits 10 s for its id
            assert rc.ids == [0, 1, 2, 3]
            assert rc[[2, 3]].apply_sync(os.getpid) == cluster_pids(loaded)
        loaded.stop()
    finally:  # whatever failed above: no daemon outlives the test
        for process in psutil.process_iter(["cmdline"]):
            if str(tmp_path) in " ".join(process.info["cmdline"] or []):
                process.kill()
