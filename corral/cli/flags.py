"""The ``corral`` command's flags: one parser for every subcommand, and where they point.

Only the CLI (and ``Cluster``) reads the environment: :func:`cluster_base` resolves
``--cluster-dir`` or ``$CORRAL_DIR`` once, and every command passes the folder on.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from corral.controller.heartbeat import AWAIT_AT_LEAST
from corral.controller.packing import BURST_PACKING, MAX_BURST_PACKING, check_burst_packing
from corral.controller.scheduling_state import (
    BURST_PREFETCH,
    LONG_TASK,
    MAX_BURST_PREFETCH,
    check_burst_prefetch,
    check_long_task,
)
from corral.engine_options import engine_options_help
from corral.protocol.connection_files import (
    DEFAULT_CLUSTER_ID,
    ENGINE_FILE,
    cluster_dir_from,
    cluster_folder,
)
from corral.protocol.shm import LONE_HUB_LINK_GRACE

DEFAULT_ID = DEFAULT_CLUSTER_ID


def cluster_base(args: argparse.Namespace) -> Path:
    """The folder holding clusters: ``--cluster-dir``, else ``$CORRAL_DIR`` or ``~/.corral``."""
    if args.cluster_dir:
        return Path(args.cluster_dir).expanduser()
    return cluster_dir_from(os.environ)


def cluster_path(args: argparse.Namespace) -> Path:
    """The folder of the cluster the command names: ``<cluster_base>/<cluster_id>``."""
    return cluster_folder(cluster_base(args), args.cluster_id)


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
        "--scheme",
        default="leastload",
        choices=["leastload", "lru", "random", "plainrandom", "twobin", "weighted"],
        help="load-balancing policy (--scheme and plainrandom, the same as random, are "
        "ipyparallel's names; twobin: the least recently used of two engines drawn at random)",
    )
    parser.add_argument(
        "--max-outstanding",
        type=int,
        default=16,
        help="tasks in flight per engine (prefetch); --burst-prefetch times as many for an "
        "engine running sub-ms tasks",
    )
    parser.add_argument(
        "--burst-prefetch",
        type=_burst_prefetch,
        default=BURST_PREFETCH,
        help="an engine answering tasks far shorter than a millisecond in bursts may hold this "
        f"many times --max-outstanding (default {BURST_PREFETCH}; 1: never more; at most "
        f"{MAX_BURST_PREFETCH})",
    )
    parser.add_argument(
        "--long-task",
        type=_long_task,
        default=LONG_TASK,
        metavar="SECONDS",
        help="an engine whose last task ran this long or longer holds one task at a time, as "
        "under ipyparallel's scheduler, so no task waits behind a long one while another "
        f"engine is idle; shorter tasks are prefetched (default {LONG_TASK}; 0: always "
        "--max-outstanding)",
    )
    parser.add_argument(
        "--burst-packing",
        type=_burst_packing,
        default=BURST_PACKING,
        help="on a host with more than this many engines per core, a burst of such tasks runs "
        f"on this many engines per core while it lasts (default {BURST_PACKING}; 0: never; at "
        f"most {MAX_BURST_PACKING})",
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
        help="largest result (and request) buffers the store keeps per task; larger ones are "
        "recorded without them, and such a request cannot be resubmitted (default 64M; "
        "'none': no limit)",
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
    parser.add_argument(
        "--reregistration-grace",
        type=_seconds,
        default=AWAIT_AT_LEAST,
        help="seconds at least that an engine the controller hears of but never registered "
        "(after a restart: named by a restored task or a copy) has to register before it is "
        f"declared gone and its tasks failed (default {AWAIT_AT_LEAST:g})",
    )
    parser.add_argument(
        "--lone-hub-link-grace",
        type=_seconds,
        default=LONE_HUB_LINK_GRACE,
        help="seconds the Hub's link to a shared-memory segment stays the segment's last name "
        "before the Hub removes it: the request's copy died with its engine and its client "
        f"(default {LONE_HUB_LINK_GRACE:g}; a copy behind a burst still finds it meanwhile)",
    )
    parser.add_argument(
        "--hub-nice",
        type=_nice_steps,
        default=10,
        help="nice steps the Hub's bookkeeping threads (its loop, the store's writer) run below "
        "the threads that carry tasks, so they never hold up a round trip (default 10; 0: the "
        "same priority)",
    )


def _nice_steps(text: str) -> int:
    """A number of nice steps: 0 (no change) to 19 (the lowest priority)."""
    try:
        steps = int(text)
    except ValueError:
        steps = -1
    if not 0 <= steps <= 19:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of nice steps from 0 to 19")
    return steps


def _long_task(text: str) -> float:
    """Seconds from 0 to an hour (argparse's error, exit status 2, else)."""
    try:
        return check_long_task(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds from 0 (off) to 3600"
        ) from None


def _burst_prefetch(text: str) -> int:
    """A whole number from 1 to MAX_BURST_PREFETCH (argparse's error, exit status 2, else)."""
    try:
        return check_burst_prefetch(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a burst prefetch from 1 (never more than --max-outstanding) "
            f"to {MAX_BURST_PREFETCH}"
        ) from None


def _burst_packing(text: str) -> int:
    """A whole number from 0 to MAX_BURST_PACKING (argparse's error, exit status 2, else)."""
    try:
        return check_burst_packing(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a burst packing from 0 (never) to {MAX_BURST_PACKING}"
        ) from None


def _seconds(text: str) -> float:
    """Seconds, 0 or more (argparse's error, exit status 2, else)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, 0 or more")
    return seconds


def _dashboard_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dashboard-ip", default="127.0.0.1", help="dashboard interface (default 127.0.0.1)"
    )
    parser.add_argument(
        "--dashboard-port", type=int, default=0, help="dashboard port (default: a free one)"
    )


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    from corral.cluster.launchers.config import add_launcher_flags

    parser = argparse.ArgumentParser(
        prog="corral", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
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

    engine = commands.add_parser(
        "engine",
        help="run an engine in this process",
        epilog=engine_options_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    engine.add_argument("--file", default=None, help=f"the controller's {ENGINE_FILE}")
    _common(engine)
    return parser


def controller_args(args: argparse.Namespace) -> list[str]:
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
        "--burst-prefetch",
        str(args.burst_prefetch),
        "--burst-packing",
        str(args.burst_packing),
        "--long-task",
        str(args.long_task),
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
    flags += ["--shm-threshold", str(args.shm_threshold), "--hub-nice", str(args.hub_nice)]
    flags += ["--lone-hub-link-grace", str(args.lone_hub_link_grace)]
    flags += ["--reregistration-grace", str(args.reregistration_grace)]
    if args.no_curve:
        flags.append("--no-curve")
    if args.location:
        flags += ["--location", args.location]
    return flags
