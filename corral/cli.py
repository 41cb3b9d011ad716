"""The ``corral`` command: start, stop and list clusters; run a controller or an engine.

corral start -n 4 [--cluster-id ID] [--daemon] [--no-restart]   controller + engines (supervised)
corral stop [--cluster-id ID] [--clean]
corral list [--all]
corral clean [--older-than 7d] [--cluster-id ID]
corral controller [--ip IP] [--curve] [--db sqlite|memory|mongodb://...] [--restore] ...
corral engine [--file corral-engine.json | --cluster-id ID]
corral dashboard [--cluster-id ID] [--dashboard-port PORT]
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from corral.errors import CorralError

DEFAULT_ID = "default"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster-id", default=DEFAULT_ID, help="cluster name (default: default)")
    parser.add_argument(
        "--cluster-dir",
        default=None,
        help="folder holding clusters (default: $CORRAL_DIR or ~/.corral)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--log-file",
        default=None,
        help="log (and stdout/stderr) to this file, rotated (default: to stderr)",
    )
    parser.add_argument(
        "--log-max-bytes", default="10M", help="rotate the log file at this size (default 10M)"
    )
    parser.add_argument(
        "--log-backups", type=int, default=3, help="rotated log files kept (default 3)"
    )


def _controller_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ip",
        default=None,
        help="interface to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for a "
        "controller started over ssh or as a batch job, so that other hosts reach it)",
    )
    parser.add_argument(
        "--db",
        default="sqlite",
        help="result store: sqlite (default), memory, or mongodb://host:port/db",
    )
    parser.add_argument(
        "--restore",
        action="store_true",
        help="keep the existing result store and serve its records",
    )
    parser.add_argument("--heartbeat-period", type=float, default=3.0, help="seconds")
    parser.add_argument(
        "--max-misses", type=int, default=3, help="missed beats before an engine is declared dead"
    )
    parser.add_argument(
        "--scheduler",
        default="leastload",
        choices=["leastload", "lru", "random", "weighted"],
        help="load-balancing policy",
    )
    parser.add_argument(
        "--max-outstanding", type=int, default=16, help="tasks in flight per engine (prefetch)"
    )
    parser.add_argument(
        "--owner-pid",
        type=int,
        default=None,
        help="stop when this parent process is gone (set by corral start)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="disable message signing (empty key): anyone can run code",
    )
    parser.add_argument(
        "--curve",
        action="store_true",
        help="encrypt and authenticate every connection with CurveZMQ "
        "(on by default when listening beyond loopback)",
    )
    parser.add_argument(
        "--no-curve",
        action="store_true",
        help="beyond loopback, do NOT encrypt (a loud warning is logged): for trusted networks",
    )
    parser.add_argument(
        "--location",
        default=None,
        help="the address other hosts reach the controller at, written into the connection "
        "files (default: --ip, or this host's first address outside loopback for 0.0.0.0)",
    )
    parser.add_argument(
        "--store-buffer-limit",
        default=None,
        help="largest result buffers the store keeps per result; larger results are recorded "
        "without them (default 64M; 'none': no limit)",
    )
    parser.add_argument(
        "--store-size-limit",
        default=None,
        help="size of the result store; past it the oldest completed results are purged "
        "(default 2G; 'none': no limit)",
    )
    parser.add_argument(
        "--result-ttl",
        default=None,
        help="completed results older than this are purged: 12h, 7d ... "
        "(default 7d; 'none': kept until the size limit)",
    )
    parser.add_argument(
        "--shm-threshold",
        type=int,
        default=1 << 20,
        help="buffers of at least this many bytes go through shared memory between processes "
        "on one host (default 1048576; 0 turns the fast path off)",
    )


def _dashboard_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dashboard-ip", default="127.0.0.1", help="dashboard interface (default 127.0.0.1)"
    )
    parser.add_argument(
        "--dashboard-port", type=int, default=0, help="dashboard port (default: a free one)"
    )


def build_parser() -> argparse.ArgumentParser:
    from corral.cluster.launchers.config import add_launcher_flags

    parser = argparse.ArgumentParser(
        prog="corral", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start a controller and engines")
    start.add_argument(
        "-n", dest="engines", type=int, default=None, help="engines to start (default: one per CPU)"
    )
    start.add_argument("--daemon", action="store_true", help="run in the background")
    start.add_argument(
        "--no-restart",
        action="store_true",
        help="do not restart a controller or engine that dies (default: restart, with back-off)",
    )
    start.add_argument("--no-dashboard", action="store_true", help="do not start the web dashboard")
    _dashboard_flags(start)
    _common(start)
    _controller_flags(start)
    add_launcher_flags(start)

    stop = commands.add_parser("stop", help="stop a running cluster")
    _common(stop)
    stop.add_argument("--clean", action="store_true", help="then remove its folder (store, logs)")

    listing = commands.add_parser("list", help="list running clusters")
    _common(listing)
    listing.add_argument(
        "--all",
        action="store_true",
        help="every cluster folder: running, stopped or stale, with its size and age",
    )

    clean = commands.add_parser(
        "clean", help="remove the folders of stopped clusters (never a running one)"
    )
    _common(clean)
    clean.set_defaults(cluster_id=None)
    clean.add_argument(
        "--older-than", default=None, help="only folders unchanged for this long: 12h, 7d ..."
    )

    controller = commands.add_parser("controller", help="run a controller in this process")
    _common(controller)
    _controller_flags(controller)

    dashboard = commands.add_parser("dashboard", help="serve the web dashboard of a cluster")
    _common(dashboard)
    _dashboard_flags(dashboard)
    dashboard.add_argument(
        "--owner-pid", type=int, default=None, help="stop when this parent process is gone"
    )

    engine = commands.add_parser("engine", help="run an engine in this process")
    engine.add_argument("--file", default=None, help="the controller's corral-engine.json")
    _common(engine)
    return parser


def _cluster_path(args: argparse.Namespace) -> Path:
    from corral.cluster.cluster import cluster_path

    return cluster_path(args.cluster_id, args.cluster_dir)


def _controller_args(args: argparse.Namespace) -> list[str]:
    flags = [
        "--ip",
        args.ip or "127.0.0.1",
        "--heartbeat-period",
        str(args.heartbeat_period),
        "--max-misses",
        str(args.max_misses),
        "--scheduler",
        args.scheduler,
        "--max-outstanding",
        str(args.max_outstanding),
    ]
    if args.restore:
        flags.append("--restore")
    if args.insecure:
        flags.append("--insecure")
    if args.curve:
        flags.append("--curve")
    for flag in ("store_buffer_limit", "store_size_limit", "result_ttl"):
        if getattr(args, flag) is not None:
            flags += ["--" + flag.replace("_", "-"), getattr(args, flag)]
    flags += ["--shm-threshold", str(args.shm_threshold)]
    if args.no_curve:
        flags.append("--no-curve")
    if args.location:
        flags += ["--location", args.location]
    return flags


def cmd_controller(args: argparse.Namespace) -> int:
    from corral.controller.app import ControllerConfig, run_controller
    from corral.controller.location import curve_decision
    from corral.lifetime import exit_with_owner

    args.ip = args.ip or "127.0.0.1"
    try:
        curve, why = curve_decision(args.ip, args.location, args.curve, args.no_curve)
    except CorralError as err:
        print(f"corral controller: {err}", file=sys.stderr)
        return 2
    if why:
        logging.getLogger("corral").log(logging.WARNING if not curve else logging.INFO, why)
    if args.insecure:
        logging.getLogger("corral").warning(
            "--insecure: messages are not signed; anyone who can reach the ports runs code"
        )
    from corral.cluster.folders import hold
    from corral.controller.store import RetentionSettings
    from corral.errors import StoreError

    try:
        retention = RetentionSettings.parse(
            *(
                "default" if value is None else value
                for value in (args.store_buffer_limit, args.store_size_limit, args.result_ttl)
            )
        )
    except StoreError as err:
        print(f"corral controller: {err}", file=sys.stderr)
        return 2
    hold(_cluster_path(args))  # the folder is in use until this process exits
    config = ControllerConfig(
        retention=retention,
        cluster_path=_cluster_path(args),
        cluster_id=args.cluster_id,
        ip=args.ip,
        insecure=args.insecure,
        heartbeat_period=args.heartbeat_period,
        max_misses=args.max_misses,
        db=args.db,
        restore=args.restore,
        scheduler_policy=args.scheduler,
        max_outstanding=args.max_outstanding,
        curve=curve,
        location=args.location,
        shm_threshold=args.shm_threshold,
    )
    exit_with_owner(args.owner_pid)
    return run_controller(config)


def cmd_dashboard(args: argparse.Namespace) -> int:
    import asyncio

    from corral.dashboard import INSTALL_HINT, available
    from corral.lifetime import exit_with_owner

    if not available():
        print(f"corral dashboard: {INSTALL_HINT}", file=sys.stderr)
        return 1
    from corral.dashboard.server import DashboardConfig, run_dashboard

    config = DashboardConfig(_cluster_path(args), args.dashboard_ip, args.dashboard_port)
    exit_with_owner(args.owner_pid)
    return asyncio.run(run_dashboard(config))


def cmd_engine(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from corral.engine.engine import main as engine_main

    argv = list(extra)
    argv += (
        ["--file", args.file]
        if args.file
        else ["--file", str(_cluster_path(args) / "corral-engine.json")]
    )
    argv += ["--log-level", args.log_level]
    return int(engine_main(argv) or 0)


def cmd_start(args: argparse.Namespace) -> int:
    import os

    from corral.cluster.cluster import Cluster
    from corral.cluster.launchers.config import controller_choice, launcher_argv, resolve
    from corral.cluster.launchers.watch import launcher_failures

    config_path = _cluster_path(args).with_suffix(".toml")
    try:
        launcher, configured_n, options = resolve(args, config_path)
        controller_launcher, controller_options = controller_choice(args, config_path)
    except CorralError as err:
        print(f"corral start: {err}", file=sys.stderr)
        return 1
    if args.ip is None and controller_launcher not in ("local", "mpi"):
        args.ip = "0.0.0.0"  # elsewhere: listen where engines and clients here reach it
    n = args.engines if args.engines is not None else configured_n or (os.cpu_count() or 1)
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
            *_controller_args(args),
            *launcher_argv(args),
        ]
        if args.cluster_dir:
            argv += ["--cluster-dir", args.cluster_dir]
        if args.no_restart:
            argv.append("--no-restart")
        argv += ["--dashboard-ip", args.dashboard_ip, "--dashboard-port", str(args.dashboard_port)]
        if args.no_dashboard:
            argv.append("--no-dashboard")
        path = _cluster_path(args)
        argv += ["--log-file", str(path / "cluster-manager.log")]
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(path / "cluster-manager.log", "ab") as log_file:
            manager = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + args.start_timeout + 30
        while not (path / "cluster.json").exists() or not _engines_up(path, n, args.no_wait):
            if manager.poll() is not None:
                tail = (path / "cluster-manager.log").read_text(errors="replace")[-3000:]
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
        controller_args=_controller_args(args),
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
    from corral.errors import CorralError

    try:
        with Client(path / "corral-client.json") as rc:
            left = max(0.0, deadline - time.monotonic())
            rc.wait_for_engines(n, timeout=left, interactive=sys.stderr.isatty())
    except CorralError:
        return False
    return True


def _print_dashboard(path: Path) -> None:
    import json

    try:
        print(f"dashboard: {json.loads((path / 'dashboard.json').read_text())['url']}")
    except (OSError, ValueError, KeyError):
        pass  # started without one


def _print_submitted(path: Path, cluster_id: str) -> int:
    """`corral start --daemon --no-wait`: say which jobs were submitted, and return."""
    import json

    from corral.cluster.launchers.config import submitted_jobs

    jobs = submitted_jobs(json.loads((path / "cluster.json").read_text()))
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
    import json

    try:
        state = json.loads((path / "cluster.json").read_text())
    except (OSError, ValueError):
        return False
    if submitted:
        launched = bool(state.get("launchers") or state.get("engine_pids"))
        return launched and (path / "corral-client.json").exists()
    up = len(state.get("engine_pids", [])) >= n or state.get("engines_registered", 0) >= n
    return bool(up) and (path / "corral-client.json").exists()


def cmd_stop(args: argparse.Namespace) -> int:
    from corral.cluster.cluster import stop_cluster

    path = _cluster_path(args)
    stopped = stop_cluster(path)
    if stopped:
        print(f"cluster {args.cluster_id} stopped")
    if args.clean and path.is_dir():
        return _remove_stopped(path, args.cluster_id)
    if stopped:
        return 0
    print(f"no running cluster {args.cluster_id} in {path}", file=sys.stderr)
    return 1


def _remove_stopped(path: Path, cluster_id: str) -> int:
    """Remove a folder whose processes were just told to stop (they may take a moment)."""
    from corral.cluster.folders import remove
    from corral.controller.store.retention import format_size

    deadline = time.monotonic() + 15
    while (freed := remove(path)) is None:
        if time.monotonic() > deadline:
            print(f"cluster {cluster_id} is still running: {path} left in place", file=sys.stderr)
            return 1
        time.sleep(0.1)  # processes exiting release the folder lock; poll with a deadline
    print(f"removed {path}: freed {format_size(freed)}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from corral.cluster.cluster import default_cluster_dir
    from corral.cluster.folders import clean, format_age
    from corral.controller.store.retention import format_size, parse_duration

    base = Path(args.cluster_dir).expanduser() if args.cluster_dir else default_cluster_dir()
    try:
        older_than = parse_duration(args.older_than)
    except ValueError as err:
        print(f"corral clean: --older-than: {err}", file=sys.stderr)
        return 2
    removed, running = clean(base, older_than, args.cluster_id)
    for folder in removed:
        print(
            f"removed {folder.cluster_id} ({folder.state}, {format_age(folder.age)} old): "
            f"{format_size(folder.size)}"
        )
    for folder in running:
        print(f"left {folder.cluster_id} alone: it is running")
    if args.cluster_id is not None and not removed and not running:
        print(f"no cluster folder {args.cluster_id} in {base}", file=sys.stderr)
        return 1
    total = sum(folder.size for folder in removed)
    print(f"freed {format_size(total)} in {len(removed)} folder(s) under {base}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    import json

    import psutil

    from corral.cluster.cluster import default_cluster_dir
    from corral.cluster.listing import controller_running

    base = Path(args.cluster_dir).expanduser() if args.cluster_dir else default_cluster_dir()
    if args.all:
        from corral.cluster.folders import folder_table, inventory

        folders = inventory(base)
        print("\n".join(folder_table(folders)) if folders else f"no cluster folders in {base}")
        return 0
    rows = []
    for client_file in sorted(base.glob("*/corral-client.json")):
        try:
            info = json.loads(client_file.read_text())
        except (OSError, ValueError):
            continue
        pid = controller_running(client_file.parent, info)
        if pid is None:
            continue
        engines = restarts = "?"
        state_file = client_file.parent / "cluster.json"
        if state_file.exists():
            state = json.loads(state_file.read_text())
            local = sum(psutil.pid_exists(p) for p in state.get("engine_pids", []))
            launched = sum(  # engines of other launchers, while their launch is not lost
                int(launch.get("n", 0))
                for launch in state.get("launchers", [])
                if launch.get("launcher") != "local"
                and not launch.get("lost")
                and launch.get("role", "engines") == "engines"
            )
            engines = str(local + launched)
            restarts = _restarts(state.get("restarts") or {})
        store = info.get("store") if isinstance(info.get("store"), dict) else {}
        limits = (
            f"{store.get('db', '?')}: buffers {store.get('buffer_limit', '?')}, "
            f"size {store.get('size_limit', '?')}, ttl {store.get('ttl', '?')}"
        )
        rows.append((client_file.parent.name, pid, engines, restarts, info.get("ip", ""), limits))
    if not rows:
        print(f"no running clusters in {base}")
        return 0
    print(
        f"{'cluster':<24} {'controller pid':>14} {'engines':>8} {'restarts':>24}  {'ip':<15}"
        " result store"
    )
    for name, pid, engines, restarts, ip, limits in rows:
        print(f"{name:<24} {pid:>14} {engines:>8} {restarts:>24}  {ip:<15} {limits}")
    from corral.cluster.listing import describe_engines

    print("\n".join(describe_engines(base / row[0] for row in rows)))
    return 0


def _restarts(counts: dict[str, int]) -> str:
    """``controller N, engines M``: what the supervisor of ``corral start`` restarted."""
    controller = counts.get("controller", 0)
    engines = sum(n for name, n in counts.items() if name.startswith("engine"))
    return f"controller {controller}, engines {engines}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "engine":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.log_file:
        from corral.controller.store.retention import parse_size
        from corral.logfile import log_to_file

        max_bytes = parse_size(args.log_max_bytes) or 0
        log_to_file(args.log_file, args.log_level, max_bytes, args.log_backups)
    else:
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
    if args.command == "controller":
        return cmd_controller(args)
    if args.command == "engine":
        return cmd_engine(args, extra)
    if args.command == "dashboard":
        return cmd_dashboard(args)
    if args.command == "start":
        return cmd_start(args)
    if args.command == "stop":
        return cmd_stop(args)
    if args.command == "clean":
        return cmd_clean(args)
    return cmd_list(args)


if __name__ == "__main__":
    sys.exit(main())
