"""ClusterManager (corral/cluster/manager.py): clusters of one folder by id, on real processes."""

from __future__ import annotations

from pathlib import Path

import pytest

import corral
from tests.conftest import running_cluster


def test_manager_finds_a_running_cluster_and_refuses_its_id_again(tmp_path: Path) -> None:
    manager = corral.ClusterManager(cluster_dir=tmp_path)
    assert manager.load_clusters() == {} and manager.list_clusters() == []
    with running_cluster(tmp_path, 1, cluster_id="alpha"):
        assert manager.list_clusters() == []  # nothing loaded until asked
        assert list(manager.load_clusters()) == ["alpha"]
        client = manager.get_cluster("alpha").connect()
        try:
            assert client[:].apply_sync(lambda: 6 * 7) == [42]
        finally:
            client.close()
        with pytest.raises(corral.MultipleInstanceError, match="alpha"):
            manager.new_cluster(cluster_id="alpha")
        manager.remove_cluster("alpha")
        with pytest.raises(corral.MultipleInstanceError):  # still running in the folder
            manager.new_cluster(cluster_id="alpha")
    key, cluster = manager.new_cluster(cluster_id="beta", n=1)
    assert key == "beta" and manager.get_cluster("beta") is cluster
    assert cluster.path == tmp_path / "beta" and cluster.controller is None  # not started
    with pytest.raises(KeyError):
        manager.get_cluster("alpha")
    with pytest.raises(KeyError):  # a MultipleInstanceError is a KeyError, as ipyparallel's
        manager.new_cluster(cluster_id="beta")
