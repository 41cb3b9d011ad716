"""ipyparallel's ``Cluster`` calls on corral's :class:`~corral.cluster.cluster.Cluster`.

ipyparallel users start and stop clusters with these (its README and docs do)::

    cluster = ipp.Cluster(n=4)
    rc = cluster.start_and_connect_sync()      # or: rc = await cluster.start_and_connect()
    ...
    cluster.stop_cluster_sync()                # or: await cluster.stop_cluster()

Each ``*_sync`` method blocks; the method without the suffix is a coroutine doing the same in a
worker thread (``asyncio.to_thread``), so an event loop (a notebook's) goes on meanwhile.
Two names are corral's own and stay synchronous: :meth:`Cluster.start_controller` and
:meth:`Cluster.start_engines` (``start_controller_sync``/``start_engines_sync`` are there for
ipyparallel code). What they return may be awaited too (:class:`Started`), so ipyparallel
code that awaits them (``await cluster.start_controller()``, as its Cluster API example
does) runs: the work is done when the call returns, and the await gives None, ipyparallel's
engine set id for "all of them". ipyparallel's engine sets are not modelled: the engines of a
cluster are one set, so ``engine_set_id`` may only be None.

:meth:`ClusterLifecycle.from_file` gives the Cluster of a cluster running elsewhere (``corral
start --daemon``, another program's ``Cluster``): it connects, starts and restarts engines,
and stops that cluster as ``corral stop`` does.

Stopping part of a cluster (:meth:`stop_engines_sync`, :meth:`stop_controller_sync`) ends the
cluster's supervision first, so that what was stopped on purpose is not started again.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, cast

from corral.client.client import Client
from corral.cluster.launchers.watch import stop_launchers
from corral.errors import CorralError
from corral.protocol.connection_files import CLIENT_FILE, DEFAULT_CLUSTER_ID

if TYPE_CHECKING:
    from corral.cluster.cluster import Cluster
    from corral.cluster.launchers.base import EngineLauncher
    from corral.cluster.supervisor import Supervisor

__all__ = ["ClusterLifecycle", "Started", "StartedEngines"]


class Started:
    """What :meth:`Cluster.start_controller` returns: nothing to wait for, but awaitable (to
    None), for ipyparallel code that awaits its coroutine of that name."""

    def __await__(self) -> Iterator[None]:
        return iter(())


class StartedEngines(list[subprocess.Popen[bytes]], Started):
    """What :meth:`Cluster.start_engines` returns: the local engine processes it started, and
    awaitable (to None, ipyparallel's engine set id of every engine) as :class:`Started`."""


def _no_engine_sets(engine_set_id: object) -> None:
    if engine_set_id is not None:
        raise ValueError(
            f"engine set {engine_set_id!r}: corral clusters have one set of engines; "
            "pass engine_set_id=None (all of them)"
        )


class ClusterLifecycle:
    """ipyparallel's start/stop/connect calls (see the module doc); a base of Cluster."""

    if TYPE_CHECKING:  # provided by Cluster
        n: int
        first_engine_id: int | None
        path: Path
        timeout: float
        restart: bool
        dashboard: bool
        client: Client | None
        controller: subprocess.Popen[bytes] | None
        engines: list[subprocess.Popen[bytes]]
        launchers: list[EngineLauncher]
        supervisor: Supervisor | None

        def start_controller(self) -> Started: ...
        def start_engines(self, n: int) -> StartedEngines: ...
        def start_dashboard(self) -> str: ...
        def supervise(self) -> None: ...
        def stop(self, timeout: float = 10.0) -> None: ...
        def connect(self) -> Client: ...
        def _controller_running(self) -> bool: ...
        def _save_state(self, **extra: Any) -> None: ...

        attached: bool

        def __init__(self, n: int = 4, **kwargs: Any) -> None: ...

    _connected: weakref.WeakSet[Client]
    _context_client: Client | None = None

    @classmethod
    def from_file(
        cls,
        cluster_file: str | Path | None = None,
        *,
        profile: str | None = None,
        profile_dir: str | Path | None = None,
        cluster_id: str = "",
        **kwargs: Any,
    ) -> Self:
        """ipyparallel's: the Cluster of a cluster running elsewhere, found by a file in its
        folder (``cluster_file``: its ``corral-client.json``, or the folder itself) or by its
        id (``cluster_id``, or ``profile`` as ipyparallel's profile names it; default
        ``"default"``) in ``profile_dir`` (the folder of clusters; default ``$CORRAL_DIR`` or
        ``~/.corral``). It connects to that cluster, starts and restarts engines (this process
        runs those), and its stop stops the whole cluster as ``corral stop`` does. ``kwargs``
        as for Cluster (``n``: engines to start, default 0). CorralError if none runs there."""
        from corral.cluster.cluster import cluster_path
        from corral.cluster.folders import inspect

        if cluster_file is not None:
            given = Path(cluster_file).expanduser()
            folder = given if given.is_dir() else given.parent
        else:
            folder = cluster_path(cluster_id or profile or DEFAULT_CLUSTER_ID, profile_dir)
        state = inspect(folder).state
        if state != "running":
            raise CorralError(f"no cluster runs in {folder} (the folder is {state})")
        kwargs.setdefault("n", 0)
        cluster = cls(cluster_id=folder.name, cluster_dir=folder.parent, **kwargs)
        cluster.attached = True
        cluster.first_engine_id = None  # above the running engines' ids (start_engines)
        return cluster

    # ------------------------------------------------------------ start

    def start_controller_sync(self) -> None:
        """Start the controller (ipyparallel's name for :meth:`Cluster.start_controller`)."""
        self.start_controller()

    def start_engines_sync(self, n: int | None = None) -> None:
        """Start ``n`` engines (default: the cluster's ``n``); they register by themselves."""
        self.start_engines(self.n if n is None else n)

    def start_cluster_sync(self, n: int | None = None) -> Self:
        """Start the controller (unless running) and ``n`` engines (default: the cluster's
        ``n``), without waiting for them to register; supervised if ``restart``. Returns
        the cluster, as ipyparallel's does, for chaining calls."""
        if not self._controller_running():
            self.start_controller()
            if self.dashboard:
                self.start_dashboard()
        self.start_engines(self.n if n is None else n)
        if self.restart:
            self.supervise()
        return self

    def connect_client_sync(self, **client_kwargs: Any) -> Client:
        """A new Client of this cluster (``client_kwargs`` as for Client). The caller may close
        it; the cluster closes it when it stops its controller."""
        client_kwargs.setdefault("timeout", self.timeout)
        client = Client(connection_file=self.path / CLIENT_FILE, **client_kwargs)
        client.cluster = cast("Cluster", self)  # the Cluster this is a base of
        self._clients().add(client)
        return client

    def start_and_connect_sync(self, n: int | None = None, activate: bool = False) -> Client:
        """Start the cluster, connect a client and wait for the ``n`` engines (default: the
        cluster's); ``activate``: make a blocking view of all engines the ``%px`` magics'."""
        count = self.n if n is None else n
        self.start_cluster_sync(count)
        client = self.connect_client_sync()
        if count:
            client.wait_for_engines(count, timeout=self.timeout)
        if activate:
            view = client[:]
            view.block = True
            view.activate()
        return client

    # ------------------------------------------------------------ stop

    def stop_engines_sync(self, engine_set_id: None = None, timeout: float = 10.0) -> None:
        """Stop every engine (the controller goes on): asked over the wire, then ended if
        still there after ``timeout`` seconds; engine launchers' jobs are stopped."""
        _no_engine_sets(engine_set_id)
        self._end_supervision()
        if self._controller_running():
            try:
                with self.connect() as client:
                    client.shutdown(targets="all", block=True)
            except (CorralError, OSError):
                pass  # ended below
        _end(self.engines, timeout)
        self.engines = []
        self.first_engine_id = 0  # every engine was asked to stop: their ids are free again
        launchers = [job for job in self.launchers if job.spec.role != "controller"]
        stop_launchers(launchers, timeout)
        self.launchers = [job for job in self.launchers if job.spec.role == "controller"]
        self._save_state()

    def stop_controller_sync(self, timeout: float = 10.0) -> None:
        """Stop the controller (engines left running lose it and stop by themselves); the
        clients connected through this cluster are closed."""
        self._end_supervision()
        self._close_clients()
        if self._controller_running():
            try:
                with self.connect() as client:
                    client.shutdown(targets=None, hub=True, block=True)
            except (CorralError, OSError):
                pass  # ended below
        if self.controller is not None:
            _end([self.controller], timeout)
        self._save_state()

    def stop_cluster_sync(self) -> None:
        """Stop engines and controller and remove a temporary cluster's folder (as
        :meth:`Cluster.stop`); the clients connected through this cluster are closed."""
        self._close_clients()
        self.stop()

    def restart_engines_sync(self, engine_set_id: None = None) -> None:
        """Stop every engine and start as many again (ipyparallel's): those this cluster
        started, or, for a cluster loaded with :meth:`from_file`, those registered now. They
        register by themselves, under the same ids; supervised again if ``restart``."""
        _no_engine_sets(engine_set_id)
        count = len(self.engines) + sum(
            job.spec.n for job in self.launchers if job.spec.role != "controller"
        )
        if not count and self.attached:
            with self.connect() as client:
                count = len(client.ids)
        self.stop_engines_sync()
        self.start_engines(count)
        if self.restart:
            self.supervise()

    def signal_engines_sync(self, signum: int, engine_set_id: None = None) -> None:
        """Send ``signum`` to every engine this cluster started as a local process."""
        _no_engine_sets(engine_set_id)
        for engine in self.engines:
            if engine.poll() is None:
                os.kill(engine.pid, signum)

    # ------------------------------------------------------------ coroutines

    async def start_cluster(self, n: int | None = None) -> Self:
        return await asyncio.to_thread(self.start_cluster_sync, n)

    async def connect_client(self, **client_kwargs: Any) -> Client:
        return await asyncio.to_thread(lambda: self.connect_client_sync(**client_kwargs))

    async def start_and_connect(self, n: int | None = None, activate: bool = False) -> Client:
        return await asyncio.to_thread(self.start_and_connect_sync, n, activate)

    async def stop_engines(self, engine_set_id: None = None) -> None:
        await asyncio.to_thread(self.stop_engines_sync, engine_set_id)

    async def stop_controller(self) -> None:
        await asyncio.to_thread(self.stop_controller_sync)

    async def stop_cluster(self) -> None:
        await asyncio.to_thread(self.stop_cluster_sync)

    async def restart_engines(self, engine_set_id: None = None) -> None:
        await asyncio.to_thread(self.restart_engines_sync, engine_set_id)

    async def signal_engines(self, signum: int, engine_set_id: None = None) -> None:
        await asyncio.to_thread(self.signal_engines_sync, signum, engine_set_id)

    async def __aenter__(self) -> Client:
        """``async with Cluster(n=4) as rc:`` started, connected, every engine registered."""
        self._context_client = await self.start_and_connect()
        return self._context_client

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_cluster()

    # ------------------------------------------------------------ helpers

    def _clients(self) -> weakref.WeakSet[Client]:
        try:
            return self._connected
        except AttributeError:
            self._connected = weakref.WeakSet()
            return self._connected

    def _close_clients(self) -> None:
        for client in list(self._clients()):
            client.close()
        self._context_client = None

    def _end_supervision(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None


def _end(processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait for ``processes`` to exit, at most ``timeout`` seconds in all; terminate the rest."""
    from corral.cluster.shutdown import wait_or_terminate

    wait_or_terminate(processes, time.monotonic() + timeout)
