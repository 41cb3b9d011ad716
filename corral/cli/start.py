"""``corral start``: a supervised cluster in the foreground (Ctrl-C stops it), or
``--daemon``: a manager process in the background, waited for until its engines are up."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from corral.cli.flags import cluster_path, controller_args
from corral.cluster.folders import STATE_FILE
from corral.errors import CorralError
from corral.protocol.connection_files import CLIENT_FILE, DASHBOARD_FILE, read_json_object

MANAGER_LOG = "cluster-manager.log"


def cmd_start(args: argparse.Namespace) -> int:
    from corral.cluster.cluster import Cluster
    from corral.cluster.launchers.config import controller_choice, launcher_argv, resolve
    from corral.cluster.launchers.local import usable_cores
    from corral.cluster.launchers.watch import launcher_failures

    config_path = cluster_path(args).with_suffix(".toml")
    try:
        launcher, configured_n, options = resolve(args, config_path)
        controller_launcher, controller_options = controller_choice(args, config_path)
    except CorralError as err:
        print(f"corral start: {err}", file=sys.stderr)
        return 1
    if args.ip is None and controller_launcher not in ("local", "mpi"):
        args.ip = "0.0.0.0"  # elsewhere: listen where engines and clients here reach it
    n = args.engines if args.engines is not None else configured_n or (usable_cores() or 1)
    if args.daemon:
        argv = [
            sys.executable,
            "-m",
            "corral",
            "start",
            "-n",
            str(n),
            "--cluster-id",
            args.cluster_id,
            "--log-level",
            args.log_level,
            "--db",
            args.db,
            *controller_args(args),
            *launcher_argv(args),
        ]
        if args.cluster_dir:
            argv += ["--cluster-dir", args.cluster_dir]
        if args.no_restart:
            argv.append("--no-restart")
        argv += ["--dashboard-ip", args.dashboard_ip, "--dashboard-port", str(args.dashboard_port)]
        if args.no_dashboard:
            argv.append("--no-dashboard")
        path = cluster_path(args)
        argv += ["--log-file", str(path / MANAGER_LOG)]
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(path / MANAGER_LOG, "ab") as log_file:
            manager = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + args.start_timeout + 30
        while not (path / STATE_FILE).exists() or not _engines_up(path, n, args.no_wait):
            if manager.poll() is not None:
                tail = (path / MANAGER_LOG).read_text(errors="replace")[-3000:]
                print(f"cluster {args.cluster_id} did not start:\n{tail}", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"cluster {args.cluster_id} did not start; see {path}", file=sys.stderr)
                return 1
            time.sleep(0.1)
        if args.no_wait:
            return _print_submitted(path, args.cluster_id)
        if not _wait_for_registration(path, n, deadline):
            print(
                f"cluster {args.cluster_id}: engines did not register; see {path}", file=sys.stderr
            )
            return 1
        print(
            f"cluster {args.cluster_id} running in the background with {n} engines; "
            f"`corral stop --cluster-id {args.cluster_id}` stops it"
        )
        _print_dashboard(path)
        return 0

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    from corral.dashboard import INSTALL_HINT, available

    dashboard = not args.no_dashboard and available()
    if not args.no_dashboard and not dashboard:
        print(f"no dashboard: {INSTALL_HINT}", file=sys.stderr)
    cluster = Cluster(
        n,
        dashboard=dashboard,
        dashboard_args=[
            "--dashboard-ip",
            args.dashboard_ip,
            "--dashboard-port",
            str(args.dashboard_port),
        ],
        cluster_id=args.cluster_id,
        cluster_dir=args.cluster_dir,
        heartbeat_period=args.heartbeat_period,
        db=args.db,
        controller_args=controller_args(args),
        log_level=args.log_level,
        restart=not args.no_restart,
        engines=launcher,
        launcher_options=options,
        controller_launcher=controller_launcher,
        controller_options=controller_options,
        timeout=args.start_timeout,
        wait_for_engines=not args.no_wait,
    )
    try:
        rc = cluster.start(interactive=sys.stderr.isatty())  # a progress bar on a terminal
    except CorralError as err:
        print(f"corral start: {err}", file=sys.stderr)
        return 1
    print(
        f"cluster {args.cluster_id}: controller and {len(rc.ids)} engines running "
        f"({cluster.path}); Ctrl-C stops them",
        flush=True,
    )
    if args.no_wait:
        print(f"{n} engines submitted: they register when they run", flush=True)
    if cluster.dashboard_url:
        print(f"dashboard: {cluster.dashboard_url}", flush=True)
    lost: set[str] = set()
    try:
        while not stop.wait(0.5):
            if cluster.controller_gone:
                print("the controller exited and is not restarted", file=sys.stderr)
                break
            for why in set(launcher_failures(cluster.launchers)) - lost:
                lost.add(why)
                print(f"lost: {why}", file=sys.stderr, flush=True)
                cluster._save_state()
    finally:
        cluster.stop()
        print(f"cluster {args.cluster_id} stopped", flush=True)
    return 0


def _wait_for_registration(path: Path, n: int, deadline: float) -> bool:
    """Wait until ``n`` engines of the cluster in ``path`` are registered (a progress bar on a
    terminal); False if they are not by ``deadline``."""
    from corral.client.client import Client

    try:
        with Client(path / CLIENT_FILE) as rc:
            left = max(0.0, deadline - time.monotonic())
            rc.wait_for_engines(n, timeout=left, interactive=sys.stderr.isatty())
    except CorralError:
        return False
    return True


def _print_dashboard(path: Path) -> None:
    try:
        print(f"dashboard: {json.loads((path / DASHBOARD_FILE).read_text())['url']}")
    except (OSError, ValueError, KeyError):
        pass  # started without one


def _print_submitted(path: Path, cluster_id: str) -> int:
    """`corral start --daemon --no-wait`: say which jobs were submitted, and return."""
    from corral.cluster.launchers.config import submitted_jobs

    jobs = submitted_jobs(json.loads((path / STATE_FILE).read_text()))
    started = (
        f"{', '.join(jobs)} submitted: the engines register when it runs "
        "(`corral list` shows the job's state)"
        if jobs
        else "the engines register as they start"
    )
    print(
        f"cluster {cluster_id} running in the background; {started}; "
        f"`corral stop --cluster-id {cluster_id}` stops it"
    )
    _print_dashboard(path)
    return 0


def _engines_up(path: Path, n: int, submitted: bool = False) -> bool:
    """The daemon's manager has started ``n`` engines (``submitted``: its launchers have
    submitted or started them) and the controller's files are there."""
    state = read_json_object(path / STATE_FILE)
    if state is None:
        return False
    if submitted:
        launched = bool(state.get("launchers") or state.get("engine_pids"))
        return launched and (path / CLIENT_FILE).exists()
    up = len(state.get("engine_pids", [])) >= n or state.get("engines_registered", 0) >= n
    return bool(up) and (path / CLIENT_FILE).exists()
