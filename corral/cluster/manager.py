"""Several clusters by name (ipyparallel's ``ClusterManager``).

A manager holds the :class:`~corral.cluster.cluster.Cluster` objects of one cluster folder
(``cluster_dir``, default ``$CORRAL_DIR`` or ``~/.corral``) under keys, which are their
cluster ids: :meth:`ClusterManager.new_cluster` makes one (not started: call its ``start``),
:meth:`ClusterManager.load_clusters` finds the ones already running there (started by another
process or ``corral start``) so that ``get_cluster(key).connect()`` reaches them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.cluster.cluster import Cluster, default_cluster_dir
from corral.cluster.folders import ClusterFolder, inventory
from corral.errors import CorralError, MultipleInstanceError

__all__ = ["ClusterManager"]


class ClusterManager:
    """Clusters of one cluster folder, by cluster id."""

    def __init__(self, cluster_dir: str | Path | None = None) -> None:
        self.cluster_dir = Path(cluster_dir).expanduser() if cluster_dir else default_cluster_dir()
        self.clusters: dict[str, Cluster] = {}

    def new_cluster(self, **kwargs: Any) -> tuple[str, Cluster]:
        """``(key, cluster)`` for a new Cluster in this folder (``kwargs`` as for Cluster; a
        ``cluster_id`` becomes the key). MultipleInstanceError (a KeyError) if the key is
        already managed or a cluster of that id runs in the folder."""
        kwargs.setdefault("cluster_dir", self.cluster_dir)
        cluster = Cluster(**kwargs)
        key = cluster.cluster_id
        running = {folder.cluster_id for folder in self._running()}
        if key in self.clusters or key in running:
            raise MultipleInstanceError(f"cluster {key!r} already exists in {self.cluster_dir}")
        self.clusters[key] = cluster
        return key, cluster

    def load_clusters(self) -> dict[str, Cluster]:
        """Add every cluster running in the folder that is not managed yet; all managed ones.

        A loaded cluster was started elsewhere (``Cluster.from_file``): ``connect()`` gives a
        client of it, and its ``stop()`` stops it as ``corral stop`` does.
        """
        for folder in self._running():
            if folder.cluster_id not in self.clusters:
                try:
                    self.clusters[folder.cluster_id] = Cluster.from_file(folder.path)
                except CorralError:  # it stopped since the folder was read
                    continue
        return self.clusters

    def list_clusters(self) -> list[str]:
        """The managed keys."""
        return list(self.clusters)

    def get_cluster(self, cluster_id: str) -> Cluster:
        """The managed cluster ``cluster_id``; KeyError if there is none."""
        return self.clusters[cluster_id]

    def remove_cluster(self, cluster_id: str) -> Cluster:
        """Stop managing ``cluster_id`` (it is not stopped); KeyError if not managed."""
        return self.clusters.pop(cluster_id)

    def _running(self) -> list[ClusterFolder]:
        return [folder for folder in inventory(self.cluster_dir) if folder.state == "running"]
