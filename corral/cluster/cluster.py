"""Start and stop a local cluster (controller + engines) from Python.

``with corral.Cluster(n=4) as rc:`` starts a controller process and four engine processes,
waits until the client sees every engine, and on exit shuts them all down and makes sure no
process is left behind, even when the body raised. Meanwhile it supervises them
(:mod:`corral.cluster.supervisor`): a controller that dies is started again with ``--restore``
on the same ports and key, an engine that dies is started again under its engine id.
Stopping a cluster from another process (``corral stop``: :func:`stop_cluster`, importable from
here too) and ending processes are :mod:`corral.cluster.shutdown`'s.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from corral.client.client import Client
from corral.cluster.folders import STATE_FILE, hold, inspect, reclaim_temporary, release
from corral.cluster.launchers.base import (
    EngineLauncher,
    LaunchSpec,
    launcher_environment,
    wait_for_launched_engines,
)
from corral.cluster.launchers.batch_controller import controller_job, start_controller_job
from corral.cluster.launchers.config import Profile
from corral.cluster.launchers.controller import SSHController
from corral.cluster.launchers.local import scheduling_args, usable_cores
from corral.cluster.launchers.mpi import mpi_controller_prefix
from corral.cluster.launchers.registry import engine_launcher, launcher_key
from corral.cluster.launchers.watch import stop_launchers
from corral.cluster.lifecycle import ClusterLifecycle, Started, StartedEngines
from corral.cluster.shutdown import (
    TERMINATE_GRACE,
    local_engine_pids,
    nothing_alive,
    unreached_engines,
    wait_or_terminate,
)
from corral.cluster.shutdown import stop_cluster as stop_cluster  # `corral stop`'s, from here too
from corral.cluster.supervisor import RestartPolicy, Supervisor
from corral.errors import CorralError, TimeoutError
from corral.lifetime import terminate
from corral.protocol.connection_files import (
    CLIENT_FILE,
    DASHBOARD_FILE,
    DEFAULT_CLUSTER_ID,
    ENGINE_FILE,
    cluster_dir_from,
    cluster_folder,
    read_json_object,
    write_private_json,
)
from corral.sharedmem import cluster_prefix, sweep

log = logging.getLogger("corral.cluster")


def default_cluster_dir() -> Path:
    """Where clusters live: ``$CORRAL_DIR`` or ``~/.corral`` (``Cluster`` and the CLI are
    the entry points that read the environment)."""
    return cluster_dir_from(os.environ)


def cluster_path(
    cluster_id: str = DEFAULT_CLUSTER_ID, cluster_dir: str | Path | None = None
) -> Path:
    """The folder of one cluster: ``<cluster_dir>/<cluster_id>``."""
    return cluster_folder(cluster_dir or default_cluster_dir(), cluster_id)


def _wait_for(predicate: Any, timeout: float, what: str, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not predicate():
        if alive is not None and not alive():
            raise CorralError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)  # polling a file another process writes; no event to await
        delay = min(delay * 2, 0.1)


class Cluster(ClusterLifecycle):
    """A controller and ``n`` engines as local processes, with a connected Client; ``n``
    defaults to one engine per CPU this process may use (its profile's ``n``, if it names one).

    ``cluster_dir`` is the parent folder (default ``$CORRAL_DIR`` or ``~/.corral``); the cluster
    lives in ``<cluster_dir>/<cluster_id>/``. ``controller_args`` are extra flags for
    ``corral controller`` (``--db``, ``--restore``, ``--ip`` ...).

    Without a ``cluster_id`` the cluster is temporary: its folder (connection files, logs,
    result store) is removed when it stops, also after an exception in the ``with`` block; a
    folder left by an owner that was killed is removed by the next start or ``corral clean``.
    ``keep=True`` or an explicit ``cluster_id`` keeps the folder (and the results in it);
    ``cluster_id=""`` (ipyparallel's default cluster) is ``corral start``'s default cluster.
    ``store_buffer_limit``, ``store_size_limit`` and ``result_ttl`` bound the result store
    (``"64M"``, ``"2G"``, ``"7d"``, ``"none"``; None: the controller's defaults).
    ``restart`` (default True) restarts a controller or engine that crashes, per
    ``restart_policy``; ``restarts`` counts.
    ``engines`` names the engine launcher (local, mpi, ssh, slurm, pbs, lsf, sge, in any case;
    corral.cluster.launchers) and ``launcher_options`` its options (``{"partition": "debug"}``,
    ``{"hosts": ["a", "b"]}``). ``wait_for_engines=False`` returns once the launcher has
    started or submitted them (a batch job may wait in its queue for hours); they register
    when they run. ipyparallel's spellings work too: ``controller`` for ``controller_launcher``
    (a launcher name; launcher classes are ipyparallel's, not accepted), a numeric
    ``log_level`` (``10``), ``controller_ip`` and ``controller_location`` (``--ip``,
    ``--location``; ``"*"`` is every interface), and its start/stop calls
    (corral.cluster.lifecycle). ``profile=NAME``, ipyparallel's named configuration, is the
    cluster id NAME (kept, found by ``Client(profile=NAME)``) and the config file
    ``<cluster_dir>/NAME.toml`` that ``corral start --cluster-id NAME`` reads: its ``[start]``
    engines and n, launcher tables and ``[controller]`` fill in the arguments not given.
    ``n`` defaults to 4.
    """

    def __init__(
        self,
        n: int | None = None,
        *,
        cluster_id: str | None = None,
        cluster_dir: str | Path | None = None,
        heartbeat_period: float | None = None,
        db: str = "sqlite",
        controller_args: Sequence[str] = (),
        engine_args: Sequence[str] = (),
        timeout: float = 60.0,
        log_level: str | int = "WARNING",
        keep: bool = False,
        store_buffer_limit: str | int | None = None,
        store_size_limit: str | int | None = None,
        result_ttl: str | float | None = None,
        restart: bool = True,
        restart_policy: RestartPolicy | None = None,
        dashboard: bool = False,
        dashboard_args: Sequence[str] = (),
        engines: str | None = None,
        launcher_options: Mapping[str, Any] | None = None,
        controller_launcher: str | None = None,
        controller_options: Mapping[str, Any] | None = None,
        wait_for_engines: bool = True,
        controller: str | None = None,
        profile: str | None = None,
        controller_ip: str | None = None,
        controller_location: str | None = None,
    ) -> None:
        if controller is not None:
            controller_launcher = _launcher_name(controller, controller_launcher)
        if isinstance(log_level, int):
            log_level = logging.getLevelName(log_level)
        if cluster_id == "":
            # ipyparallel's default cluster (`ipcluster start`'s, the one from_file() finds);
            # here that is `corral start`'s
            cluster_id = DEFAULT_CLUSTER_ID
        self.temporary = cluster_id is None and profile is None and not keep
        self.cluster_id = cluster_id or profile or f"cluster-{uuid.uuid4().hex[:8]}"
        self.base_dir = Path(cluster_dir).expanduser() if cluster_dir else default_cluster_dir()
        self.path = self.base_dir / self.cluster_id
        if profile is not None:  # its config file fills in what was not given
            found = Profile.load(self.base_dir / f"{profile}.toml", engines, controller_launcher)
            engines, controller_launcher = found.engines, found.controller
            n = n if n is not None else found.n
            launcher_options = {**found.launcher_options, **(launcher_options or {})}
            controller_options = {**found.controller_options, **(controller_options or {})}
        # launcher names are case-insensitive, as ipyparallel's (its docs write engines="MPI")
        engines = launcher_key(engines or "local")
        controller_launcher = (controller_launcher or "local").lower()
        # one engine per CPU this process may use, as ipyparallel's (and `corral start`)
        self.n = n if n is not None else (usable_cores() or 1)
        self.heartbeat_period = heartbeat_period
        self.db = db
        self.controller_args = list(controller_args)
        for flag, value in (
            ("--ip", controller_ip),
            ("--location", controller_location),
            ("--store-buffer-limit", store_buffer_limit),
            ("--store-size-limit", store_size_limit),
            ("--result-ttl", result_ttl),
        ):
            if value is not None:
                self.controller_args += [flag, str(value)]
        self._lock: int | None = None
        self.engine_args = list(engine_args)
        self.timeout = timeout
        self.log_level = log_level
        self.controller: subprocess.Popen[bytes] | None = None
        self.engines: list[subprocess.Popen[bytes]] = []  # the local launcher's processes
        self._engines_started = 0  # local engines asked for so far (scheduling_args)
        # the engine id local engine 0 asks for: above those of a cluster started elsewhere
        # (from_file) while its own engines run; None: to be found when engines start
        self.first_engine_id: int | None = 0
        self.engine_launcher = engines
        self.launcher_options = dict(launcher_options or {})
        self.launchers: list[EngineLauncher] = []
        self.controller_launcher = controller_launcher
        self.controller_options = dict(controller_options or {})
        self.remote_controller: SSHController | None = None
        self.wait_for_engines = wait_for_engines
        self.attached = False  # loaded with from_file: a cluster this object did not start
        self.client: Client | None = None
        self.restart = restart
        self.restart_policy = restart_policy
        self.supervisor: Supervisor | None = None
        self.dashboard = dashboard
        self.dashboard_args = list(dashboard_args)
        self.dashboard_process: subprocess.Popen[bytes] | None = None
        self.dashboard_url: str | None = None

    # ------------------------------------------------------------ processes

    def _hold_folder(self) -> int:
        """Mark the folder in use (children inherit the lock; see folders.py), first removing
        temporary folders that killed owners left behind."""
        if self._lock is None:
            reclaim_temporary(self.base_dir)
            self._lock = hold(self.path)
        return self._lock

    def _spawn(
        self,
        args: list[str],
        log_name: str,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        lock = self._hold_folder()
        log_path = self.path / log_name
        log_file = open(log_path, "ab")  # noqa: SIM115 (the child owns it)
        try:
            return subprocess.Popen(
                [*prefix, sys.executable, "-m", "corral", *args, "--log-file", str(log_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(lock,),
                env=env,
            )
        finally:
            log_file.close()

    def start_controller(self) -> Started:
        """Start the controller and wait for its connection files (awaitable too: see
        corral.cluster.lifecycle)."""
        heartbeat = []
        if self.heartbeat_period is not None:
            heartbeat = ["--heartbeat-period", str(self.heartbeat_period)]
        if self.controller_launcher not in ("local", "mpi"):  # a far folder, no owner here
            far = ["--db", self.db, "--log-level", self.log_level, *heartbeat]
            self._start_remote_controller(far)
            return Started()
        args = [
            "controller",
            "--cluster-id",
            self.cluster_id,
            "--cluster-dir",
            str(self.base_dir),
            "--db",
            self.db,
            "--log-level",
            self.log_level,
            "--owner-pid",
            str(os.getpid()),
            *heartbeat,
        ]
        self._hold_folder()
        self._save_state()
        prefix = []
        if self.controller_launcher == "mpi":  # one rank of its own mpiexec
            prefix = mpi_controller_prefix(self.controller_options)
        self.controller = self._spawn(args + self.controller_args, "controller.log", None, prefix)
        controller = self.controller
        # files a killed controller left behind name another pid: wait for this one's (under
        # mpiexec, a process that mpiexec started)
        try:
            _wait_for(
                lambda: _written_by(self.path / ENGINE_FILE, controller.pid, below=bool(prefix)),
                self.timeout,
                f"controller of cluster {self.cluster_id}",
                alive=lambda: controller.poll() is None,
            )
        except CorralError as err:
            # a temporary folder goes on stop, and its log with it: say here why it failed
            tail = _log_tail(self.path / "controller.log")
            raise type(err)(f"{err}{'; its log ends: ' + tail if tail else ''}") from err
        self._save_state()
        return Started()

    def _start_remote_controller(self, args: list[str]) -> None:
        """The controller on another host: over ssh (its connection files are mirrored into
        this cluster's folder) or as a batch job (it writes them into the shared folder; the
        job is one of ``launchers``, so it is watched, recorded and cancelled like theirs)."""
        if self.controller_launcher != "ssh":
            command = [sys.executable, "-m", "corral", "controller", "--cluster-id"]
            command += [self.cluster_id, "--cluster-dir", str(self.base_dir), *args]
            job = controller_job(
                self.controller_launcher,
                self.cluster_id,
                self.path,
                command + self.controller_args,
                self.controller_options,
            )
            self._hold_folder()
            self.launchers.append(job)
            try:
                start_controller_job(job, self.timeout)
            finally:
                self._save_state()
            return
        self.remote_controller = SSHController(
            self.cluster_id, self.path, args + self.controller_args, self.controller_options
        )
        self.controller = self.remote_controller.start(self.timeout)
        self._save_state()

    def start_dashboard(self) -> str:
        """Start ``corral dashboard`` beside the controller; its URL (with the token)."""
        args = ["dashboard", "--cluster-id", self.cluster_id, "--cluster-dir", str(self.base_dir)]
        args += ["--log-level", self.log_level, "--owner-pid", str(os.getpid())]
        process = self._spawn(args + self.dashboard_args, "dashboard.log")
        self.dashboard_process = process
        _wait_for(
            lambda: _written_by(self.path / DASHBOARD_FILE, process.pid, "pid"),
            self.timeout,
            f"dashboard of cluster {self.cluster_id}",
            alive=lambda: process.poll() is None,
        )
        self.dashboard_url = str(json.loads((self.path / DASHBOARD_FILE).read_text())["url"])
        self._save_state()
        return self.dashboard_url

    def start_engines(self, n: int) -> StartedEngines:
        """Start ``n`` more engines with this cluster's launcher (they register by themselves);
        the local processes started, if the launcher is local (supervised, each under its id;
        awaitable too: see corral.cluster.lifecycle)."""
        if self.engine_launcher != "local":
            spec = LaunchSpec(
                cluster_id=self.cluster_id,
                cluster_path=self.path,
                engine_file=self.path / ENGINE_FILE,
                n=n,
                log_level=self.log_level,
                engine_args=tuple(self.engine_args),
                owner_pid=os.getpid(),
                options=self.launcher_options,
            )
            launcher = engine_launcher(self.engine_launcher, spec)
            self.launchers.append(launcher)
            launcher.start()
            self._save_state()
            return StartedEngines()
        started = StartedEngines()
        if self.first_engine_id is None:
            self.first_engine_id = self._first_free_engine_id()
        self._engines_started = len(self.engines) + n
        for _ in range(n):
            index = len(self.engines)
            engine = self._spawn_engine(index)
            self.engines.append(engine)
            started.append(engine)
            if self.supervisor is not None:
                self._supervise_engine(index)
        self._save_state()
        return started

    def _first_free_engine_id(self) -> int:
        """One past the highest engine id the running cluster's Hub has registered and its
        manager's local engines hold (they are restarted under theirs), so that engines
        started here from :meth:`from_file` never ask for an id in use: each would wait for
        it and then be refused."""
        state = read_json_object(self.path / STATE_FILE) or {}
        manager_engines = state.get("engine_pids", [])
        with self.connect() as client:
            ids = list(client.ids)
        held = len(manager_engines) if isinstance(manager_engines, list) else 0
        return max([*ids, held - 1], default=-1) + 1

    def _spawn_engine(self, index: int) -> subprocess.Popen[bytes]:
        """Engine ``index`` asks for engine id ``first_engine_id + index``: started again, it
        keeps it. Under SCHED_BATCH when this cluster's local engines outnumber the cores
        (decided when they were asked for: engines started before a later ``start_engines``
        keep their policy)."""
        engine_id = (self.first_engine_id or 0) + index
        args = [
            "engine",
            "--file",
            str(self.path / ENGINE_FILE),
            "--log-level",
            self.log_level,
            "--owner-pid",
            str(os.getpid()),
            "--id",
            str(engine_id),
            *scheduling_args(self._engines_started, usable_cores()),
            *self.engine_args,
        ]
        return self._spawn(args, f"engine-{engine_id}.log", launcher_environment("local"))

    # ------------------------------------------------------------ supervision

    def supervise(self) -> None:
        """Restart the controller and engines when they crash (``start`` calls this when
        ``restart`` is set)."""
        if self.supervisor is not None or self.controller is None:
            return
        self.supervisor = Supervisor(self.restart_policy, on_change=self._save_state)
        self.supervisor.watch("controller", self.controller, self._restart_controller)
        for index in range(len(self.engines)):
            self._supervise_engine(index)

    def _supervise_engine(self, index: int) -> None:
        assert self.supervisor is not None

        def restart() -> subprocess.Popen[bytes]:
            self.engines[index] = self._spawn_engine(index)
            return self.engines[index]

        self.supervisor.watch(f"engine-{index}", self.engines[index], restart)

    def _restart_controller(self) -> subprocess.Popen[bytes]:
        if "--restore" not in self.controller_args:
            self.controller_args.append("--restore")  # same ports, key and stored results
        self.start_controller()
        assert self.controller is not None
        return self.controller

    @property
    def controller_gone(self) -> bool:
        """The controller exited and will not be started again (stopped on purpose, no
        supervision, or the supervisor gave up)."""
        jobs = [job for job in self.launchers if job.spec.role == "controller"]
        if jobs:
            return jobs[0].lost is not None  # its batch job ended (launcher_failures)
        if self.controller is None or self.controller.poll() is None:
            return False
        return self.supervisor is None or "controller" in self.supervisor.given_up

    @property
    def restarts(self) -> dict[str, int]:
        """How often the supervisor restarted each process (``controller``, ``engine-N``)."""
        return self.supervisor.restarts if self.supervisor is not None else {}

    def _save_state(self, **extra: Any) -> None:
        if self.attached:  # the state file is its manager's, who writes it (from_file)
            return
        state = {
            **extra,
            "manager_pid": os.getpid(),
            "controller_pid": self.controller.pid if self.controller else None,
            "controller_launcher": self.controller_launcher,
            "engine_pids": [e.pid for e in self.engines if e.poll() is None],
            "temporary": self.temporary,
            "restarts": self.restarts,
            "dashboard_pid": self.dashboard_process.pid if self.dashboard_process else None,
            "launchers": [launcher.state() for launcher in self.launchers],
        }
        # renamed into place: `corral start --daemon`, `corral list` and `corral stop` read it
        # while the manager rewrites it (a reader saw half a file under load)
        write_private_json(self.path / STATE_FILE, state)

    def connect(self) -> Client:
        """A new Client of this cluster (the caller closes it); its ``cluster`` is this."""
        client = Client(connection_file=self.path / CLIENT_FILE, timeout=self.timeout)
        client.cluster = self
        return client

    def start(self, interactive: bool = False) -> Client:
        """Start everything and return a client that sees all ``n`` engines (``interactive``:
        with a progress bar of the engines registering)."""
        try:
            self.start_controller()
            if self.dashboard:
                self.start_dashboard()
            self.start_engines(self.n)
            self.client = self.connect()
            if self.wait_for_engines:
                if self.launchers:
                    wait_for_launched_engines(self.client, self.n, self.launchers, self.timeout)
                else:
                    self.client.wait_for_engines(self.n, self.timeout, interactive=interactive)
                self._save_state(engines_registered=self.n)
            if self.restart:
                self.supervise()
        except BaseException:
            self.stop()
            raise
        return self.client

    # ------------------------------------------------------------ stop

    def stop(self, timeout: float = 10.0) -> None:
        """Shut engines and controller down politely, then make sure they are gone (a cluster
        loaded with ``from_file``: as ``corral stop`` does, its manager first)."""
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        if self.attached:
            if self.client is not None:
                self.client.close()
                self.client = None
            stop_cluster(self.path, timeout)
            wait_or_terminate(self.engines, time.monotonic() + timeout)  # started here
            lock, self._lock = self._lock, None
            if lock is not None:
                release(lock, self.path, remove_folder=False)
            return
        client = self.client
        running = self._controller_running()
        if client is None and running:
            try:
                client = self.connect()
            except CorralError:
                client = None
        if client is not None and not running:
            client.close()  # no controller to pass the shutdown on: end the processes below
            client = self.client = None
        asked = client is not None
        if client is not None:
            told = local_engine_pids(client)
            try:
                client.shutdown(targets="all", hub=True, block=True)
            except (CorralError, OSError):
                pass
            client.close()
            self.client = None
            for engine in unreached_engines(self.engines, told):
                engine.send_signal(signal.SIGTERM)  # nothing if it ended since its poll
        if self.dashboard_process is not None:
            terminate(self.dashboard_process, TERMINATE_GRACE)
        processes = [p for p in [*self.engines, self.controller] if p is not None]
        deadline = time.monotonic() + (timeout if asked else 0.0)
        wait_or_terminate(processes, deadline)
        stop_launchers(self.launchers, max(1.0, deadline - time.monotonic()))
        if self.remote_controller is not None:
            self.remote_controller.stop(0.0)
        # stopped: no segment is needed any more
        sweep(cluster_prefix(self.path), alive=nothing_alive)
        lock, self._lock = self._lock, None
        if self.temporary:
            if lock is not None and not release(lock, self.path, remove_folder=True):
                log.warning("temporary cluster folder %s could not be removed", self.path)
            return
        (self.path / STATE_FILE).unlink(missing_ok=True)
        if lock is not None:
            release(lock, self.path, remove_folder=False)

    def _controller_running(self) -> bool:
        """The controller process runs, or its batch job is still queued or running."""
        if self.controller is not None:
            return self.controller.poll() is None
        jobs = [job for job in self.launchers if job.spec.role == "controller"]
        if jobs:
            return jobs[0].failure() is None
        return self.attached and inspect(self.path).state == "running"  # started elsewhere

    def __repr__(self) -> str:
        """What a notebook shows after ``await cluster.start_cluster()`` (which returns the
        cluster): its id, folder and size, and whether its controller runs, in ipyparallel's
        ``<Cluster(field=value, ...)>`` form rather than an object address."""
        folder = str(self.base_dir)
        home = str(Path.home())
        if folder == home or folder.startswith(home + os.sep):
            folder = "~" + folder[len(home) :]
        fields = f"cluster_id={self.cluster_id!r}, cluster_dir={folder!r}, n={self.n}"
        started = self.controller is not None or self.attached
        if started or any(job.spec.role == "controller" for job in self.launchers):
            fields += f", controller=<{'running' if self._controller_running() else 'stopped'}>"
        return f"<{type(self).__name__}({fields})>"

    def __enter__(self) -> Client:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _written_by(path: Path, pid: int, field: str = "controller_pid", below: bool = False) -> bool:
    """``path`` names ``pid`` in ``field`` (``below``: a descendant of ``pid``)."""
    try:
        written = json.loads(path.read_text()).get(field)
    except (OSError, ValueError):
        return False
    if not below or not isinstance(written, int):
        return bool(written == pid)
    try:
        return pid in (parent.pid for parent in psutil.Process(written).parents())
    except psutil.Error:
        return False


def _launcher_name(controller: object, controller_launcher: str | None) -> str:
    """ipyparallel's ``controller=`` keyword: a launcher name, as ``controller_launcher``."""
    if not isinstance(controller, str):
        raise TypeError(
            f"controller={controller!r}: corral's Cluster takes a launcher name (local, mpi, "
            "ssh, slurm, pbs, lsf, sge; see corral.cluster.launchers), not a launcher class; "
            "extra controller flags go in controller_args"
        )
    if controller_launcher not in (None, "local", controller):
        raise TypeError("give controller or controller_launcher, not both")
    return controller
