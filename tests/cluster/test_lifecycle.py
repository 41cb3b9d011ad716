"""ipyparallel's Cluster calls (corral/cluster/lifecycle.py) on real processes: start and
connect in steps, stop engines and controller apart, the coroutines and ``async with``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from corral.cluster.cluster import Cluster
from corral.errors import ConnectionError
from tests.conftest import HEARTBEAT, start_cluster
from tests.polling import until


def test_start_connect_and_stop_in_steps(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 2, log_level=logging.DEBUG, controller="local", restart=True)
    assert cluster.log_level == "DEBUG" and cluster.controller_launcher == "local"
    try:
        assert cluster.start_cluster_sync() is cluster
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
        assert rc.closed  # connected through the cluster: closed with its controller
        with pytest.raises(ConnectionError):
            rc[:].apply_sync(abs, -3)
    finally:
        cluster.stop_cluster_sync()
    assert not cluster.path.exists()  # temporary: removed, engines and all


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
