"""Starts a controller: binds every socket, starts the queues and the scheduler, and runs the Hub.

Processes and threads (docs/architecture.md): the MUX and control queues are pyzmq's C
monitored queues and iopub a C proxy, each in its own thread (owned here: joined on close), so
no Python runs per message on those paths. The task scheduler runs in its own process
(`corral.controller.scheduler`) so that its Python never competes with the Hub's for the GIL.
The main thread runs the Hub: :mod:`corral.controller.hub_shell` drives the
:class:`~corral.controller.hub.Hub` core on one :class:`~corral.loop.Loop`, which also takes
SIGTERM/SIGINT at once. This module owns what lives as long as the process: the sockets, the
connection files, the scheduler process and the clean stop. What a controller is told is
:mod:`corral.controller.config` (``ControllerConfig`` is importable from here too); how its
scheduler process is started and stopped, :mod:`corral.controller.scheduler_process`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import zmq
from zmq import devices as zmq_devices
from zmq.auth.thread import ThreadAuthenticator

from corral import heap
from corral.controller.config import ControllerConfig, shm_settings
from corral.controller.hub import Hub
from corral.controller.hub_shell import HubShell
from corral.controller.location import reachable_address
from corral.controller.scheduler_process import (
    STOP_GRACE,
    configure_scheduler,
    final_counts,
    launch_scheduler,
)
from corral.controller.store import SQLiteStore, open_store
from corral.errors import CorralError
from corral.lane import AVAILABLE as LANES_AVAILABLE
from corral.lane import LaneListener, lane_name
from corral.lifetime import terminate, watch_owner
from corral.loop import Loop
from corral.priority import lower
from corral.protocol.connection_files import (
    CLIENT_FILE,
    ENGINE_FILE,
    RESTORE_FILE,
    ClientConnection,
    EngineConnection,
    read_json_object,
    write_private_json,
)
from corral.protocol.session import Session, new_key
from corral.security import (
    CurveKeys,
    make_client,
    make_server,
    server_options,
    start_authenticator,
)
from corral.sharedmem import SharedMemory

__all__ = ["Controller", "ControllerConfig", "run_controller"]

# pyzmq's device classes carry no type hints: typed here as Any, once
ThreadMonitoredQueue: Any = zmq_devices.ThreadMonitoredQueue
ThreadProxy: Any = zmq_devices.ThreadProxy

log = logging.getLogger("corral.controller")

STATS_FILE = "controller-stats.json"
# the longest path a Unix socket address may have (107 bytes on Linux, 103 on macOS)
MAX_SOCKET_PATH = 100


def make_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


class Controller:
    """One controller: call :meth:`start`, then :meth:`serve_forever` until stopped."""

    def __init__(self, config: ControllerConfig) -> None:
        self.previous = _previous_connection(config.cluster_path) if config.restore else {}
        if not config.key and self.previous.get("key"):
            # a restored controller keeps its key and ports, so running engines reconnect
            config = replace(config, key=str(self.previous["key"]).encode("ascii"))
        if not config.key and not config.insecure:
            config = replace(config, key=new_key())
        self.config = config
        self.context = zmq.Context()
        self.session = Session(config.key, username="controller", check_msg_type=False)
        self.url = f"{config.transport}://{config.ip}"
        # what engines and clients connect to: never the wildcard the sockets are bound to
        self.connect_ip = reachable_address(config.ip, config.location)
        self.connect_url = f"{config.transport}://{self.connect_ip}"
        self._stopping = False
        self.loop = Loop("hub")  # the main thread's: run_controller routes signals to it
        self.shell: HubShell | None = None
        self.copies_lanes: LaneListener | None = None
        self.failed = False  # stopped by a fault (the scheduler died), not on request
        self._devices: list[Any] = []
        self._sockets: list[zmq.Socket[Any]] = []  # this thread's, all closed by close()
        self._scheduler: subprocess.Popen[bytes] | None = None
        self.hub: Hub | None = None
        # fresh keys on every start: the server secret is never stored, so a restored
        # controller cannot take back the engines and clients of the one before it
        self.curve = CurveKeys.generate() if config.curve else None
        self._authenticator: ThreadAuthenticator | None = None
        self.shm = SharedMemory(
            shm_settings(config), hub=True, lone_hub_link_grace=config.lone_hub_link_grace
        )
        # whether the scheduler's copies reach the Hub over a socket only this user can reach
        # (_bind_monitor), and the directory that holds it (removed by close)
        self.trusted_copies = False
        self._private_dir: str | None = None
        self._monitor_events: zmq.Socket[Any] | None = None  # until the scheduler connected

    # ------------------------------------------------------------ start

    def _port(self, name: str) -> int:
        """The port ``name`` had before a restart (0 if none: pick a free one)."""
        port = self.previous.get(name)
        return port if isinstance(port, int) and port > 0 else 0

    def _socket(self, kind: int) -> zmq.Socket[Any]:
        """A socket of this thread, closed by :meth:`close` before the context ends."""
        sock = self.context.socket(kind)
        sock.linger = 0
        self._sockets.append(sock)
        return sock

    def _listen_lanes(self) -> LaneListener | None:
        """The Hub's lane listener for engines' copies, or None where lanes are not (not
        Linux) or cannot be bound (logged: the copies PULL serves alone)."""
        if not LANES_AVAILABLE:
            return None
        try:
            return LaneListener(lane_name(f"hub-{self.config.cluster_id or 'default'}"))
        except OSError as err:
            log.warning("no lane for the engines' copies: %s", err)
            return None

    def _bind(self, kind: int, name: str = "") -> tuple[zmq.Socket[Any], int]:
        sock = self._socket(kind)
        if self.curve is not None:
            make_server(sock, self.curve)
        port = self._port(name)
        if port:
            sock.bind(f"{self.url}:{port}")
        else:
            port = sock.bind_to_random_port(self.url)
        return sock, port

    def _bind_monitor(self) -> tuple[zmq.Socket[Any], str]:
        """The SUB for the scheduler's copies and the address the scheduler connects to: a Unix
        socket in a new directory only this user can enter (mode 0700), so that no other
        user's process can write copies to the Hub (:attr:`trusted_copies`), removed as soon
        as the scheduler is connected (:meth:`_seal_monitor`); TCP on the controller's address
        where there are no Unix sockets or the path would be too long."""
        sock = self._socket(zmq.SUB)
        if self.curve is not None:
            make_server(sock, self.curve)
        if zmq.has("ipc"):
            try:
                folder = tempfile.mkdtemp(prefix="corral-monitor-")  # mode 0700
            except OSError as err:
                log.warning("no private folder for the scheduler's copies (%s): using TCP", err)
            else:
                self._private_dir = folder
                path = os.path.join(folder, "monitor")
                if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
                    # watched before anyone can connect: the scheduler's connection is the
                    # first accepted (_seal_monitor)
                    self._monitor_events = sock.get_monitor_socket(zmq.EVENT_ACCEPTED)
                    self._sockets.append(self._monitor_events)
                    try:
                        sock.bind(f"ipc://{path}")
                    except zmq.ZMQError as err:
                        log.warning("cannot bind %s (%s): copies come over TCP", path, err)
                    else:
                        self.trusted_copies = True
                        return sock, f"ipc://{path}"
                self._remove_private_dir()
        port = sock.bind_to_random_port(self.url)
        return sock, f"{self.url}:{port}"

    def _seal_monitor(self, timeout: float = 30.0) -> None:
        """Once the scheduler's PUB is connected to the Unix socket of :meth:`_bind_monitor`,
        the socket's file and folder go: the connection stays, no other process can ever
        connect, and a controller killed later leaves nothing behind. Without a scheduler
        they go at once. A scheduler that did not connect within ``timeout`` is logged (its
        copies would not reach the Hub) and the file stays until :meth:`close`."""
        events = self._monitor_events
        if events is None:
            return
        try:
            if self._scheduler is not None and not events.poll(int(timeout * 1000)):
                log.error("the scheduler did not connect to the Hub within %s s", timeout)
                return
            self._remove_private_dir()
        finally:
            self.monitor.disable_monitor()
            self._monitor_events = None

    def _remove_private_dir(self) -> None:
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    def _bind_device(self, device: Any, side: str, name: str) -> int:
        if self.curve is not None:
            for option, value in server_options(self.curve):
                getattr(device, f"setsockopt_{side}")(option, value)
        port = self._port(name)
        if port:
            getattr(device, f"bind_{side}")(f"{self.url}:{port}")
            return port
        return int(getattr(device, f"bind_{side}_to_random_port")(self.url))

    def _queue_device(self, name: str) -> tuple[int, int]:
        """A C monitored queue (ROUTER clients / ROUTER engines) whose copies reach the Hub."""
        device = ThreadMonitoredQueue(
            zmq.ROUTER, zmq.ROUTER, zmq.PUB, f"{name}_in".encode(), f"{name}_out".encode()
        )
        device.context_factory = lambda: self.context
        device.daemon = True
        client_port = self._bind_device(device, "in", name)
        engine_port = self._bind_device(device, "out", f"{name}_engine")
        device.setsockopt_mon(zmq.SNDHWM, 0)  # every copy reaches the Hub (see start)
        device.bind_mon(f"inproc://monitor-{name}")
        device.setsockopt_in(zmq.LINGER, 0)
        device.setsockopt_out(zmq.LINGER, 0)
        # a ROUTER drops what it cannot queue for a peer: with no high-water mark a burst of
        # requests (or replies) waits here for a slow engine (or client) instead of being lost
        device.setsockopt_in(zmq.SNDHWM, 0)
        device.setsockopt_out(zmq.SNDHWM, 0)
        device.start()
        self._devices.append(device)
        return client_port, engine_port

    def start(self) -> None:
        config = self.config
        make_private_dir(config.cluster_path)
        # what an earlier run, or its dead processes, left; and other clusters' dead processes
        self.shm.sweep(hub_alive=False, others=True)
        self.store = open_store(
            config.db, config.cluster_path, config.cluster_id, retention=config.retention
        )
        if self.curve is not None:
            self._authenticator = start_authenticator(self.context, self.curve)
        self.registration, reg_port = self._bind(zmq.ROUTER, "registration")
        self.notification, notify_port = self._bind(zmq.PUB, "notification")
        self.ping, ping_port = self._bind(zmq.PUB, "hb_ping")
        self.pong, pong_port = self._bind(zmq.ROUTER, "hb_pong")
        # a dead engine's connections close at once: the pong socket's disconnections, mapped
        # to engines by the file descriptor their pongs arrive on, make the Hub probe them
        self.pong_events = self.pong.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._sockets.append(self.pong_events)
        # two monitor SUBs: one bound for the scheduler's PUB (a curve server under --curve),
        # one connected to the devices' inproc PUBs (inproc has no wire, so no curve)
        self.monitor, monitor_address = self._bind_monitor()
        self.monitor.subscribe(b"")
        self.queue_monitor = self._socket(zmq.SUB)
        # no high-water mark on the monitor path: a copy dropped there is a task the Hub never
        # records (it lags behind a burst, then catches up); set before any peer connects
        # engines send the copies of the requests clients sent them directly, and of their
        # replies, in the devices' format (docs/wire-flows.md, "Direct requests")
        self.engine_copies, copies_port = self._bind(zmq.PULL, "copies_engine")
        # and on a lane, for engines on this host (corral.lane): no zmq I/O thread on either
        # side, and the copy is in the Hub's socket before the engine's reply leaves
        self.copies_lanes = self._listen_lanes()
        for monitor in (self.monitor, self.queue_monitor, self.engine_copies):
            monitor.rcvhwm = 0
        self.queue_monitor.subscribe(b"")
        # the monitor PUBs of the devices bind when their threads start: wait for each
        mux_client, mux_engine = self._queue_device("mux")
        control_client, control_engine = self._queue_device("control")
        for name in ("mux", "control"):
            _connect_when_bound(self.queue_monitor, f"inproc://monitor-{name}")
        iopub = ThreadProxy(zmq.XSUB, zmq.XPUB)
        iopub.context_factory = lambda: self.context
        iopub.daemon = True
        iopub_engine = self._bind_device(iopub, "in", "iopub_engine")
        iopub_client = self._bind_device(iopub, "out", "iopub")
        iopub.start()
        self._devices.append(iopub)

        task_client = task_engine = None
        if config.scheduler:
            task_client, task_engine = self._start_scheduler(
                f"{self.url}:{notify_port}", monitor_address
            )
        self._seal_monitor()

        def address(port: int | None) -> str | None:
            return f"{self.connect_url}:{port}" if port is not None else None

        engine_addresses = {
            "mux": address(mux_engine),
            "control": address(control_engine),
            "task": address(task_engine),
            "iopub": address(iopub_engine),
            "hb_ping": address(ping_port),
            "hb_pong": address(pong_port),
            "copies": address(copies_port),
            "copies_lane": self.copies_lanes.name if self.copies_lanes is not None else None,
        }
        client_addresses = {
            "mux": address(mux_client),
            "control": address(control_client),
            "task": address(task_client),
            "iopub": address(iopub_client),
            "notification": address(notify_port),
        }
        self.hub = Hub(
            self.store,
            {k: v for k, v in engine_addresses.items() if v},
            client_addresses,
            config.heartbeat_period,
            config.max_misses,
            config.reregistration_grace,
        )
        if config.restore:
            self.hub.restore()
        # the Hub's own clients of the MUX and task queues: it sends resubmitted tasks there
        self.resubmit_sockets: dict[str, zmq.Socket[Any]] = {}
        for queue, port in (("mux", mux_client), ("task", task_client)):
            if port is None:
                continue
            sock = self._socket(zmq.DEALER)
            sock.identity = self.hub.resubmit_identity.encode()
            sock.sndhwm = 0  # a large resubmit is queued whole, never refused half-way
            if self.curve is not None:
                make_client(sock, self.curve)
            sock.connect(f"{self.connect_url}:{port}")
            self.resubmit_sockets[f"resubmit_{queue}"] = sock
        common = EngineConnection(
            cluster_id=config.cluster_id,
            key=config.key,
            transport=config.transport,
            ip=self.connect_ip,
            location=socket.gethostname(),
            controller_pid=os.getpid(),
            registration=reg_port,
            curve=self.curve,
            shm=None if self.shm.settings is None else self.shm.settings.to_json(),
        )
        engine_file = replace(
            common,
            mux_engine=mux_engine,
            control_engine=control_engine,
            task_engine=task_engine,
            iopub_engine=iopub_engine,
            hb_ping=ping_port,
            hb_pong=pong_port,
            copies_engine=copies_port,
            heartbeat_period=config.heartbeat_period,
        )
        client_file = ClientConnection(
            **common.common_fields(),
            notification=notify_port,
            mux=mux_client,
            control=control_client,
            task=task_client,
            iopub=iopub_client,
            store={"db": config.db.split(":")[0], **config.retention.describe()},
            # readers of the history (the dashboard) page the file without the Hub
            sqlite_store=(
                str(self.store.path.absolute()) if isinstance(self.store, SQLiteStore) else None
            ),
        )
        write_private_json(config.cluster_path / CLIENT_FILE, client_file.to_json())
        # what --restore needs outlives the connection files, which a clean stop removes
        write_private_json(
            config.cluster_path / RESTORE_FILE, {**engine_file.to_json(), **client_file.to_json()}
        )
        write_private_json(config.cluster_path / ENGINE_FILE, engine_file.to_json())
        log.info(
            "controller %s listening on %s (registration port %d)",
            config.cluster_id,
            config.ip,
            reg_port,
        )

    def scheduler_settings(self, notification: str, monitor: str) -> dict[str, Any]:
        """What the task scheduler process is told on its stdin (:class:`~corral.controller.
        scheduler_shell.SchedulerShell`): the key, where to bind and connect, the policy and
        its limits, the store's buffer limit, whether the Hub checks its copies."""
        settings: dict[str, Any] = {
            "key": self.config.key.decode("ascii"),
            "signature_scheme": "hmac-sha256",
            "url": self.url,
            "notification": notification,
            "monitor": monitor,
            "policy": self.config.scheduler_policy,
            "max_outstanding": self.config.max_outstanding,
            "burst_prefetch": self.config.burst_prefetch,
            "burst_packing": self.config.burst_packing,
            "long_task": self.config.long_task,
            # the Hub keeps a request's buffers up to this size: larger ones are not copied
            "request_buffer_limit": self.config.retention.buffer_limit,
            "parent_pid": os.getpid(),
            "task": self._port("task"),
            "task_engine": self._port("task_engine"),
            "log_level": logging.getLogger().level,
            # the Hub does not check this scheduler's copies (_bind_monitor)
            "trusted_copies": self.trusted_copies,
        }
        if self.curve is not None:
            settings["curve"] = self.curve.to_settings()
        return settings

    def _start_scheduler(self, notification: str, monitor: str) -> tuple[int, int]:
        """Start the task scheduler process; it reports the two ports it bound."""
        settings = self.scheduler_settings(notification, monitor)
        self._scheduler = launch_scheduler()
        return configure_scheduler(self._scheduler, settings)

    # ------------------------------------------------------------ serve

    def serve_forever(self) -> None:
        """Run the Hub's loop (:mod:`corral.controller.hub_shell`) until stopped."""
        assert self.hub is not None
        sockets = {
            "registration": self.registration,
            "notification": self.notification,
            "ping": self.ping,
            "pong": self.pong,
            "pong_events": self.pong_events,
            "monitor": self.monitor,
            "queue_monitor": self.queue_monitor,
            "engine_copies": self.engine_copies,
            **self.resubmit_sockets,
        }
        self.shell = HubShell(
            self.loop,
            self.hub,
            self.session,
            self.store,
            self.shm,
            sockets,
            self._stop,
            self._scheduler,
            trusted_copies=self.trusted_copies,
            copies_lanes=self.copies_lanes,
        )
        self.shm.sweep()
        # the devices' threads and the scheduler (started by now) keep their priority
        lower([*self.store.background_threads(), threading.current_thread()], self.config.hub_nice)
        if not self._stopping:
            self.loop.run()

    # ------------------------------------------------------------ stop

    def request_stop(self, *_: Any) -> None:
        """SIGTERM/SIGINT (through the loop, at once) or a caller: stop serving."""
        self._stop(False)

    def _stop(self, failed: bool) -> None:
        self._stopping = True
        self.failed = self.failed or failed
        self.loop.stop()

    def close(self) -> None:
        """Stop the scheduler, flush the store, close every socket, join the device threads,
        remove connection files, and write the message counts to ``controller-stats.json``."""
        scheduler_counts = self.shell.scheduler_counts if self.shell is not None else None
        if self._scheduler is not None:
            terminate(self._scheduler, STOP_GRACE)
            scheduler_counts = scheduler_counts or final_counts(self._scheduler)
        self._write_stats(scheduler_counts)
        if hasattr(self, "store"):
            try:
                self.store.close()
            except CorralError as err:
                log.error("result store: %s", err)
        if self._authenticator is not None:
            self._authenticator.stop()
        if hasattr(self, "pong_events"):
            self.pong.disable_monitor()
        self.loop.close()
        if self.shell is not None:
            self.shell.close_lanes()
        if self.copies_lanes is not None:
            self.copies_lanes.close()
        for sock in self._sockets:
            sock.close(linger=0)
        # the devices' threads own their sockets: terminating the context ends their proxies,
        # they close their sockets, and term returns; then each thread is joined
        self.context.term()
        for device in self._devices:
            device.join(10)
            if device.launcher.is_alive():
                log.warning("a queue device thread did not stop")
        self._remove_private_dir()
        self.shm.sweep(final=True)
        for name in (CLIENT_FILE, ENGINE_FILE):
            try:
                (self.config.cluster_path / name).unlink()
            except FileNotFoundError:
                pass

    def _write_stats(self, scheduler_counts: dict[str, Any] | None) -> None:
        """What this controller saw, for whoever stops a cluster and wants to know (the fuzz
        test prints it): messages handled, and rejected (bad signature, replay, malformed)."""
        stats = {
            "controller": {
                "rejected": self.loop.rejected,
                "monitored": self.shell.monitored if self.shell is not None else 0,
                "queries": self.hub.queries if self.hub is not None else 0,
                "hub_rejected": self.hub.rejected if self.hub is not None else 0,
                "lane_copies": self.shell.lane_copies if self.shell is not None else 0,
                "lane_gathered": self.shell.lane_gathered if self.shell is not None else 0,
            },
            "scheduler": scheduler_counts,
        }
        try:
            write_private_json(self.config.cluster_path / STATS_FILE, stats)
        except OSError as err:
            log.warning("could not write %s: %s", STATS_FILE, err)


def _connect_when_bound(sock: zmq.Socket[Any], address: str, timeout: float = 10.0) -> None:
    """Connect to an inproc address a device thread is about to bind."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(address)
            return
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def _previous_connection(cluster_path: Path) -> dict[str, Any]:
    """Key and ports of the controller before: from the connection files a killed one left
    behind, else from the restore file a cleanly stopped one kept."""
    merged: dict[str, Any] = {}
    for name in (RESTORE_FILE, CLIENT_FILE, ENGINE_FILE):
        merged.update(read_json_object(cluster_path / name) or {})
    return merged


def run_controller(config: ControllerConfig, owner_pid: int | None = None) -> int:
    """Run a controller in this process until SIGINT/SIGTERM, a hub shutdown request or the
    end of ``owner_pid`` (its parent: ``--owner-pid``) (exit status 0), or a fault (1: a
    supervisor restarts it)."""
    controller = Controller(config)
    # acted on at once by the loop, also when they arrive while start() still runs
    controller.loop.handle_signals((signal.SIGTERM, signal.SIGINT), controller.request_stop)
    watch_owner(controller.loop, owner_pid, controller.request_stop)
    try:
        controller.start()
        heap.settle(heap.HUB_YOUNG_THRESHOLD)
        controller.serve_forever()
    finally:
        controller.close()
    return 1 if controller.failed else 0
