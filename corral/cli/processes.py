"""``corral controller``, ``corral engine``, ``corral dashboard``: one process of a cluster,
run in this one (``Cluster`` and ``corral start`` start them this way)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from corral.cli.flags import cluster_path
from corral.errors import CorralError
from corral.protocol.connection_files import ENGINE_FILE


def cmd_controller(args: argparse.Namespace) -> int:
    from corral.controller.app import ControllerConfig, run_controller
    from corral.controller.location import curve_decision

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
    hold(cluster_path(args))  # the folder is in use until this process exits
    config = ControllerConfig(
        retention=retention,
        cluster_path=cluster_path(args),
        cluster_id=args.cluster_id,
        ip=args.ip,
        insecure=args.insecure,
        heartbeat_period=args.heartbeat_period,
        max_misses=args.max_misses,
        db=args.db,
        restore=args.restore,
        scheduler_policy=args.scheduler,
        max_outstanding=args.max_outstanding,
        burst_prefetch=args.burst_prefetch,
        burst_packing=args.burst_packing,
        long_task=args.long_task,
        curve=curve,
        location=args.location,
        shm_threshold=args.shm_threshold,
        lone_hub_link_grace=args.lone_hub_link_grace,
        reregistration_grace=args.reregistration_grace,
        hub_nice=args.hub_nice,
    )
    return run_controller(config, owner_pid=args.owner_pid)


def cmd_dashboard(args: argparse.Namespace) -> int:
    import asyncio

    from corral.dashboard import INSTALL_HINT, available
    from corral.lifetime import exit_with_owner

    if not available():
        print(f"corral dashboard: {INSTALL_HINT}", file=sys.stderr)
        return 1
    from corral.dashboard.server import DashboardConfig, run_dashboard

    config = DashboardConfig(cluster_path(args), args.dashboard_ip, args.dashboard_port)
    exit_with_owner(args.owner_pid)
    return asyncio.run(run_dashboard(config))


def cmd_engine(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from corral.engine.engine import main as engine_main

    argv = list(extra)
    argv += (
        ["--file", args.file] if args.file else ["--file", str(cluster_path(args) / ENGINE_FILE)]
    )
    argv += ["--log-level", args.log_level]
    return int(engine_main(argv) or 0)
