"""The queues over Unix sockets for the peers on the controller's host, TCP for the others
(corral/protocol/local_sockets.py; docs/wire-flows.md, "Cluster folder and connection files")."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import corral.client.client as client_module
from corral.client.client import Client
from corral.protocol.local_sockets import socket_folder
from tests.conftest import running_cluster


def offered(cluster: Any) -> dict[str, str]:
    info = json.loads((cluster.path / "corral-client.json").read_text())
    engine_info = json.loads((cluster.path / "corral-engine.json").read_text())
    assert info["local_sockets"] == engine_info["local_sockets"]
    return dict(info["local_sockets"])


def connected_to(pid: int, path: str) -> int:
    """How many connections process ``pid`` has accepted on the Unix socket at ``path`` (psutil
    lists the listening socket like them, with the same address: one less)."""
    found = psutil.Process(pid).net_connections(kind="unix")
    return sum(1 for connection in found if connection.laddr == path) - 1


def check_local_cluster(cluster: Any) -> Path:
    """Both engines and the cluster's client reach the MUX, control and task queues over the
    Unix sockets offered, in a folder only this user can enter; tasks run through them. Returns
    the folder."""
    local = offered(cluster)
    paths = {name: value.removeprefix("ipc://") for name, value in local.items() if name != "host"}
    folder = Path(paths["mux"]).parent
    info = os.lstat(folder)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.getuid()
    rc = cluster.client
    rc.wait_for_engines(2, timeout=30)
    for channel in ("mux", "control", "task"):
        assert rc.addresses[channel] == local[channel]
    assert rc.addresses["hub"].startswith("tcp://")  # not offered: the Hub's own sockets
    assert rc[:].apply_sync(os.getpid) != []
    assert rc.load_balanced_view().apply_async(abs, -3).get(30) == 3
    controller = cluster.controller.pid
    assert connected_to(controller, paths["mux_engine"]) == 2  # one per engine
    assert connected_to(controller, paths["control_engine"]) == 2
    assert connected_to(controller, paths["mux"]) == 1  # the client (the Hub's own: TCP)
    (scheduler,) = psutil.Process(controller).children()
    assert connected_to(scheduler.pid, paths["task_engine"]) == 2
    assert connected_to(scheduler.pid, paths["task"]) == 1
    return folder


def test_peers_on_the_controllers_host_use_unix_sockets_in_the_cluster_folder() -> None:
    """A short cluster folder (``~/.corral/default``): the sockets are in it, and go with a
    clean stop."""
    base = Path(tempfile.mkdtemp(prefix="cls-"))
    try:
        with running_cluster(base, 2) as cluster:
            folder = check_local_cluster(cluster)
            assert folder == cluster.path / "sockets"
        assert not folder.exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def deep_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A cluster folder too deep for a Unix socket's path (pytest's are)."""
    base = tmp_path_factory.mktemp("a-cluster-folder-deeper-than-a-unix-socket-path-may-be" * 2)
    with running_cluster(base, 2) as cluster:
        yield cluster


def test_a_deep_cluster_folder_puts_the_sockets_in_a_private_temporary_one(
    deep_cluster: Any,
) -> None:
    folder = check_local_cluster(deep_cluster)
    assert folder.parent == Path(tempfile.gettempdir()) / f"corral-{os.getuid()}"
    assert stat.S_IMODE(os.lstat(folder.parent).st_mode) == 0o700


def test_a_client_on_another_host_stays_on_tcp(
    deep_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer whose host identity differs (another machine, or a container with its own
    mounts) ignores the offer: TCP, with Curve where the cluster has it."""
    monkeypatch.setattr(client_module, "host_identity", lambda: "another host")
    with Client(connection_file=deep_cluster.path / "corral-client.json", timeout=30) as rc:
        assert all(address.startswith("tcp://") for address in rc.addresses.values())
        rc.wait_for_engines(2, timeout=30)
        assert rc[:].apply_sync(abs, -2) == [2, 2]


def test_no_local_sockets_binds_tcp_only(tmp_path: Path) -> None:
    """``corral controller --no-local-sockets``: nothing offered, no folder, every peer on TCP."""
    with running_cluster(tmp_path, 1, controller_args=["--no-local-sockets"]) as cluster:
        info = json.loads((cluster.path / "corral-client.json").read_text())
        assert "local_sockets" not in info
        folder = socket_folder(cluster.path, tempfile.gettempdir())
        assert folder is not None and not folder.exists()
        rc = cluster.client
        assert all(address.startswith("tcp://") for address in rc.addresses.values())
        rc.wait_for_engines(1, timeout=30)
        assert rc[0].apply_sync(abs, -1) == 1
