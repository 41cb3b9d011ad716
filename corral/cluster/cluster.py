"""Start and stop a local cluster (controller + engines) from Python.

``with corral.Cluster(n=4) as rc:`` starts a controller process and four engine processes,
waits until the client sees every engine, and on exit shuts them all down and makes sure no
process is left behind, even when the body raised.
"""

from __future__ import annotations

import json
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
from corral.cluster.launchers.base import EngineLauncher, LaunchSpec, wait_for_launched_engines
from corral.cluster.launchers.controller import SSHController
from corral.cluster.launchers.local import LocalLauncher
from corral.cluster.launchers.registry import engine_launcher
from corral.cluster.launchers.watch import cancel_recorded_jobs, stop_launchers
from corral.errors import ConnectionError, CorralError, LaunchError, TimeoutError

CLIENT_FILE = "corral-client.json"
ENGINE_FILE = "corral-engine.json"
STATE_FILE = "cluster.json"


def default_cluster_dir() -> Path:
    """Where clusters live: ``$CORRAL_DIR`` or ``~/.corral``."""
    return Path(os.environ.get("CORRAL_DIR", "~/.corral")).expanduser()


def cluster_path(cluster_id: str = "default", cluster_dir: str | Path | None = None) -> Path:
    """The folder of one cluster: ``<cluster_dir>/<cluster_id>``."""
    base = Path(cluster_dir).expanduser() if cluster_dir else default_cluster_dir()
    return base / cluster_id


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


class Cluster:
    """A controller and ``n`` engines as local processes, with a connected Client.

    ``cluster_dir`` is the parent folder (default ``$CORRAL_DIR`` or ``~/.corral``); the cluster
    lives in ``<cluster_dir>/<cluster_id>/``. ``controller_args`` are extra flags for
    ``corral controller`` (``--db``, ``--restore``, ``--ip`` ...). ``engines`` names the
    engine launcher (local, mpi, ssh, slurm, pbs, lsf, sge; corral.cluster.launchers) and
    ``launcher_options`` its options (``{"partition": "debug"}``, ``{"hosts": ["a", "b"]}``).
    """

    def __init__(
        self,
        n: int = 4,
        *,
        cluster_id: str | None = None,
        cluster_dir: str | Path | None = None,
        heartbeat_period: float | None = None,
        db: str = "sqlite",
        controller_args: Sequence[str] = (),
        engine_args: Sequence[str] = (),
        timeout: float = 60.0,
        log_level: str = "WARNING",
        engines: str = "local",
        launcher_options: Mapping[str, Any] | None = None,
        controller_launcher: str = "local",
        controller_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.n = n
        self.cluster_id = cluster_id or f"cluster-{uuid.uuid4().hex[:8]}"
        self.base_dir = Path(cluster_dir).expanduser() if cluster_dir else default_cluster_dir()
        self.path = self.base_dir / self.cluster_id
        self.heartbeat_period = heartbeat_period
        self.db = db
        self.controller_args = list(controller_args)
        self.engine_args = list(engine_args)
        self.timeout = timeout
        self.log_level = log_level
        self.controller: subprocess.Popen[bytes] | None = None
        self.engines: list[subprocess.Popen[bytes]] = []  # the local launcher's processes
        self.engine_launcher = engines
        self.launcher_options = dict(launcher_options or {})
        self.launchers: list[EngineLauncher] = []
        self.controller_launcher = controller_launcher
        self.controller_options = dict(controller_options or {})
        self.remote_controller: SSHController | None = None
        self.client: Client | None = None

    # ------------------------------------------------------------ processes

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        log_file = open(self.path / log_name, "ab")  # noqa: SIM115 (the child owns it)
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "corral", *args],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log_file.close()

    def start_controller(self) -> None:
        """Start the controller and wait for its connection files."""
        heartbeat = []
        if self.heartbeat_period is not None:
            heartbeat = ["--heartbeat-period", str(self.heartbeat_period)]
        if self.controller_launcher != "local":  # the far side has its own folder, no owner
            far = ["--db", self.db, "--log-level", self.log_level, *heartbeat]
            self._start_remote_controller(far)
            return
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
        self.controller = self._spawn(args + self.controller_args, "controller.log")
        controller = self.controller
        # files a killed controller left behind name another pid: wait for this one's
        _wait_for(
            lambda: _written_by(self.path / ENGINE_FILE, controller.pid),
            self.timeout,
            f"controller of cluster {self.cluster_id}",
            alive=lambda: controller.poll() is None,
        )
        self._save_state()

    def _start_remote_controller(self, args: list[str]) -> None:
        """The controller on another host (``controller_launcher="ssh"``); its connection
        files are mirrored into this cluster's folder."""
        if self.controller_launcher != "ssh":
            raise LaunchError(
                f"no controller launcher {self.controller_launcher!r}; choose local or ssh"
            )
        self.remote_controller = SSHController(
            self.cluster_id, self.path, args + self.controller_args, self.controller_options
        )
        self.controller = self.remote_controller.start(self.timeout)
        self._save_state()

    def start_engines(self, n: int) -> list[subprocess.Popen[bytes]]:
        """Start ``n`` more engines with this cluster's launcher (they register by themselves);
        the local processes started, if the launcher is local."""
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
        if self.engine_launcher == "local":
            launcher: EngineLauncher = LocalLauncher(spec, first_index=len(self.engines))
        else:
            launcher = engine_launcher(self.engine_launcher, spec)
        self.launchers.append(launcher)
        launcher.start()
        started = launcher.processes if isinstance(launcher, LocalLauncher) else []
        self.engines.extend(started)
        self._save_state()
        return started

    def _save_state(self, **extra: Any) -> None:
        state = {
            **extra,
            "manager_pid": os.getpid(),
            "controller_pid": self.controller.pid if self.controller else None,
            "engine_pids": [e.pid for e in self.engines if e.poll() is None],
            "launchers": [launcher.state() for launcher in self.launchers],
        }
        (self.path / STATE_FILE).write_text(json.dumps(state))

    def connect(self) -> Client:
        """A new Client of this cluster (the caller closes it)."""
        return Client(connection_file=self.path / CLIENT_FILE, timeout=self.timeout)

    def start(self) -> Client:
        """Start everything and return a client that sees all ``n`` engines."""
        try:
            self.start_controller()
            self.start_engines(self.n)
            self.client = self.connect()
            wait_for_launched_engines(self.client, self.n, self.launchers, self.timeout)
            self._save_state(engines_registered=self.n)
        except BaseException:
            self.stop()
            raise
        return self.client

    # ------------------------------------------------------------ stop

    def stop(self, timeout: float = 10.0) -> None:
        """Shut engines and controller down politely, then make sure they are gone."""
        client = self.client
        if client is None and self.controller is not None and self.controller.poll() is None:
            try:
                client = self.connect()
            except CorralError:
                client = None
        if client is not None:
            try:
                client.shutdown(targets="all", hub=True, block=True)
            except (CorralError, OSError):
                pass
            client.close()
            self.client = None
        processes = [p for p in [*self.engines, self.controller] if p is not None]
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _terminate(process)
        stop_launchers(self.launchers, max(1.0, deadline - time.monotonic()))
        if self.remote_controller is not None:
            self.remote_controller.stop(0.0)
        (self.path / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> Client:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _written_by(path: Path, pid: int) -> bool:
    try:
        return bool(json.loads(path.read_text()).get("controller_pid") == pid)
    except (OSError, ValueError):
        return False


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a grace period; reap the process either way."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(3)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_cluster(path: Path, timeout: float = 10.0) -> bool:
    """Stop the cluster in ``path`` (from another process): ask its manager, else the Hub,
    then kill what is left. True if something was running."""
    state_file = path / STATE_FILE
    state: dict[str, Any] = {}
    if state_file.exists():
        state = json.loads(state_file.read_text())
    manager = state.get("manager_pid")
    pids = [
        p
        for p in [manager, state.get("controller_pid"), *state.get("engine_pids", [])]
        if isinstance(p, int) and p != os.getpid()
    ]
    was_running = any(psutil.pid_exists(p) for p in pids)
    if manager and manager != os.getpid() and psutil.pid_exists(manager):
        os.kill(manager, signal.SIGTERM)
    elif (path / CLIENT_FILE).exists():
        try:
            client = Client(connection_file=path / CLIENT_FILE, timeout=5)
        except ConnectionError:
            client = None
        if client is not None:
            was_running = True
            try:
                client.shutdown(targets="all", hub=True, block=True)
            except ConnectionError:
                pass  # it went away meanwhile (its owner died): what is left is killed below
            finally:
                client.close()
    processes = [process for process in map(_process, pids) if process is not None]
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    was_running = cancel_recorded_jobs(state.get("launchers", [])) or was_running
    for process in alive:
        process.kill()
    state_file.unlink(missing_ok=True)
    return was_running


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
