"""Engines through a real mpiexec (MPICH): one COMM_WORLD across the engines."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import psutil
import pytest

from corral.client.client import Client
from corral.protocol.references import interactive
from tests.polling import until

from .conftest import corral


def allreduce_of_ranks() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return int(comm.allreduce(comm.Get_rank() + 1))


@pytest.fixture
def mpi_cluster(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    where = ["--cluster-dir", str(tmp_path), "--cluster-id", "mpi4"]
    started = corral(
        "start", "--daemon", "--engines", "mpi", "-n", "4", "--heartbeat-period", "0.5", *where
    )
    try:
        assert started.returncode == 0, started.stderr
        yield tmp_path / "mpi4", where
    finally:
        corral("stop", *where)


@pytest.mark.timeout(180)
def test_four_mpi_engines_share_comm_world(mpi_cluster: tuple[Path, list[str]]) -> None:
    folder, where = mpi_cluster
    with Client(connection_file=folder / "corral-client.json", timeout=30) as rc:
        rc.wait_for_engines(4, timeout=60)
        assert rc[:].apply_sync(allreduce_of_ranks) == [10, 10, 10, 10]
        info = rc.engine_info()
        assert sorted(e["mpi_rank"] for e in info.values()) == [0, 1, 2, 3]
        assert {e["launcher"] for e in info.values()} == {"mpi"}
        assert {e["mpi_size"] for e in info.values()} == {4}
        ar = rc[:].apply_async(lambda: None)
        ar.get(timeout=30)
        metadata = cast(list[dict[str, Any]], ar.metadata)  # one dict per engine
        assert sorted(m["mpi_rank"] for m in metadata) == [0, 1, 2, 3]
    listing = corral("list", *where[:2])
    assert listing.returncode == 0, listing.stderr
    assert "mpi launcher, 4 engines" in listing.stdout
    rows = [
        line.split()
        for line in listing.stdout.splitlines()
        if line.strip().endswith(("0", "1", "2", "3")) and " mpi " in line
    ]
    assert len(rows) == 4, listing.stdout
    mpiexec_pid = json.loads((folder / "cluster.json").read_text())["launchers"][0]["pids"][0]
    engine_pids = [int(row[2]) for row in rows]
    stopped = corral("stop", *where)
    assert stopped.returncode == 0, stopped.stderr
    _, alive = psutil.wait_procs(
        [p for p in map(_process, [mpiexec_pid, *engine_pids]) if p], timeout=15
    )
    assert not alive


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--mpiexec", "/nonexistent/mpiexec"], "needs `/nonexistent/mpiexec`"),
        (["--mpi-args=-no-such-mpiexec-flag"], "unrecognized argument no-such-mpiexec-flag"),
    ],
)
def test_mpiexec_that_cannot_start_fails_fast_and_leaves_nothing(
    tmp_path: Path, flags: list[str], says: str
) -> None:
    began = time.monotonic()
    where = ["--cluster-dir", str(tmp_path), "--cluster-id", "bad"]
    try:
        result = corral("start", "--engines", "mpi", "-n", "2", *flags, *where, timeout=60)
    finally:
        corral("stop", *where)
    assert result.returncode == 1
    assert says in result.stderr
    assert time.monotonic() - began < 20
    assert processes_mentioning(tmp_path) == []


def processes_mentioning(folder: Path) -> list[str]:
    """Command lines of running processes that name ``folder`` (the cluster's controller,
    engines, mpiexec): none may be left after a failed start."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(folder) in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(cmdline)
    return found


@pytest.mark.timeout(120)
def test_one_mpi_engine_dying_leaves_the_others(tmp_path: Path) -> None:
    from corral.cluster.cluster import Cluster

    with Cluster(n=3, engines="mpi", cluster_dir=tmp_path, heartbeat_period=0.5) as rc:
        rc[0].apply_async(os._exit, 3)
        until(lambda: rc.ids == [1, 2], 30, "the registry to lose engine 0")
        assert rc[:].apply_sync(lambda: "alive") == ["alive", "alive"]


@pytest.mark.timeout(180)
def test_the_controller_as_one_rank_of_its_own_mpiexec(tmp_path: Path) -> None:
    where = ["--cluster-dir", str(tmp_path), "--cluster-id", "mpictl"]
    started = corral(
        "start", "--daemon", "--controller", "mpi", "--engines", "mpi", "-n", "2",
        "--heartbeat-period", "0.5", "--no-dashboard", *where,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        folder = tmp_path / "mpictl"
        state = json.loads((folder / "cluster.json").read_text())
        controller_pid = json.loads((folder / "corral-client.json").read_text())["controller_pid"]
        # the state file names mpiexec, which started the controller that wrote the files
        mpiexec = psutil.Process(state["controller_pid"])
        assert "mpiexec" in " ".join(mpiexec.cmdline())
        assert mpiexec.pid in [p.pid for p in psutil.Process(controller_pid).parents()]
        with Client(connection_file=folder / "corral-client.json", timeout=30) as rc:
            rc.wait_for_engines(2, timeout=60)
            assert rc[:].apply_sync(allreduce_of_ranks) == [3, 3]
        listing = corral("list", *where[:2]).stdout
        assert f"mpictl {controller_pid}".split() == listing.splitlines()[1].split()[:2]
    finally:
        stopped = corral("stop", *where)
    assert stopped.returncode == 0, stopped.stderr
    assert processes_mentioning(tmp_path) == []
    assert not (tmp_path / "mpictl" / "corral-client.json").exists()  # a clean controller stop


@pytest.mark.timeout(120)
def test_mpi_engines_end_with_their_killed_owner(tmp_path: Path) -> None:
    """The ranks' owner (here `corral start --daemon`'s manager) is not their parent but an
    ancestor (rank -> Hydra's proxy -> mpiexec -> owner): killed outright, its engines and
    mpiexec end too, as local engines do (they used to run on, trying to reach the controller
    that ended with the owner)."""
    where = ["--cluster-dir", str(tmp_path), "--cluster-id", "orphans"]
    started = corral(
        "start", "--daemon", "--engines", "mpi", "-n", "2", "--heartbeat-period", "0.5", *where
    )
    try:
        assert started.returncode == 0, started.stderr
        folder = tmp_path / "orphans"
        with Client(connection_file=folder / "corral-client.json", timeout=30) as rc:
            rc.wait_for_engines(2, timeout=60)
        manager = json.loads((folder / "cluster.json").read_text())["manager_pid"]
        psutil.Process(manager).kill()
        until(lambda: processes_mentioning(tmp_path) == [], 60, "everything to end with it")
    finally:
        corral("stop", *where)
        for process in psutil.process_iter(["cmdline"]):  # whatever a failure left
            if str(tmp_path) in " ".join(process.info["cmdline"] or []):
                process.kill()


@interactive
def mpi_names() -> tuple[int, int, int]:
    """On an engine: the names ipyparallel's ``--mpi`` engines define in their namespace."""
    return (mpi_rank, mpi_size, MPI.COMM_WORLD.Get_rank())  # type: ignore[name-defined]  # noqa: F821


@pytest.mark.timeout(180)
def test_mpi_engines_take_their_rank_as_engine_id_when_it_is_free(tmp_path: Path) -> None:
    """As ipyparallel's: an engine started by mpiexec asks for its rank as its engine id, and
    has ``MPI``, ``mpi_rank`` and ``mpi_size`` in its namespace; the ranks of a second
    mpiexec, whose ids are taken, register under new ids."""
    import subprocess
    import sys

    from corral.cluster.cluster import Cluster
    from corral.cluster.launchers.mpi import is_hydra, mpiexec_command

    cluster = Cluster(n=3, engines="mpi", cluster_dir=tmp_path, heartbeat_period=0.5)
    with cluster as rc:
        rc.wait_for_engines(3, timeout=60)
        assert rc.ids == [0, 1, 2]
        names = rc[:].apply_sync(mpi_names)
        assert names == [(0, 3, 0), (1, 3, 1), (2, 3, 2)]
        assert {e: i["mpi_rank"] for e, i in rc.engine_info().items()} == {0: 0, 1: 1, 2: 2}
        engine = [sys.executable, "-m", "corral", "engine", "--mpi"]
        engine += ["--file", str(cluster.path / "corral-engine.json")]
        extra = ["-disable-auto-cleanup"] if is_hydra("mpiexec") else []
        second = subprocess.Popen(
            mpiexec_command("mpiexec", 2, extra, engine),
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            rc.wait_for_engines(5, timeout=60)
            assert rc.ids == [0, 1, 2, 3, 4]
            assert sorted(rc[[3, 4]].apply_sync(mpi_names)) == [(0, 2, 0), (1, 2, 1)]
        finally:
            rc.shutdown([3, 4], block=True)
            try:
                second.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(second.pid, 9)
                second.wait(10)


@pytest.mark.timeout(180)
def test_stop_after_a_killed_manager_ends_the_mpiexec_of_hung_engines(tmp_path: Path) -> None:
    """`corral stop` of a cluster whose manager was SIGKILLed ends what the launchers recorded
    too: here an mpiexec whose ranks hang (stopped, so neither their owner's death nor a
    shutdown reaches them), which would otherwise wait for them for ever. Before, the state
    file's launcher pids were ignored: mpiexec and its ranks ran on, `corral list --all` called
    the folder stale and `corral stop` said no cluster was running."""
    from corral.cluster.folders import inspect

    where = ["--cluster-dir", str(tmp_path), "--cluster-id", "hung"]
    started = corral(
        "start", "--daemon", "--engines", "mpi", "-n", "2", "--heartbeat-period", "0.5",
        "--no-dashboard", *where,
    )  # fmt: skip
    folder = tmp_path / "hung"
    try:
        assert started.returncode == 0, started.stderr
        with Client(connection_file=folder / "corral-client.json", timeout=30) as rc:
            rc.wait_for_engines(2, timeout=60)
        state = json.loads((folder / "cluster.json").read_text())
        mpiexec = psutil.Process(state["launchers"][0]["pids"][0])
        ranks = [p for p in mpiexec.children(recursive=True) if "engine" in p.cmdline()]
        assert len(ranks) == 2
        for rank in ranks:
            rank.suspend()
        psutil.Process(state["manager_pid"]).kill()
        controller = _process(state["controller_pid"])
        if controller is not None:  # it ends with its owner
            psutil.wait_procs([controller], timeout=30)
        assert inspect(folder).state == "running"  # mpiexec and its ranks still run

        stopped = corral("stop", *where)
        assert stopped.returncode == 0, stopped.stderr
        assert "cluster hung stopped" in stopped.stdout
        _, alive = psutil.wait_procs([mpiexec, *ranks], timeout=15)
        assert not alive
        assert processes_mentioning(tmp_path) == []
    finally:
        for process in psutil.process_iter(["cmdline"]):  # whatever a failure left
            if str(tmp_path) in " ".join(process.info["cmdline"] or []):
                process.kill()


@pytest.mark.timeout(180)
def test_a_profile_is_the_cluster_id_and_its_config_file(tmp_path: Path) -> None:
    """ipyparallel's ``Cluster(profile="pbs")`` after writing the profile's config: corral's
    profile is the config file ``corral start --cluster-id NAME`` reads, whose launcher and
    engine count the Cluster takes when not given; the cluster is NAME (kept, and found by
    ``Client(profile=NAME)``). Before, ``profile`` was an unknown argument."""
    from corral.cluster.cluster import Cluster

    (tmp_path / "mpiprof.toml").write_text(
        '[start]\nengines = "mpi"\nn = 3\n\n[mpi]\nmpi_args = "-envall"\n'
    )
    cluster = Cluster(profile="mpiprof", cluster_dir=tmp_path, heartbeat_period=0.5)
    assert (cluster.n, cluster.engine_launcher) == (3, "mpi")
    assert cluster.launcher_options == {"mpi_args": "-envall"}
    assert Cluster(2, profile="mpiprof", cluster_dir=tmp_path, engines="local").n == 2
    with cluster as rc:
        assert sorted(rc.ids) == [0, 1, 2]
        assert {e["launcher"] for e in rc.engine_info().values()} == {"mpi"}
        with Client(profile="mpiprof", cluster_dir=tmp_path) as found:
            assert found.ids == rc.ids
    assert (tmp_path / "mpiprof" / "tasks.db").exists()  # a named cluster keeps its folder
