"""Engine launchers of one's own, found as ipyparallel finds third-party launchers: by an
entry point a package registers, or by import path (corral/cluster/launchers/registry.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.client.client import Client
from corral.cluster.cluster import Cluster
from corral.cluster.launchers.base import LaunchSpec
from corral.cluster.launchers.registry import engine_launcher
from corral.errors import LaunchError

from .conftest import corral
from .test_mpi import processes_mentioning

MODULE = '''
from corral.cluster.launchers.local import LocalLauncher


class MyLauncher(LocalLauncher):
    """Local engines under a name of their own (what a site's launcher would replace)."""

    name = "mine"


NOT_A_LAUNCHER = object()
'''


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package ``mylaunchers`` on sys.path whose metadata registers ``mine`` in the
    ``corral.engine_launchers`` group, as ``pip install`` of a package declaring the entry
    point leaves it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "mylaunchers.py").write_text(MODULE)
    info = site / "mylaunchers-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mylaunchers\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[corral.engine_launchers]\n"
        "mine = mylaunchers:MyLauncher\n"
        "bad = mylaunchers:NOT_A_LAUNCHER\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("mylaunchers", None)


@pytest.mark.timeout(120)
def test_a_launcher_registered_by_entry_point_starts_the_engines(
    tmp_path: Path, installed: Path
) -> None:
    with Cluster(n=2, engines="mine", cluster_dir=tmp_path, heartbeat_period=0.5) as rc:
        assert {e["launcher"] for e in rc.engine_info().values()} == {"mine"}
        assert rc[:].apply_sync(lambda: "up") == ["up", "up"]


@pytest.mark.timeout(120)
def test_corral_start_takes_a_registered_launcher(tmp_path: Path, installed: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), *sys.path])}
    where = ["--cluster-dir", str(tmp_path), "--cluster-id", "mine"]
    started = corral(
        "start", "--daemon", "--engines", "mine", "-n", "1", "--no-dashboard", *where, env=env
    )
    try:
        assert started.returncode == 0, started.stderr
        with Client(connection_file=tmp_path / "mine" / "corral-client.json", timeout=30) as rc:
            rc.wait_for_engines(1, timeout=60)
            assert [e["launcher"] for e in rc.engine_info().values()] == ["mine"]
    finally:
        stopped = corral("stop", *where, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert processes_mentioning(tmp_path) == []


def test_a_launcher_by_import_path_and_the_refusals(tmp_path: Path, installed: Path) -> None:
    spec = LaunchSpec("c", tmp_path, tmp_path / "corral-engine.json", 1)
    for name in ("mylaunchers:MyLauncher", "mylaunchers.MyLauncher", "mine"):
        assert type(engine_launcher(name, spec)).__name__ == "MyLauncher"
    assert type(engine_launcher("MPI", spec)).__name__ == "MPILauncher"  # any case, as before
    with pytest.raises(LaunchError, match="not a subclass of corral's EngineLauncher"):
        engine_launcher("bad", spec)
    with pytest.raises(LaunchError, match="cannot be imported"):
        engine_launcher("mylaunchers:Missing", spec)
    with pytest.raises(LaunchError, match="choose one of local, mpi.*bad, mine"):
        engine_launcher("nowhere", spec)
