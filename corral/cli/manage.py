"""``corral stop``, ``corral list``, ``corral clean``: the clusters in a folder, from outside."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from corral.cli.flags import cluster_base, cluster_path
from corral.cluster.folders import STATE_FILE
from corral.errors import ConnectionError
from corral.protocol.connection_files import CLIENT_FILE, ClientConnection, read_json_object


def cmd_stop(args: argparse.Namespace) -> int:
    from corral.cluster.shutdown import stop_cluster

    path = cluster_path(args)
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
    from corral.cluster.folders import clean, format_age
    from corral.controller.store.retention import format_size, parse_duration

    base = cluster_base(args)
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
    import psutil

    from corral.cluster.listing import controller_running

    base = cluster_base(args)
    if args.all:
        from corral.cluster.folders import folder_table, inventory

        folders = inventory(base)
        print("\n".join(folder_table(folders)) if folders else f"no cluster folders in {base}")
        return 0
    rows = []
    for client_file in sorted(base.glob(f"*/{CLIENT_FILE}")):
        try:
            info = ClientConnection.read(client_file)
        except ConnectionError:
            continue  # being written or removed: not a cluster to list
        pid = controller_running(client_file.parent, info.controller_pid)
        if pid is None:
            continue
        engines = restarts = "?"
        state = read_json_object(client_file.parent / STATE_FILE)
        if state is not None:
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
        store = info.store or {}
        limits = (
            f"{store.get('db', '?')}: buffers {store.get('buffer_limit', '?')}, "
            f"size {store.get('size_limit', '?')}, ttl {store.get('ttl', '?')}"
        )
        rows.append((client_file.parent.name, pid, engines, restarts, info.ip, limits))
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
