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
ipyparallel code). ipyparallel's engine sets are not modelled: the engines of a cluster are one
set, so ``engine_set_id`` may only be None.

Stopping part of a cluster (:meth:`stop_engines_sync`, :meth:`stop_controller_sync`) ends the
cluster's supervision first, so that what was stopped on purpose is not started again.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, cast

from corral.client.client import Client
from corral.cluster.launchers.watch import stop_launchers
from corral.errors import CorralError
from corral.protocol.connection_files import CLIENT_FILE

if TYPE_CHECKING:
    from corral.cluster.cluster import Cluster
    from corral.cluster.launchers.base import EngineLauncher
    from corral.cluster.supervisor import Supervisor

__all__ = ["ClusterLifecycle"]


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
        path: Path
        timeout: float
        restart: bool
        dashboard: bool
        client: Client | None
        controller: subprocess.Popen[bytes] | None
        engines: list[subprocess.Popen[bytes]]
        launchers: list[EngineLauncher]
        supervisor: Supervisor | None

        def start_controller(self) -> None: ...
        def start_engines(self, n: int) -> list[subprocess.Popen[bytes]]: ...
        def start_dashboard(self) -> str: ...
        def supervise(self) -> None: ...
        def stop(self, timeout: float = 10.0) -> None: ...
        def connect(self) -> Client: ...
        def _controller_running(self) -> bool: ...
        def _save_state(self, **extra: Any) -> None: ...

    _connected: weakref.WeakSet[Client]
    _context_client: Client | None = None

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
